"""RTP packets (RFC 3550 §5.1) and their header extensions (RFC 8285).

The SFU never looks at a payload beyond the clear codec header bytes (see :mod:`sfu.vp8`):
frames are SFrame-encrypted end to end. What it does read are the fixed header, for
rewriting, and a few header extensions: RFC 6464 audio level for the active speaker,
``sdes:mid`` / ``rid`` for routing simulcast layers, transport-wide sequence numbers for
congestion feedback.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sfu.errors import MalformedRtp

__all__ = [
    "ABS_SEND_TIME",
    "AUDIO_LEVEL",
    "HEADER",
    "MID",
    "REPAIRED_RID",
    "RID",
    "TRANSPORT_CC",
    "AudioLevel",
    "RtpPacket",
    "decode_audio_level_untrusted",
    "find_extension_untrusted",
    "parse_extensions_untrusted",
    "serialize_extensions",
]

# Header extension URIs the SFU negotiates (RFC 8285 §5, and the sources named below).
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"  # RFC 6464
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
MID = "urn:ietf:params:rtp-hdrext:sdes:mid"  # RFC 8843 §15
RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"  # RFC 8852 §3
REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"  # RFC 8852 §3

HEADER = struct.Struct("!BBHII")
_PROFILE = struct.Struct("!HH")
_ONE_BYTE_PROFILE = 0xBEDE
_TWO_BYTE_PROFILE_MASK = 0xFFF0
_TWO_BYTE_PROFILE = 0x1000
# A datagram is at most 64 KiB, so 255 elements of 256 bytes cannot be exceeded anyway;
# the bound keeps a hostile packet from making us build a large dict.
_MAX_EXTENSIONS = 64


@dataclass(frozen=True, slots=True)
class AudioLevel:
    """RFC 6464 §3: level in −dBov (0 loudest, 127 silence) and the voice-activity flag."""

    level: int
    voice: bool


def parse_extensions_untrusted(profile: int, block: bytes) -> dict[int, bytes]:
    """Decode an RFC 8285 one-byte (§4.2) or two-byte (§4.3) extension block.

    Unknown profiles (RFC 3550 §5.3.1 allows any) yield no elements: the SFU forwards them
    untouched but never interprets them.
    """
    elements: dict[int, bytes] = {}
    pos = 0
    end = len(block)
    if profile == _ONE_BYTE_PROFILE:
        while pos < end:
            byte = block[pos]
            if byte == 0:  # padding between elements (§4.2)
                pos += 1
                continue
            ext_id = byte >> 4
            if ext_id == 15:  # reserved: stop processing (§4.2)
                break
            length = (byte & 0x0F) + 1
            pos += 1
            if pos + length > end:
                raise MalformedRtp("one-byte header extension element is truncated")
            if len(elements) >= _MAX_EXTENSIONS:
                raise MalformedRtp("too many header extension elements")
            elements[ext_id] = block[pos : pos + length]
            pos += length
    elif profile & _TWO_BYTE_PROFILE_MASK == _TWO_BYTE_PROFILE:
        while pos < end:
            ext_id = block[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 2 > end:
                raise MalformedRtp("two-byte header extension element is truncated")
            length = block[pos + 1]
            pos += 2
            if pos + length > end:
                raise MalformedRtp("two-byte header extension element is truncated")
            if len(elements) >= _MAX_EXTENSIONS:
                raise MalformedRtp("too many header extension elements")
            elements[ext_id] = block[pos : pos + length]
            pos += length
    return elements


def serialize_extensions(elements: dict[int, bytes]) -> tuple[int, bytes]:
    """Encode elements with the one-byte form when every id and length allows it (RFC 8285 §4).

    Returns ``(profile, block)`` with the block padded to a multiple of four bytes.
    """
    if not elements:
        return 0, b""
    one_byte = all(1 <= i <= 14 and 1 <= len(v) <= 16 for i, v in elements.items())
    out = bytearray()
    if one_byte:
        profile = _ONE_BYTE_PROFILE
        for ext_id, value in elements.items():
            out.append((ext_id << 4) | (len(value) - 1))
            out += value
    else:
        profile = _TWO_BYTE_PROFILE
        for ext_id, value in elements.items():
            if not 1 <= ext_id <= 255 or len(value) > 255:
                raise ValueError("header extension id or length out of range")
            out.append(ext_id)
            out.append(len(value))
            out += value
    out += b"\x00" * (-len(out) % 4)
    return profile, bytes(out)


def _extension_block_untrusted(data: bytes) -> tuple[int, int, int]:
    """Locate the extension block: ``(profile, start, end)`` or ``(0, 0, 0)`` when absent."""
    if len(data) < 12:
        raise MalformedRtp("RTP packet shorter than its 12-byte header")
    first = data[0]
    pos = 12 + 4 * (first & 0x0F)
    if not first & 0x10:
        return 0, 0, 0
    if len(data) < pos + 4:
        raise MalformedRtp("RTP header extension is truncated")
    profile, words = _PROFILE.unpack_from(data, pos)
    start = pos + 4
    end = start + 4 * words
    if end > len(data):
        raise MalformedRtp("RTP header extension is truncated")
    return profile, start, end


def find_extension_untrusted(data: bytes, ext_id: int) -> bytes | None:
    """Return one extension element's value straight from packet bytes, or ``None``.

    The hot path uses this instead of :meth:`RtpPacket.parse_untrusted` to read the audio
    level or rid without building a packet object.
    """
    profile, start, end = _extension_block_untrusted(data)
    if not end:
        return None
    return parse_extensions_untrusted(profile, data[start:end]).get(ext_id)


def decode_audio_level_untrusted(value: bytes) -> AudioLevel:
    """Decode an RFC 6464 §3 one-byte audio level element."""
    if len(value) < 1:
        raise MalformedRtp("audio level element is empty")
    byte = value[0]
    return AudioLevel(level=byte & 0x7F, voice=bool(byte & 0x80))


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1) with its RFC 8285 header extensions decoded by id.

    ``extension_profile`` keeps a non-RFC 8285 profile's number; its block is then kept
    whole in ``raw_extension`` so serialisation is lossless.
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extensions: dict[int, bytes] = field(default_factory=dict)
    payload: bytes = b""
    padding_size: int = 0
    extension_profile: int = 0
    raw_extension: bytes = b""

    @classmethod
    def parse_untrusted(cls, data: bytes) -> RtpPacket:
        """Decode one RTP packet (RFC 3550 §5.1; padding per §5.1 P bit)."""
        if len(data) < 12:
            raise MalformedRtp("RTP packet shorter than its 12-byte header")
        first, second, seq, timestamp, ssrc = HEADER.unpack_from(data)
        if first >> 6 != 2:
            raise MalformedRtp("RTP version is not 2")
        cc = first & 0x0F
        pos = 12 + 4 * cc
        if len(data) < pos:
            raise MalformedRtp("RTP CSRC list is truncated")
        csrc = struct.unpack_from(f"!{cc}I", data, 12) if cc else ()
        profile, start, end = _extension_block_untrusted(data)
        extensions: dict[int, bytes] = {}
        raw = b""
        if end:
            block = data[start:end]
            extensions = parse_extensions_untrusted(profile, block)
            if profile != _ONE_BYTE_PROFILE and profile & _TWO_BYTE_PROFILE_MASK != (
                _TWO_BYTE_PROFILE
            ):
                raw = block
            pos = end
        padding = 0
        if first & 0x20:
            padding = data[-1]
            if padding == 0 or padding > len(data) - pos:
                raise MalformedRtp("RTP padding length is invalid")
        return cls(
            payload_type=second & 0x7F,
            sequence_number=seq,
            timestamp=timestamp,
            ssrc=ssrc,
            marker=bool(second & 0x80),
            csrc=tuple(csrc),
            extensions=extensions,
            payload=data[pos : len(data) - padding],
            padding_size=padding,
            extension_profile=0
            if profile == _ONE_BYTE_PROFILE or profile & _TWO_BYTE_PROFILE_MASK == _TWO_BYTE_PROFILE
            else profile,
            raw_extension=raw,
        )

    def serialize(self) -> bytes:
        """Encode the packet; padding bytes are zeros followed by the count (§5.1)."""
        if self.raw_extension:
            profile, block = self.extension_profile, self.raw_extension
        else:
            profile, block = serialize_extensions(self.extensions)
        has_ext = bool(block) or bool(self.extension_profile and not self.extensions)
        first = 0x80 | (0x20 if self.padding_size else 0) | (0x10 if has_ext else 0)
        first |= len(self.csrc)
        out = bytearray(
            HEADER.pack(
                first,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            )
        )
        for csrc in self.csrc:
            out += csrc.to_bytes(4, "big")
        if has_ext:
            out += _PROFILE.pack(profile or self.extension_profile, len(block) // 4)
            out += block
        out += self.payload
        if self.padding_size:
            out += bytes(self.padding_size - 1)
            out.append(self.padding_size)
        return bytes(out)
