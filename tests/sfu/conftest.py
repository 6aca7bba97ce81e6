"""Fixtures for SFU tests: a stand-in for control's side of the node link, and a real node.

The control plane's RPC client arrives with the voice issue; until then :class:`ControlStub`
plays control's part of the link protocol (hello, proof check, registered, requests) so
tests can drive a real ``python -m sfu`` process through its RPC.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from hushroom import node_link

REPO = Path(__file__).resolve().parents[2]


class ControlStub:
    """Control's end of one node link: answers registration, sends requests, keeps events."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.port = 0
        self.registration: dict[str, Any] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._connected = trio.Event()
        self._ids = itertools.count(1)
        self._replies: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._event_seen = trio.Condition()

    async def handler(self, request: trio_websocket.WebSocketRequest) -> None:
        """Control's side of one node link."""
        ws = await request.accept()
        challenge = node_link.new_challenge()
        await ws.send_message(node_link.encode_frame("hello", {"challenge": challenge}))
        _, data = node_link.decode_frame_untrusted(await ws.get_message())
        assert node_link.verify_proof(self.secret, challenge, data["node_id"], data["proof"])
        self.registration = data
        await ws.send_message(node_link.encode_frame("registered", {}))
        self._ws = ws
        self._connected.set()
        try:
            while True:
                frame = node_link.decode_message_untrusted(await ws.get_message())
                if "event" in frame:
                    async with self._event_seen:
                        self.events.append((frame["event"], frame["data"]))
                        self._event_seen.notify_all()
                else:
                    request_id, _, _ = node_link.decode_reply_untrusted(frame)
                    self._replies[int(request_id)].send_nowait(frame)
        except trio_websocket.ConnectionClosed:
            pass

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a request and return its result; raises AssertionError on an error reply."""
        reply = await self.call_raw(method, **params)
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    async def call_raw(self, method: str, **params: Any) -> dict[str, Any]:
        await self._connected.wait()
        assert self._ws is not None
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._replies[request_id] = send
        await self._ws.send_message(node_link.encode_request(request_id, method, params))
        with trio.fail_after(10):
            return await receive.receive()

    async def wait_event(self, name: str, within: float = 15.0) -> dict[str, Any]:
        with trio.fail_after(within):
            async with self._event_seen:
                while True:
                    for event, data in self.events:
                        if event == name:
                            return data
                    await self._event_seen.wait()


@pytest.fixture
async def control(nursery: trio.Nursery, tmp_path: Path) -> ControlStub:
    secret_file = tmp_path / "node-secret"
    secret_file.write_text("test-node-secret\n")
    stub = ControlStub(b"test-node-secret")
    server = await nursery.start(trio_websocket.serve_websocket, stub.handler, "127.0.0.1", 0, None)
    stub.port = server.port
    return stub


async def _run_node(
    control: ControlStub, nursery: trio.Nursery, tmp_path: Path, workers: int, *extra: str
) -> tuple[trio.Process, list[str]]:
    command = [
        sys.executable,
        "-m",
        "sfu",
        "--control-url",
        f"ws://127.0.0.1:{control.port}{node_link.PATH}",
        "--node-secret-file",
        str(tmp_path / "node-secret"),
        "--workers",
        str(workers),
        "--listen-ip",
        "127.0.0.1",
        *extra,
    ]
    process: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            command,
            stdout=subprocess.PIPE,
            check=False,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    )
    assert process.stdout is not None
    lines: list[str] = []
    buffer = b""
    with trio.fail_after(60):
        while "sfu ready" not in lines:
            chunk = await process.stdout.receive_some(4096)
            assert chunk, f"sfu exited early: {lines}"
            buffer += chunk
            *complete, rest = buffer.split(b"\n")
            buffer = rest
            lines.extend(line.decode() for line in complete)
    return process, lines


async def _stop_node(process: trio.Process) -> None:
    process.terminate()
    with trio.fail_after(20):
        await process.wait()
    assert process.returncode == 0


@pytest.fixture
async def sfu_node(
    control: ControlStub, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[list[str]]:
    """A real ``python -m sfu`` with one worker, registered with the stub; yields its lines."""
    process, lines = await _run_node(control, nursery, tmp_path, 1)
    yield lines
    await _stop_node(process)


@pytest.fixture
async def sfu_node_two_workers(
    control: ControlStub, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[list[str]]:
    """As :func:`sfu_node`, with two workers (two UDP ports, two processes)."""
    process, lines = await _run_node(control, nursery, tmp_path, 2)
    yield lines
    await _stop_node(process)


@pytest.fixture
async def sfu_node_spread(
    control: ControlStub, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[list[str]]:
    """As :func:`sfu_node_two_workers`, spreading every channel over both workers from
    its first transport (``--spread-above 0``)."""
    process, lines = await _run_node(control, nursery, tmp_path, 2, "--spread-above", "0")
    yield lines
    await _stop_node(process)


@pytest.fixture
async def sfu_node_short_consent(
    control: ControlStub, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[list[str]]:
    """As :func:`sfu_node`, closing transports after 2 s without a consent check."""
    process, lines = await _run_node(control, nursery, tmp_path, 1, "--consent-timeout", "2")
    yield lines
    await _stop_node(process)
