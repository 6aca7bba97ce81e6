"""RTCP packets: RFC 3550 §6.4-6.6 (SR, RR, SDES, BYE), RFC 4585 §6 (generic NACK, PLI),
RFC 5104 §4.3.1 (FIR), draft-alvestrand-rmcat-remb §2 (REMB) and
draft-holmer-rmcat-transport-wide-cc-extensions §3.1 (transport-wide congestion control).

A compound packet (RFC 3550 §6.1) decodes into a list of these dataclasses; packet types the
SFU does not read (APP, XR, ...) survive as :class:`UnknownRtcp` so they can be relayed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sfu.errors import MalformedRtcp

__all__ = [
    "PSFB",
    "RTPFB",
    "Bye",
    "FullIntraRequest",
    "GenericNack",
    "PictureLossIndication",
    "ReceiverEstimatedMaxBitrate",
    "ReceiverReport",
    "ReportBlock",
    "RtcpPacket",
    "SdesChunk",
    "SenderReport",
    "SourceDescription",
    "TransportCc",
    "UnknownRtcp",
    "parse_compound_untrusted",
    "serialize_compound",
]

SR = 200
RR = 201
SDES = 202
BYE = 203
RTPFB = 205
PSFB = 206

_NACK_FMT = 1
_TWCC_FMT = 15
_PLI_FMT = 1
_FIR_FMT = 4
_AFB_FMT = 15  # application layer feedback, of which REMB is one

_HEADER = struct.Struct("!BBH")
_SSRC2 = struct.Struct("!II")
_SENDER_INFO = struct.Struct("!IIIII")
_REPORT_BLOCK = struct.Struct("!IB3sIIII")
_TWCC_HEAD = struct.Struct("!HH3sB")
_MAX_SDES_ITEMS = 32
# RFC 3550 limits the count fields to 5 bits; the NACK / FIR / REMB lists are bounded by the
# packet length, which is at most one datagram.
_MAX_TWCC_STATUSES = 1 << 16


def _header(packet_type: int, count: int, payload_len: int) -> bytes:
    if payload_len % 4:
        raise ValueError("RTCP payload must be a multiple of 32 bits")
    return _HEADER.pack(0x80 | count, packet_type, payload_len // 4)


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """Reception report block (RFC 3550 §6.4.1): loss, jitter and round-trip clues for one SSRC."""

    ssrc: int
    fraction_lost: int
    packets_lost: int
    highest_sequence: int
    jitter: int
    last_sr: int
    delay_since_last_sr: int

    @classmethod
    def parse_untrusted(cls, data: bytes, pos: int) -> ReportBlock:
        """Decode the 24-byte block at ``pos`` (the caller checked the length)."""
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, pos)
        return cls(
            ssrc=ssrc,
            fraction_lost=fraction,
            packets_lost=int.from_bytes(lost, "big", signed=True),
            highest_sequence=highest,
            jitter=jitter,
            last_sr=lsr,
            delay_since_last_sr=dlsr,
        )

    def serialize(self) -> bytes:
        """Encode; cumulative loss is clamped to the signed 24-bit field (§6.4.1)."""
        lost = max(-(1 << 23), min((1 << 23) - 1, self.packets_lost))
        return _REPORT_BLOCK.pack(
            self.ssrc,
            self.fraction_lost,
            lost.to_bytes(3, "big", signed=True),
            self.highest_sequence,
            self.jitter,
            self.last_sr,
            self.delay_since_last_sr,
        )


def _parse_blocks(data: bytes, pos: int, count: int) -> tuple[ReportBlock, ...]:
    if len(data) < pos + 24 * count:
        raise MalformedRtcp("RTCP report blocks are truncated")
    return tuple(ReportBlock.parse_untrusted(data, pos + 24 * i) for i in range(count))


@dataclass(frozen=True, slots=True)
class SenderReport:
    """SR (RFC 3550 §6.4.1): the sender's NTP/RTP clock pair and send counters."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    def serialize(self) -> bytes:
        """Encode as one RTCP packet."""
        body = _SENDER_INFO.pack(
            self.ssrc,
            self.ntp_timestamp >> 32,
            self.ntp_timestamp & 0xFFFFFFFF,
            self.rtp_timestamp,
            self.packet_count,
        ) + self.octet_count.to_bytes(4, "big")
        body += b"".join(r.serialize() for r in self.reports)
        return _header(SR, len(self.reports), len(body)) + body


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RR (RFC 3550 §6.4.2)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    def serialize(self) -> bytes:
        """Encode as one RTCP packet."""
        body = self.ssrc.to_bytes(4, "big") + b"".join(r.serialize() for r in self.reports)
        return _header(RR, len(self.reports), len(body)) + body


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """One SDES chunk (RFC 3550 §6.5): an SSRC and its ``(item type, value)`` pairs."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """SDES (RFC 3550 §6.5); CNAME is item type 1."""

    chunks: tuple[SdesChunk, ...] = ()

    def serialize(self) -> bytes:
        """Encode; each chunk ends with a null item and pads to 32 bits (§6.5)."""
        body = bytearray()
        for chunk in self.chunks:
            body += chunk.ssrc.to_bytes(4, "big")
            for item_type, value in chunk.items:
                body.append(item_type)
                body.append(len(value))
                body += value
            body.append(0)
            body += bytes(-len(body) % 4)
        return _header(SDES, len(self.chunks), len(body)) + bytes(body)


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE (RFC 3550 §6.6): sources leaving, with an optional reason."""

    ssrcs: tuple[int, ...]
    reason: bytes = b""

    def serialize(self) -> bytes:
        """Encode as one RTCP packet."""
        body = bytearray(b"".join(s.to_bytes(4, "big") for s in self.ssrcs))
        if self.reason:
            body.append(len(self.reason))
            body += self.reason
            body += bytes(-len(body) % 4)
        return _header(BYE, len(self.ssrcs), len(body)) + bytes(body)


