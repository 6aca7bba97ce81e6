"""``python -m loadtest``: the load-test harness for SFU nodes and control planes.

The harness (synthetic and real participants against a running deployment) is not built
yet; this entry point exists so the command and its place in ``hushroom`` are stable. It
says so plainly instead of pretending to measure anything.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m loadtest`` and ``hushroom loadtest``."""
    parser = argparse.ArgumentParser(
        prog="hushroom loadtest",
        description="Load-test a running hushroom deployment (not built yet).",
    )
    parser.parse_args(argv)
    print("hushroom loadtest: the load tester is not built yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
