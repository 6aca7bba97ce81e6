"""``python -m turn`` / ``hushroom turn``: run the STUN/TURN relay (RFC 8489 / RFC 8656).

Prints ``turn listening <udp|tcp|tls> HOST:PORT`` once per bound listener (real ports, so
``:0`` works), then ``turn ready``; runs until SIGINT or SIGTERM, then closes every socket and
exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys

import trio

from hushroom.config import run_main
from turn.config import TurnConfig
from turn.serve import Listening, serve

__all__ = ["main"]

DESCRIPTION = "hushroom STUN/TURN relay (RFC 8489, RFC 8656) with REST-API credentials."


def _announce(listening: Listening) -> None:
    print(listening.line(), flush=True)


async def _run(config: TurnConfig) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, config, _announce)
            print("turn ready", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def _body(config: TurnConfig) -> int:
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        trio.run(_run, config)
    except OSError as exc:
        print(f"turn: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m turn`` and ``hushroom turn``; returns the exit code."""
    return run_main("turn", DESCRIPTION, TurnConfig, "turn", argv, _body)


if __name__ == "__main__":
    sys.exit(main())
