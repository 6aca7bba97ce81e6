"""Unit tests of the voice cores: permission decisions, the registry, placement, TURN
credentials, the node RPC client and the gateway's decoding of voice ops."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import trio

from contract.gateway import Close, Op
from contract.permissions import Permission
from control.gateway.protocol import GatewayProtocolError
from control.gateway.session import (
    VoicePublish,
    VoiceStateRequest,
    VoiceSubscribeAnswer,
    decode_voice_untrusted,
)
from control.node_rpc import NodeGone, NodeLink, NodeRefused, NodeTimeout
from control.voice.placement import NodeLoad, choose_node, node_load
from control.voice.states import (
    MAX_AUDIBLE,
    ConsumerEntry,
    ErrorCode,
    Review,
    VoiceRefused,
    VoiceRegistry,
    join_decision,
    review,
)
from control.voice.turn_credentials import ice_servers
from hushroom import node_link
from turn.auth import RestCredentials, rest_password

P = Permission
MEMBER = int(P.VIEW_CHANNEL | P.CONNECT | P.SPEAK)


def test_join_needs_a_voice_channel_and_connect() -> None:
    with pytest.raises(VoiceRefused) as caught:
        join_decision("text", MEMBER, 0, 0)
    assert caught.value.code is ErrorCode.NOT_VOICE
    with pytest.raises(VoiceRefused) as caught:
        join_decision("voice", int(P.VIEW_CHANNEL | P.SPEAK), 0, 0)
    assert caught.value.code is ErrorCode.FORBIDDEN
    assert join_decision("voice", MEMBER, 0, 0) is False


def test_user_limit_holds_unless_move_members() -> None:
    with pytest.raises(VoiceRefused) as caught:
        join_decision("voice", MEMBER, 2, 2)
    assert caught.value.code is ErrorCode.CHANNEL_FULL
    assert join_decision("voice", MEMBER, 2, 1) is False
    assert join_decision("voice", MEMBER | int(P.MOVE_MEMBERS), 2, 5) is False


def test_without_speak_the_member_is_suppressed() -> None:
    assert join_decision("voice", int(P.VIEW_CHANNEL | P.CONNECT), 0, 0) is True


@pytest.mark.parametrize(
    ("permissions", "suppressed", "expected"),
    [
        (MEMBER, False, Review.KEEP),
        (int(P.VIEW_CHANNEL | P.SPEAK), False, Review.DISCONNECT),
        (0, True, Review.DISCONNECT),
        (int(P.VIEW_CHANNEL | P.CONNECT), False, Review.SUPPRESS),
        (MEMBER, True, Review.UNSUPPRESS),
        (int(P.VIEW_CHANNEL | P.CONNECT), True, Review.KEEP),
    ],
)
def test_review_of_a_live_session(permissions: int, suppressed: bool, expected: Review) -> None:
    assert review(permissions, suppressed) is expected


def test_registry_indexes_and_forgets_a_session() -> None:
    registry = VoiceRegistry()
    channel = registry.open_channel("g", "c", "node", "router")
    ann = registry.add(channel, "ann", "ann-dev", suppress=False)
    bob = registry.add(channel, "bob", "bob-dev", suppress=True)
    assert ann.sender_index != bob.sender_index
    assert ann.id != bob.id and ann.turn_id != bob.turn_id and "ann" not in ann.turn_id
    registry.set_transport(ann, "t-send", send=True)
    registry.add_producer(ann, "p1", "audio")
    registry.set_transport(bob, "t-recv", send=False)
    bob.consumers["k1"] = _entry("k1", "p1")
    assert registry.by_producer("p1") is ann and registry.by_transport("t-recv") is bob
    assert registry.require("bob-dev", bob.id) is bob
    with pytest.raises(VoiceRefused) as caught:
        registry.require("bob-dev", ann.id)
    assert caught.value.code is ErrorCode.BAD_SESSION
    assert channel.plan(bob).consume == [] and channel.plan(ann).consume == []
    registry.add_producer(ann, "p2", "audio")
    assert channel.plan(bob).consume == [(ann, "p2", "audio")]
    registry.forget_producers(ann)
    assert registry.by_producer("p1") is None and registry.by_producer("p2") is None
    # bob's consumer of the closed producer is named for closing at his next renegotiation.
    plan = channel.plan(bob)
    assert plan.close == ["k1"] and plan.consume == [] and plan
    bob.consumers.clear()
    assert not channel.plan(bob)
    registry.remove(ann)
    assert registry.of_device("ann-dev") is None and registry.by_transport("t-send") is None
    assert channel.other_users("ann") == 1
    registry.remove(bob)
    assert not channel.sessions
    assert registry.states({"c"}) == []


def test_server_mute_outlives_leaving_and_joining_again() -> None:
    registry = VoiceRegistry()
    channel = registry.open_channel("g", "c", "node", "router")
    session = registry.add(channel, "bob", "bob-dev", suppress=False)
    assert registry.set_server_mute("g", "bob", True, None) == (True, False)
    assert session.mute and session.silenced
    registry.remove(session)
    again = registry.add(channel, "bob", "bob-dev", suppress=False)
    assert again.mute and not again.deaf
    registry.set_server_mute("g", "bob", False, False)
    assert registry.server_mutes == {}


def test_sender_indexes_are_unique_in_a_channel() -> None:
    registry = VoiceRegistry()
    channel = registry.open_channel("g", "c", "node", "router")
    indexes = {
        registry.add(channel, f"u{i}", f"d{i}", suppress=False).sender_index for i in range(50)
    }
    assert len(indexes) == 50
    assert all(0 < index < 1 << 31 for index in indexes)


def test_detached_sessions_are_found_by_deadline() -> None:
    registry = VoiceRegistry()
    channel = registry.open_channel("g", "c", "node", "router")
    session = registry.add(channel, "u", "d", suppress=False)
    assert registry.earliest_detach() is None
    session.detached_at = 10.0
    assert registry.earliest_detach() == 10.0
    assert registry.detached_before(9.0) == []
    assert registry.detached_before(10.0) == [session]


def _entry(consumer_id: str, producer_id: str) -> ConsumerEntry:
    return ConsumerEntry(consumer_id, producer_id, "0", "audio", "ann", "ann-dev", 1)


def test_placement_prefers_the_least_loaded_healthy_node() -> None:
    idle = node_load("a", [{"cpu_percent": 5.0}], {"workers": [{"transports": 2}]}, 0)
    busy = node_load("b", [{"cpu_percent": 1.0}], {"workers": [{"transports": 40}]}, 0)
    assert choose_node([idle, busy]) == "a"
    # Placements since the last report count even before the node reports them.
    placed = node_load("a", [{"cpu_percent": 5.0}], {}, 30)
    assert placed.transports == 60
    assert choose_node([placed, busy]) == "b"
    assert choose_node([idle, busy], exclude=frozenset({"a"})) == "b"
    assert choose_node([], exclude=frozenset()) is None
    # Two workers halve the per-worker load.
    wide = NodeLoad("c", 2, 30, 0.0)
    narrow = NodeLoad("d", 1, 20, 0.0)
    assert choose_node([wide, narrow]) == "c"


def test_turn_credentials_verify_with_the_relays_hmac() -> None:
    secret = b"shared"
    (server,) = ice_servers(["turn:127.0.0.1:3478?transport=udp"], secret, "abc", 1000.0, 3600)
    assert server["username"] == "4600:abc"
    assert server["credential"] == rest_password(secret, "4600:abc")
    credential = RestCredentials([secret], "realm").credential_untrusted(
        server["username"], 1, 1000.0
    )
    assert credential.user_id == "abc"
    assert ice_servers(["turn:x"], None, "abc", 0.0, 10) == []
    assert ice_servers([], secret, "abc", 0.0, 10) == []


async def test_node_rpc_matches_replies_by_id_and_types_errors() -> None:
    events: list[tuple[str, str, dict[str, Any]]] = []
    link = NodeLink("n1", lambda node, event, data: events.append((node, event, data)), 1.0)
    sent: list[dict[str, Any]] = []

    async def writer(frame: bytes) -> None:
        request = msgpack.unpackb(frame)
        sent.append(request)
        if request["method"] == "router.create":
            link.receive_untrusted(node_link.encode_reply(request["id"], result={"router_id": "r"}))
        elif request["method"] == "transport.create":
            link.receive_untrusted(
                node_link.encode_reply(request["id"], error=("not_found", "no such router"))
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run_writer, writer)
        assert await link.request("router.create") == {"router_id": "r"}
        with pytest.raises(NodeRefused) as refused:
            await link.request("transport.create", {"router_id": "x"})
        assert refused.value.code == "not_found"
        with pytest.raises(NodeTimeout):
            await link.request("stats")
        # A late reply to the timed-out request is dropped, not mistaken for another.
        link.receive_untrusted(node_link.encode_reply(sent[-1]["id"], result={}))
        link.receive_untrusted(node_link.encode_frame("speaker", {"router_id": "r"}))
        assert events == [("n1", "speaker", {"router_id": "r"})]
        with pytest.raises(node_link.LinkProtocolError):
            link.receive_untrusted(b"\x01")

        async def closer() -> None:
            await trio.sleep(0.05)
            link.close()

        nursery.start_soon(closer)
        with pytest.raises(NodeGone):
            await link.request("stats")
        with pytest.raises(NodeGone):
            await link.request("stats")


def test_voice_ops_are_decoded_and_bounded() -> None:
    assert decode_voice_untrusted(
        Op.VOICE_STATE, {"guild_id": "g", "channel_id": None, "self_mute": True}
    ) == VoiceStateRequest("g", None, True, False)
    assert decode_voice_untrusted(
        Op.VOICE_PUBLISH, {"voice_session_id": "v", "sdp_offer": "v=0"}
    ) == VoicePublish("v", "v=0")
    assert decode_voice_untrusted(
        Op.VOICE_SUBSCRIBE_ANSWER, {"voice_session_id": "v", "sdp_answer": "v=0"}
    ) == VoiceSubscribeAnswer("v", "v=0")
    for op, d in [
        (Op.VOICE_STATE, []),
        (Op.VOICE_STATE, {"guild_id": 5}),
        (Op.VOICE_STATE, {"guild_id": "g", "channel_id": "x" * 65}),
        (Op.VOICE_STATE, {"guild_id": "g", "self_deaf": "yes"}),
        (Op.VOICE_PUBLISH, {"voice_session_id": "v"}),
        (Op.VOICE_SUBSCRIBE_ANSWER, {"voice_session_id": "", "sdp_answer": "v=0"}),
    ]:
        with pytest.raises(GatewayProtocolError) as caught:
            decode_voice_untrusted(op, d)
        assert caught.value.code == Close.DECODE_ERROR


def test_a_large_channel_plans_only_audible_audio() -> None:
    registry = VoiceRegistry()
    channel = registry.open_channel("g", "c", "node", "router", large_above=2)
    sessions = [registry.add(channel, f"u{i}", f"d{i}", suppress=False) for i in range(3)]
    for index, session in enumerate(sessions):
        registry.add_producer(session, f"p{index}", "audio")
    registry.add_producer(sessions[2], "v2", "video")
    assert channel.large
    # Video is always consumed; audio only once voiced, the most recent MAX_AUDIBLE of it.
    assert channel.plan(sessions[0]).consume == [(sessions[2], "v2", "video")]
    assert channel.voiced("p1") and not channel.voiced("p1")
    assert [p for _, p, _ in channel.plan(sessions[0]).consume] == ["p1", "v2"]
    channel.voiced("p0")
    channel.unvoiced("p0")  # p1 talks on; p0 fell silent after it began
    for index in range(MAX_AUDIBLE - 1):
        channel.voiced(f"other{index}")
    # Full: the one that fell silent goes first, though p1 began to talk before it.
    assert "p0" not in channel.audible and "p1" in channel.audible
    channel.voiced("one-more")
    assert "p1" not in channel.audible and len(channel.audible) == MAX_AUDIBLE
    registry.remove(sessions[2])
    assert not channel.large  # two left: everyone consumes everyone again
    assert channel.plan(sessions[0]).consume == [(sessions[1], "p1", "audio")]
