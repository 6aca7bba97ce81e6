"""Message framing on stream transports (RFC 8489 §6.2.2, RFC 8656 §12.5).

Over TCP and TLS, STUN messages and ChannelData frames follow each other without gaps. A
STUN message is 20 bytes of header plus its length field; a ChannelData frame is 4 bytes of
header plus its length, padded to a multiple of 4 on streams. The first byte tells them apart
(RFC 7983): 0-3 STUN, 0x40-0x7F ChannelData (channel numbers 0x4000-0x7FFF, RFC 5766's
range, which the server accepts). Anything else means the stream is garbage and must be
closed. Lengths are 16-bit, so the buffer is bounded by one frame.
"""

from __future__ import annotations

__all__ = ["FramingError", "StreamFramer", "pad_channel_data"]


class FramingError(ValueError):
    """The byte stream does not start with a STUN message or a ChannelData frame."""


def pad_channel_data(frame: bytes) -> bytes:
    """Pad a ChannelData frame to a multiple of 4 bytes, as streams require."""
    pad = -len(frame) & 3
    return frame + b"\x00" * pad if pad else frame


class StreamFramer:
    """Cuts a byte stream into whole frames; feed bytes, get complete frames back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed_untrusted(self, data: bytes | bytearray) -> list[bytes]:
        """Append ``data`` and return every complete frame; raise :class:`FramingError`."""
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            first = buf[pos]
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            if first < 0x40:
                size = 20 + length
            elif first < 0x80:
                size = 4 + length + (-length & 3)
            else:
                raise FramingError("neither STUN nor ChannelData on the stream")
            if n - pos < size:
                break
            frames.append(bytes(buf[pos : pos + size]))
            pos += size
        if pos:
            del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame (at most one frame's worth)."""
        return len(self._buffer)
