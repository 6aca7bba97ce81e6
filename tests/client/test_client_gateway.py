"""The gateway session core (sans-I/O) and RESUME against a real control process."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import trio
from client_live import ControlProcess
from trio.testing import wait_all_tasks_blocked

from client import Client
from client.errors import ProtocolError, SessionRevoked, TokenRefused
from client.gateway import Dispatch, GatewayClient, GatewayCore, Reconnect
from contract.gateway import Close, Op


def frame(op: int, d: object = None, s: int | None = None, t: str | None = None) -> bytes:
    return msgpack.packb({"op": op, "d": d, "s": s, "t": t}, use_bin_type=True)


def sent(item: object) -> dict[str, object]:
    assert isinstance(item, bytes)
    value = msgpack.unpackb(item)
    assert isinstance(value, dict)
    return value


def test_hello_starts_identify_then_resume_after_ready() -> None:
    core = GatewayCore("token-1")
    core.connection_opened()
    (identify,) = core.receive_untrusted(frame(Op.HELLO, {"heartbeat_interval": 41250}))
    assert sent(identify) == {"op": 2, "d": {"token": "token-1", "status": "online"}}
    assert core.interval_s == 41.25
    (ready,) = core.receive_untrusted(frame(Op.DISPATCH, {"session_id": "s1"}, 1, "READY"))
    assert ready == Dispatch("READY", {"session_id": "s1"}, 1) and core.established
    core.delivered(ready)
    (envelope,) = core.receive_untrusted(frame(Op.DISPATCH, {"x": 1}, 7, "ENVELOPE_CREATE"))
    core.delivered(envelope)
    assert core.seq == 7
    # A new connection after a drop resumes where the last one stopped.
    core.connection_opened()
    (resume,) = core.receive_untrusted(frame(Op.HELLO, {"heartbeat_interval": 1000}))
    assert sent(resume) == {"op": 6, "d": {"token": "token-1", "session_id": "s1", "seq": 7}}


def test_a_dispatch_never_handed_over_is_resumed_from() -> None:
    # Parsed, then its connection was cancelled before the caller took it: RESUME must
    # ask for it again, not count it as seen.
    core = GatewayCore("t")
    core.connection_opened()
    core.receive_untrusted(frame(Op.HELLO, {"heartbeat_interval": 1000}))
    (ready,) = core.receive_untrusted(frame(Op.DISPATCH, {"session_id": "s"}, 1, "READY"))
    core.delivered(ready)
    core.receive_untrusted(frame(Op.DISPATCH, {"x": 1}, 2, "ENVELOPE_CREATE"))
    assert sent(core.heartbeat()) == {"op": 1, "d": 1}
    core.connection_closed(Close.UNKNOWN_ERROR)
    core.connection_opened()
    (resume,) = core.receive_untrusted(frame(Op.HELLO, {"heartbeat_interval": 1000}))
    assert sent(resume) == {"op": 6, "d": {"token": "t", "session_id": "s", "seq": 1}}


def test_heartbeat_carries_the_sequence_and_waits_for_its_ack() -> None:
    core = GatewayCore("t")
    core.connection_opened()
    core.receive_untrusted(frame(Op.HELLO, {"heartbeat_interval": 1000}))
    for item in core.receive_untrusted(frame(Op.DISPATCH, {"session_id": "s"}, 3, "READY")):
        assert isinstance(item, Dispatch)
        core.delivered(item)
    assert sent(core.heartbeat()) == {"op": 1, "d": 3}
    assert not core.acked
    core.receive_untrusted(frame(Op.HEARTBEAT_ACK))
    assert core.acked
    # The server may ask for a heartbeat at once.
    (beat,) = core.receive_untrusted(frame(Op.HEARTBEAT))
    assert sent(beat)["op"] == 1


def test_invalid_session_not_resumable_forgets_the_session() -> None:
    core = GatewayCore("t")
    core.connection_opened()
    core.receive_untrusted(frame(Op.HELLO, {"heartbeat_interval": 1000}))
    core.receive_untrusted(frame(Op.DISPATCH, {"session_id": "s"}, 5, "READY"))
    assert core.receive_untrusted(frame(Op.INVALID_SESSION, False)) == [
        Reconnect(False, "the server invalidated the session")
    ]
    core.connection_opened()
    (again,) = core.receive_untrusted(frame(Op.HELLO, {"heartbeat_interval": 1000}))
    assert sent(again)["op"] == Op.IDENTIFY
    assert core.receive_untrusted(frame(Op.RECONNECT))[0] == Reconnect(
        True, "the server asked to reconnect"
    )


def established_core(token: str = "old") -> GatewayCore:
    core = GatewayCore(token)
    core.connection_opened()
    core.receive_untrusted(frame(Op.HELLO, {"heartbeat_interval": 1000}))
    (ready,) = core.receive_untrusted(frame(Op.DISPATCH, {"session_id": "s"}, 4, "READY"))
    assert isinstance(ready, Dispatch)
    core.delivered(ready)
    return core


def test_a_revoked_session_ends_and_is_not_resumed() -> None:
    core = established_core()
    with pytest.raises(SessionRevoked):
        core.connection_closed(Close.SESSION_REVOKED)
    assert core.session_id is None and not core.established


def test_an_expired_token_is_renewed_and_the_session_resumed_with_it() -> None:
    core = established_core()
    core.connection_closed(Close.SESSION_EXPIRED)
    assert core.token_stale
    core.token_renewed("new")
    core.connection_opened()
    (resume,) = core.receive_untrusted(frame(Op.HELLO, {"heartbeat_interval": 1000}))
    assert sent(resume) == {"op": 6, "d": {"token": "new", "session_id": "s", "seq": 4}}
    core.receive_untrusted(frame(Op.DISPATCH, None, 5, "RESUMED"))
    # Expiring again later is renewed again.
    core.connection_closed(Close.SESSION_EXPIRED)
    assert core.token_stale


def test_a_refused_token_is_renewed_once_then_the_refusal_stands() -> None:
    core = established_core()
    core.connection_closed(Close.AUTHENTICATION_FAILED)
    assert core.token_stale
    core.token_renewed("new")
    with pytest.raises(TokenRefused):
        core.connection_closed(Close.AUTHENTICATION_FAILED)


@pytest.mark.parametrize("code", [None, 1006, Close.UNKNOWN_ERROR, Close.SESSION_TIMED_OUT])
def test_other_closes_resume_with_the_same_token(code: int | None) -> None:
    core = established_core()
    core.connection_closed(code)
    assert not core.token_stale and core.session_id == "s" and core.token == "old"


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"op": "x"}),
        msgpack.packb({"op": 0, "s": "1", "t": "READY"}),
        msgpack.packb({"op": 0, "d": {}, "s": 1, "t": "READY"}),
        msgpack.packb({"op": 10, "d": {"heartbeat_interval": 0}}),
        "text frame",
    ],
)
def test_malformed_frames_are_protocol_errors(raw: bytes | str) -> None:
    core = GatewayCore("t")
    with pytest.raises(ProtocolError):
        core.receive_untrusted(raw)


async def alice_and_bob(control: ControlProcess, tmp_path: Path) -> tuple[Client, Client]:
    """Two registered clients: alice's gateway is tested, bob sends her something."""
    alice = await Client.register(tmp_path / "a", "pw", control.url, "alice")
    bob = await Client.register(tmp_path / "b", "pw", control.url, "bob")
    return alice, bob


