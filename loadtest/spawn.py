"""``--spawn``: a local deployment in a temporary directory for one load-test run.

``python -m control`` and ``python -m sfu`` nodes (``workers`` worker processes each) on
loopback ports the OS picks, started with :mod:`loadtest.voice_call`'s machinery, torn
down at the end. What differs from an operator's defaults is said here: the per-token
request rate is raised (the harness's owner account creates an invite for hundreds of
members, and each member's gateway ops are its own), and the proof-of-work target rate is
raised so that registering hundreds of accounts in seconds does not drive the difficulty
to its maximum — every registration still solves a puzzle at the base difficulty.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import trio

from control.process import ControlProcess
from loadtest.voice_call import SfuNode, _write_secrets, start_sfu_node

__all__ = ["Spawned", "spawned"]


@dataclass
class Spawned:
    """The running deployment: control's URL and the SFU nodes."""

    url: str
    nodes: list[SfuNode]
    control_pid: int

    def worker_processes(self) -> list[psutil.Process]:
        """The SFU worker processes (the node's children)."""
        workers: list[psutil.Process] = []
        for node in self.nodes:
            try:
                workers += psutil.Process(node.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
        return workers


@asynccontextmanager
async def spawned(root: Path, *, nodes: int = 1, workers: int = 1) -> AsyncIterator[Spawned]:
    """Start control and ``nodes`` SFU nodes of ``workers`` workers each under ``root``;
    stop them all at the end."""
    node_secret, turn_secret = root / "node-secret", root / "turn-secret"
    await trio.to_thread.run_sync(_write_secrets, root, node_secret, turn_secret)
    extra = ["--node-secret-file", str(node_secret), "--log-level", "info"]
    extra += ["--rate-per-s", "100000", "--rate-burst", "100000"]
    extra += ["--pow-target-per-s", "100000"]
    with (root / "control.log").open("ab") as control_log:
        control = await trio.to_thread.run_sync(
            lambda: ControlProcess(root / "control-data", *extra, log=control_log)
        )
        try:
            async with trio.open_nursery() as nursery:
                started = [
                    await start_sfu_node(
                        nursery,
                        control.url,
                        node_secret,
                        f"node-{n}",
                        root / f"node-{n}.log",
                        workers=workers,
                    )
                    for n in range(nodes)
                ]
                await _until_nodes(control.url, nodes)
                try:
                    yield Spawned(control.url, started, control.proc.pid)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await trio.to_thread.run_sync(control.stop)


async def _until_nodes(url: str, count: int, within: float = 30.0) -> None:
    """Until control counts ``count`` healthy SFU nodes (polled: another process)."""

    def healthy() -> int:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
            return int(json.load(response)["sfu_nodes"])

    with trio.fail_after(within):
        while True:
            if await trio.to_thread.run_sync(healthy) >= count:
                return
            await trio.sleep(0.05)
