"""Gateway frames on the server: msgpack maps ``{op, d, s, t}`` in Discord's shape.

The opcodes, close codes and dispatch names are the wire contract's (:mod:`contract.gateway`);
this module encodes the server's frames and decodes the client's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from contract.gateway import MAX_CLIENT_FRAME, Close, Op

__all__ = [
    "Frame",
    "GatewayProtocolError",
    "decode_frame_untrusted",
    "encode_dispatch",
    "encode_frame",
]


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
    if len(raw) > MAX_CLIENT_FRAME:
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
