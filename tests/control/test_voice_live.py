"""Voice end to end: a real control process, real SFU nodes, raw gateway frames and
synthetic WebRTC endpoints (ICE, DTLS, SRTP) carrying the SDP (docs/voice.md)."""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from control_live import LiveControl
from test_live import register
from trio_websocket import open_websocket_url
from voice_live import Gateway, VoicePeer

from contract.gateway import Op
from contract.permissions import Permission
from loadtest.voice_call import start_sfu_node
from sfu.sdp import SessionDescription
from turn.auth import RestCredentials
from turn.stun import PasswordAlgorithm, long_term_key

pytestmark = pytest.mark.slow
API = "/api/v1"
TURN_URL = "turn:127.0.0.1:3478?transport=udp"


@dataclass
class World:
    """Control, one SFU node, the owner ann and the member bob, a guild with a voice channel."""

    live: LiveControl
    nursery: trio.Nursery
    data_dir: Path
    log_path: Path
    node_secret: Path
    turn_secret: bytes
    ann: dict[str, Any]
    bob: dict[str, Any]
    guild_id: str
    voice_id: str

    async def channel(self, name: str, kind: str = "voice", **extra: Any) -> str:
        status, channel = await self.live.call(
            "POST",
            f"{API}/guilds/{self.guild_id}/channels",
            self.ann["token"],
            {"name": name, "type": kind, **extra},
        )
        assert status == 201, channel
        return str(channel["id"])

    async def gateway(self, user: dict[str, Any]) -> Gateway:
        ws = await self.nursery.start(_open_ws, self.live.ws_url)
        return await Gateway.open(self.nursery, ws, user["token"])

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.live.base + "/healthz", timeout=5) as response:
            body: dict[str, Any] = json.load(response)
        return body


async def _open_ws(url: str, *, task_status: trio.TaskStatus[Any]) -> None:
    async with open_websocket_url(url, max_message_size=16 * 1024 * 1024) as ws:
        task_status.started(ws)
        await trio.sleep_forever()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with _world(tmp_path) as made:
        yield made


@contextlib.asynccontextmanager
async def _world(tmp_path: Path, *control_args: str, workers: int = 1) -> AsyncIterator[World]:
    data_dir, log_path = tmp_path / "data", tmp_path / "control.log"
    node_secret, turn_secret = tmp_path / "node-secret", tmp_path / "turn-secret"
    node_secret.write_text("voice-test-node-secret\n")
    turn_secret.write_text("voice-test-turn-secret\n")
    live = LiveControl(
        data_dir,
        log_path,
        "--node-secret-file",
        str(node_secret),
        "--turn-secret-file",
        str(turn_secret),
        "--turn-url",
        TURN_URL,
        "--voice-grace-s",
        "1",
        *control_args,
    )
    try:
        async with trio.open_nursery() as nursery:
            ann, bob = await register(live, "ann"), await register(live, "bob")
            _, guild = await live.call("POST", f"{API}/guilds", ann["token"], {"name": "club"})
            general = guild["channels"][0]["id"]
            _, invite = await live.call(
                "POST", f"{API}/channels/{general}/invites", ann["token"], {}
            )
            await live.call("POST", f"{API}/invites/{invite['code']}", bob["token"], {})
            world = World(
                live,
                nursery,
                data_dir,
                log_path,
                node_secret,
                b"voice-test-turn-secret",
                ann,
                bob,
                guild["id"],
                "",
            )
            world.voice_id = await world.channel("lounge")
            await start_sfu_node(nursery, live.base, node_secret, "node-a", workers=workers)
            await _until(lambda: world.health()["sfu_nodes"] == 1)
            yield world
            nursery.cancel_scope.cancel()
    finally:
        live.stop()


async def _until(condition: Any, within: float = 15.0) -> None:
    """Poll an HTTP-observable condition (the process is out of reach of any event)."""
    with trio.fail_after(within):
        while True:
            if await trio.to_thread.run_sync(condition):
                return
            await trio.sleep(0.05)


async def join(world: World, gateway: Gateway, channel_id: str, **flags: Any) -> dict[str, Any]:
    mark = gateway.mark()
    await gateway.send(
        Op.VOICE_STATE,
        {"guild_id": world.guild_id, "channel_id": channel_id, "self_mute": False, **flags},
    )
    return await gateway.wait("VOICE_SERVER_UPDATE", after=mark)


