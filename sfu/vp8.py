"""VP8 RTP payload descriptor (RFC 7741 §4.2) and key-frame detection (RFC 7741 §4.3).

Under end-to-end encryption the sender leaves the payload descriptor and the first bytes of
the VP8 payload header in clear (and binds them into the SFrame AAD), which is exactly what
a selective forwarder needs to switch simulcast layers at key frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfu.errors import MalformedRtp

__all__ = ["Vp8Descriptor", "is_keyframe_untrusted", "parse_descriptor_untrusted"]


@dataclass(frozen=True, slots=True)
class Vp8Descriptor:
    """The fields of RFC 7741 §4.2 the SFU uses; ``size`` is the descriptor's length."""

    start_of_partition: bool
    partition_index: int
    picture_id: int | None
    tl0_pic_idx: int | None
    temporal_id: int | None
    size: int


def parse_descriptor_untrusted(payload: bytes) -> Vp8Descriptor:
    """Decode the VP8 payload descriptor at the start of an RTP payload (RFC 7741 §4.2)."""
    n = len(payload)
    if n < 1:
        raise MalformedRtp("VP8 payload descriptor is empty")
    first = payload[0]
    pos = 1
    picture_id = tl0 = tid = None
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
                pos += 2
            else:
                picture_id = payload[pos]
                pos += 1
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
    if not descriptor.start_of_partition or descriptor.partition_index != 0:
        return False
    if descriptor.size >= len(payload):
        return False
    return not payload[descriptor.size] & 0x01
