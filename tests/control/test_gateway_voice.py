"""The gateway goes on reading while a voice op waits for the SFU: a connection whose op 12
is stuck behind a stopped SFU node still has its heartbeats answered and is not cut (it was,
4009, when the reader awaited each voice op itself), and a client sending more voice ops
than may wait is closed with 4008 instead of having them queued without bound.

A real control process and a real SFU node, made slow by real means: the node's processes
are stopped (SIGSTOP) and continued (SIGCONT) around the op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from test_voice_live import World, _until, _world, join
from voice_live import Gateway, VoicePeer

from contract.gateway import Close, Op
from control.gateway.session import VOICE_LIMIT

pytestmark = pytest.mark.slow

#: HELLO's interval: a connection not heard from for 1.5 s after a heartbeat is cut (4009).
HEARTBEAT_MS = "1000"
#: Well above how long a test keeps the node stopped, so the stuck op completes once the
#: node continues (rather than failing with sfu_error).
SFU_TIMEOUT_S = "20"


@contextlib.contextmanager
def stopped(node_id: str) -> Iterator[None]:
    """SIGSTOP this test's ``python -m sfu --node-id NODE_ID`` process and its workers: its
    link stays open, requests to it go unanswered until SIGCONT. Only among this process's
    own children: other test runs on the machine have nodes of the same name."""
    processes = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            cmdline = process.cmdline()
            if "sfu" in cmdline and node_id in cmdline:
                processes = [process, *process.children(recursive=True)]
                break
    assert processes, f"no node {node_id}"
    for process in processes:
        process.suspend()
    try:
        yield
    finally:
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()


async def identified(world: World, user: dict[str, Any]) -> Gateway:
    gateway = await world.gateway(user)
    world.nursery.start_soon(gateway.heartbeats, 0.25)
    return gateway


def publish_frame(server: dict[str, Any]) -> dict[str, Any]:
    offer = VoicePeer().publish_offer(4321)
    return {"voice_session_id": server["voice_session_id"], "sdp_offer": offer}


async def test_heartbeats_are_answered_while_a_voice_op_waits_for_the_sfu(
    tmp_path: Path,
) -> None:
    async with _world(
        tmp_path, "--heartbeat-interval-ms", HEARTBEAT_MS, "--sfu-request-timeout-s", SFU_TIMEOUT_S
    ) as world:
        gateway = await identified(world, world.ann)
        server = await join(world, gateway, world.voice_id)
        mark = gateway.mark()
        with stopped("node-a"):
            await gateway.send(Op.VOICE_PUBLISH, publish_frame(server))
            acks = gateway.acks
            # Longer than the 1.5 s a heartbeat may be late: a reader stuck in the publish
            # would have let the deadline pass and closed the connection (4009).
            await trio.sleep(2.5)
            assert gateway.close_code is None
            assert gateway.acks >= acks + 5, "heartbeats were not answered meanwhile"
            published = [t for t, _ in gateway.dispatches[mark:] if t == "VOICE_PUBLISH_ANSWER"]
            assert not published, "the publish did not wait for the node"
        # The op itself went on waiting for the node, and completes once it answers.
        await gateway.wait("VOICE_PUBLISH_ANSWER", after=mark)
        assert not [d for t, d in gateway.dispatches if t == "VOICE_ERROR"]
        assert gateway.close_code is None


async def test_more_voice_ops_than_may_wait_close_with_4008(tmp_path: Path) -> None:
    async with _world(
        tmp_path, "--heartbeat-interval-ms", HEARTBEAT_MS, "--sfu-request-timeout-s", SFU_TIMEOUT_S
    ) as world:
        gateway = await identified(world, world.ann)
        server = await join(world, gateway, world.voice_id)
        mute = {"guild_id": world.guild_id, "channel_id": world.voice_id, "self_mute": True}
        with stopped("node-a"):
            await gateway.send(Op.VOICE_PUBLISH, publish_frame(server))
            for _ in range(VOICE_LIMIT - 1):
                await gateway.send(Op.VOICE_STATE, mute)
            # VOICE_LIMIT ops in flight (one waiting for the node, the rest queued behind
            # it in order): allowed, and the connection is still read.
            acks = gateway.acks
            await gateway.until(lambda: gateway.acks > acks + 1, within=5)
            assert gateway.close_code is None
            await gateway.send(Op.VOICE_STATE, mute)
            await gateway.until(lambda: gateway.close_code is not None, within=5)
            assert gateway.close_code == Close.RATE_LIMITED


async def test_a_join_finishing_after_its_connection_closed_is_swept_after_the_grace(
    tmp_path: Path,
) -> None:
    """The connection's detach comes after the voice op it was running: a join that
    completes once its connection is gone still leaves after ``--voice-grace-s``."""
    async with _world(
        tmp_path, "--heartbeat-interval-ms", HEARTBEAT_MS, "--sfu-request-timeout-s", SFU_TIMEOUT_S
    ) as world:
        gateway = await identified(world, world.ann)
        with stopped("node-a"):
            await gateway.send(
                Op.VOICE_STATE,
                {"guild_id": world.guild_id, "channel_id": world.voice_id, "self_mute": False},
            )
            await trio.sleep(0.5)
            await gateway.ws.aclose()
            await trio.sleep(0.5)
        await _until(lambda: world.health()["voice_channels"] == 1)
        await _until(lambda: world.health()["voice_channels"] == 0)