async def publish(gateway: Gateway, server: dict[str, Any], ssrc: int) -> VoicePeer:
    peer = VoicePeer()
    mark = gateway.mark()
    await gateway.send(
        Op.VOICE_PUBLISH,
        {"voice_session_id": server["voice_session_id"], "sdp_offer": peer.publish_offer(ssrc)},
    )
    answer = await gateway.wait("VOICE_PUBLISH_ANSWER", after=mark)
    await peer.connect(answer["sdp_answer"])
    return peer


async def subscribe(
    world: World, gateway: Gateway, server: dict[str, Any], offer: dict[str, Any]
) -> VoicePeer:
    peer = VoicePeer()
    await gateway.send(
        Op.VOICE_SUBSCRIBE_ANSWER,
        {
            "voice_session_id": server["voice_session_id"],
            "sdp_answer": peer.subscribe_answer(offer["sdp_offer"]),
        },
    )
    await peer.connect(offer["sdp_offer"])
    world.nursery.start_soon(peer.pump)
    return peer


async def stream(peer: VoicePeer, ssrc: int, count: int, start: int = 0) -> None:
    for seq in range(start, start + count):
        await peer.send_audio(ssrc, seq)
        await trio.sleep(0.005)


async def until_received(peer: VoicePeer, count: int, within: float = 5.0) -> None:
    await peer.wait_received(count, within)


async def test_two_participants_publish_subscribe_speak_and_leave(world: World) -> None:
    ann_gw, bob_gw = await world.gateway(world.ann), await world.gateway(world.bob)
    ann_server = await join(world, ann_gw, world.voice_id)
    bob_server = await join(world, bob_gw, world.voice_id)
    assert ann_server["sender_index"] != bob_server["sender_index"]
    # Voice states reach the other member (who can see the channel).
    seen = await ann_gw.wait("VOICE_STATE_UPDATE", lambda d: d["user_id"] == world.bob["id"])
    assert seen["channel_id"] == world.voice_id and seen["suppress"] is False

    # TURN credentials: the coturn REST scheme, verifiable with the shared secret, and the
    # id in the username is random per voice session, never the user id.
    (server,) = ann_server["ice_servers"]
    assert server["urls"] == [TURN_URL]
    expiry, _, turn_id = server["username"].partition(":")
    assert turn_id and world.ann["id"] not in server["username"]
    assert turn_id != bob_server["ice_servers"][0]["username"].partition(":")[2]
    credential = RestCredentials([world.turn_secret], "hushroom").credential_untrusted(
        server["username"], PasswordAlgorithm.MD5, trio.current_time()
    )
    assert (
        long_term_key(server["username"], "hushroom", server["credential"], PasswordAlgorithm.MD5)
        in credential.keys
    )
    assert 3500 <= int(expiry) - int(time.time()) <= 3600

    mark = bob_gw.mark()
    publisher = await publish(ann_gw, ann_server, ssrc=4242)
    offer = await bob_gw.wait("VOICE_SUBSCRIBE_OFFER", after=mark)
    assert offer["voice_session_id"] == bob_server["voice_session_id"]
    (consumer,) = offer["consumers"]
    assert consumer["user_id"] == world.ann["id"]
    assert consumer["device_id"] == world.ann["device"]
    assert consumer["sender_index"] == ann_server["sender_index"]
    subscriber = await subscribe(world, bob_gw, bob_server, offer)
    await stream(publisher, 4242, 60)
    await until_received(subscriber, 40)
    speaking = await bob_gw.wait("SPEAKING", lambda d: d["user_id"] == world.ann["id"])
    assert speaking["speaking"] is True and speaking["channel_id"] == world.voice_id
    assert world.health()["voice_channels"] == 1

    # Leaving: bob is told; after the last one leaves the router is closed.
    for gateway in (ann_gw, bob_gw):
        await gateway.send(Op.VOICE_STATE, {"guild_id": world.guild_id, "channel_id": None})
    await ann_gw.wait(
        "VOICE_STATE_UPDATE",
        lambda d: d["user_id"] == world.bob["id"] and d["channel_id"] is None,
    )
    await _until(lambda: world.health()["voice_channels"] == 0)


