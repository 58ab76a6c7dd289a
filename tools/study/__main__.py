"""``python -m tools.study``: see :mod:`tools.study`."""

import sys

from .cli import main

sys.exit(main())
