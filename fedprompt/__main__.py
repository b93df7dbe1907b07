"""``python -m fedprompt`` is the ``fedprompt`` command."""

import sys

from fedprompt.app.cli import main

sys.exit(main())
