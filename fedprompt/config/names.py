"""Name rules the job schema shares across its modules, and the coordinator with it.

``IDENTITY`` is the one definition of a caller's name: ``job.py`` checks enrollment lists with it,
``levels.py`` cohort members, and the coordinator the names insecure-mode callers give.  ``job_name_problem``
is the one definition of a job's name, which admins choose, logs print and lookups compare.  Both live
here, below both schema modules, so that neither has to import the other.
"""

from __future__ import annotations

import re
import unicodedata

# A caller's identity: certificate names ("participant:hospital-a") or insecure-mode names ("site-0").
IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")

#: A job name's length cap, in bytes of UTF-8: 128 ASCII characters, 64 two-byte letters such as "é", 42 CJK
#: ideographs.  Room for the coordinator's id suffix and a file suffix within a 255-byte file name.
JOB_NAME_MAX_BYTES = 128
#: Separators a job name may hold besides letters, digits and combining marks.
JOB_NAME_SEPARATORS = frozenset(" ._-+")


def job_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a job (``None`` when it can), in words for ``job.name: <why>``.

    A job name is 1 to ``JOB_NAME_MAX_BYTES`` bytes of UTF-8 in Unicode NFC form: letters and digits of any
    script (categories L and N) and combining marks (M) with the separators space, ``.``, ``_``, ``-`` and
    ``+``; it starts with a letter or digit, does not end with a space or ``.``, and holds no ``..``.  So no
    path separator, no control character (newline, ESC, BEL: a name cannot forge a log line or colour a
    terminal), no invisible formatting character (bidirectional overrides, zero-width joiners) and no
    quoting character reach a log, a file name or a shell.
    """
    if not name.strip():
        return "must not be empty"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > JOB_NAME_MAX_BYTES:
        return f"must be at most {JOB_NAME_MAX_BYTES} bytes of UTF-8, got {size}"
    for i, char in enumerate(name):
        category = unicodedata.category(char)
        if not (category[0] in "LN" or (category[0] == "M" and i > 0) or (char in JOB_NAME_SEPARATORS and i > 0)):
            where = "start with a letter or digit" if i == 0 else "hold only letters, digits, marks and ' ._-+'"
            return f"must {where}; character {i + 1} is {ascii(char)}"
    if ".." in name:
        return "must not hold '..'"
    if name[-1] in " .":
        return f"must not end with {name[-1]!r}"
    if not unicodedata.is_normalized("NFC", name):
        return "must be in Unicode NFC form (a composed letter such as 'é', not 'e' plus a combining accent)"
    return None
