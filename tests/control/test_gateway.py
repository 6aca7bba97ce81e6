"""The gateway: HELLO/IDENTIFY/READY, heartbeats, dispatch audiences, RESUME, presence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgpack
import pytest
import trio
from control_harness import (
    GatewayClient,
    Harness,
    User,
    b64,
    give,
    make_config,
    make_guild,
    new_role,
)
from quart.testing.connections import WebsocketDisconnectError

from contract.permissions import Permission as P
from control.app import create_app
from control.bus import LocalBus
from control.gateway.hub import GatewayHub
from control.gateway.session import ConnectionCore, GatewaySession

API = "/api/v1"


@asynccontextmanager
async def gateway(h: Harness, user: User | None = None) -> AsyncIterator[GatewayClient]:
    async with h.client.websocket("/api/v1/gateway") as ws:
        client = GatewayClient(ws)
        if user is not None:
            await client.identify(user)
        yield client


async def test_ready_lists_guilds_visible_channels_and_own_devices(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    await harness.call("POST", f"{API}/guilds/{guild['id']}/channels", ann, json={"name": "staff"})
    _, channels = await harness.call("GET", f"{API}/guilds/{guild['id']}/channels", ann)
    staff = next(c for c in channels if c["name"] == "staff")
    await harness.call(
        "PUT",
        f"{API}/channels/{staff['id']}/permissions/{guild['id']}",
        ann,
        json={"type": "role", "allow": 0, "deny": int(P.VIEW_CHANNEL)},
    )
    async with gateway(harness) as gw:
        ready = await gw.identify(bob)
    assert ready["user"] == {"id": bob.id, "handle": "bob"}
    assert [d["id"] for d in ready["devices"]] == [bob.device_id]
    assert [g["id"] for g in ready["guilds"]] == [guild["id"]]
    assert [c["name"] for c in ready["guilds"][0]["channels"]] == ["general"]


async def test_a_bad_token_closes_with_4004(harness: Harness) -> None:
    async with gateway(harness) as gw:
        await gw.receive()
        await gw.send(2, {"token": "hrs_nope"})
        with pytest.raises(WebsocketDisconnectError) as caught:
            await gw.receive()
    assert caught.value.args[0] == 4004


async def test_heartbeat_is_acknowledged(harness: Harness) -> None:
    ann = await harness.register("ann")
    async with gateway(harness, ann) as gw:
        await gw.send(1, gw.seq)
        while (await gw.receive())["op"] != 11:
            pass


async def test_missed_heartbeat_disconnects(tmp_path: object) -> None:
    app = create_app(make_config(tmp_path, heartbeat_interval_ms=1000))  # type: ignore[arg-type]
    async with app.test_app():
        harness = Harness(app)
        ann = await harness.register("ann")
        async with gateway(harness, ann) as gw:
            with pytest.raises(WebsocketDisconnectError) as caught:
                while True:
                    await gw.receive(wait=5)
    assert caught.value.args[0] == 4009


async def test_messages_reach_only_members_who_can_see_the_channel(harness: Harness) -> None:
    ann, bob, cat, eve = [await harness.register(n) for n in ("ann", "bob", "cat", "eve")]
    guild = await make_guild(harness, ann, bob, cat)
    general = guild["channels"][0]["id"]
    await harness.call(
        "PUT",
        f"{API}/channels/{general}/permissions/{cat.id}",
        ann,
        json={"type": "member", "allow": 0, "deny": int(P.VIEW_CHANNEL)},
    )
    async with (
        gateway(harness, bob) as gb,
        gateway(harness, cat) as gc,
        gateway(harness, eve) as ge,
    ):
        status, _ = await harness.call(
            "POST", f"{API}/channels/{general}/messages", ann, json={"ciphertext": b64(b"hi")}
        )
        assert status == 201
        message = await gb.dispatch("MESSAGE_CREATE")
        assert message["ciphertext"] == b"hi" and message["author_id"] == ann.id
        for other in (gc, ge):
            frames = await other.nothing()
            assert not [f for f in frames if f.get("t") == "MESSAGE_CREATE"]


async def test_permission_changes_apply_to_live_sessions(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    gid = guild["id"]
    _, secret = await harness.call("POST", f"{API}/guilds/{gid}/channels", ann, json={"name": "s"})
    await harness.call(
        "PUT",
        f"{API}/channels/{secret['id']}/permissions/{gid}",
        ann,
        json={"type": "role", "allow": 0, "deny": int(P.VIEW_CHANNEL)},
    )
    insiders = await new_role(harness, ann, gid, "insiders", 0)
    await harness.call(
        "PUT",
        f"{API}/channels/{secret['id']}/permissions/{insiders}",
        ann,
        json={"type": "role", "allow": int(P.VIEW_CHANNEL), "deny": 0},
    )
    async with gateway(harness, bob) as gb:
        assert await give(harness, ann, gid, bob, insiders) == 204
        created = await gb.dispatch("CHANNEL_CREATE")
        assert created["id"] == secret["id"]
        await harness.call(
            "POST", f"{API}/channels/{secret['id']}/messages", ann, json={"ciphertext": b64(b"1")}
        )
        assert (await gb.dispatch("MESSAGE_CREATE"))["ciphertext"] == b"1"
        status, _ = await harness.call(
            "DELETE", f"{API}/guilds/{gid}/members/{bob.id}/roles/{insiders}", ann
        )
        assert status == 204
        deleted = await gb.dispatch("CHANNEL_DELETE")
        assert deleted["id"] == secret["id"]
        await harness.call(
            "POST", f"{API}/channels/{secret['id']}/messages", ann, json={"ciphertext": b64(b"2")}
        )
        frames = await gb.nothing()
        assert not [f for f in frames if f.get("t") == "MESSAGE_CREATE"]


async def test_resume_replays_exactly_the_missed_events(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    general = guild["channels"][0]["id"]

    async def post(body: bytes) -> None:
        status, _ = await harness.call(
            "POST", f"{API}/channels/{general}/messages", ann, json={"ciphertext": b64(body)}
        )
        assert status == 201

    async with gateway(harness, bob) as gb:
        await post(b"seen")
        assert (await gb.dispatch("MESSAGE_CREATE"))["ciphertext"] == b"seen"
        session_id, seq = gb.session_id, gb.seq
    for i in range(3):
        await post(b"missed%d" % i)
    async with gateway(harness) as again:
        await again.receive()
        await again.send(6, {"token": bob.token, "session_id": session_id, "seq": seq})
        replayed = [await again.receive()]
        while replayed[-1]["t"] != "RESUMED":
            replayed.append(await again.receive())
    messages = [f["d"]["ciphertext"] for f in replayed if f["t"] == "MESSAGE_CREATE"]
    assert messages == [b"missed0", b"missed1", b"missed2"]
    assert [f["s"] for f in replayed] == list(range(seq + 1, seq + 1 + len(replayed)))


async def test_resume_of_an_unknown_session_is_invalid(harness: Harness) -> None:
    bob = await harness.register("bob")
    async with gateway(harness) as gw:
        await gw.receive()
        await gw.send(6, {"token": bob.token, "session_id": "nope", "seq": 3})
        frame = await gw.receive()
        assert frame["op"] == 9 and frame["d"] is False
        await gw.send(2, {"token": bob.token})
        assert (await gw.dispatch("READY"))["user"]["id"] == bob.id


async def test_envelopes_are_dispatched_to_the_recipient_device_only(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    bob_phone = await harness.add_device(bob)
    async with gateway(harness, bob) as laptop, gateway(harness, bob_phone) as phone:
        body = {
            "recipients": [
                {
                    "user_id": bob.id,
                    "devices": [
                        {"device_id": bob.device_id, "ciphertext": b64(b"for-laptop")},
                        {"device_id": bob_phone.device_id, "ciphertext": b64(b"for-phone")},
                    ],
                }
            ]
        }
        status, _ = await harness.call("POST", f"{API}/envelopes", ann, json=body)
        assert status == 201
        assert (await laptop.dispatch("ENVELOPE_CREATE"))["ciphertext"] == b"for-laptop"
        assert (await phone.dispatch("ENVELOPE_CREATE"))["ciphertext"] == b"for-phone"


async def test_queued_envelopes_arrive_in_ready(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    body = {
        "recipients": [
            {"user_id": bob.id, "devices": [{"device_id": bob.device_id, "ciphertext": b64(b"q")}]}
        ]
    }
    await harness.call("POST", f"{API}/envelopes", ann, json=body)
    async with gateway(harness) as gw:
        ready = await gw.identify(bob)
    assert [e["ciphertext"] for e in ready["envelopes"]] == [b"q"]


async def test_presence_is_visible_to_guild_mates_only(harness: Harness) -> None:
    ann, bob, eve = [await harness.register(n) for n in ("ann", "bob", "eve")]
    await make_guild(harness, ann, bob)

    async def bob_presence(gw: GatewayClient) -> str:
        while True:
            update = await gw.dispatch("PRESENCE_UPDATE")
            if update["user_id"] == bob.id:
                return str(update["status"])

    async with gateway(harness, ann) as ga, gateway(harness, eve) as ge:
        async with gateway(harness, bob) as gb:
            assert await bob_presence(ga) == "online"
            await gb.send(3, {"status": "dnd"})
            assert await bob_presence(ga) == "dnd"
        assert await bob_presence(ga) == "offline"
        frames = await ge.nothing()
        assert not [f for f in frames if f.get("d", {}).get("user_id") == bob.id]


async def test_malformed_frames_close_with_decode_error(harness: Harness) -> None:
    async with gateway(harness) as gw:
        await gw.receive()
        await gw.ws.send(b"\xc1\xc1")
        with pytest.raises(WebsocketDisconnectError) as caught:
            await gw.receive()
    assert caught.value.args[0] == 4002


# --- sans-I/O cores ----------------------------------------------------------------------


def test_core_requires_identify_before_other_ops() -> None:
    core = ConnectionCore(10.0, now=0.0)
    actions = core.receive_untrusted(msgpack.packb({"op": 3, "d": {"status": "idle"}}), 1.0)
    assert [getattr(a, "code", None) for a in actions] == [4003]


def test_core_times_out_without_heartbeats() -> None:
    core = ConnectionCore(10.0, now=0.0)
    core.receive_untrusted(msgpack.packb({"op": 2, "d": {"token": "hrs_x"}}), 0.0)
    core.established(0.0, token_expires_in_s=3600.0)
    assert core.check_timeout(14.0) is None
    core.receive_untrusted(msgpack.packb({"op": 1, "d": None}), 14.0)
    assert core.check_timeout(28.0) is None
    closed = core.check_timeout(29.5)
    assert closed is not None and closed.code == 4009


def test_session_replay_window() -> None:
    session = GatewaySession("s", "u", "d", replay_limit=3)
    for i in range(5):
        session.dispatch("X", msgpack.packb(i))
    assert session.replay_after(5) == []
    assert session.replay_after(2) is not None and len(session.replay_after(2) or []) == 3
    assert session.replay_after(1) is None, "seq 2 has left the window"
    assert session.replay_after(9) is None


async def test_presence_is_not_pushed_through_large_guilds(tmp_path: object) -> None:
    app = create_app(make_config(tmp_path, presence_guild_limit=2))  # type: ignore[arg-type]
    async with app.test_app():
        harness = Harness(app)
        ann, bob, cat = [await harness.register(n) for n in ("ann", "bob", "cat")]
        await make_guild(harness, ann, bob, cat)
        async with gateway(harness, ann) as ga, gateway(harness, bob):
            frames = await ga.nothing(0.5)
        assert not [f for f in frames if (f.get("d") or {}).get("user_id") == bob.id]


async def test_low_one_time_prekeys_are_announced_to_the_owning_device(harness: Harness) -> None:
    ann, bob = await harness.register("ann", otks=10), await harness.register("bob")
    async with gateway(harness, ann) as ga:
        status, _ = await harness.call("POST", f"{API}/users/{ann.id}/keys/claim", bob, json={})
        assert status == 200
        low = await ga.dispatch("PREKEYS_LOW")
        assert low == {
            "device_id": ann.device_id,
            "one_time_prekeys": 9,
            "pq_one_time_prekeys": 0,
        }


def test_hub_forgets_detached_sessions_after_the_resume_window() -> None:
    hub = GatewayHub(LocalBus(), resume_window_s=10)
    stays, goes = (hub.create(GatewaySession(s, "u", "d"), b"token") for s in ("stays", "goes"))
    send, _recv = trio.open_memory_channel[bytes](1)
    hub.detach(goes, None, now=0.0)
    hub.detach(stays, None, now=0.0)
    hub.attach(stays, send, lambda code, reason: None, b"token")
    hub.expire(now=5.0)
    assert set(hub.sessions) == {"stays", "goes"}
    hub.expire(now=11.0)
    assert set(hub.sessions) == {"stays"}, "a resumed session is kept"
