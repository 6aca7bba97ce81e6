"""The node ↔ worker channel: length-prefixed msgpack frames over the worker's stdin/stdout.

After its one JSON ``ready`` line, a worker speaks only in frames: a 4-byte big-endian
length and a msgpack map. The node sends requests ``{id, method, params}``; the worker
answers ``{id, result}`` or ``{id, error: {code, message}}`` and pushes events
``{event, data}`` (active speaker, transport closed). The same request and reply shapes
travel on the node ↔ control WebSocket, so the node routes them without rewriting.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

__all__ = ["MAX_FRAME", "FrameDecoder", "FrameError", "encode_frame"]

MAX_FRAME = 1 << 20
_LENGTH = struct.Struct("!I")


class FrameError(ValueError):
    """The peer sent a frame that is too large or not a msgpack map."""


def encode_frame(message: dict[str, Any]) -> bytes:
    """One frame: length prefix and msgpack body."""
    body = msgpack.packb(message, use_bin_type=True)
    return _LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Sans-I/O reassembly of frames from a byte stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed_untrusted(self, data: bytes | bytearray) -> list[dict[str, Any]]:
        """Add bytes; return every complete frame they finish."""
        self._buffer += data
        frames: list[dict[str, Any]] = []
        while len(self._buffer) >= 4:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise FrameError("frame too large")
            if len(self._buffer) < 4 + length:
                break
            body = bytes(self._buffer[4 : 4 + length])
            del self._buffer[: 4 + length]
            try:
                frame = msgpack.unpackb(body, raw=False, strict_map_key=False)
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                raise FrameError(f"undecodable frame: {exc}") from None
            if not isinstance(frame, dict):
                raise FrameError("frame is not a map")
            frames.append(frame)
        return frames