async def test_a_device_joining_is_told_who_is_already_speaking(world: World) -> None:
    ann_gw, bob_gw = await world.gateway(world.ann), await world.gateway(world.bob)
    ann_server = await join(world, ann_gw, world.voice_id)
    publisher = await publish(ann_gw, ann_server, ssrc=7)
    await stream(publisher, 7, 60)
    await ann_gw.wait("SPEAKING", lambda d: d["user_id"] == world.ann["id"] and d["speaking"])
    # SPEAKING is sent on changes; bob, arriving while ann speaks, must still be told.
    mark = bob_gw.mark()
    await join(world, bob_gw, world.voice_id)
    speaking = await bob_gw.wait("SPEAKING", after=mark)
    assert speaking["user_id"] == world.ann["id"] and speaking["device_id"] == world.ann["device"]
    assert speaking["speaking"] is True and speaking["channel_id"] == world.voice_id


async def test_refusals_connect_user_limit_and_not_voice(world: World) -> None:
    bob_gw, ann_gw = await world.gateway(world.bob), await world.gateway(world.ann)
    closed = await world.channel("closed")
    status, _ = await world.live.call(
        "PUT",
        f"{API}/channels/{closed}/permissions/{world.guild_id}",
        world.ann["token"],
        {"type": "role", "allow": 0, "deny": int(Permission.CONNECT)},
    )
    assert status in (200, 204)
    await bob_gw.send(Op.VOICE_STATE, {"guild_id": world.guild_id, "channel_id": closed})
    error = await bob_gw.wait("VOICE_ERROR")
    assert error["code"] == "forbidden"

    small = await world.channel("duo", user_limit=1)
    await join(world, ann_gw, small)
    mark = bob_gw.mark()
    await bob_gw.send(Op.VOICE_STATE, {"guild_id": world.guild_id, "channel_id": small})
    assert (await bob_gw.wait("VOICE_ERROR", after=mark))["code"] == "channel_full"

    text = await world.channel("chat", kind="text")
    mark = bob_gw.mark()
    await bob_gw.send(Op.VOICE_STATE, {"guild_id": world.guild_id, "channel_id": text})
    assert (await bob_gw.wait("VOICE_ERROR", after=mark))["code"] == "not_voice"

    mark = bob_gw.mark()
    await bob_gw.send(Op.VOICE_PUBLISH, {"voice_session_id": "not-mine", "sdp_offer": "v=0"})
    assert (await bob_gw.wait("VOICE_ERROR", after=mark))["code"] == "bad_session"


async def test_without_speak_a_member_is_suppressed_until_speak_is_granted(
    world: World,
) -> None:
    status, _ = await world.live.call(
        "PUT",
        f"{API}/channels/{world.voice_id}/permissions/{world.bob['id']}",
        world.ann["token"],
        {"type": "member", "allow": 0, "deny": int(Permission.SPEAK)},
    )
    assert status in (200, 204)
    ann_gw, bob_gw = await world.gateway(world.ann), await world.gateway(world.bob)
    ann_server = await join(world, ann_gw, world.voice_id)
    bob_server = await join(world, bob_gw, world.voice_id)
    state = await ann_gw.wait("VOICE_STATE_UPDATE", lambda d: d["user_id"] == world.bob["id"])
    assert state["suppress"] is True
    mark = ann_gw.mark()
    publisher = await publish(bob_gw, bob_server, ssrc=777)
    offer = await ann_gw.wait("VOICE_SUBSCRIBE_OFFER", after=mark)
    subscriber = await subscribe(world, ann_gw, ann_server, offer)
    await stream(publisher, 777, 60)
    await trio.sleep(0.5)  # nothing must arrive: wait for the packets in flight, if any
    assert subscriber.received() == 0

    # SPEAK granted again: within a second bob is heard.
    await world.live.call(
        "DELETE",
        f"{API}/channels/{world.voice_id}/permissions/{world.bob['id']}",
        world.ann["token"],
    )
    started = trio.current_time()
    await ann_gw.wait(
        "VOICE_STATE_UPDATE",
        lambda d: d["user_id"] == world.bob["id"] and d["suppress"] is False,
    )
    assert trio.current_time() - started < 1.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream, publisher, 777, 100, 60)
        await until_received(subscriber, 20)


async def _server_mute(world: World, moderator: dict[str, Any], member: dict[str, Any]) -> int:
    """``moderator`` server-mutes ``member``; returns the HTTP status."""
    status, _ = await world.live.call(
        "PATCH",
        f"{API}/guilds/{world.guild_id}/members/{member['id']}/voice",
        moderator["token"],
        {"mute": True},
    )
    return status


