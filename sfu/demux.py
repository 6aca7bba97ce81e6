"""RFC 7983 §7 demultiplexing of STUN, DTLS, TURN ChannelData and RTP/RTCP on one port.

The first byte of a datagram decides its protocol; for RTP/RTCP the second byte's payload
type range 192-223 marks RTCP (RFC 5761 §4), which is how rtcp-mux shares the port.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Kind", "classify"]


class Kind(IntEnum):
    """What a datagram on the shared media port carries."""

    UNKNOWN = 0
    STUN = 1
    DTLS = 2
    CHANNEL_DATA = 3
    RTP = 4
    RTCP = 5


def _table() -> tuple[Kind, ...]:
    table = [Kind.UNKNOWN] * 256
    for byte in range(0, 4):
        table[byte] = Kind.STUN
    for byte in range(20, 64):
        table[byte] = Kind.DTLS
    for byte in range(64, 80):
        table[byte] = Kind.CHANNEL_DATA
    for byte in range(128, 192):
        table[byte] = Kind.RTP
    return tuple(table)


# A lookup table instead of comparisons: this runs once per datagram on the hot path.
_FIRST_BYTE = _table()


def classify(data: bytes) -> Kind:
    """Name the protocol of one datagram from its first two bytes (RFC 7983 §7)."""
    if not data:
        return Kind.UNKNOWN
    kind = _FIRST_BYTE[data[0]]
    if kind is Kind.RTP:
        if len(data) < 2:
            return Kind.UNKNOWN
        if 192 <= data[1] <= 223:
            return Kind.RTCP
    return kind
