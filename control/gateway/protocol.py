"""Gateway frames: msgpack maps ``{op, d, s, t}`` in Discord's shape.

Ops: 0 DISPATCH, 1 HEARTBEAT, 2 IDENTIFY, 3 PRESENCE, 4 VOICE_STATE, 6 RESUME, 7 RECONNECT,
9 INVALID_SESSION (d = resumable), 10 HELLO, 11 HEARTBEAT_ACK. Dispatches carry a sequence
number ``s`` and an event name ``t``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "Close",
    "Frame",
    "GatewayProtocolError",
    "Op",
    "decode_frame_untrusted",
    "encode_dispatch",
    "encode_frame",
]

#: Largest frame a client may send.
MAX_FRAME = 16 * 1024


class Op(enum.IntEnum):
    """Gateway opcodes."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE = 3
    VOICE_STATE = 4
    RESUME = 6
    RECONNECT = 7
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class Close(enum.IntEnum):
    """WebSocket close codes the gateway uses (Discord's numbering up to 4009; 4020 and 4021
    are hushroom's, for a token that stops being valid while its connection is open)."""

    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SEQ = 4007
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    #: Sign-out, device removal or account deletion: the session ends, no RESUME.
    SESSION_REVOKED = 4020
    #: The token expired: sign in again, then RESUME (within the window) or IDENTIFY.
    SESSION_EXPIRED = 4021


class GatewayProtocolError(Exception):
    """A client frame violates the protocol; the connection closes with ``code``."""

    def __init__(self, code: Close, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Frame:
    """A decoded client frame: its opcode and payload."""

    op: Op
    d: Any


def encode_frame(op: Op, d: Any = None, s: int | None = None, t: str | None = None) -> bytes:
    """Encode one frame."""
    return msgpack.packb({"op": int(op), "d": d, "s": s, "t": t}, use_bin_type=True)


_DISPATCH_HEAD = b"\x84" + msgpack.packb("op") + msgpack.packb(0) + msgpack.packb("d")


def encode_dispatch(packed_d: bytes, s: int, t: str) -> bytes:
    """A DISPATCH frame around an already packed payload.

    Fan-out packs ``d`` once per event and only the sequence number per session, which is
    what keeps delivery to a thousand sessions cheap.
    """
    return b"".join(
        (
            _DISPATCH_HEAD,
            packed_d,
            msgpack.packb("s"),
            msgpack.packb(s),
            msgpack.packb("t"),
            msgpack.packb(t),
        )
    )


def decode_frame_untrusted(raw: bytes | str) -> Frame:
    """Parse a client frame; raise :class:`GatewayProtocolError` on anything malformed."""
    if isinstance(raw, str):
        raise GatewayProtocolError(Close.DECODE_ERROR, "frames are binary msgpack")
    if len(raw) > MAX_FRAME:
        raise GatewayProtocolError(Close.DECODE_ERROR, "frame too large")
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=True, timestamp=0)
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException):
        raise GatewayProtocolError(Close.DECODE_ERROR, "malformed msgpack") from None
    if not isinstance(value, dict) or not isinstance(value.get("op"), int):
        raise GatewayProtocolError(Close.DECODE_ERROR, "a frame is a map with an integer op")
    if isinstance(value["op"], bool):
        raise GatewayProtocolError(Close.DECODE_ERROR, "op must be an integer")
    try:
        op = Op(value["op"])
    except ValueError:
        raise GatewayProtocolError(Close.UNKNOWN_OPCODE, "unknown opcode") from None
    return Frame(op, value.get("d"))
