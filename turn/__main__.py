"""``python -m turn`` / ``hushroom turn``: run the STUN/TURN relay (RFC 8489 / RFC 8656).

Prints ``turn listening <udp|tcp|tls> HOST:PORT`` once per bound listener (real ports, so
``:0`` works), then ``turn ready``; runs until SIGINT or SIGTERM, then closes every socket and
exits 0.

With ``--workers N`` the listeners are bound N times with SO_REUSEPORT before anything else
runs, and N worker processes (each its own trio run) share them; the kernel keeps a client's
5-tuple on one worker. This process then only supervises: it forwards SIGINT/SIGTERM, reaps
every worker and exits 0 when they all did, or stops the rest if one fails.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
from functools import partial

import trio

from hushroom.config import run_main
from turn.config import TurnConfig
from turn.serve import BoundSocket, Listening, bind_listeners, serve

__all__ = ["main"]

DESCRIPTION = "hushroom STUN/TURN relay (RFC 8489, RFC 8656) with REST-API credentials."
_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}


def _announce(listening: Listening) -> None:
    print(listening.line(), flush=True)


def _ignore(_: Listening) -> None:
    return None


async def _run(
    config: TurnConfig, sockets: list[BoundSocket], nonce_key: bytes | None, ready_fd: int | None
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            announce = _announce if ready_fd is None else _ignore
            await nursery.start(
                partial(serve, sockets=sockets, nonce_key=nonce_key), config, announce
            )
            if ready_fd is None:
                print("turn ready", flush=True)
            else:
                os.write(ready_fd, b"r")
                os.close(ready_fd)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def _supervise(config: TurnConfig, sets: list[list[BoundSocket]]) -> int:
    """Fork one worker per socket set, announce, then wait for signals and reap workers."""
    nonce_key = secrets.token_bytes(32)
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    ready_r, ready_w = os.pipe()
    workers: set[int] = set()
    for index, sockets in enumerate(sets):
        pid = os.fork()
        if pid == 0:  # worker
            os.close(ready_r)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            for other, other_sockets in enumerate(sets):
                if other != index:
                    for b in other_sockets:
                        b.sock.close()
            code = 0
            try:
                trio.run(_run, config, sockets, nonce_key, ready_w)
            except BaseException:
                logging.getLogger("turn").exception("worker failed")
                code = 1
            os._exit(code)
        workers.add(pid)
    os.close(ready_w)
    for first in sets[0]:
        _announce(first.listening)
    for sockets in sets:
        for b in sockets:
            b.sock.close()
    ready = b""
    while len(ready) < len(sets):
        chunk = os.read(ready_r, len(sets))
        if not chunk:
            break
        ready += chunk
    os.close(ready_r)
    stopping = len(ready) < len(sets)
    if not stopping:
        print("turn ready", flush=True)
    code = 1 if stopping else 0
    for pid in workers:
        if stopping:
            os.kill(pid, signal.SIGTERM)
    while workers:
        sig = signal.sigwait(_SIGNALS)
        if sig in (signal.SIGINT, signal.SIGTERM) and not stopping:
            stopping = True
            for pid in workers:
                os.kill(pid, signal.SIGTERM)
        while workers:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            workers.discard(pid)
            if os.waitstatus_to_exitcode(status) != 0 or not stopping:
                code = 1  # a worker that fails or exits on its own takes the service down
                if not stopping:
                    stopping = True
                    for other in workers:
                        os.kill(other, signal.SIGTERM)
    return code


def _body(config: TurnConfig) -> int:
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        sets = bind_listeners(config, config.workers)
    except OSError as exc:
        print(f"turn: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1
    if config.workers > 1:
        return _supervise(config, sets)
    trio.run(_run, config, sets[0], None, None)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m turn`` and ``hushroom turn``; returns the exit code."""
    return run_main("turn", DESCRIPTION, TurnConfig, "turn", argv, _body)


if __name__ == "__main__":
    sys.exit(main())
