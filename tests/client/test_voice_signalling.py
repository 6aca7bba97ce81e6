"""client.voice.signalling: the call's signalling core fed dispatches, no network."""

from __future__ import annotations

from typing import Any

import pytest

from client.errors import ProtocolError
from client.voice.signalling import (
    AnswerSubscribeOffer,
    ApplyPublishAnswer,
    CallFailed,
    CallSignalling,
    CallState,
    ConsumerInfo,
    IceServer,
    ParticipantsChanged,
    SpeakingChanged,
    StartTransports,
    VoiceStates,
    decode_voice_state_untrusted,
)
from contract.gateway import EventName, Op

G, C, OTHER = "guild1", "voice1", "voice2"
TURN = {"urls": ["turn:127.0.0.1:3478?transport=udp"], "username": "9:abc", "credential": "pw"}


def server_update(session: str = "vs1", channel: str = C, index: int = 7) -> dict[str, Any]:
    return {
        "guild_id": G,
        "channel_id": channel,
        "voice_session_id": session,
        "sender_index": index,
        "ice_servers": [TURN],
    }


def state(user: str, device: str, channel: str | None = C, index: int = 3) -> dict[str, Any]:
    return {
        "guild_id": G,
        "channel_id": channel,
        "user_id": user,
        "device_id": device,
        "sender_index": index,
        "self_mute": False,
        "self_deaf": False,
        "mute": False,
        "deaf": False,
        "suppress": False,
    }


def joined() -> CallSignalling:
    core = CallSignalling(G, C, "me", "my-device")
    core.join()
    return core


def test_join_publish_subscribe_in_order() -> None:
    core = CallSignalling(G, C, "me", "my-device", self_mute=True)
    op, d = core.join()
    assert op is Op.VOICE_STATE
    assert d == {"guild_id": G, "channel_id": C, "self_mute": True, "self_deaf": False}
    assert core.state is CallState.JOINING

    (start,) = core.receive_untrusted(EventName.VOICE_SERVER_UPDATE, server_update())
    assert start == StartTransports("vs1", 7, (IceServer(tuple(TURN["urls"]), "9:abc", "pw"),))
    assert core.state is CallState.CONNECTING
    assert core.publish("v=0 offer") == (
        Op.VOICE_PUBLISH,
        {"voice_session_id": "vs1", "sdp_offer": "v=0 offer"},
    )
    answer = {"voice_session_id": "vs1", "sdp_answer": "v=0 answer"}
    assert core.receive_untrusted(EventName.VOICE_PUBLISH_ANSWER, answer) == [
        ApplyPublishAnswer("v=0 answer")
    ]
    assert core.state is CallState.CONNECTED

    offer = {
        "voice_session_id": "vs1",
        "sdp_offer": "v=0 sub",
        "consumers": [
            {"mid": "0", "kind": "audio", "user_id": "bob", "device_id": "b1", "sender_index": 3}
        ],
    }
    (sub,) = core.receive_untrusted(EventName.VOICE_SUBSCRIBE_OFFER, offer)
    assert isinstance(sub, AnswerSubscribeOffer)
    assert sub.consumers == (ConsumerInfo("0", "audio", "bob", "b1", 3),)
    assert core.consumers["0"].user_id == "bob"
    assert core.subscribe_answer("v=0 sub answer")[1] == {
        "voice_session_id": "vs1",
        "sdp_answer": "v=0 sub answer",
    }
    op, d = core.leave()
    assert d["channel_id"] is None and core.state is CallState.IDLE


def test_a_new_server_update_starts_over_and_late_answers_are_ignored() -> None:
    core = joined()
    core.receive_untrusted(EventName.VOICE_SERVER_UPDATE, server_update("vs1"))
    # The channel was placed on another node: a new session, new sender index.
    (start,) = core.receive_untrusted(EventName.VOICE_SERVER_UPDATE, server_update("vs2", index=9))
    assert isinstance(start, StartTransports) and start.voice_session_id == "vs2"
    assert start.sender_index == 9
    late = {"voice_session_id": "vs1", "sdp_answer": "old"}
    assert core.receive_untrusted(EventName.VOICE_PUBLISH_ANSWER, late) == []
    assert core.state is CallState.CONNECTING
    current = {"voice_session_id": "vs2", "sdp_answer": "new"}
    assert core.receive_untrusted(EventName.VOICE_PUBLISH_ANSWER, current) == [
        ApplyPublishAnswer("new")
    ]


def test_a_move_follows_the_new_channel_and_forgets_the_old_participants() -> None:
    core = joined()
    core.receive_untrusted(EventName.VOICE_STATE_UPDATE, state("bob", "b1"))
    assert ("bob", "b1") in core.participants
    core.receive_untrusted(EventName.VOICE_SERVER_UPDATE, server_update("vs3", channel=OTHER))
    assert core.channel_id == OTHER and core.participants == {}
    assert core.receive_untrusted(EventName.VOICE_STATE_UPDATE, state("carol", "c1", OTHER)) == [
        ParticipantsChanged({("carol", "c1"): core.participants[("carol", "c1")]})
    ]


def test_participants_join_and_leave_and_other_channels_do_not_count() -> None:
    core = joined()
    (changed,) = core.receive_untrusted(EventName.VOICE_STATE_UPDATE, state("bob", "b1"))
    assert isinstance(changed, ParticipantsChanged) and set(changed.participants) == {("bob", "b1")}
    # The same state again changes nothing.
    assert core.receive_untrusted(EventName.VOICE_STATE_UPDATE, state("bob", "b1")) == []
    assert core.receive_untrusted(EventName.VOICE_STATE_UPDATE, state("x", "x1", OTHER)) == []
    (changed,) = core.receive_untrusted(EventName.VOICE_STATE_UPDATE, state("bob", "b1", None))
    assert isinstance(changed, ParticipantsChanged) and changed.participants == {}
    # This device's own state is not a participant.
    assert core.receive_untrusted(EventName.VOICE_STATE_UPDATE, state("me", "my-device")) == []
    assert core.participants == {}


