"""Producer: one incoming track (mediasoup's term) and its per-stream receive state.

A producer owns one RTP stream per simulcast layer (one for audio). For each stream it keeps
RFC 3550 Appendix A.3/A.8 reception statistics (for receiver reports and loss figures) and
a packet cache that answers NACKs (RFC 4585 §6.2.1) with retransmissions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sfu.rtcp import ReportBlock

__all__ = [
    "KEYFRAME_REQUEST_INTERVAL",
    "NACK_RETRIES",
    "NACK_RETRY_INTERVAL",
    "MissingPackets",
    "PacketCache",
    "Producer",
    "ReceiveStatistics",
]

# RFC 4585 leaves the rate to the implementation; one key-frame request per second per
# producer is what the issue asks and what mediasoup and Jitsi settle on.
KEYFRAME_REQUEST_INTERVAL = 1.0
# A NACK or its retransmission can be lost too (RFC 4585 §3.1 leaves retries to the
# receiver): a sequence number still missing is asked for again this often (about a
# round trip on a bad path; libwebrtc waits one RTT), this many more times.
NACK_RETRY_INTERVAL = 0.1
NACK_RETRIES = 3
# Sequence numbers of one stream waiting for a retransmission; past this the oldest go.
_MAX_MISSING = 256


class MissingPackets:
    """Sequence numbers of one stream that were NACKed and have not arrived since, and when
    to NACK each again (sans-I/O: the caller sends what :meth:`due` returns)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        # seq -> [NACKs left, when the next is due]; insertion order is age order.
        self._pending: dict[int, list[float]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def nacked(self, seqs: list[int], now: float) -> None:
        """``seqs`` were just NACKed for the first time."""
        pending = self._pending
        for seq in seqs:
            pending.pop(seq, None)
            pending[seq] = [NACK_RETRIES, now + NACK_RETRY_INTERVAL]
        while len(pending) > _MAX_MISSING:
            del pending[next(iter(pending))]

    def arrived(self, seq: int) -> None:
        """``seq`` arrived (late, or retransmitted): stop asking for it."""
        if self._pending:
            self._pending.pop(seq, None)

    def due(self, now: float) -> list[int]:
        """The sequence numbers to NACK again now; each is asked for at most
        :data:`NACK_RETRIES` more times, then given up."""
        due = []
        for seq, entry in list(self._pending.items()):
            if now < entry[1]:
                continue
            due.append(seq)
            entry[0] -= 1
            if entry[0] <= 0:
                del self._pending[seq]
            else:
                entry[1] = now + NACK_RETRY_INTERVAL
        return due


class PacketCache:
    """The last ``size`` packets of one RTP stream by sequence number, for retransmission.

    A fixed ring of slots indexed by ``seq % size``: storing costs no allocation beyond the
    packet bytes the caller already holds, and a stale slot is detected by its stored seq.
    """

    __slots__ = ("_mask", "_packets", "_seqs")

    def __init__(self, size: int = 1024) -> None:
        if size & (size - 1):
            raise ValueError("cache size must be a power of two")
        self._mask = size - 1
        self._seqs = [-1] * size
        self._packets: list[bytes | None] = [None] * size

    def store(self, seq: int, packet: bytes) -> None:
        """Remember ``packet`` (clear RTP bytes) under its sequence number."""
        slot = seq & self._mask
        self._seqs[slot] = seq
        self._packets[slot] = packet

    def get(self, seq: int) -> bytes | None:
        """The cached packet with this sequence number, if it has not been overwritten."""
        slot = seq & self._mask
        if self._seqs[slot] != seq:
            return None
        return self._packets[slot]


class ReceiveStatistics:
    """Per-source reception statistics of RFC 3550 Appendix A.1, A.3 and A.8."""

    __slots__ = (
        "_bad_seq",
        "_base_seq",
        "_bytes_prior",
        "_cycles",
        "_expected_prior",
        "_jitter",
        "_last_sr",
        "_last_sr_arrival",
        "_last_transit",
        "_max_seq",
        "_rate_time",
        "_received_prior",
        "bytes",
        "clock_rate",
        "received",
        "ssrc",
    )

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.received = 0
        self.bytes = 0
        self._base_seq = -1
        self._max_seq = 0
        self._cycles = 0
        self._bad_seq = -1
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter = 0.0
        self._last_transit: float | None = None
        self._last_sr = 0
        self._last_sr_arrival = 0.0
        self._bytes_prior = 0
        self._rate_time: float | None = None

    def missing_before(self, seq: int, limit: int = 64) -> list[int]:
        """Sequence numbers skipped if ``seq`` arrives next (a gap of at most ``limit``)."""
        if self._base_seq < 0:
            return []
        gap = (seq - self._max_seq) & 0xFFFF
        if not 1 < gap <= limit + 1:
            return []
        return [(self._max_seq + i) & 0xFFFF for i in range(1, gap)]

    def update(self, seq: int, timestamp: int, size: int, now: float) -> None:
        """Account one received packet (A.1 sequence tracking, A.8 interarrival jitter)."""
        if self._rate_time is None:
            self._rate_time = now  # the bitrate window opens with the first packet
        self.received += 1
        self.bytes += size
        if self._base_seq < 0:
            self._base_seq = seq
            self._max_seq = seq
        else:
            delta = (seq - self._max_seq) & 0xFFFF
            if 0 < delta < 0x8000:
                if seq < self._max_seq:
                    self._cycles += 1 << 16
                self._max_seq = seq
            elif delta >= 0xFFFF - 3000 or delta == 0:
                pass  # duplicate or reordered packet: counted, does not move the maximum
            elif seq == self._bad_seq:
                # Two in a row after a big jump: the sender restarted (A.1); resynchronise.
                self._base_seq = seq
                self._max_seq = seq
                self._cycles = 0
                self.received = 1
                self._expected_prior = self._received_prior = 0
            else:
                self._bad_seq = (seq + 1) & 0xFFFF
        transit = now * self.clock_rate - timestamp
        if self._last_transit is not None:
            d = abs(transit - self._last_transit)
            self._jitter += (d - self._jitter) / 16
        self._last_transit = transit

    @property
    def extended_max(self) -> int:
        """Highest sequence number received, extended with the wrap count."""
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        """Packets expected so far (A.3)."""
        if self._base_seq < 0:
            return 0
        return self.extended_max - self._base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative loss (A.3): gaps in sequence numbers only, so DTX is never loss."""
        return max(0, self.expected - self.received)

    def bitrate(self, now: float) -> float | None:
        """Bits per second received since the previous call (``None`` on the first)."""
        previous, self._rate_time = self._rate_time, now
        received, self._bytes_prior = self.bytes - self._bytes_prior, self.bytes
        if previous is None or now <= previous:
            return None
        return 8 * received / (now - previous)

    def on_sender_report(self, ntp_timestamp: int, now: float) -> None:
        """Remember the middle 32 bits of an SR's NTP time for LSR/DLSR (§6.4.1)."""
        self._last_sr = (ntp_timestamp >> 16) & 0xFFFFFFFF
        self._last_sr_arrival = now

    def report_block(self, now: float) -> ReportBlock:
        """A reception report block for an RR; resets the interval counters (A.3)."""
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self._last_sr:
            dlsr = int((now - self._last_sr_arrival) * 65536) & 0xFFFFFFFF
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=self.lost,
            highest_sequence=self.extended_max & 0xFFFFFFFF,
            jitter=int(self._jitter),
            last_sr=self._last_sr,
            delay_since_last_sr=dlsr,
        )


