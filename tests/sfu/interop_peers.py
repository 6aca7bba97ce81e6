"""Helpers for interop tests: aiortc peer processes and the RPC steps to publish/subscribe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

PEER = Path(__file__).with_name("aiortc_peer.py")


class Peer:
    """An aiortc peer process speaking JSON lines."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.buffer = b""

    @classmethod
    async def start(cls, nursery: trio.Nursery, *args: str) -> Peer:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(PEER), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        return cls(process)

    async def read(self, within: float = 30) -> dict[str, Any]:
        assert self.process.stdout is not None
        with trio.fail_after(within):
            while b"\n" not in self.buffer:
                chunk = await self.process.stdout.receive_some(65536)
                assert chunk, "aiortc peer exited"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    async def write(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all((json.dumps(message) + "\n").encode())

    async def close(self) -> None:
        if self.process.stdin is not None:
            await self.process.stdin.aclose()
        with trio.move_on_after(10):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def publish(control: Any, nursery: trio.Nursery, router_id: str, *args: str):
    transport = await control.call("transport.create", router_id=router_id)
    publisher = await Peer.start(nursery, "publish", *args)
    offer = (await publisher.read())["offer"]
    connected = await control.call(
        "transport.connect", transport_id=transport["transport_id"], sdp_offer=offer
    )
    await publisher.write({"answer": connected["sdp_answer"]})
    assert (await publisher.read())["connected"]
    return publisher, connected["producers"]


async def subscribe(
    control: Any,
    nursery: trio.Nursery,
    router_id: str,
    producers: list[dict[str, Any]],
    *args: str,
    mode: str = "subscribe",
) -> Peer:
    transport = await control.call("transport.create", router_id=router_id)
    for producer in producers:
        await control.call(
            "consumer.create",
            transport_id=transport["transport_id"],
            producer_id=producer["producer_id"],
        )
    offer = await control.call("transport.offer", transport_id=transport["transport_id"])
    subscriber = await Peer.start(nursery, mode, *args)
    await subscriber.write({"offer": offer["sdp_offer"]})
    answer = (await subscriber.read())["answer"]
    await control.call(
        "transport.answer", transport_id=transport["transport_id"], sdp_answer=answer
    )
    return subscriber
