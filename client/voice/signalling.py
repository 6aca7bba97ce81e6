"""A voice call's signalling, sans-I/O: the gateway side of docs/voice.md as a state machine.

:class:`CallSignalling` is fed the voice dispatches of the gateway (decoded here by the
``*_untrusted`` functions, which bound every field) and returns what the media layer must do
(:class:`StartTransports`, :class:`ApplyPublishAnswer`, :class:`AnswerSubscribeOffer`, ...)
and the frames to send (``(Op, d)`` pairs for ops 4, 12 and 13). It touches neither a socket
nor aiortc, so every ordering of dispatches is a unit test.

States (one device, one call)::

    idle --join()--> joining --VOICE_SERVER_UPDATE--> connecting --PUBLISH_ANSWER--> connected
     ^                  |                                 ^   |                        |
     |                  +---------- VOICE_ERROR ----------+---+--> failed              |
     +------------------------------------ leave() ---------------------------------+

A new VOICE_SERVER_UPDATE while connecting or connected (a move, or the channel placed on
another node) starts over: both transports are dropped and the send transport offers again.
Dispatches naming another voice session than the current one are ignored (they are late
answers to a session already replaced).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from client.errors import ProtocolError
from contract.gateway import EventName, Op

__all__ = [
    "AnswerSubscribeOffer",
    "ApplyPublishAnswer",
    "CallFailed",
    "CallSignalling",
    "CallState",
    "ConsumerInfo",
    "IceServer",
    "ParticipantsChanged",
    "SignallingEvent",
    "SpeakingChanged",
    "StartTransports",
    "VoiceState",
    "VoiceStates",
    "decode_ice_servers_untrusted",
    "decode_voice_state_untrusted",
]

#: Bounds on what the server may send: SDP size, list lengths, id lengths.
MAX_SDP = 64 * 1024
MAX_ICE_SERVERS = 8
MAX_URLS = 8
MAX_CONSUMERS = 1024
MAX_SENDER_INDEX = (1 << 31) - 1
_MAX_ID = 64


class CallState(enum.Enum):
    """Where a call's signalling stands."""

    IDLE = "idle"
    JOINING = "joining"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class IceServer:
    """One STUN/TURN server with its (ephemeral) credentials."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class VoiceState:
    """One device's place in a voice channel (a VOICE_STATE_UPDATE)."""

    guild_id: str
    channel_id: str | None
    user_id: str
    device_id: str
    sender_index: int
    self_mute: bool = False
    self_deaf: bool = False
    mute: bool = False
    deaf: bool = False
    suppress: bool = False


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """Which m-section of the receive transport carries whom."""

    mid: str
    kind: str
    user_id: str
    device_id: str
    sender_index: int


@dataclass(frozen=True, slots=True)
class StartTransports:
    """Drop any transports and start over: a send transport that offers (op 12)."""

    voice_session_id: str
    sender_index: int
    ice_servers: tuple[IceServer, ...]


@dataclass(frozen=True, slots=True)
class ApplyPublishAnswer:
    """The SFU's answer to the send transport's offer."""

    sdp_answer: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AnswerSubscribeOffer:
    """The SFU's (re)offer for the receive transport; answer with op 13."""

    sdp_offer: str = field(repr=False)
    consumers: tuple[ConsumerInfo, ...]


@dataclass(frozen=True, slots=True)
class ParticipantsChanged:
    """Who is in the call now (this device excluded), by (user id, device id)."""

    participants: Mapping[tuple[str, str], VoiceState]


@dataclass(frozen=True, slots=True)
class SpeakingChanged:
    """The SFU's active-speaker view of one device."""

    user_id: str
    device_id: str
    speaking: bool


@dataclass(frozen=True, slots=True)
class CallFailed:
    """The server refused the call (a VOICE_ERROR), or this device was removed from it."""

    code: str
    message: str


SignallingEvent = (
    StartTransports
    | ApplyPublishAnswer
    | AnswerSubscribeOffer
    | ParticipantsChanged
    | SpeakingChanged
    | CallFailed
)


def _map(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"the gateway sent a malformed {what}")
    return value


def _str(d: dict[str, Any], key: str, what: str, limit: int = _MAX_ID) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise ProtocolError(f"the gateway sent a {what} without a valid {key}")
    return value