@dataclass(frozen=True, slots=True)
class GenericNack:
    """Generic NACK (RFC 4585 §6.2.1): sequence numbers the receiver is missing."""

    sender_ssrc: int
    media_ssrc: int
    lost: tuple[int, ...]

    def serialize(self) -> bytes:
        """Encode ``lost`` as PID/BLP pairs, each covering 17 consecutive numbers."""
        body = bytearray(_SSRC2.pack(self.sender_ssrc, self.media_ssrc))
        pid = -1
        blp = 0
        for seq in sorted(set(self.lost), key=lambda s: (s - self.lost[0]) & 0xFFFF):
            distance = (seq - pid) & 0xFFFF
            if pid >= 0 and 1 <= distance <= 16:
                blp |= 1 << (distance - 1)
                continue
            if pid >= 0:
                body += struct.pack("!HH", pid, blp)
            pid, blp = seq, 0
        if pid >= 0:
            body += struct.pack("!HH", pid, blp)
        return _header(RTPFB, _NACK_FMT, len(body)) + bytes(body)


@dataclass(frozen=True, slots=True)
class TransportCc:
    """Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc §3.1).

    ``deltas[i]`` describes transport sequence number ``base_sequence + i``: ``None`` if it
    was not received, otherwise its receive delta in 250 µs ticks from the previous received
    packet (the first from ``reference_time`` × 64 ms).
    """

    sender_ssrc: int
    media_ssrc: int
    base_sequence: int
    reference_time: int
    feedback_count: int
    deltas: tuple[int | None, ...]

    def serialize(self) -> bytes:
        """Encode with run-length chunks for runs of 7 or more, status vectors otherwise."""
        symbols = [0 if d is None else (1 if 0 <= d <= 255 else 2) for d in self.deltas]
        for d in self.deltas:
            if d is not None and not -32768 <= d <= 32767:
                raise ValueError("transport-cc delta does not fit 16 bits")
        chunks = bytearray()
        i = 0
        n = len(symbols)
        while i < n:
            run = 1
            while i + run < n and symbols[i + run] == symbols[i] and run < 0x1FFF:
                run += 1
            if run >= 7:
                chunks += struct.pack("!H", (symbols[i] << 13) | run)
                i += run
            elif 2 not in symbols[i : i + 14] and n - i >= 14:
                word = 0x8000  # one-bit status vector: 14 symbols, none large
                for k in range(14):
                    word |= symbols[i + k] << (13 - k)
                chunks += struct.pack("!H", word)
                i += 14
            else:
                word = 0xC000
                for k in range(7):
                    sym = symbols[i + k] if i + k < n else 0
                    word |= sym << (12 - 2 * k)
                chunks += struct.pack("!H", word)
                i += 7
        deltas = bytearray()
        for d in self.deltas:
            if d is None:
                continue
            if 0 <= d <= 255:
                deltas.append(d)
            else:
                deltas += struct.pack("!h", d)
        body = bytearray(_SSRC2.pack(self.sender_ssrc, self.media_ssrc))
        body += _TWCC_HEAD.pack(
            self.base_sequence,
            len(self.deltas),
            (self.reference_time & 0xFFFFFF).to_bytes(3, "big"),
            self.feedback_count & 0xFF,
        )
        body += chunks + deltas
        padding = -len(body) % 4
        if padding:
            body += bytes(padding - 1)
            body.append(padding)
            # libwebrtc pads with the RTCP P bit (0x20 of the first byte) set.
            return _header(RTPFB, _TWCC_FMT | 0x20, len(body)) + bytes(body)
        return _header(RTPFB, _TWCC_FMT, len(body)) + bytes(body)


