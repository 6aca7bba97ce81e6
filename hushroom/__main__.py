"""``python -m hushroom`` is the ``hushroom`` command."""

import sys

from .cli import main

sys.exit(main())