def _opt_str(d: dict[str, Any], key: str, what: str) -> str | None:
    return None if d.get(key) is None else _str(d, key, what)


def _bool(d: dict[str, Any], key: str, what: str) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"the gateway sent a {what} whose {key} is not a boolean")
    return value


def _index(d: dict[str, Any], what: str) -> int:
    value = d.get("sender_index")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SENDER_INDEX:
        raise ProtocolError(f"the gateway sent a {what} without a valid sender_index")
    return value


def _list(value: object, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise ProtocolError(f"the gateway sent a malformed {what} list")
    return value


def decode_voice_state_untrusted(value: object) -> VoiceState:
    """A VOICE_STATE_UPDATE's ``d`` (also the items of READY's ``voice_states``)."""
    d = _map(value, "voice state")
    what = "voice state"
    return VoiceState(
        guild_id=_str(d, "guild_id", what),
        channel_id=_opt_str(d, "channel_id", what),
        user_id=_str(d, "user_id", what),
        device_id=_str(d, "device_id", what),
        sender_index=_index(d, what) if d.get("channel_id") is not None else 0,
        self_mute=_bool(d, "self_mute", what),
        self_deaf=_bool(d, "self_deaf", what),
        mute=_bool(d, "mute", what),
        deaf=_bool(d, "deaf", what),
        suppress=_bool(d, "suppress", what),
    )


def decode_ice_servers_untrusted(value: object) -> tuple[IceServer, ...]:
    """The ``ice_servers`` of a VOICE_SERVER_UPDATE."""
    servers = []
    for raw in _list(value, "ICE server", MAX_ICE_SERVERS):
        d = _map(raw, "ICE server")
        urls = _list(d.get("urls"), "ICE server URL", MAX_URLS)
        if not urls or not all(
            isinstance(u, str) and 0 < len(u) <= 512 and u.split(":", 1)[0] in _ICE_SCHEMES
            for u in urls
        ):
            raise ProtocolError("the gateway sent an ICE server without stun:/turn: URLs")
        username, credential = d.get("username"), d.get("credential")
        for item in (username, credential):
            if item is not None and (not isinstance(item, str) or len(item) > 512):
                raise ProtocolError("the gateway sent malformed TURN credentials")
        servers.append(IceServer(tuple(urls), username, credential))
    return tuple(servers)


_ICE_SCHEMES = frozenset({"stun", "stuns", "turn", "turns"})


def _sdp(d: dict[str, Any], key: str, what: str) -> str:
    return _str(d, key, what, MAX_SDP)


def _consumers_untrusted(value: object) -> tuple[ConsumerInfo, ...]:
    out = []
    for raw in _list(value, "consumer", MAX_CONSUMERS):
        d = _map(raw, "consumer")
        kind = _str(d, "kind", "consumer")
        if kind not in ("audio", "video"):
            raise ProtocolError("the gateway sent a consumer of an unknown kind")
        out.append(
            ConsumerInfo(
                mid=_str(d, "mid", "consumer", 32),
                kind=kind,
                user_id=_str(d, "user_id", "consumer"),
                device_id=_str(d, "device_id", "consumer"),
                sender_index=_index(d, "consumer"),
            )
        )
    if len({c.mid for c in out}) != len(out):
        raise ProtocolError("the gateway sent two consumers under one mid")
    return tuple(out)


class CallSignalling:
    """One device's signalling for one voice call (docs/voice.md), sans-I/O."""

    def __init__(
        self,
        guild_id: str,
        channel_id: str,
        user_id: str,
        device_id: str,
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
        roster: VoiceStates | None = None,
    ) -> None:
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.user_id = user_id
        self.device_id = device_id
        self.self_mute = self_mute
        self.self_deaf = self_deaf
        self.state = CallState.IDLE
        self.voice_session_id: str | None = None
        self.sender_index: int | None = None
        self.ice_servers: tuple[IceServer, ...] = ()
        #: Everyone in the channel (this device excluded), from the voice states.
        self.participants: dict[tuple[str, str], VoiceState] = {}
        #: This device's own voice state as the server last reported it.
        self.own: VoiceState | None = None
        #: mid → who the receive transport's m-section carries (latest offer).
        self.consumers: dict[str, ConsumerInfo] = {}
        self.speaking: set[tuple[str, str]] = set()
        self.failure: CallFailed | None = None
        #: Every voice state seen in the guilds (the client's), to find who is already in
        #: a channel this device is moved to.
        self._roster = roster

    # --- what this device sends ----------------------------------------------------------

    def _state_frame(self, channel_id: str | None) -> tuple[Op, dict[str, Any]]:
        return Op.VOICE_STATE, {
            "guild_id": self.guild_id,
            "channel_id": channel_id,
            "self_mute": self.self_mute,
            "self_deaf": self.self_deaf,
        }

    def join(self) -> tuple[Op, dict[str, Any]]:
        """Op 4 asking to join the channel (again, after a failure or a fresh session)."""
        self.state = CallState.JOINING
        self.failure = None
        return self._state_frame(self.channel_id)

    def set_self(self, *, mute: bool, deaf: bool) -> tuple[Op, dict[str, Any]]:
        """Op 4 changing self mute/deafen in the current channel."""
        self.self_mute, self.self_deaf = mute, deaf
        return self._state_frame(self.channel_id)

    def leave(self) -> tuple[Op, dict[str, Any]]:
        """Op 4 leaving voice; the call is idle afterwards."""
        self.state = CallState.IDLE
        self.voice_session_id = None
        self.participants.clear()
        self.consumers.clear()
        self.speaking.clear()
        return self._state_frame(None)

    def publish(self, sdp_offer: str) -> tuple[Op, dict[str, Any]]:
        """Op 12 carrying the send transport's offer for the current voice session."""
        if self.voice_session_id is None:
            raise ProtocolError("no voice session to publish in (no VOICE_SERVER_UPDATE yet)")
        return Op.VOICE_PUBLISH, {"voice_session_id": self.voice_session_id, "sdp_offer": sdp_offer}

    def subscribe_answer(self, sdp_answer: str) -> tuple[Op, dict[str, Any]]:
        """Op 13 answering the latest VOICE_SUBSCRIBE_OFFER."""
        if self.voice_session_id is None:
            raise ProtocolError("no voice session to answer in")
        return Op.VOICE_SUBSCRIBE_ANSWER, {
            "voice_session_id": self.voice_session_id,
            "sdp_answer": sdp_answer,
        }

    # --- what the server sends -------------------------------------------------------------

    def ready_untrusted(self, voice_states: object) -> list[SignallingEvent]:
        """READY's ``voice_states``: everyone already in the channel."""
        states = [decode_voice_state_untrusted(s) for s in _list(voice_states, "voice state", 4096)]
        self.participants = {
            (s.user_id, s.device_id): s
            for s in states
            if s.channel_id == self.channel_id and s.device_id != self.device_id
        }
        return [ParticipantsChanged(dict(self.participants))]

    def receive_untrusted(self, event_type: str, data: object) -> list[SignallingEvent]:
        """Feed one dispatch; returns what the media layer must do (often nothing)."""
        if event_type == EventName.VOICE_STATE_UPDATE:
            return self._voice_state(decode_voice_state_untrusted(data))
        if event_type == EventName.SPEAKING:
            return self._speaking(data)
        if self.state in (CallState.IDLE, CallState.FAILED):
            return []
        if event_type == EventName.VOICE_SERVER_UPDATE:
            return self._server_update(data)
        if event_type == EventName.VOICE_ERROR:
            return self._error(data)
        if event_type == EventName.VOICE_PUBLISH_ANSWER:
            d = _map(data, "VOICE_PUBLISH_ANSWER")
            if not self._current(d, "VOICE_PUBLISH_ANSWER"):
                return []
            answer = _sdp(d, "sdp_answer", "VOICE_PUBLISH_ANSWER")
            self.state = CallState.CONNECTED
            return [ApplyPublishAnswer(answer)]
        if event_type == EventName.VOICE_SUBSCRIBE_OFFER:
            d = _map(data, "VOICE_SUBSCRIBE_OFFER")
            if not self._current(d, "VOICE_SUBSCRIBE_OFFER"):
                return []
            offer = _sdp(d, "sdp_offer", "VOICE_SUBSCRIBE_OFFER")
            consumers = _consumers_untrusted(d.get("consumers", []))
            self.consumers = {c.mid: c for c in consumers}
            return [AnswerSubscribeOffer(offer, consumers)]
        return []

    def _current(self, d: dict[str, Any], what: str) -> bool:
        return _str(d, "voice_session_id", what) == self.voice_session_id

    def _server_update(self, data: object) -> list[SignallingEvent]:
        what = "VOICE_SERVER_UPDATE"
        d = _map(data, what)
        if _str(d, "guild_id", what) != self.guild_id:
            return []
        channel_id = _str(d, "channel_id", what)
        session_id = _str(d, "voice_session_id", what)
        sender_index = _index(d, what)
        ice_servers = decode_ice_servers_untrusted(d.get("ice_servers", []))
        # A move puts this device in another channel of the guild: follow it.
        if channel_id != self.channel_id:
            self.channel_id = channel_id
            self.participants.clear()
            # Those already there sent their voice states before this device arrived.
            if self._roster is not None:
                own = (self.user_id, self.device_id)
                here = self._roster.in_channel(channel_id).items()
                self.participants.update((k, v) for k, v in here if k != own)
        self.voice_session_id = session_id
        self.sender_index = sender_index
        self.ice_servers = ice_servers
        self.consumers.clear()
        self.state = CallState.CONNECTING
        return [StartTransports(session_id, sender_index, ice_servers)]

    def _error(self, data: object) -> list[SignallingEvent]:
        d = _map(data, "VOICE_ERROR")
        code = _str(d, "code", "VOICE_ERROR")
        message = d.get("message")
        failure = CallFailed(code, message[:500] if isinstance(message, str) else code)
        if code == "bad_session" and self.state is CallState.CONNECTED:
            # A late op for a replaced session: the current one goes on.
            return []
        self.state = CallState.FAILED
        self.failure = failure
        return [failure]

    def _voice_state(self, state: VoiceState) -> list[SignallingEvent]:
        if state.guild_id != self.guild_id:
            return []
        key = (state.user_id, state.device_id)
        if state.device_id == self.device_id and state.user_id == self.user_id:
            self.own = state
            if state.channel_id is None and self.state not in (CallState.IDLE, CallState.FAILED):
                # Disconnected by a moderator (or by the server): the call is over.
                self.state = CallState.FAILED
                self.failure = CallFailed("disconnected", "removed from the voice channel")
                self.participants.clear()
                return [self.failure, ParticipantsChanged({})]
            return []
        before = self.participants.get(key)
        if state.channel_id == self.channel_id:
            self.participants[key] = state
        else:
            self.participants.pop(key, None)
            self.speaking.discard(key)
        if before == self.participants.get(key):
            return []
        return [ParticipantsChanged(dict(self.participants))]

    def _speaking(self, data: object) -> list[SignallingEvent]:
        d = _map(data, "SPEAKING")
        if _opt_str(d, "channel_id", "SPEAKING") != self.channel_id:
            return []
        key = (_str(d, "user_id", "SPEAKING"), _str(d, "device_id", "SPEAKING"))
        speaking = _bool(d, "speaking", "SPEAKING")
        if speaking == (key in self.speaking):
            return []
        if speaking:
            self.speaking.add(key)
        else:
            self.speaking.discard(key)
        return [SpeakingChanged(key[0], key[1], speaking)]


class VoiceStates:
    """Every voice state this device has been told of (READY's ``voice_states`` and each
    VOICE_STATE_UPDATE since), in memory: who is in which voice channel, before and while
    this device is in a call."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], VoiceState] = {}

    def ready_untrusted(self, voice_states: object) -> None:
        """Replace everything with READY's ``voice_states`` (a fresh session)."""
        states = [decode_voice_state_untrusted(s) for s in _list(voice_states, "voice state", 4096)]
        self._states = {(s.user_id, s.device_id): s for s in states if s.channel_id is not None}

    def update(self, state: VoiceState) -> None:
        """Apply one VOICE_STATE_UPDATE."""
        key = (state.user_id, state.device_id)
        if state.channel_id is None:
            self._states.pop(key, None)
        else:
            self._states[key] = state

    def in_channel(self, channel_id: str) -> dict[tuple[str, str], VoiceState]:
        """The devices in ``channel_id`` now, by (user id, device id)."""
        return {k: s for k, s in self._states.items() if s.channel_id == channel_id}
