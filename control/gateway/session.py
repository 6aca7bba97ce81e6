"""Sans-I/O gateway cores: one :class:`ConnectionCore` per WebSocket, one
:class:`GatewaySession` per resumable session, one :class:`PendingConnections` per process.
No sockets and no clocks of their own: the trio shell feeds frames and the time, performs
the actions they return and wakes them at :attr:`ConnectionCore.wake_at`.

Limits on hostile clients live here, not in the shell: a new connection has
``identify_timeout_s`` to IDENTIFY or RESUME (heartbeats do not buy more time) and a
process holds at most ``limit`` such connections at once; a connection may send
``frame_limit`` frames per ``frame_window_s`` (Discord's 120 per 60 s; heartbeats count, and
the heartbeats HELLO asks for come on top) and have at most ``voice_limit`` voice ops
(4, 12, 13) waiting for their SFU round trips;
a session's token expiry is a deadline of its connection, so an expired token is cut
without reading the store per frame.
"""

from __future__ import annotations

import collections
import enum
import math
from dataclasses import dataclass
from typing import Any

from contract.gateway import Close, Op

from .protocol import (
    GatewayProtocolError,
    decode_frame_untrusted,
    encode_dispatch,
    encode_frame,
)

__all__ = [
    "CloseConnection",
    "ConnectionCore",
    "GatewaySession",
    "Identify",
    "PendingConnections",
    "PresenceUpdate",
    "Resume",
    "SendFrame",
    "VoiceAction",
    "VoicePublish",
    "VoiceStateRequest",
    "VoiceSubscribeAnswer",
]

PRESENCE_STATUSES = ("online", "idle", "dnd", "offline")
#: A client may be this late with a heartbeat (a multiple of the interval) before it is cut.
HEARTBEAT_TOLERANCE = 1.5
#: Seconds a new connection may take to IDENTIFY or RESUME before it is closed (4003).
IDENTIFY_TIMEOUT_S = 10.0
#: Frames a client may send per window before it is closed (4008), besides the heartbeats
#: its interval calls for; heartbeats beyond those count.
FRAME_LIMIT = 120
FRAME_WINDOW_S = 60.0
#: Voice ops (4, 12, 13) one connection may have received and not yet finished, at most.
#: They wait for SFU round trips, so the shell runs them apart from the reader, one at a
#: time in arrival order; a client sending more than this before they are done is closed
#: (4008) instead of having them queued without bound. A well-behaved client has an op 4,
#: an op 12 and an answer or two in flight (up to ~80 KiB each: a frame's bound).
VOICE_LIMIT = 16
#: Connections of one process that have not identified yet, at most.
PENDING_LIMIT = 1000
_TOKEN_MAX = 128
#: Ids on the wire are at most this long (snowflake-like ids, voice session ids).
_ID_MAX = 64


@dataclass(frozen=True)
class SendFrame:
    """Send these bytes to the client."""

    frame: bytes


@dataclass(frozen=True)
class CloseConnection:
    """Close the WebSocket with ``code``."""

    code: int
    reason: str


@dataclass(frozen=True)
class Identify:
    """The client asks to start a session with ``token``."""

    token: str
    status: str


@dataclass(frozen=True)
class Resume:
    """The client asks to resume ``session_id`` after sequence ``seq``."""

    token: str
    session_id: str
    seq: int


@dataclass(frozen=True)
class PresenceUpdate:
    """The client sets its presence."""

    status: str


@dataclass(frozen=True)
class VoiceStateRequest:
    """Op 4: join, move, self mute/deaf, or leave (``channel_id`` None) (docs/voice.md)."""

    guild_id: str
    channel_id: str | None
    self_mute: bool
    self_deaf: bool


@dataclass(frozen=True)
class VoicePublish:
    """Op 12: the send transport's SDP offer."""

    voice_session_id: str
    sdp_offer: str


@dataclass(frozen=True)
class VoiceSubscribeAnswer:
    """Op 13: the answer to the receive transport's latest offer."""

    voice_session_id: str
    sdp_answer: str


#: The ops that wait for the voice service (and so for SFU round trips).
VoiceAction = VoiceStateRequest | VoicePublish | VoiceSubscribeAnswer

Action = (
    SendFrame
    | CloseConnection
    | Identify
    | Resume
    | PresenceUpdate
    | VoiceStateRequest
    | VoicePublish
    | VoiceSubscribeAnswer
)


def _id_untrusted(d: dict[Any, Any], key: str, *, nullable: bool = False) -> str | None:
    value = d.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= _ID_MAX:
        raise GatewayProtocolError(Close.DECODE_ERROR, f"{key} must be an id")
    return value


def _flag_untrusted(d: dict[Any, Any], key: str) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise GatewayProtocolError(Close.DECODE_ERROR, f"{key} must be a boolean")
    return value


