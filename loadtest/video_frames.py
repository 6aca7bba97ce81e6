"""Synthetic VP8 simulcast video for the ``video`` scenario, sans I/O: frames, their RTP
packetization (RFC 7741) and reassembly at the receiver.

A synthetic frame has what the SFU and SFrame look at and nothing a decoder would need:
the VP8 frame tag (RFC 6386 §9.1: bit 0 clear on key frames, version 0, show_frame, the
first partition's size) and on key frames the start code and the dimensions — exactly the
bytes ``e2ee.media.clear_prefix_length`` leaves in clear — followed by the stamp
(:data:`VIDEO_STAMP`: layer, sender, frame number, send time) and padding up to the layer's
frame size. The stamp is inside the SFrame ciphertext.

A protected frame (``e2ee.media.protect_frame``) is split into RTP payloads behind a VP8
payload descriptor (RFC 7741 §4.2) as libwebrtc writes it for simulcast: X=1 with a 15-bit
picture id, TL0PICIDX and the TID byte (one temporal layer: TID 0, Y=1), S=1 and PID 0 on
the first packet of a frame. The SFU finds key frames (S=1, PID 0, P bit clear) and
rewrites picture ids and TL0PICIDX across layer switches from these bytes alone.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from e2ee.media import Codec, clear_prefix_length
from sfu.errors import MalformedRtp
from sfu.vp8 import parse_descriptor_untrusted

__all__ = [
    "FPS",
    "LAYERS",
    "MAX_PAYLOAD",
    "VIDEO_STAMP",
    "FrameAssembler",
    "Layer",
    "Vp8Packetizer",
    "read_video_stamp_untrusted",
    "video_frame",
]

#: Frames per second on every layer (a camera at 30 fps; libwebrtc keeps the rate per layer).
FPS = 30
#: RTP payload bytes per packet (libwebrtc keeps packets under about 1,200 bytes).
MAX_PAYLOAD = 1200
#: ``!BIIQ``: simulcast layer, sender's participant number, frame number, send time (ns).
VIDEO_STAMP = struct.Struct("!BIIQ")
#: A key frame is this many times a delta frame of its layer (libwebrtc's are 3–10×).
KEYFRAME_FACTOR = 4


@dataclass(frozen=True)
class Layer:
    """One simulcast encoding: its rid, picture size and target bitrate."""

    rid: str
    width: int
    height: int
    bitrate: int

    @property
    def frame_bytes(self) -> int:
        """Bytes of a delta frame at :data:`FPS` for :attr:`bitrate`."""
        return self.bitrate // 8 // FPS


#: Lowest to highest, as ``a=simulcast:send q;h;f`` lists them (the SFU's layers 0, 1, 2).
LAYERS = (
    Layer("q", 320, 180, 150_000),
    Layer("h", 640, 360, 500_000),
    Layer("f", 1280, 720, 1_500_000),
)
_START_CODE = b"\x9d\x01\x2a"
_PAD = bytes(KEYFRAME_FACTOR * LAYERS[-1].frame_bytes)


def video_frame(layer: int, sender: int, number: int, sent_ns: int, *, keyframe: bool) -> bytes:
    """A clear synthetic VP8 frame of simulcast ``layer`` (see the module docstring)."""
    spec = LAYERS[layer]
    size = spec.frame_bytes * (KEYFRAME_FACTOR if keyframe else 1)
    # Frame tag (RFC 6386 §9.1): key frame bit (0 = key), version 0, show_frame 1, and the
    # first partition's size (here: the whole rest of the frame, bounded to 19 bits).
    first_part = min(size - 10, (1 << 19) - 1)
    tag = (0 if keyframe else 1) | 0x10 | (first_part << 5)
    head = tag.to_bytes(3, "little")
    if keyframe:
        head += _START_CODE + struct.pack("<HH", spec.width, spec.height)
    head += VIDEO_STAMP.pack(layer, sender, number, sent_ns)
    return head + _PAD[: size - len(head)]


def read_video_stamp_untrusted(frame: bytes) -> tuple[int, int, int, int]:
    """``(layer, sender, number, sent_ns)`` of a decrypted frame; ``ValueError`` if short."""
    offset = clear_prefix_length(Codec.VP8, frame)
    if len(frame) < offset + VIDEO_STAMP.size:
        raise ValueError("frame shorter than its stamp")
    layer, sender, number, sent_ns = VIDEO_STAMP.unpack_from(frame, offset)
    return layer, sender, number, sent_ns


class Vp8Packetizer:
    """Splits one simulcast layer's protected frames into RTP payloads (RFC 7741 §4)."""

    __slots__ = ("picture_id", "tl0_pic_idx")

    def __init__(self, picture_id: int = 0, tl0_pic_idx: int = 0) -> None:
        self.picture_id = picture_id & 0x7FFF
        self.tl0_pic_idx = tl0_pic_idx & 0xFF

    def packetize(self, frame: bytes) -> list[bytes]:
        """The payloads of one frame, in order; the picture id and TL0PICIDX advance."""
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        self.tl0_pic_idx = (self.tl0_pic_idx + 1) & 0xFF
        # X I L T; picture id with M=1 (15 bits); TL0PICIDX; TID 0 with Y=1 (RFC 7741 §4.2).
        rest = bytes(
            [0x80 | 0x40 | 0x20, 0x80 | (self.picture_id >> 8), self.picture_id & 0xFF]
        ) + bytes([self.tl0_pic_idx, 0x20])
        first, other = bytes([0x90]) + rest, bytes([0x80]) + rest
        room = MAX_PAYLOAD - len(first)
        return [
            (first if n == 0 else other) + frame[n : n + room] for n in range(0, len(frame), room)
        ]


