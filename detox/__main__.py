"""``python -m detox`` is the ``detox`` command."""

import sys

from detox.cli import main

sys.exit(main())
