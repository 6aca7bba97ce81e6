"""``python -m client``: the people's commands (the same as ``hushroom <command>``)."""

from __future__ import annotations

import sys

from client.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
