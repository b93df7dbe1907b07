"""``python -m fedprompt`` is the ``fedprompt`` command."""

import sys

from fedprompt.cli import main

sys.exit(main())
