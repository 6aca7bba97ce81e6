"""Consumer: one producer's track sent to one subscriber (mediasoup's term).

The subscriber sees one RTP stream per consumer, with an SSRC of the SFU's choosing, whatever
happens upstream: simulcast layer switches, producer pauses, or the consumer being re-pointed
at another producer. :class:`RtpRewriter` makes that stream continuous (RFC 3550 §5.1
requires sequence numbers to increase by one and timestamps to follow the sampling clock),
and :class:`Consumer` decides which upstream packets to forward: switching layers only at a
key frame, since a decoder cannot start from a delta frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sfu.producer import Producer
from sfu.vp8 import PictureIdRewriter

__all__ = ["Consumer", "RtpRewriter"]


class RtpRewriter:
    """Maps packets of whichever source currently feeds a consumer onto one output stream.

    Each run of packets from one source (a *segment*) gets a sequence offset that continues
    the output right after the last packet sent, and a timestamp offset that advances the
    output clock by the wall-clock time elapsed since that packet, so a receiver's jitter
    buffer sees neither a gap nor a jump. Packets older than the segment's first packet are
    dropped: their output numbers would collide with the previous segment's.
    """

    __slots__ = (
        "_base_seq",
        "_clock_rate",
        "_last_out_seq",
        "_last_out_ts",
        "_last_time",
        "_segment",
        "_seq_offset",
        "_source",
        "_started",
        "_ts_offset",
    )

    def __init__(self, clock_rate: int, first_seq: int, first_ts: int) -> None:
        self._clock_rate = clock_rate
        self._source: int | None = None
        self._seq_offset = 0
        self._ts_offset = 0
        self._base_seq = 0
        self._last_out_seq = (first_seq - 1) & 0xFFFF
        self._last_out_ts = first_ts & 0xFFFFFFFF
        self._last_time = 0.0
        self._started = False
        self._segment = 0

    def switch(self) -> None:
        """Start a new segment at the next packet (layer switch, resume, new producer)."""
        self._source = None

    @property
    def last_sequence(self) -> int:
        """The highest output sequence number sent so far."""
        return self._last_out_seq

    def rewrite(self, source: int, seq: int, timestamp: int, now: float) -> tuple[int, int] | None:
        """Output ``(seq, timestamp)`` for an input packet, or ``None`` to drop it."""
        if source != self._source:
            ticks = 0
            if self._started:
                ticks = max(1, int((now - self._last_time) * self._clock_rate))
            self._seq_offset = (self._last_out_seq + 1 - seq) & 0xFFFF
            self._ts_offset = (self._last_out_ts + ticks - timestamp) & 0xFFFFFFFF
            self._source = source
            self._base_seq = seq
            self._started = True
            self._segment += 1
        elif (seq - self._base_seq) & 0xFFFF >= 0x8000:
            return None
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        if (out_seq - self._last_out_seq) & 0xFFFF < 0x8000:
            self._last_out_seq = out_seq
            self._last_out_ts = out_ts
            self._last_time = now
        return out_seq, out_ts

    def source_sequence(self, out_seq: int) -> int | None:
        """The input sequence number of an output one in the current segment (for NACKs)."""
        if self._source is None:
            return None
        seq = (out_seq - self._seq_offset) & 0xFFFF
        if (seq - self._base_seq) & 0xFFFF >= 0x8000:
            return None
        if (self._last_out_seq - out_seq) & 0xFFFF >= 0x8000:
            return None
        return seq

    def timestamp_offset(self, source: int) -> int | None:
        """What to add to ``source``'s RTP timestamps to get ours, while it is the current one
        (used to translate the sender's SR timing, RFC 3550 §6.4.1)."""
        return self._ts_offset if source == self._source else None

    @property
    def source(self) -> int | None:
        """The SSRC of the current segment's source."""
        return self._source

    @property
    def segment(self) -> int:
        """The number of the current segment (counting from 1), for codec-level rewriting
        that must start over with it (:class:`sfu.vp8.PictureIdRewriter`)."""
        return self._segment


@dataclass(eq=False, slots=True)
class Consumer:
    """One producer's track as delivered to one subscriber transport.

    ``target_layer`` is where layer selection wants to be; ``current_layer`` is what is
    being forwarded. They differ until a key frame of the target layer arrives.
    """

    id: str
    producer: Producer
    transport_id: str
    ssrc: int
    payload_type: int
    rewriter: RtpRewriter
    paused: bool = False
    current_layer: int | None = None
    target_layer: int = 0
    preferred_layer: int = 2
    bandwidth: float = float("inf")
    packets_sent: int = 0
    bytes_sent: int = 0
    retransmitted: int = 0
    # RTX (RFC 4588) towards the subscriber, when its offer carries it (video).
    rtx_ssrc: int | None = None
    rtx_payload_type: int | None = None
    rtx_sequence: int = 0
    # VP8 picture ids continued across segments (unused on audio).
    pictures: PictureIdRewriter = field(default_factory=PictureIdRewriter, repr=False)
    fraction_lost: int = 0
    _producer_gate: bool = field(default=True, repr=False)

    def set_paused(self, paused: bool) -> None:
        """Pause or resume; resuming starts a new rewrite segment so nothing jumps."""
        if self.paused and not paused:
            self.rewriter.switch()
            self.current_layer = None
        self.paused = paused

    def set_producer(self, producer: Producer) -> None:
        """Re-point this consumer at another producer of the same kind, seamlessly."""
        self.producer = producer
        self.rewriter.switch()
        self.current_layer = None

    def set_bandwidth(self, bitrate: float) -> None:
        """Update the subscriber's bandwidth estimate and re-select the target layer.

        The highest layer whose measured bitrate fits the estimate, capped by the
        subscriber's preference; layer 0 when nothing fits, since some video beats none.
        """
        self.bandwidth = bitrate
        self.target_layer = self._select_layer()

    def _select_layer(self) -> int:
        layers = sorted(set(self.producer.streams.values()) | set(self.producer.rids.values()))
        best = layers[0] if layers else 0
        for layer in layers:
            if layer > self.preferred_layer:
                break
            if self.producer.layer_bitrates.get(layer, 0.0) <= self.bandwidth:
                best = layer
        return best

    def admit(self, layer: int, keyframe: bool) -> bool:
        """Whether a packet of ``layer`` is forwarded; switches layers at key frames only.

        Also returns ``True`` for packets of the current layer and tracks the producer's
        pause/mute state, starting a new segment when forwarding resumes.
        """
        if self.paused:
            return False
        forwarding = self.producer.forwarding
        if forwarding != self._producer_gate:
            self._producer_gate = forwarding
            if forwarding:
                self.rewriter.switch()
                self.current_layer = None
        if not forwarding:
            return False
        if (
            keyframe
            and layer != self.current_layer
            and (layer == self.target_layer or self.current_layer is None)
        ):
            self.rewriter.switch()
            self.current_layer = layer
            return True
        return layer == self.current_layer

    @property
    def needs_keyframe(self) -> bool:
        """True while the consumer waits for a key frame to start or switch layers."""
        return self.producer.kind == "video" and self.current_layer != self.target_layer
