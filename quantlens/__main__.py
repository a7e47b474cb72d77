"""``python -m quantlens diagnose ...``: see :mod:`quantlens.cli`."""

import sys

from .cli import main

sys.exit(main())