def decode_voice_untrusted(op: Op, d: Any) -> Action:
    """The action of a voice op's payload; :class:`GatewayProtocolError` when malformed
    (the frame bound already limits an SDP to ~80 KiB)."""
    if not isinstance(d, dict):
        raise GatewayProtocolError(Close.DECODE_ERROR, "d must be a map")
    if op is Op.VOICE_STATE:
        guild_id = _id_untrusted(d, "guild_id")
        assert guild_id is not None
        return VoiceStateRequest(
            guild_id,
            _id_untrusted(d, "channel_id", nullable=True),
            _flag_untrusted(d, "self_mute"),
            _flag_untrusted(d, "self_deaf"),
        )
    voice_session_id = _id_untrusted(d, "voice_session_id")
    assert voice_session_id is not None
    key = "sdp_offer" if op is Op.VOICE_PUBLISH else "sdp_answer"
    sdp = d.get(key)
    if not isinstance(sdp, str) or not sdp:
        raise GatewayProtocolError(Close.DECODE_ERROR, f"{key} must be a string")
    if op is Op.VOICE_PUBLISH:
        return VoicePublish(voice_session_id, sdp)
    return VoiceSubscribeAnswer(voice_session_id, sdp)


class Phase(enum.Enum):
    """Where a connection is in its life."""

    AWAITING_IDENTIFY = "awaiting identify"
    IDENTIFYING = "identifying"
    ESTABLISHED = "established"
    CLOSED = "closed"


class ConnectionCore:
    """The protocol state of one gateway WebSocket (HELLO, IDENTIFY/RESUME, heartbeats,
    frame rate, voice ops in flight, token expiry)."""

    def __init__(
        self,
        heartbeat_interval_s: float,
        now: float,
        *,
        identify_timeout_s: float = IDENTIFY_TIMEOUT_S,
        frame_limit: int = FRAME_LIMIT,
        frame_window_s: float = FRAME_WINDOW_S,
        voice_limit: int = VOICE_LIMIT,
    ) -> None:
        self.interval = heartbeat_interval_s
        self.identify_timeout_s = identify_timeout_s
        # Heartbeats count, but those the server itself asks for (HELLO's interval) come on
        # top, so no heartbeat interval an operator picks can push a client over the limit.
        self.frame_limit = frame_limit + math.ceil(frame_window_s / heartbeat_interval_s)
        self.frame_window_s = frame_window_s
        self.phase = Phase.AWAITING_IDENTIFY
        #: When the client must have identified (before) or heartbeated (after) by.
        self.deadline = now + identify_timeout_s
        #: When the session's token expires (infinite until established).
        self.token_deadline = math.inf
        self._window_start = now
        self._window_frames = 0
        self.voice_limit = voice_limit
        #: Voice ops handed to the shell and not yet reported done (:meth:`voice_done`).
        self.voice_pending = 0

    @property
    def wake_at(self) -> float:
        """When the shell must call :meth:`check_timeout` next."""
        return min(self.deadline, self.token_deadline)

    def hello(self) -> bytes:
        """The HELLO frame announcing the heartbeat interval (milliseconds)."""
        return encode_frame(Op.HELLO, {"heartbeat_interval": int(self.interval * 1000)})

    def receive_untrusted(self, raw: bytes | str, now: float) -> list[Action]:
        """Feed one client frame; return what the shell must do."""
        if self.phase is Phase.CLOSED:
            return []
        try:
            self._count_frame(now)
            return self._handle(raw, now)
        except GatewayProtocolError as exc:
            self.phase = Phase.CLOSED
            return [CloseConnection(exc.code, exc.reason)]

    def _count_frame(self, now: float) -> None:
        # A fixed window (two numbers per connection, not a timestamp per frame): at most
        # frame_limit frames from the first frame of a window until it is frame_window_s old.
        if now - self._window_start >= self.frame_window_s:
            self._window_start, self._window_frames = now, 0
        self._window_frames += 1
        if self._window_frames > self.frame_limit:
            raise GatewayProtocolError(
                Close.RATE_LIMITED,
                f"more than {self.frame_limit} frames in {self.frame_window_s:g} s",
            )

    def _handle(self, raw: bytes | str, now: float) -> list[Action]:
        frame = decode_frame_untrusted(raw)
        d = frame.d
        if frame.op is Op.HEARTBEAT:
            # Before IDENTIFY a heartbeat is answered but buys no time: the identify
            # deadline is what frees a process from sockets that never authenticate.
            if self.phase is not Phase.AWAITING_IDENTIFY:
                self.deadline = now + self.interval * HEARTBEAT_TOLERANCE
            return [SendFrame(encode_frame(Op.HEARTBEAT_ACK))]
        if frame.op in (Op.IDENTIFY, Op.RESUME):
            if self.phase is not Phase.AWAITING_IDENTIFY:
                raise GatewayProtocolError(Close.ALREADY_AUTHENTICATED, "already identified")
            if not isinstance(d, dict):
                raise GatewayProtocolError(Close.DECODE_ERROR, "d must be a map")
            token = d.get("token")
            if not isinstance(token, str) or not 0 < len(token) <= _TOKEN_MAX:
                raise GatewayProtocolError(Close.DECODE_ERROR, "token must be a string")
            self.phase = Phase.IDENTIFYING
            self.deadline = now + self.interval * HEARTBEAT_TOLERANCE
            if frame.op is Op.IDENTIFY:
                status = d.get("status", "online")
                if status not in PRESENCE_STATUSES:
                    raise GatewayProtocolError(Close.DECODE_ERROR, "unknown presence status")
                return [Identify(token, status)]
            session_id, seq = d.get("session_id"), d.get("seq")
            if not isinstance(session_id, str) or len(session_id) > 64:
                raise GatewayProtocolError(Close.DECODE_ERROR, "session_id must be a string")
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**53:
                raise GatewayProtocolError(Close.DECODE_ERROR, "seq must be an integer")
            return [Resume(token, session_id, seq)]
        if self.phase is not Phase.ESTABLISHED:
            raise GatewayProtocolError(Close.NOT_AUTHENTICATED, "identify first")
        if frame.op is Op.PRESENCE:
            status = d.get("status") if isinstance(d, dict) else None
            if status not in PRESENCE_STATUSES:
                raise GatewayProtocolError(Close.DECODE_ERROR, "unknown presence status")
            assert isinstance(status, str)
            return [PresenceUpdate(status)]
        if frame.op in (Op.VOICE_STATE, Op.VOICE_PUBLISH, Op.VOICE_SUBSCRIBE_ANSWER):
            if self.voice_pending >= self.voice_limit:
                raise GatewayProtocolError(
                    Close.RATE_LIMITED, f"more than {self.voice_limit} voice ops in flight"
                )
            action = decode_voice_untrusted(frame.op, d)
            self.voice_pending += 1
            return [action]
        raise GatewayProtocolError(
            Close.UNKNOWN_OPCODE, f"op {int(frame.op)} is not sent by clients"
        )

    def voice_done(self) -> None:
        """The shell finished one voice op it was handed (in the order they came)."""
        self.voice_pending -= 1

    def established(self, now: float, token_expires_in_s: float) -> None:
        """IDENTIFY or RESUME succeeded with a token valid for ``token_expires_in_s`` more."""
        self.phase = Phase.ESTABLISHED
        self.token_deadline = now + token_expires_in_s

    def refused(self, now: float) -> list[Action]:
        """IDENTIFY or RESUME failed; the client may identify anew (INVALID_SESSION d=false)
        within a fresh identify timeout."""
        self.phase = Phase.AWAITING_IDENTIFY
        self.deadline = now + self.identify_timeout_s
        return [SendFrame(encode_frame(Op.INVALID_SESSION, False))]

    def check_timeout(self, now: float) -> CloseConnection | None:
        """The close to perform when the token expired, the client never identified or it
        missed its heartbeat; None when no deadline has passed."""
        if self.phase is Phase.CLOSED:
            return None
        if now >= self.token_deadline:
            self.phase = Phase.CLOSED
            return CloseConnection(Close.SESSION_EXPIRED, "session token expired")
        if now >= self.deadline:
            unidentified = self.phase is Phase.AWAITING_IDENTIFY
            self.phase = Phase.CLOSED
            if unidentified:
                return CloseConnection(Close.NOT_AUTHENTICATED, "identify timeout")
            return CloseConnection(Close.SESSION_TIMED_OUT, "heartbeat missed")
        return None


