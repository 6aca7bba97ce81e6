"""VP8 RTP payload descriptor (RFC 7741 §4.2), key-frame detection (RFC 7741 §4.3) and
picture-id rewriting across simulcast layer switches.

Under end-to-end encryption the payload descriptor stays in clear (the packetizer writes it
after the frame is encrypted) and so do the first bytes of the VP8 payload header (left clear
by the sender and bound into the SFrame AAD), which is exactly what a selective forwarder
needs to switch simulcast layers at key frames. Each simulcast layer
numbers its pictures on its own, so a subscriber moved from one layer to another would see
its picture id and TL0PICIDX jump; :class:`PictureIdRewriter` continues them instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfu.errors import MalformedRtp

__all__ = [
    "PICTURE_ID_OFFSET",
    "PictureIdRewriter",
    "Vp8Descriptor",
    "is_keyframe_untrusted",
    "parse_descriptor_untrusted",
    "starts_keyframe",
]

# Where the picture id starts when present: after the first byte and the X byte (§4.2).
PICTURE_ID_OFFSET = 2


@dataclass(frozen=True, slots=True)
class Vp8Descriptor:
    """The fields of RFC 7741 §4.2 the SFU uses; ``size`` is the descriptor's length and
    ``picture_id_size`` that of the picture id (0, or 1 and 2 bytes for 7 and 15 bits)."""

    start_of_partition: bool
    partition_index: int
    picture_id: int | None
    tl0_pic_idx: int | None
    temporal_id: int | None
    size: int
    picture_id_size: int = 0


def parse_descriptor_untrusted(payload: bytes) -> Vp8Descriptor:
    """Decode the VP8 payload descriptor at the start of an RTP payload (RFC 7741 §4.2)."""
    n = len(payload)
    if n < 1:
        raise MalformedRtp("VP8 payload descriptor is empty")
    first = payload[0]
    pos = 1
    picture_id = tl0 = tid = None
    picture_id_size = 0
    if first & 0x80:  # X: extension byte follows
        if n < 2:
            raise MalformedRtp("VP8 extension byte is missing")
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits (M bit)
            if pos >= n:
                raise MalformedRtp("VP8 picture id is truncated")
            if payload[pos] & 0x80:
                if pos + 1 >= n:
                    raise MalformedRtp("VP8 picture id is truncated")
                picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                picture_id_size = 2
            else:
                picture_id = payload[pos]
                picture_id_size = 1
            pos += picture_id_size
        if ext & 0x40:  # L: TL0PICIDX
            if pos >= n:
                raise MalformedRtp("VP8 TL0PICIDX is truncated")
            tl0 = payload[pos]
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX byte
            if pos >= n:
                raise MalformedRtp("VP8 TID byte is truncated")
            if ext & 0x20:
                tid = payload[pos] >> 6
            pos += 1
    return Vp8Descriptor(
        start_of_partition=bool(first & 0x10),
        partition_index=first & 0x07,
        picture_id=picture_id,
        tl0_pic_idx=tl0,
        temporal_id=tid,
        size=pos,
        picture_id_size=picture_id_size,
    )


def is_keyframe_untrusted(payload: bytes) -> bool:
    """True when this RTP payload starts a VP8 key frame (RFC 7741 §4.3, RFC 6386 §9.1).

    A key frame begins in the packet whose descriptor has S=1 and PID=0, and whose payload
    header's P bit (the lowest bit of its first byte) is 0. Malformed input is not a key frame.
    """
    try:
        descriptor = parse_descriptor_untrusted(payload)
    except MalformedRtp:
        return False
    return starts_keyframe(descriptor, payload)


def starts_keyframe(descriptor: Vp8Descriptor, payload: bytes) -> bool:
    """:func:`is_keyframe_untrusted` for a payload whose descriptor is already parsed."""
    if not descriptor.start_of_partition or descriptor.partition_index != 0:
        return False
    if descriptor.size >= len(payload):
        return False
    return not payload[descriptor.size] & 0x01


class PictureIdRewriter:
    """Maps one consumer's VP8 picture ids and TL0PICIDX onto continuous output sequences.

    The companion of :class:`sfu.consumer.RtpRewriter`, driven by its segment number: the
    first packet of a new segment (a layer switch or a resume, always at a key frame) gets
    the picture id after the highest one sent so far and the TL0PICIDX after the last one,
    and the rest of the segment keeps that offset, so frames keep their picture id across
    packets and their order. The first segment passes through unchanged. A picture id is
    written back in the width it arrived in (7 or 15 bits, §4.2 M bit), so the descriptor
    keeps its size and the packet its layout; the descriptor is not part of the SFrame AAD,
    which is why rewriting it leaves end-to-end encryption intact.
    """

    __slots__ = ("_last_picture_id", "_last_tl0", "_picture_offset", "_segment", "_tl0_offset")

    def __init__(self) -> None:
        self._segment = -1
        self._picture_offset = 0
        self._tl0_offset = 0
        self._last_picture_id: int | None = None
        self._last_tl0: int | None = None

    def rewrite(self, segment: int, payload: bytes, descriptor: Vp8Descriptor) -> bytes:
        """``payload`` (whose descriptor is ``descriptor``) as this consumer sends it in
        ``segment``: the same object when nothing changes, else a patched copy."""
        picture_id = descriptor.picture_id
        tl0 = descriptor.tl0_pic_idx
        if segment != self._segment:
            self._segment = segment
            if picture_id is not None and self._last_picture_id is not None:
                self._picture_offset = (self._last_picture_id + 1 - picture_id) & 0x7FFF
            if tl0 is not None and self._last_tl0 is not None:
                self._tl0_offset = (self._last_tl0 + 1 - tl0) & 0xFF
        patched: bytearray | None = None
        if picture_id is not None:
            mask = 0x7FFF if descriptor.picture_id_size == 2 else 0x7F
            out = (picture_id + self._picture_offset) & mask
            last = self._last_picture_id
            if last is None or (out - last) & mask < (mask + 1) >> 1:
                self._last_picture_id = out
            if out != picture_id:
                patched = bytearray(payload)
                if mask == 0x7FFF:
                    patched[PICTURE_ID_OFFSET] = 0x80 | (out >> 8)
                    patched[PICTURE_ID_OFFSET + 1] = out & 0xFF
                else:
                    patched[PICTURE_ID_OFFSET] = out
        if tl0 is not None:
            out_tl0 = (tl0 + self._tl0_offset) & 0xFF
            last_tl0 = self._last_tl0
            if last_tl0 is None or (out_tl0 - last_tl0) & 0xFF < 0x80:
                self._last_tl0 = out_tl0
            if out_tl0 != tl0:
                if patched is None:
                    patched = bytearray(payload)
                patched[PICTURE_ID_OFFSET + descriptor.picture_id_size] = out_tl0
        return payload if patched is None else bytes(patched)
