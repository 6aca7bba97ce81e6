"""``python -m sfu``: run one SFU node (a worker process per core plus the control link)."""

from __future__ import annotations

import logging
import signal
import sys

import trio

from hushroom.config import run_main

from .config import SfuConfig
from .node import Node, WorkerDied

__all__ = ["main"]


async def serve_node(config: SfuConfig) -> None:
    """Run the node until SIGINT or SIGTERM (also while it is still dialling control)."""
    node = Node(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def until_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(until_signal)
            await nursery.start(node.run)
            for worker in node.workers:
                print(
                    f"sfu worker {worker.index} listening udp {config.listen_ip}:{worker.port}",
                    flush=True,
                )
            print(f"sfu registered node {node.node_id}", flush=True)
            print("sfu ready", flush=True)


def _run(config: SfuConfig) -> int:
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    failures: list[str] = []
    try:
        trio.run(serve_node, config)
    except* WorkerDied as group:
        failures += [str(exc) for exc in group.exceptions]
    except* OSError as group:
        failures += [f"cannot start: {exc}" for exc in group.exceptions]
    for failure in failures:
        print(f"sfu: {failure}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sfu`` and ``hushroom sfu``."""
    return run_main(
        "hushroom sfu",
        "A hushroom SFU node: forwards end-to-end encrypted media for voice channels.",
        SfuConfig,
        "sfu",
        argv,
        _run,
    )


if __name__ == "__main__":
    sys.exit(main())