async def test_server_mute_stops_forwarding_and_losing_connect_disconnects(
    world: World,
) -> None:
    ann_gw, bob_gw = await world.gateway(world.ann), await world.gateway(world.bob)
    ann_server = await join(world, ann_gw, world.voice_id)
    bob_server = await join(world, bob_gw, world.voice_id)
    mark = ann_gw.mark()
    publisher = await publish(bob_gw, bob_server, ssrc=999)
    offer = await ann_gw.wait("VOICE_SUBSCRIBE_OFFER", after=mark)
    subscriber = await subscribe(world, ann_gw, ann_server, offer)
    await stream(publisher, 999, 40)
    await until_received(subscriber, 20)

    # bob cannot moderate the owner; ann can server-mute bob.
    status = await _server_mute(world, world.bob, world.ann)
    assert status == 403
    status = await _server_mute(world, world.ann, world.bob)
    assert status == 204
    # "Within a second" counts from the change taking effect (the 2xx) to the live session.
    started = trio.current_time()
    state = await bob_gw.wait(
        "VOICE_STATE_UPDATE", lambda d: d["user_id"] == world.bob["id"] and d["mute"]
    )
    assert state["channel_id"] == world.voice_id
    assert trio.current_time() - started < 1.0
    before = subscriber.received()
    await stream(publisher, 999, 60, 40)
    await trio.sleep(0.3)
    assert subscriber.received() - before <= 2  # at most what was already in flight

    # A role change that takes CONNECT away ends bob's session within a second.
    await world.live.call(
        "PUT",
        f"{API}/channels/{world.voice_id}/permissions/{world.bob['id']}",
        world.ann["token"],
        {"type": "member", "allow": 0, "deny": int(Permission.CONNECT)},
    )
    started = trio.current_time()
    await bob_gw.wait(
        "VOICE_STATE_UPDATE",
        lambda d: d["user_id"] == world.bob["id"] and d["channel_id"] is None,
    )
    assert trio.current_time() - started < 1.0


async def test_a_participant_whose_gateway_dies_is_removed_after_the_grace(
    world: World,
) -> None:
    ann_gw, bob_gw = await world.gateway(world.ann), await world.gateway(world.bob)
    await join(world, ann_gw, world.voice_id)
    await join(world, bob_gw, world.voice_id)
    await bob_gw.ws.aclose()
    left = await ann_gw.wait(
        "VOICE_STATE_UPDATE",
        lambda d: d["user_id"] == world.bob["id"] and d["channel_id"] is None,
        within=10.0,
    )
    assert left["device_id"] == world.bob["device"]


async def test_killing_the_node_replaces_the_channel_on_another_node(world: World) -> None:
    ann_gw = await world.gateway(world.ann)
    first = await join(world, ann_gw, world.voice_id)
    # The second node arrives after the channel was placed, so it is on node-a.
    node_b = await start_sfu_node(world.nursery, world.live.base, world.node_secret, "node-b")
    await _until(lambda: world.health()["sfu_nodes"] == 2)
    del node_b
    mark = ann_gw.mark()
    await _kill_node(world, "node-a")
    again = await ann_gw.wait("VOICE_SERVER_UPDATE", after=mark, within=20.0)
    assert again["voice_session_id"] == first["voice_session_id"]
    assert again["channel_id"] == world.voice_id
    # Media starts over on the new node: publishing works there.
    await publish(ann_gw, again, ssrc=5151)


async def _kill_node(world: World, node_id: str) -> None:
    """SIGKILL the ``python -m sfu --node-id NODE_ID`` process (and so its link) that this
    test started: only among this process's descendants, since other test runs on the
    machine start nodes under the same ids."""
    for process in psutil.Process().children(recursive=True):
        try:
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        if "sfu" in cmdline and node_id in cmdline:
            for child in process.children(recursive=True):
                child.kill()
            process.kill()
            return
    raise AssertionError(f"no node {node_id}")