@dataclass(eq=False)
class Producer:
    """One incoming track of a transport.

    ``streams`` maps each SSRC to its simulcast layer (0 for audio and single-layer video);
    ``rids`` maps RFC 8851 rids to layers for streams whose SSRC is learnt from the ``rid``
    header extension of the first packet (the offer usually omits ``a=ssrc`` with simulcast).
    """

    id: str
    kind: str
    transport_id: str
    payload_type: int
    clock_rate: int
    mid: str = ""
    streams: dict[int, int] = field(default_factory=dict)
    rids: dict[str, int] = field(default_factory=dict)
    # RTX SSRC -> the media SSRC it repairs (RFC 4588 §8.2 FID, or learnt by repaired-rid).
    rtx_streams: dict[int, int] = field(default_factory=dict)
    _paused: bool = field(default=False, repr=False)
    _muted: bool = field(default=False, repr=False)
    # Whether packets of this producer reach consumers (not paused, not muted): kept up to
    # date by the two setters below rather than computed, since every consumer reads it
    # for every packet.
    forwarding: bool = field(default=True, init=False)
    caches: dict[int, PacketCache] = field(default_factory=dict)
    statistics: dict[int, ReceiveStatistics] = field(default_factory=dict)
    missing: dict[int, MissingPackets] = field(default_factory=dict)
    layer_bitrates: dict[int, float] = field(default_factory=dict)
    last_keyframe_request: float = float("-inf")

    def add_stream(self, ssrc: int, layer: int) -> None:
        """Start receiving ``ssrc`` as simulcast ``layer``."""
        self.streams[ssrc] = layer
        self.caches[ssrc] = PacketCache()
        self.statistics[ssrc] = ReceiveStatistics(ssrc, self.clock_rate)
        self.missing[ssrc] = MissingPackets()

    @property
    def paused(self) -> bool:
        """Paused by the publisher (``producer.pause``)."""
        return self._paused

    @paused.setter
    def paused(self, paused: bool) -> None:
        self._paused = paused
        self.forwarding = not (paused or self._muted)

    @property
    def muted(self) -> bool:
        """Muted by a moderator (``producer.mute``)."""
        return self._muted

    @muted.setter
    def muted(self, muted: bool) -> None:
        self._muted = muted
        self.forwarding = not (self._paused or muted)

    def keyframe_request_due(self, now: float) -> bool:
        """True at most once per :data:`KEYFRAME_REQUEST_INTERVAL`; records the request."""
        if now - self.last_keyframe_request < KEYFRAME_REQUEST_INTERVAL:
            return False
        self.last_keyframe_request = now
        return True

    def measure_layers(self, now: float) -> None:
        """Refresh :attr:`layer_bitrates` from what each simulcast stream delivered."""
        for ssrc, stats in self.statistics.items():
            rate = stats.bitrate(now)
            if rate is not None:
                self.layer_bitrates[self.streams[ssrc]] = rate

    def retransmission(self, ssrc: int, seq: int) -> bytes | None:
        """The cached clear packet for a NACKed sequence number, if still held."""
        cache = self.caches.get(ssrc)
        return cache.get(seq) if cache is not None else None
