"""``python -m control``: run the control plane on Hypercorn's trio worker."""

from __future__ import annotations

import logging
import signal
import socket
import sys

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from hushroom.config import run_main
from hushroom.secrets_file import ensure_secret_file

from .app import create_app
from .config import ControlConfig
from .gc_policy import tune_gc
from .logs import configure_logging

__all__ = ["main"]


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves so port 0 works and the real port is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


async def serve_control(config: ControlConfig) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if config.node_secret_file is None:
        ensure_secret_file(config.resolved_node_secret_file)
    app = create_app(config)
    tune_gc()
    host, port = config.listen_address
    sock = _bind(host, port)
    hyper = HypercornConfig()
    hyper.bind = [f"fd://{sock.fileno()}"]
    # Hypercorn's access log records client addresses; hushroom never logs them.
    hyper.accesslog = None
    hyper.include_server_header = False
    # Gateway frames are at most 16 KiB and node-link frames small: refuse larger messages
    # before they are buffered.
    hyper.websocket_max_message_size = 1024 * 1024
    hyper.errorlog = logging.getLogger("hypercorn.error")
    shutdown = trio.Event()
    # Hypercorn adopts the descriptor and closes it when it stops serving.
    bound_host, bound_port = sock.getsockname()[:2]
    sock.detach()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def wait_for_signal() -> None:
                async for _ in signals:
                    shutdown.set()
                    return

            nursery.start_soon(wait_for_signal)
            await nursery.start(
                lambda task_status: serve(
                    app, hyper, shutdown_trigger=shutdown.wait, task_status=task_status
                )
            )
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            print(f"control listening http {shown}:{bound_port}", flush=True)
            print("control ready", flush=True)
            await shutdown.wait()


def _run(config: ControlConfig) -> int:
    configure_logging(config.log_level)
    try:
        trio.run(serve_control, config)
    except OSError as exc:
        print(f"control: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m control`` and ``hushroom control``."""
    return run_main(
        "hushroom control",
        "The hushroom control plane: accounts, communities, gateway and ciphertext relay.",
        ControlConfig,
        "control",
        argv,
        _run,
    )


if __name__ == "__main__":
    sys.exit(main())