async def test_store_and_logs_hold_no_voice_state(world: World) -> None:
    ann_gw, bob_gw = await world.gateway(world.ann), await world.gateway(world.bob)
    ann_server = await join(world, ann_gw, world.voice_id)
    bob_server = await join(world, bob_gw, world.voice_id)
    publisher = await publish(ann_gw, ann_server, ssrc=1234)
    await stream(publisher, 1234, 20)
    for gateway in (ann_gw, bob_gw):
        await gateway.send(Op.VOICE_STATE, {"guild_id": world.guild_id, "channel_id": None})
    await _until(lambda: world.health()["voice_channels"] == 0)
    assert world.live.stop() == 0
    stored = b"".join(p.read_bytes() for p in sorted(world.data_dir.glob("control.sqlite3*")))
    log = world.log_path.read_bytes()
    assert world.ann["id"].encode() in stored, "the scan reads the real database"
    secrets_ = [
        ann_server["voice_session_id"],
        bob_server["voice_session_id"],
        ann_server["ice_servers"][0]["username"].partition(":")[2],
    ]
    for value in secrets_:
        assert value.encode() not in stored
        assert value.encode() not in log
    # The log never names who was in which channel.
    for value in (world.voice_id, world.ann["id"], world.bob["id"]):
        assert value.encode() not in log, value


async def test_concurrent_publishes_do_not_queue_behind_each_others_renegotiations(
    tmp_path: Path,
) -> None:
    """Every publish renegotiates every other participant. Those renegotiations must not
    hold up the next publish (a join's answer once waited for every earlier publish's
    round trips to every other participant, one after another: O(N²) serial round trips
    for N joining at once), and each subscriber must still get its offers in order."""
    crowd = 32
    async with _world(
        tmp_path, "--rate-per-s", "100000", "--rate-burst", "100000", "--pow-target-per-s", "100000"
    ) as world:
        _, invite = await world.live.call(
            "POST", f"{API}/channels/{world.voice_id}/invites", world.ann["token"], {}
        )
        users = []
        for index in range(crowd):
            user = await register(world.live, f"crowd{index}")
            await world.live.call("POST", f"{API}/invites/{invite['code']}", user["token"], {})
            users.append(user)
        gateways = [await world.gateway(user) for user in users]
        servers = [await join(world, gateway, world.voice_id) for gateway in gateways]
        marks = [gateway.mark() for gateway in gateways]
        waited: list[float] = []

        async def publish_one(index: int) -> None:
            started = trio.current_time()
            await gateways[index].send(
                Op.VOICE_PUBLISH,
                {
                    "voice_session_id": servers[index]["voice_session_id"],
                    "sdp_offer": VoicePeer().publish_offer(1000 + index),
                },
            )
            await gateways[index].wait("VOICE_PUBLISH_ANSWER", after=marks[index])
            waited.append(trio.current_time() - started)

        async with trio.open_nursery() as nursery:
            for index in range(crowd):
                nursery.start_soon(publish_one, index)
        # Each publish costs its own session's round trips only (the old code needed about
        # crowd² of them here before the last answer).
        assert max(waited) < 1.0, sorted(waited)

        for index, gateway in enumerate(gateways):
            last = await gateway.wait(
                "VOICE_SUBSCRIBE_OFFER",
                lambda d: len(d["consumers"]) == crowd - 1,
                after=marks[index],
                within=30,
            )
            others = {c["device_id"] for c in last["consumers"]}
            assert others == {u["device"] for u in users} - {users[index]["device"]}
            assert len({c["mid"] for c in last["consumers"]}) == crowd - 1
            offers = [
                d["sdp_offer"]
                for t, d in gateway.dispatches[marks[index] :]
                if t == "VOICE_SUBSCRIBE_OFFER"
            ]
            # In order: the SDP session versions the SFU gave them only ever rise (RFC 8866
            # §5.2), and the newest offer is the one that consumes everyone.
            versions = [int(re.search(r"^o=\S+ \d+ (\d+) ", o, re.M).group(1)) for o in offers]  # type: ignore[union-attr]
            assert versions == sorted(set(versions)) and offers[-1] == last["sdp_offer"]
            assert not [d for t, d in gateway.dispatches if t == "VOICE_ERROR"]