@dataclass(frozen=True, slots=True)
class PictureLossIndication:
    """PLI (RFC 4585 §6.3.1): ask the sender of ``media_ssrc`` for a key frame."""

    sender_ssrc: int
    media_ssrc: int

    def serialize(self) -> bytes:
        """Encode as one RTCP packet."""
        return _header(PSFB, _PLI_FMT, 8) + _SSRC2.pack(self.sender_ssrc, self.media_ssrc)


@dataclass(frozen=True, slots=True)
class FullIntraRequest:
    """FIR (RFC 5104 §4.3.1): ``(ssrc, command sequence number)`` entries."""

    sender_ssrc: int
    entries: tuple[tuple[int, int], ...]

    def serialize(self) -> bytes:
        """Encode; the media source field is zero (§4.3.1.2)."""
        body = _SSRC2.pack(self.sender_ssrc, 0) + b"".join(
            struct.pack("!IB3x", ssrc, seq & 0xFF) for ssrc, seq in self.entries
        )
        return _header(PSFB, _FIR_FMT, len(body)) + body


@dataclass(frozen=True, slots=True)
class ReceiverEstimatedMaxBitrate:
    """REMB (draft-alvestrand-rmcat-remb §2.2): the receiver's bandwidth estimate in bit/s."""

    sender_ssrc: int
    bitrate: int
    ssrcs: tuple[int, ...]

    def serialize(self) -> bytes:
        """Encode the bitrate as an 18-bit mantissa with a 6-bit exponent."""
        exponent = 0
        mantissa = self.bitrate
        while mantissa >= 1 << 18:
            mantissa >>= 1
            exponent += 1
        body = _SSRC2.pack(self.sender_ssrc, 0) + b"REMB"
        body += bytes([len(self.ssrcs), (exponent << 2) | (mantissa >> 16)])
        body += (mantissa & 0xFFFF).to_bytes(2, "big")
        body += b"".join(s.to_bytes(4, "big") for s in self.ssrcs)
        return _header(PSFB, _AFB_FMT, len(body)) + body


@dataclass(frozen=True, slots=True)
class UnknownRtcp:
    """A packet type or feedback format the SFU does not interpret, kept for relaying."""

    packet_type: int
    count: int
    payload: bytes = field(repr=False)

    def serialize(self) -> bytes:
        """Re-encode unchanged."""
        return _header(self.packet_type, self.count, len(self.payload)) + self.payload


