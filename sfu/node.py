"""The SFU node: supervises one worker process per core and holds the link to control.

The node dials the control plane (``hushroom.node_link``), proves the shared node secret,
registers its workers and reports their health every few seconds; when the link drops it
dials again with backoff. A worker that dies stops the node with an error, so the process
supervisor (``hushroom up``, systemd, Kubernetes) restarts the whole node cleanly rather
than the node limping on with a hole in its capacity.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

import psutil
import trio
import trio_websocket

from hushroom import node_link
from hushroom.secrets_file import read_secret_file

from .config import SfuConfig

__all__ = ["Node", "WorkerDied", "WorkerHandle"]

log = logging.getLogger("sfu.node")

WORKER_START_TIMEOUT_S = 20.0
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0


class WorkerDied(Exception):
    """A worker process exited while the node was running."""


@dataclass
class WorkerHandle:
    """One worker process as the node sees it."""

    index: int
    process: trio.Process
    port: int

    def health(self) -> dict[str, Any]:
        """Liveness and resource use, as sent to control."""
        alive = self.process.returncode is None
        cpu, rss = 0.0, 0
        if alive:
            try:
                ps = psutil.Process(self.process.pid)
                cpu, rss = ps.cpu_percent(None), ps.memory_info().rss
            except psutil.Error:
                alive = False
        return {
            "index": self.index,
            "port": self.port,
            "alive": alive,
            "cpu_percent": cpu,
            "rss_bytes": rss,
        }


class Node:
    """A running SFU node (see module docstring)."""

    def __init__(self, config: SfuConfig) -> None:
        self.config = config
        self.node_id = config.node_id or secrets.token_hex(8)
        self.secret = read_secret_file(config.node_secret_file)[0]
        self.workers: list[WorkerHandle] = []
        self.registered = trio.Event()

    def worker_count(self) -> int:
        """Workers to start: as configured, else one per core."""
        return self.config.workers or os.cpu_count() or 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers, keep the control link up; ``started`` once registered."""
        async with trio.open_nursery() as nursery:
            for index in range(self.worker_count()):
                handle = await nursery.start(self._run_worker, index)
                self.workers.append(handle)
            nursery.start_soon(self._link_forever)
            await self.registered.wait()
            task_status.started()

    async def _run_worker(
        self, index: int, *, task_status: trio.TaskStatus[WorkerHandle] = trio.TASK_STATUS_IGNORED
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "sfu.worker",
            "--listen-ip",
            self.config.listen_ip,
        ]
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    check=False,
                )
            )
            assert process.stdout is not None
            with trio.fail_after(WORKER_START_TIMEOUT_S):
                line = await _read_line(process.stdout)
            ready = json.loads(line)
            handle = WorkerHandle(index, process, int(ready["port"]))
            task_status.started(handle)
            await process.wait()
            raise WorkerDied(f"worker {index} exited with status {process.returncode}")

    async def _link_forever(self) -> None:
        delay = RECONNECT_MIN_S
        while True:
            try:
                await self._link_once()
            except (
                OSError,
                trio_websocket.HandshakeError,
                trio_websocket.ConnectionClosed,
                node_link.LinkProtocolError,
            ) as exc:
                log.warning("control link down (%s); retrying in %.1f s", type(exc).__name__, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _link_once(self) -> None:
        async with trio_websocket.open_websocket_url(
            self.config.control_url, max_message_size=node_link.MAX_FRAME_BYTES
        ) as ws:
            event, data = node_link.decode_frame_untrusted(await ws.get_message())
            challenge = data.get("challenge")
            if event != "hello" or not isinstance(challenge, bytes):
                raise node_link.LinkProtocolError("expected hello with a challenge")
            await ws.send_message(
                node_link.encode_frame(
                    "register",
                    {
                        "node_id": self.node_id,
                        "announce_ip": self.config.resolved_announce_ip,
                        "workers": [w.health() for w in self.workers],
                        "capacity": {"workers": len(self.workers)},
                        "proof": node_link.prove(self.secret, challenge, self.node_id),
                    },
                )
            )
            event, _ = node_link.decode_frame_untrusted(await ws.get_message())
            if event != "registered":
                raise node_link.LinkProtocolError("registration not acknowledged")
            if not self.registered.is_set():
                log.info("registered with control as node %s", self.node_id)
                self.registered.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_health, ws)
                while True:
                    # Requests from control arrive here once the RPC surface exists;
                    # until then every frame is decoded (and so validated) and dropped.
                    node_link.decode_frame_untrusted(await ws.get_message())

    async def _report_health(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            health = [w.health() for w in self.workers]
            await ws.send_message(node_link.encode_frame("health", {"workers": health}))
            await trio.sleep(node_link.HEALTH_INTERVAL_S)


async def _read_line(stream: trio.abc.ReceiveStream, limit: int = 4096) -> bytes:
    """Read one newline-terminated line from a pipe, byte by byte (used once per worker)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            raise WorkerDied("worker closed its stdout before reporting ready")
        line += chunk
        if len(line) > limit:
            raise WorkerDied("worker start-up line too long")
    return bytes(line)
