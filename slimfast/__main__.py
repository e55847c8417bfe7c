"""``python -m slimfast``: see ``slimfast.cli``."""

import sys

from .cli import main

sys.exit(main())