async def _four_join(
    world: World,
) -> tuple[list[dict[str, Any]], list[Gateway], list[dict[str, Any]]]:
    """carl and dora join the guild; ann, bob, carl and dora join the voice channel:
    (users, their gateways, their VOICE_SERVER_UPDATEs)."""
    carl, dora = await register(world.live, "carl"), await register(world.live, "dora")
    _, invite = await world.live.call(
        "POST", f"{API}/channels/{world.voice_id}/invites", world.ann["token"], {}
    )
    for user in (carl, dora):
        await world.live.call("POST", f"{API}/invites/{invite['code']}", user["token"], {})
    users = [world.ann, world.bob, carl, dora]
    gateways = [await world.gateway(user) for user in users]
    servers = [await join(world, gateway, world.voice_id) for gateway in gateways]
    return users, gateways, servers


async def test_a_large_channel_consumes_only_members_who_speak(tmp_path: Path) -> None:
    """Above ``--voice-large-channel`` participants a subscriber consumes only the audio of
    members who have spoken lately: a silent member costs the others no m-section and no
    renegotiation; a new speaker is consumed as soon as the SFU hears speech, and dropped
    again after ``--voice-silent-drop-s`` of silence (docs/voice.md, "Large channels")."""
    async with _world(
        tmp_path, "--voice-large-channel", "2", "--voice-silent-drop-s", "1"
    ) as world:
        users, gateways, servers = await _four_join(world)
        _, _, carl, dora = users
        ann_gw, bob_gw, _, _ = gateways
        mark = bob_gw.mark()
        publishers = [
            await publish(gateway, server, ssrc=100 + i)
            for i, (gateway, server) in enumerate(zip(gateways, servers, strict=True))
        ]
        # Four members, all silent: nobody consumes anybody, so nobody is renegotiated.
        for peer in publishers:
            await peer.send_audio(100 + publishers.index(peer), 0, level=127)
        await trio.sleep(0.5)
        assert not [t for t, _ in bob_gw.dispatches[mark:] if t == "VOICE_SUBSCRIBE_OFFER"]

        # ann speaks: bob consumes her (and only her).
        async def talk(index: int, seconds: float, level: int = 20) -> None:
            for seq in range(1, int(seconds / 0.02)):
                await publishers[index].send_audio(100 + index, seq, level)
                await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(talk, 0, 1.5)
            offer = await bob_gw.wait("VOICE_SUBSCRIBE_OFFER", after=mark)
            assert [c["user_id"] for c in offer["consumers"]] == [world.ann["id"]]
            subscriber = await subscribe(world, bob_gw, servers[1], offer)
            await until_received(subscriber, 10)

        # carl starts to speak while bob listens: the delay from carl's first word to bob
        # hearing it is the onset cost of a large channel (one renegotiation).
        mark = bob_gw.mark()
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(talk, 2, 1.5)
            offer = await bob_gw.wait("VOICE_SUBSCRIBE_OFFER", after=mark)
            assert {c["user_id"] for c in offer["consumers"]} == {world.ann["id"], carl["id"]}
            await bob_gw.send(
                Op.VOICE_SUBSCRIBE_ANSWER,
                {
                    "voice_session_id": servers[1]["voice_session_id"],
                    "sdp_answer": subscriber.subscribe_answer(offer["sdp_offer"]),
                },
            )
            carl_ssrc = next(
                next(iter(m.ssrcs))
                for m in SessionDescription.parse_untrusted(offer["sdp_offer"]).media
                if m.mid == next(c["mid"] for c in offer["consumers"] if c["user_id"] == carl["id"])
            )
            while not any(p.ssrc == carl_ssrc for p in subscriber.rtp()):
                await subscriber.wait_received(subscriber.received() + 1)
            onset = trio.current_time() - started
        print(f"large channel: speech onset to a subscriber receiving it {onset * 1000:.0f} ms")
        assert onset < 1.0

        # Both fall silent: after the SFU's 1 s hold and the 1 s drop, bob consumes nobody.
        mark = bob_gw.mark()
        offer = await bob_gw.wait(
            "VOICE_SUBSCRIBE_OFFER", lambda d: not d["consumers"], after=mark, within=10
        )
        assert dora["id"] not in {
            c["user_id"]
            for t, d in bob_gw.dispatches
            if t == "VOICE_SUBSCRIBE_OFFER"
            for c in d["consumers"]
        }
        assert not [d for g in gateways for t, d in g.dispatches if t == "VOICE_ERROR"]
        await ann_gw.send(Op.VOICE_STATE, {"guild_id": world.guild_id, "channel_id": None})


