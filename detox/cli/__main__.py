"""``python -m detox.cli`` is the ``detox`` command too (as it was when the CLI was one module)."""

import sys

from detox.cli import main

sys.exit(main())