def test_being_disconnected_by_a_moderator_ends_the_call() -> None:
    core = joined()
    core.receive_untrusted(EventName.VOICE_SERVER_UPDATE, server_update())
    events = core.receive_untrusted(EventName.VOICE_STATE_UPDATE, state("me", "my-device", None))
    assert events[0] == CallFailed("disconnected", "removed from the voice channel")
    assert core.state is CallState.FAILED
    # Nothing more is acted on until the call is joined again.
    assert core.receive_untrusted(EventName.VOICE_SERVER_UPDATE, server_update()) == []


@pytest.mark.parametrize("code", ["forbidden", "channel_full", "not_voice", "no_sfu", "sfu_error"])
def test_voice_errors_fail_the_call(code: str) -> None:
    core = joined()
    error = {"guild_id": G, "channel_id": C, "code": code, "message": "no"}
    assert core.receive_untrusted(EventName.VOICE_ERROR, error) == [CallFailed(code, "no")]
    assert core.state is CallState.FAILED


def test_a_bad_session_error_while_connected_is_a_late_op_not_a_failure() -> None:
    core = joined()
    core.receive_untrusted(EventName.VOICE_SERVER_UPDATE, server_update())
    core.receive_untrusted(
        EventName.VOICE_PUBLISH_ANSWER, {"voice_session_id": "vs1", "sdp_answer": "a"}
    )
    error = {"guild_id": G, "channel_id": C, "code": "bad_session", "message": "old"}
    assert core.receive_untrusted(EventName.VOICE_ERROR, error) == []
    assert core.state is CallState.CONNECTED


def test_speaking_is_reported_on_change_only() -> None:
    core = joined()
    speaking = {"guild_id": G, "channel_id": C, "user_id": "bob", "device_id": "b1"}
    assert core.receive_untrusted(EventName.SPEAKING, {**speaking, "speaking": True}) == [
        SpeakingChanged("bob", "b1", True)
    ]
    assert core.receive_untrusted(EventName.SPEAKING, {**speaking, "speaking": True}) == []
    assert (
        core.receive_untrusted(
            EventName.SPEAKING, {**speaking, "channel_id": OTHER, "speaking": False}
        )
        == []
    )
    assert core.receive_untrusted(EventName.SPEAKING, {**speaking, "speaking": False}) == [
        SpeakingChanged("bob", "b1", False)
    ]


def test_ops_need_a_voice_session() -> None:
    core = joined()
    with pytest.raises(ProtocolError):
        core.publish("offer")
    with pytest.raises(ProtocolError):
        core.subscribe_answer("answer")


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (EventName.VOICE_SERVER_UPDATE, "not a map"),
        (EventName.VOICE_SERVER_UPDATE, {**server_update(), "sender_index": -1}),
        (EventName.VOICE_SERVER_UPDATE, {**server_update(), "sender_index": 1 << 31}),
        (
            EventName.VOICE_SERVER_UPDATE,
            {**server_update(), "ice_servers": [{"urls": ["http://x"]}]},
        ),
        (EventName.VOICE_SERVER_UPDATE, {**server_update(), "ice_servers": [TURN] * 9}),
        (EventName.VOICE_SERVER_UPDATE, {**server_update(), "voice_session_id": ""}),
        (EventName.VOICE_STATE_UPDATE, {**state("bob", "b1"), "self_mute": "yes"}),
        (EventName.VOICE_STATE_UPDATE, {**state("bob", "b1"), "user_id": "u" * 65}),
        (EventName.VOICE_PUBLISH_ANSWER, {"voice_session_id": "vs1", "sdp_answer": "x" * 70000}),
        (
            EventName.VOICE_SUBSCRIBE_OFFER,
            {
                "voice_session_id": "vs1",
                "sdp_offer": "o",
                "consumers": [
                    {
                        "mid": "0",
                        "kind": "audio",
                        "user_id": "b",
                        "device_id": "d",
                        "sender_index": 1,
                    }
                ]
                * 2,
            },
        ),
        (
            EventName.VOICE_SUBSCRIBE_OFFER,
            {
                "voice_session_id": "vs1",
                "sdp_offer": "o",
                "consumers": [
                    {
                        "mid": "0",
                        "kind": "data",
                        "user_id": "b",
                        "device_id": "d",
                        "sender_index": 1,
                    }
                ],
            },
        ),
    ],
)
def test_malformed_dispatches_are_refused_with_a_protocol_error(event: str, data: object) -> None:
    core = joined()
    if event != EventName.VOICE_SERVER_UPDATE:
        core.receive_untrusted(EventName.VOICE_SERVER_UPDATE, server_update())
    with pytest.raises(ProtocolError):
        core.receive_untrusted(event, data)


def test_voice_states_follow_ready_and_updates() -> None:
    states = VoiceStates()
    states.ready_untrusted(
        [state("bob", "b1"), state("carol", "c1", OTHER), state("d", "d1", None)]
    )
    assert set(states.in_channel(C)) == {("bob", "b1")}
    states.update(decode_voice_state_untrusted(state("bob", "b1", OTHER)))
    assert states.in_channel(C) == {}
    assert set(states.in_channel(OTHER)) == {("bob", "b1"), ("carol", "c1")}
    states.update(decode_voice_state_untrusted(state("bob", "b1", None)))
    assert set(states.in_channel(OTHER)) == {("carol", "c1")}