@pytest.mark.slow
async def test_reconnect_resumes_and_replays_what_was_missed(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice, bob = await alice_and_bob(control, tmp_path)
    gateway = GatewayClient(control.url, alice.api.token or "")
    with trio.fail_after(20):
        async with gateway.events() as events:
            first = await events.receive()
            assert first.type == "READY"
            gateway.reconnect()
            # Sent while alice's connection is down or just back: replayed on RESUME.
            await bob.send_dm("alice", "while you were away")
            seen = []
            async for event in events:
                seen.append(event.type)
                if {"RESUMED", "ENVELOPE_CREATE"} <= set(seen):
                    break
    assert "READY" not in seen
    assert gateway.connections == 2
    assert [m.body for m in await alice.sync()] == ["while you were away"]
    await alice.aclose()
    await bob.aclose()


@pytest.mark.slow
async def test_a_dispatch_held_up_by_a_busy_caller_survives_a_reconnect(
    control: ControlProcess, tmp_path: Path
) -> None:
    # The caller is busy (a large call's key change, say) and reads nothing: with no room
    # left for it, the dispatch after the first waits in the client when the connection
    # is replaced. RESUME must bring it back rather than skip it.
    alice, bob = await alice_and_bob(control, tmp_path)
    gateway = GatewayClient(control.url, alice.api.token or "", buffer=0)
    with trio.fail_after(20):
        async with gateway.events() as events:
            assert (await events.receive()).type == "READY"
            await bob.send_dm("alice", "one")
            await bob.send_dm("alice", "two")
            first = await events.receive()
            # The second is read off the connection and waits for the caller.
            await wait_all_tasks_blocked(0.2)
            gateway.reconnect()
            seen = [first.type]
            envelopes = {first.data["id"]} if first.type == "ENVELOPE_CREATE" else set()
            async for event in events:
                seen.append(event.type)
                if event.type == "ENVELOPE_CREATE":
                    envelopes.add(event.data["id"])
                if "RESUMED" in seen and len(envelopes) == 2:
                    break
    assert gateway.connections == 2
    assert len(envelopes) == 2
    await alice.aclose()
    await bob.aclose()


@pytest.mark.slow
async def test_heartbeats_keep_a_quiet_session_alive(tmp_path: Path) -> None:
    # The server cuts a session that misses 1.5 heartbeat intervals: with 200 ms, a quiet
    # connection survives two seconds only if the client keeps beating.
    server = ControlProcess(
        tmp_path / "data", tmp_path / "control.log", "--heartbeat-interval-ms", "200"
    )
    try:
        alice = await Client.register(tmp_path / "a", "pw", server.url, "alice")
        gateway = GatewayClient(server.url, alice.api.token or "")
        with trio.fail_after(10):
            async with gateway.events() as events:
                assert (await events.receive()).type == "READY"
                await trio.sleep(2)  # the passage of time is what is tested here
                assert gateway.connections == 1
        await alice.aclose()
    finally:
        server.stop()


@pytest.mark.slow
async def test_a_session_the_server_forgot_is_replaced_and_nothing_is_lost(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice, bob = await alice_and_bob(control, tmp_path)
    with trio.fail_after(20):
        async with alice.live() as messages:
            gateway = alice.gateway
            assert gateway is not None
            # As if the resume window had passed: RESUME is refused (INVALID_SESSION
            # false), the client identifies afresh and catches up by REST.
            gateway.core.session_id = "forgotten"
            gateway.reconnect()
            await bob.send_dm("alice", "across a lost session")
            message = await messages.receive()
    assert message.body == "across a lost session"
    assert gateway.connections == 3
    assert gateway.core.session_id not in (None, "forgotten")
    assert [m.body for m in await alice.dm_history("bob")] == ["across a lost session"]
    await alice.aclose()
    await bob.aclose()