def _ssrcs_by_device(offer: dict[str, Any]) -> dict[str, int]:
    """device id -> the SSRC its consumer has in this subscribe offer."""
    media = {m.mid: m for m in SessionDescription.parse_untrusted(offer["sdp_offer"]).media}
    return {c["device_id"]: next(iter(media[c["mid"]].ssrcs)) for c in offer["consumers"]}


def _heard(peer: VoicePeer, ssrc: int) -> int:
    return sum(1 for packet in peer.rtp() if packet.ssrc == ssrc)


async def test_a_channel_spread_over_two_workers_hears_everyone_mutes_and_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node of two workers that spreads every channel (``--spread-above 0``): members
    land on both workers, each member's two transports on one; everyone hears everyone
    (the other worker's publishers through piped copies); a server mute silences a
    publisher for the listeners on the other worker too; a leave renegotiates the rest,
    who keep hearing each other (docs/sfu.md, "One channel across cores")."""
    monkeypatch.setenv("HUSHROOM_SFU_SPREAD_ABOVE", "0")
    async with _world(tmp_path, workers=2) as world:
        users, gateways, servers = await _four_join(world)
        _, _, carl, dora = users
        marks = [gateway.mark() for gateway in gateways]
        publishers = [
            await publish(gateway, server, ssrc=300 + i)
            for i, (gateway, server) in enumerate(zip(gateways, servers, strict=True))
        ]
        workers = [p.peer.remote_address for p in publishers if p.peer is not None]
        assert len(set(workers)) == 2, workers  # both workers' ports
        subscribers, ssrcs = [], []
        for index, gateway in enumerate(gateways):
            offer = await gateway.wait(
                "VOICE_SUBSCRIBE_OFFER", lambda d: len(d["consumers"]) == 3, after=marks[index]
            )
            subscriber = await subscribe(world, gateway, servers[index], offer)
            assert subscriber.peer is not None
            assert subscriber.peer.remote_address == workers[index]  # next to its publisher
            subscribers.append(subscriber)
            ssrcs.append(_ssrcs_by_device(offer))

        async def everyone_talks(count: int, start: int, who: range = range(4)) -> None:
            async with trio.open_nursery() as nursery:
                for i in who:
                    nursery.start_soon(stream, publishers[i], 300 + i, count, start)

        await everyone_talks(40, 0)
        with trio.fail_after(10):
            for index, subscriber in enumerate(subscribers):
                for user in users:
                    if user is users[index]:
                        continue
                    while _heard(subscriber, ssrcs[index][user["device"]]) < 30:
                        await subscriber.wait_received(subscriber.received() + 1)

        # ann (on one worker) server-mutes bob (on the other): ann's listener, which
        # hears bob through the copy on her worker, hears him no more; carl still.
        assert workers[0] != workers[1]
        status = await _server_mute(world, world.ann, world.bob)
        assert status == 204
        await gateways[1].wait(
            "VOICE_STATE_UPDATE", lambda d: d["user_id"] == world.bob["id"] and d["mute"]
        )
        await trio.sleep(0.2)
        bob_before = _heard(subscribers[0], ssrcs[0][world.bob["device"]])
        carl_before = _heard(subscribers[0], ssrcs[0][carl["device"]])
        await everyone_talks(40, 40)
        await trio.sleep(0.3)
        assert _heard(subscribers[0], ssrcs[0][world.bob["device"]]) == bob_before
        assert _heard(subscribers[0], ssrcs[0][carl["device"]]) >= carl_before + 30

        # dora leaves: the others are renegotiated without her and still hear each other.
        leave_marks = [gateway.mark() for gateway in gateways]
        await gateways[3].send(Op.VOICE_STATE, {"guild_id": world.guild_id, "channel_id": None})
        for index in range(3):
            offer = await gateways[index].wait(
                "VOICE_SUBSCRIBE_OFFER",
                lambda d: dora["device"] not in {c["device_id"] for c in d["consumers"]},
                after=leave_marks[index],
            )
            assert len(offer["consumers"]) == 2
        carl_before = _heard(subscribers[1], ssrcs[1][carl["device"]])
        await everyone_talks(40, 80, range(3))
        with trio.fail_after(5):
            while _heard(subscribers[1], ssrcs[1][carl["device"]]) < carl_before + 30:
                await subscribers[1].wait_received(subscribers[1].received() + 1)
        assert not [d for g in gateways for t, d in g.dispatches if t == "VOICE_ERROR"]
