"""Sans-I/O gateway cores: one :class:`ConnectionCore` per WebSocket, one
:class:`GatewaySession` per resumable session. No sockets and no clocks of their own: the
trio shell feeds frames and the time, and performs the actions they return.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass
from typing import Any

from .protocol import (
    Close,
    GatewayProtocolError,
    Op,
    decode_frame_untrusted,
    encode_dispatch,
    encode_frame,
)

__all__ = [
    "CloseConnection",
    "ConnectionCore",
    "GatewaySession",
    "Identify",
    "PresenceUpdate",
    "Resume",
    "SendFrame",
]

PRESENCE_STATUSES = ("online", "idle", "dnd", "offline")
#: A client may be this late with a heartbeat (a multiple of the interval) before it is cut.
HEARTBEAT_TOLERANCE = 1.5
_TOKEN_MAX = 128


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


Action = SendFrame | CloseConnection | Identify | Resume | PresenceUpdate


class Phase(enum.Enum):
    """Where a connection is in its life."""

    AWAITING_IDENTIFY = "awaiting identify"
    IDENTIFYING = "identifying"
    ESTABLISHED = "established"
    CLOSED = "closed"


class ConnectionCore:
    """The protocol state of one gateway WebSocket (HELLO, IDENTIFY/RESUME, heartbeats)."""

    def __init__(self, heartbeat_interval_s: float, now: float) -> None:
        self.interval = heartbeat_interval_s
        self.phase = Phase.AWAITING_IDENTIFY
        self.deadline = now + heartbeat_interval_s * HEARTBEAT_TOLERANCE

    def hello(self) -> bytes:
        """The HELLO frame announcing the heartbeat interval (milliseconds)."""
        return encode_frame(Op.HELLO, {"heartbeat_interval": int(self.interval * 1000)})

    def receive_untrusted(self, raw: bytes | str, now: float) -> list[Action]:
        """Feed one client frame; return what the shell must do."""
        if self.phase is Phase.CLOSED:
            return []
        try:
            return self._handle(raw, now)
        except GatewayProtocolError as exc:
            self.phase = Phase.CLOSED
            return [CloseConnection(exc.code, exc.reason)]

    def _handle(self, raw: bytes | str, now: float) -> list[Action]:
        frame = decode_frame_untrusted(raw)
        d = frame.d
        if frame.op is Op.HEARTBEAT:
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
        raise GatewayProtocolError(
            Close.UNKNOWN_OPCODE, f"op {int(frame.op)} is not sent by clients"
        )

    def established(self) -> None:
        """IDENTIFY or RESUME succeeded."""
        self.phase = Phase.ESTABLISHED

    def refused(self) -> list[Action]:
        """IDENTIFY or RESUME failed; the client may identify anew (INVALID_SESSION d=false)."""
        self.phase = Phase.AWAITING_IDENTIFY
        return [SendFrame(encode_frame(Op.INVALID_SESSION, False))]

    def check_timeout(self, now: float) -> CloseConnection | None:
        """The close to perform when the client missed its heartbeat (or never identified)."""
        if self.phase is not Phase.CLOSED and now >= self.deadline:
            self.phase = Phase.CLOSED
            return CloseConnection(Close.SESSION_TIMED_OUT, "heartbeat missed")
        return None


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
