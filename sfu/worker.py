"""One SFU worker process: owns a UDP port on one core.

The node starts ``python -m sfu.worker`` per core. The worker binds its UDP socket, reports
``{"event": "ready", "port": P}`` as one JSON line on stdout, and lives until its stdin
reaches end of file (the node closed it or died) or it receives SIGTERM/SIGINT. Media
transports, routers and forwarding run inside it once the SFU's media plane exists; until
then it owns the port and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys

import trio

__all__ = ["main"]


async def run_worker(listen_ip: str, port: int) -> None:
    """Bind, announce the port, then wait for the node to let go."""
    family = socket.AF_INET6 if ":" in listen_ip else socket.AF_INET
    udp = trio.socket.socket(family, socket.SOCK_DGRAM)
    await udp.bind((listen_ip, port))
    bound_port = udp.getsockname()[1]
    sys.stdout.write(json.dumps({"event": "ready", "port": bound_port}) + "\n")
    sys.stdout.flush()
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    with udp, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def until_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(until_signal)
            async with stdin:
                while await stdin.receive_some(4096):
                    pass
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sfu.worker`` (started by the node, not by people)."""
    parser = argparse.ArgumentParser(prog="python -m sfu.worker")
    parser.add_argument("--listen-ip", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    trio.run(run_worker, args.listen_ip, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