class PendingConnections:
    """How many connections of this process have not identified yet, bounded by ``limit``.

    A connection is admitted before its WebSocket is accepted and released once it is
    established (or gone); past the limit new connections are refused, so sockets that
    never authenticate cannot pile up faster than the identify timeout clears them.
    """

    def __init__(self, limit: int = PENDING_LIMIT) -> None:
        self.limit = limit
        self.count = 0

    def admit(self) -> bool:
        """Count one more pending connection; False (and nothing counted) when full."""
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def release(self) -> None:
        """A pending connection identified or closed."""
        self.count -= 1


class GatewaySession:
    """A resumable session: who it belongs to, its sequence counter and replay buffer."""

    def __init__(
        self, session_id: str, user_id: str, device_id: str, replay_limit: int = 2048
    ) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.device_id = device_id
        self.seq = 0
        self._buffer: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=replay_limit)

    def dispatch(self, event_type: str, packed_data: bytes) -> bytes:
        """Number the next dispatch, keep it for replay, and return its frame."""
        self.seq += 1
        frame = encode_dispatch(packed_data, self.seq, event_type)
        self._buffer.append((self.seq, frame))
        return frame

    def replay_after(self, seq: int) -> list[bytes] | None:
        """The frames after ``seq`` in order, or None when some have left the window."""
        if seq > self.seq:
            return None
        if seq == self.seq:
            return []
        if not self._buffer or self._buffer[0][0] > seq + 1:
            return None
        return [frame for number, frame in self._buffer if number > seq]

    def snapshot(self) -> dict[str, Any]:
        """What a RESUMED dispatch reports."""
        return {"session_id": self.session_id, "seq": self.seq}