class FrameAssembler:
    """Reassembles frames from one received RTP stream (a consumer's SSRC).

    A frame starts at a packet with S=1 and PID 0 and ends at the marker bit; its packets
    must have consecutive sequence numbers and one timestamp. A frame with a packet missing
    is dropped (the harness does not NACK: loss is what it measures), counted in
    :attr:`broken`. What the SFU must keep continuous on a consumer's stream across layer
    switches is checked too: a frame whose first sequence number does not follow the last
    packet's counts in :attr:`sequence_gaps`, one whose picture id or TL0PICIDX does not
    follow the previous frame's in :attr:`picture_id_jumps` (on a lossless path both stay 0).
    """

    __slots__ = (
        "_last_picture",
        "_next_seq",
        "_parts",
        "_timestamp",
        "broken",
        "picture_id_jumps",
        "sequence_gaps",
    )

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._next_seq = -1
        self._timestamp = -1
        self._last_picture: tuple[int | None, int | None] | None = None
        self.broken = 0
        self.sequence_gaps = 0
        self.picture_id_jumps = 0

    def push_untrusted(
        self, seq: int, timestamp: int, marker: bool, payload: bytes
    ) -> bytes | None:
        """One packet's payload; the whole frame (descriptors stripped) when it completes."""
        try:
            descriptor = parse_descriptor_untrusted(payload)
        except MalformedRtp:
            self._drop()
            return None
        body = payload[descriptor.size :]
        if descriptor.start_of_partition and descriptor.partition_index == 0:
            if self._parts:
                self._drop()
            if self._next_seq >= 0 and seq != self._next_seq:
                self.sequence_gaps += 1
            picture = (descriptor.picture_id, descriptor.tl0_pic_idx)
            last = self._last_picture
            if (
                last is not None
                and last[0] is not None
                and last[1] is not None
                and picture != ((last[0] + 1) & 0x7FFF, (last[1] + 1) & 0xFF)
            ):
                self.picture_id_jumps += 1
            self._last_picture = picture
            self._parts = [body]
            self._timestamp = timestamp
        elif self._parts and seq == self._next_seq and timestamp == self._timestamp:
            self._parts.append(body)
        else:
            if self._parts:
                self._drop()
            self._next_seq = (seq + 1) & 0xFFFF
            return None
        self._next_seq = (seq + 1) & 0xFFFF
        if not marker:
            return None
        frame = b"".join(self._parts)
        self._parts = []
        return frame

    def _drop(self) -> None:
        self._parts = []
        self.broken += 1