RtcpPacket = (
    SenderReport
    | ReceiverReport
    | SourceDescription
    | Bye
    | GenericNack
    | TransportCc
    | PictureLossIndication
    | FullIntraRequest
    | ReceiverEstimatedMaxBitrate
    | UnknownRtcp
)


def _parse_sdes(body: bytes, count: int) -> SourceDescription:
    chunks = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(body):
            raise MalformedRtcp("SDES chunk is truncated")
        ssrc = int.from_bytes(body[pos : pos + 4], "big")
        pos += 4
        items: list[tuple[int, bytes]] = []
        while True:
            if pos >= len(body):
                raise MalformedRtcp("SDES chunk lacks its terminating null item")
            item_type = body[pos]
            if item_type == 0:
                pos += 1
                pos += -pos % 4
                break
            if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
                raise MalformedRtcp("SDES item is truncated")
            if len(items) >= _MAX_SDES_ITEMS:
                raise MalformedRtcp("too many SDES items")
            length = body[pos + 1]
            items.append((item_type, body[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        chunks.append(SdesChunk(ssrc=ssrc, items=tuple(items)))
    return SourceDescription(chunks=tuple(chunks))


def _parse_twcc(body: bytes) -> TransportCc:
    if len(body) < 16:
        raise MalformedRtcp("transport-cc feedback is truncated")
    sender, media = _SSRC2.unpack_from(body)
    base, status_count, ref, fb_count = _TWCC_HEAD.unpack_from(body, 8)
    symbols: list[int] = []
    pos = 16
    while len(symbols) < status_count:
        if pos + 2 > len(body):
            raise MalformedRtcp("transport-cc packet chunks are truncated")
        word = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
        if not word & 0x8000:
            symbols.extend([(word >> 13) & 0x3] * (word & 0x1FFF))
        elif not word & 0x4000:
            symbols.extend((word >> (13 - k)) & 1 for k in range(14))
        else:
            symbols.extend((word >> (12 - 2 * k)) & 3 for k in range(7))
    del symbols[status_count:]
    deltas: list[int | None] = []
    for symbol in symbols:
        if symbol == 0:
            deltas.append(None)
        elif symbol == 1:
            if pos + 1 > len(body):
                raise MalformedRtcp("transport-cc receive deltas are truncated")
            deltas.append(body[pos])
            pos += 1
        elif symbol == 2:
            if pos + 2 > len(body):
                raise MalformedRtcp("transport-cc receive deltas are truncated")
            deltas.append(int.from_bytes(body[pos : pos + 2], "big", signed=True))
            pos += 2
        else:
            raise MalformedRtcp("transport-cc status symbol 3 is reserved")
    return TransportCc(
        sender_ssrc=sender,
        media_ssrc=media,
        base_sequence=base,
        reference_time=int.from_bytes(ref, "big", signed=True),
        feedback_count=fb_count,
        deltas=tuple(deltas),
    )


def _parse_one(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    if packet_type == SR:
        if len(body) < 24:
            raise MalformedRtcp("SR is shorter than its sender info")
        ssrc, ntp_hi, ntp_lo, rtp_ts, packets = _SENDER_INFO.unpack_from(body)
        octets = int.from_bytes(body[20:24], "big")
        return SenderReport(
            ssrc=ssrc,
            ntp_timestamp=(ntp_hi << 32) | ntp_lo,
            rtp_timestamp=rtp_ts,
            packet_count=packets,
            octet_count=octets,
            reports=_parse_blocks(body, 24, count),
        )
    if packet_type == RR:
        if len(body) < 4:
            raise MalformedRtcp("RR is shorter than its SSRC")
        return ReceiverReport(
            ssrc=int.from_bytes(body[:4], "big"), reports=_parse_blocks(body, 4, count)
        )
    if packet_type == SDES:
        return _parse_sdes(body, count)
    if packet_type == BYE:
        if len(body) < 4 * count:
            raise MalformedRtcp("BYE source list is truncated")
        ssrcs = struct.unpack_from(f"!{count}I", body)
        reason = b""
        if len(body) > 4 * count:
            length = body[4 * count]
            if 4 * count + 1 + length > len(body):
                raise MalformedRtcp("BYE reason is truncated")
            reason = body[4 * count + 1 : 4 * count + 1 + length]
        return Bye(ssrcs=tuple(ssrcs), reason=reason)
    if packet_type in (RTPFB, PSFB):
        if len(body) < 8:
            raise MalformedRtcp("feedback message is shorter than its two SSRCs")
        sender, media = _SSRC2.unpack_from(body)
        if packet_type == RTPFB and count == _NACK_FMT:
            if len(body) % 4:
                raise MalformedRtcp("NACK FCI is not a whole number of words")
            lost: list[int] = []
            for pos in range(8, len(body), 4):
                pid, blp = struct.unpack_from("!HH", body, pos)
                lost.append(pid)
                lost.extend((pid + d + 1) & 0xFFFF for d in range(16) if blp >> d & 1)
            return GenericNack(sender_ssrc=sender, media_ssrc=media, lost=tuple(lost))
        if packet_type == RTPFB and count == _TWCC_FMT:
            return _parse_twcc(body)
        if packet_type == PSFB and count == _PLI_FMT:
            return PictureLossIndication(sender_ssrc=sender, media_ssrc=media)
        if packet_type == PSFB and count == _FIR_FMT:
            if len(body) % 8:
                raise MalformedRtcp("FIR entries are not 8 bytes each")
            entries = tuple(
                (int.from_bytes(body[p : p + 4], "big"), body[p + 4])
                for p in range(8, len(body), 8)
            )
            return FullIntraRequest(sender_ssrc=sender, entries=entries)
        if packet_type == PSFB and count == _AFB_FMT and body[8:12] == b"REMB":
            if len(body) < 16:
                raise MalformedRtcp("REMB is truncated")
            n, exp_hi, mant = body[12], body[13], int.from_bytes(body[14:16], "big")
            if len(body) < 16 + 4 * n:
                raise MalformedRtcp("REMB source list is truncated")
            bitrate = (((exp_hi & 0x03) << 16) | mant) << (exp_hi >> 2)
            ssrcs = struct.unpack_from(f"!{n}I", body, 16)
            return ReceiverEstimatedMaxBitrate(
                sender_ssrc=sender, bitrate=bitrate, ssrcs=tuple(ssrcs)
            )
    return UnknownRtcp(packet_type=packet_type, count=count, payload=body)


def parse_compound_untrusted(data: bytes) -> list[RtcpPacket]:
    """Decode a compound RTCP packet (RFC 3550 §6.1) into its parts.

    Each part's length field must fit the datagram; padding (P bit) must be sane.
    """
    packets: list[RtcpPacket] = []
    pos = 0
    end = len(data)
    if end < 4:
        raise MalformedRtcp("RTCP packet shorter than its 4-byte header")
    while pos < end:
        if pos + 4 > end:
            raise MalformedRtcp("RTCP compound packet has trailing bytes")
        first, packet_type, words = _HEADER.unpack_from(data, pos)
        if first >> 6 != 2:
            raise MalformedRtcp("RTCP version is not 2")
        body_end = pos + 4 + 4 * words
        if body_end > end:
            raise MalformedRtcp("RTCP packet length exceeds the datagram")
        body = data[pos + 4 : body_end]
        if first & 0x20:
            if not body or body[-1] == 0 or body[-1] > len(body):
                raise MalformedRtcp("RTCP padding length is invalid")
            body = body[: -body[-1]]
        packets.append(_parse_one(packet_type, first & 0x1F, body))
        pos = body_end
    return packets


def serialize_compound(packets: list[RtcpPacket]) -> bytes:
    """Concatenate packets into one compound datagram (RFC 3550 §6.1)."""
    return b"".join(p.serialize() for p in packets)
