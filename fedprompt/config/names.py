"""Name patterns the job schema shares across its modules.

``IDENTITY`` is the one definition of a caller's name: ``job.py`` checks enrollment lists with it,
``levels.py`` cohort members, and the coordinator the names insecure-mode callers give.  It lives here,
below both schema modules, so that neither has to import the other.
"""

from __future__ import annotations

import re

# A caller's identity: certificate names ("participant:hospital-a") or insecure-mode names ("site-0").
IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
