"""The gateway under hostile or stale clients: revoked and expired tokens lose their
connections, READY stays bounded however full the queue, frames and unidentified
connections are limited (issue 13, items 2, 5 and 8)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from control_harness import GatewayClient, Harness, User, b64, make_config
from control_live import LiveControl
from quart.testing.connections import WebsocketDisconnectError, WebsocketResponseError
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from control.api.relay import MAX_CIPHERTEXT
from control.app import create_app
from control.bus import LocalBus
from control.gateway.hub import GatewayHub
from control.gateway.session import ConnectionCore, GatewaySession, PendingConnections
from control.gateway.shell import ENVELOPE_WIRE_OVERHEAD, READY_ENVELOPE_BYTES
from control.ids import hash_token
from control.sessions import revoked
from control.state import EXTENSION, ControlState
from hushroom.secrets_file import ensure_secret_file

API = "/api/v1"


@asynccontextmanager
async def gateway(h: Harness, user: User | None = None) -> AsyncIterator[GatewayClient]:
    async with h.client.websocket("/api/v1/gateway") as ws:
        client = GatewayClient(ws)
        if user is not None:
            await client.identify(user)
        yield client


async def closed_with(gw: GatewayClient, wait: float = 5.0) -> int:
    """Read frames until the server closes; return the close code."""
    with pytest.raises(WebsocketDisconnectError) as caught:
        while True:
            await gw.receive(wait)
    return int(caught.value.args[0])


def frame(op: int, d: Any = None) -> bytes:
    return msgpack.packb({"op": op, "d": d})


def state_of(h: Harness) -> ControlState:
    state = h.app.extensions[EXTENSION]
    assert isinstance(state, ControlState)
    return state


# --- item 2: revocation and expiry end gateway sessions ----------------------------------


async def test_sign_out_closes_the_gateway_with_4020_and_the_session_cannot_resume(
    harness: Harness,
) -> None:
    bob = await harness.register("bob")
    async with gateway(harness, bob) as gw:
        status, _ = await harness.call("POST", f"{API}/auth/logout", bob, json={})
        assert status == 204
        assert await closed_with(gw) == 4020
        session_id, seq = gw.session_id, gw.seq
    again = await harness.login(bob.keys, "bob")
    async with gateway(harness) as gw:
        await gw.receive()
        await gw.send(6, {"token": again.token, "session_id": session_id, "seq": seq})
        refused = await gw.receive()
        assert refused["op"] == 9 and refused["d"] is False


async def test_removing_a_device_closes_its_gateway_and_only_its(harness: Harness) -> None:
    bob = await harness.register("bob")
    phone = await harness.add_device(bob)
    async with gateway(harness, bob) as laptop, gateway(harness, phone) as gp:
        status, _ = await harness.call("DELETE", f"{API}/users/@me/devices/{phone.device_id}", bob)
        assert status == 204
        assert await closed_with(gp) == 4020
        removed = await laptop.dispatch("DEVICE_REMOVE")
        assert removed["device_id"] == phone.device_id
        await laptop.send(1, laptop.seq)
        while (await laptop.receive())["op"] != 11:
            pass


async def test_erasing_the_account_closes_its_gateway_with_4020(harness: Harness) -> None:
    bob = await harness.register("bob")
    async with gateway(harness, bob) as gw:
        status, _ = await harness.call("DELETE", f"{API}/users/@me", bob)
        assert status == 204
        assert await closed_with(gw) == 4020


async def test_a_revocation_published_by_another_process_ends_the_session_here(
    harness: Harness,
) -> None:
    # The revoking request ran elsewhere: only its bus event reaches this process.
    bob = await harness.register("bob")
    async with gateway(harness, bob) as gw:
        await state_of(harness).bus.publish(revoked(token_hash=hash_token(bob.token)))
        assert await closed_with(gw) == 4020


def test_every_hub_on_the_bus_ends_the_revoked_device_sessions() -> None:
    bus = LocalBus()
    hubs = [GatewayHub(bus, resume_window_s=60) for _ in range(2)]
    closed: list[tuple[str, int]] = []
    for name, hub in zip("ab", hubs, strict=True):
        for session_id, device_id in ((f"{name}1", "gone"), (f"{name}2", "stays")):
            live = hub.create(
                GatewaySession(session_id, "u", device_id), b"t-" + device_id.encode()
            )
            send, _recv = trio.open_memory_channel[bytes](1)

            def on_close(code: int, reason: str, session_id: str = session_id) -> None:
                closed.append((session_id, code))

            hub.attach(live, send, on_close, live.token_hash)
    trio.run(bus.publish, revoked(device_id="gone"))
    assert sorted(closed) == [("a1", 4020), ("b1", 4020)]
    assert [sorted(hub.sessions) for hub in hubs] == [["a2"], ["b2"]]


async def test_an_expired_token_closes_the_gateway_with_4021_and_a_new_token_resumes(
    tmp_path: Path,
) -> None:
    app = create_app(make_config(tmp_path, session_ttl_s=3))
    async with app.test_app():
        harness = Harness(app)
        bob = await harness.register("bob")
        async with gateway(harness, bob) as gw, trio.open_nursery() as nursery:

            async def heartbeats() -> None:
                # A well-behaved client: its heartbeats keep the connection alive, so only
                # the token's expiry can end it.
                while True:
                    await gw.send(1, gw.seq)
                    await trio.sleep(0.5)

            nursery.start_soon(heartbeats)
            code = await closed_with(gw, wait=6)
            nursery.cancel_scope.cancel()
            session_id, seq = gw.session_id, gw.seq
        assert code == 4021
        again = await harness.login(bob.keys, "bob")
        async with gateway(harness) as gw:
            await gw.receive()
            await gw.send(6, {"token": again.token, "session_id": session_id, "seq": seq})
            assert (await gw.dispatch("RESUMED"))["session_id"] == session_id


def test_core_closes_at_the_token_expiry_even_with_heartbeats() -> None:
    core = ConnectionCore(10.0, now=0.0)
    core.receive_untrusted(frame(2, {"token": "hrs_x"}), 1.0)
    core.established(1.0, token_expires_in_s=20.0)
    assert core.wake_at == 16.0
    core.receive_untrusted(frame(1), 15.0)
    assert core.check_timeout(20.0) is None
    assert core.wake_at == 21.0
    closed = core.check_timeout(21.0)
    assert closed is not None and closed.code == 4021


# --- item 5: READY is bounded in bytes ----------------------------------------------------


async def queue_for(harness: Harness, sender: User, recipient: User, bodies: list[bytes]) -> None:
    """Queue one envelope per body for ``recipient``'s device, two per request (the body
    limit holds two 64 KiB ciphertexts in base64)."""
    for start in range(0, len(bodies), 2):
        sends = [
            {
                "recipients": [
                    {
                        "user_id": recipient.id,
                        "devices": [{"device_id": recipient.device_id, "ciphertext": b64(body)}],
                    }
                ]
            }
            for body in bodies[start : start + 2]
        ]
        status, answer = await harness.call(
            "POST", f"{API}/envelopes/batch", sender, json={"sends": sends}
        )
        assert status == 201, answer


async def test_ready_of_a_stuffed_queue_is_bounded_and_says_more_are_queued(
    harness: Harness,
) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    bodies = [bytes([i]) * MAX_CIPHERTEXT for i in range(20)]  # 1.25 MiB of ciphertext
    await queue_for(harness, ann, bob, bodies)
    async with gateway(harness) as gw:
        ready = await gw.identify(bob)
    listed = ready["envelopes"]
    assert len(msgpack.packb(listed)) <= READY_ENVELOPE_BYTES
    assert ready["envelopes_more"] is True
    assert [e["ciphertext"] for e in listed] == bodies[: len(listed)], "the oldest, in order"
    assert len(listed) == READY_ENVELOPE_BYTES // (MAX_CIPHERTEXT + ENVELOPE_WIRE_OVERHEAD)
    # The contract: ack what READY listed, then fetch the rest by REST.
    status, _ = await harness.call(
        "POST", f"{API}/envelopes/ack", bob, json={"ids": [e["id"] for e in listed]}
    )
    assert status == 200
    status, rest = await harness.call(
        "GET",
        f"{API}/envelopes",
        bob,
        query={"limit": 500},
        headers={"Accept": "application/msgpack"},
    )
    assert status == 200
    assert [e["ciphertext"] for e in rest] == bodies[len(listed) :]
    for envelope in rest:
        wire = len(msgpack.packb(envelope)) - len(envelope["ciphertext"])
        assert wire <= ENVELOPE_WIRE_OVERHEAD


async def test_ready_of_a_short_queue_lists_all_of_it(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    await queue_for(harness, ann, bob, [b"one", b"two", b"three"])
    async with gateway(harness) as gw:
        ready = await gw.identify(bob)
    assert [e["ciphertext"] for e in ready["envelopes"]] == [b"one", b"two", b"three"]
    assert ready["envelopes_more"] is False


# --- item 8: frame rate, identify timeout, unidentified connections ----------------------


async def test_more_than_120_frames_a_minute_close_with_4008(harness: Harness) -> None:
    bob = await harness.register("bob")
    async with gateway(harness, bob) as gw:
        # 120 frames, plus the 2 heartbeats a 41.25 s interval calls for in 60 s.
        for _ in range(130):
            await gw.send(1, gw.seq)
        acks = 0
        with pytest.raises(WebsocketDisconnectError) as caught:
            while True:
                if (await gw.receive())["op"] == 11:
                    acks += 1
    assert caught.value.args[0] == 4008
    # IDENTIFY and 121 heartbeats are allowed (acks still queued when the connection
    # closes may be lost with it).
    assert acks <= 121


def test_core_frame_window_starts_again_after_a_minute() -> None:
    core = ConnectionCore(10.0, now=0.0)
    assert core.frame_limit == 120 + 6, "the 6 heartbeats of a 10 s interval on top"
    for i in range(core.frame_limit):
        assert [type(a).__name__ for a in core.receive_untrusted(frame(1), i * 0.1)] == [
            "SendFrame"
        ]
    more = core.receive_untrusted(frame(1), 59.0)
    assert [getattr(a, "code", None) for a in more] == [4008]
    fresh = ConnectionCore(10.0, now=0.0)
    for _ in range(fresh.frame_limit):
        fresh.receive_untrusted(frame(1), 0.0)
    assert [type(a).__name__ for a in fresh.receive_untrusted(frame(1), 60.0)] == ["SendFrame"]


def test_core_bounds_the_voice_ops_in_flight() -> None:
    """Voice ops wait for the SFU apart from the reader; past ``voice_limit`` received and
    not done the connection is closed with 4008 (a real control process:
    test_gateway_voice.py)."""
    core = ConnectionCore(10.0, now=0.0, voice_limit=3)
    core.established(0.0, 3600.0)
    ops = [
        frame(4, {"guild_id": "g", "channel_id": "c"}),
        frame(12, {"voice_session_id": "v", "sdp_offer": "o"}),
        frame(13, {"voice_session_id": "v", "sdp_answer": "a"}),
    ]
    names = [type(a).__name__ for op in ops for a in core.receive_untrusted(op, 1.0)]
    assert names == ["VoiceStateRequest", "VoicePublish", "VoiceSubscribeAnswer"]
    assert core.voice_pending == 3
    # Heartbeats and presence are not voice ops: still answered with three in flight.
    assert [type(a).__name__ for a in core.receive_untrusted(frame(1), 1.0)] == ["SendFrame"]
    # One done makes room for exactly one more.
    core.voice_done()
    assert [type(a).__name__ for a in core.receive_untrusted(ops[2], 2.0)] == [
        "VoiceSubscribeAnswer"
    ]
    more = core.receive_untrusted(ops[2], 2.0)
    assert [getattr(a, "code", None) for a in more] == [4008]
    assert core.receive_untrusted(frame(1), 2.0) == [], "closed: nothing more is read"


async def test_a_connection_that_never_identifies_is_closed_with_4003(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path, gateway_identify_timeout_s=0.5))
    async with app.test_app():
        harness = Harness(app)
        async with gateway(harness) as gw:
            await gw.receive()
            # Heartbeats are answered but do not buy time to identify.
            with trio.fail_after(3):
                with pytest.raises(WebsocketDisconnectError) as caught:
                    while True:
                        await gw.send(1, None)
                        assert (await gw.receive())["op"] == 11
                        await trio.sleep(0.1)
        assert caught.value.args[0] == 4003


def test_core_identify_deadline_is_not_moved_by_heartbeats() -> None:
    core = ConnectionCore(40.0, now=0.0, identify_timeout_s=10.0)
    core.receive_untrusted(frame(1), 5.0)
    closed = core.check_timeout(10.0)
    assert closed is not None and closed.code == 4003
    refused = ConnectionCore(40.0, now=0.0, identify_timeout_s=10.0)
    refused.receive_untrusted(frame(6, {"token": "t", "session_id": "s", "seq": 0}), 8.0)
    assert refused.check_timeout(12.0) is None, "the server is resolving the RESUME"
    refused.refused(12.0)
    assert refused.wake_at == 22.0, "a refused client gets a fresh identify timeout"


async def test_unidentified_connections_beyond_the_limit_are_refused(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path, gateway_pending_limit=2))
    async with app.test_app():
        harness = Harness(app)
        bob = await harness.register("bob")
        async with gateway(harness) as first, gateway(harness) as second:
            await first.receive()
            await second.receive()
            async with gateway(harness) as third:
                with pytest.raises(WebsocketResponseError) as caught:
                    await third.receive()
                assert caught.value.response.status_code == 429
                assert caught.value.response.headers["Retry-After"]
            # An identified connection no longer counts against the limit.
            await first.send(2, {"token": bob.token})
            await first.dispatch("READY")
            async with gateway(harness, bob):
                pass


def test_pending_connections_count_up_to_the_limit() -> None:
    pending = PendingConnections(limit=2)
    assert pending.admit() and pending.admit()
    assert not pending.admit()
    pending.release()
    assert pending.admit()


@pytest.mark.slow
async def test_a_real_control_process_refuses_and_times_out_unidentified_sockets(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    ensure_secret_file(data_dir / "node-secret")
    live = LiveControl(
        data_dir,
        tmp_path / "control.log",
        "--gateway-pending-limit",
        "2",
        "--gateway-identify-timeout-s",
        "1",
    )
    try:
        async with (
            open_websocket_url(live.ws_url) as first,
            open_websocket_url(live.ws_url) as second,
        ):
            for ws in (first, second):
                assert msgpack.unpackb(await ws.get_message())["op"] == 10
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(live.ws_url):
                    pass
            assert rejected.value.status_code == 429
            with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                await first.get_message()
            assert closed.value.reason.code == 4003
        # Both slots are free again once the timed-out sockets are gone.
        async with open_websocket_url(live.ws_url) as again:
            assert msgpack.unpackb(await again.get_message())["op"] == 10
    finally:
        assert live.stop() == 0
