"""WebRtcTransport: one participant's ICE-lite + DTLS-SRTP association (mediasoup's term),
and its plain variant, the pipe between two workers' routers (mediasoup's PipeTransport).

A transport owns the security state of one peer (ICE credentials, DTLS session, SRTP
contexts), the producers it publishes and the consumers it receives. It also records the
arrival of every packet carrying a transport-wide sequence number, for congestion-control
feedback to the publisher (draft-holmer-rmcat-transport-wide-cc-extensions §3), and, when
the publisher sends abs-send-time, estimates its bandwidth for REMB (:mod:`sfu.bwe`).
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field

from OpenSSL import SSL

from sfu.bwe import ReceiveSideEstimator
from sfu.consumer import Consumer
from sfu.dtls import DtlsSession, DtlsState
from sfu.ice import IceLiteResponder, new_credentials
from sfu.producer import Producer
from sfu.rtcp import TransportCc
from sfu.rtp import MID, REPAIRED_RID, RID, find_extension_untrusted
from sfu.sdp import ConsumerOffer, ConsumerOfferWriter, SessionDescription, ValidatedSections
from sfu.srtp import SrtpContext

__all__ = ["TransportCcRecorder", "WebRtcTransport"]

Address = tuple[str, int]

# Feedback covers at most this many sequence numbers; older arrivals are given up on
# rather than letting a peer that skips numbers grow the table.
_TWCC_MAX_SPAN = 1000


class TransportCcRecorder:
    """Arrival times by transport-wide sequence number, turned into feedback packets."""

    __slots__ = ("_arrivals", "_feedback_count", "_last_ext")

    def __init__(self) -> None:
        self._arrivals: dict[int, float] = {}
        self._last_ext = -1
        self._feedback_count = 0

    def record(self, seq: int, now: float) -> None:
        """Note the arrival of transport-wide sequence number ``seq`` (16 bits, unwrapped here)."""
        if self._last_ext < 0:
            ext = seq
        else:
            delta = (seq - self._last_ext) & 0xFFFF
            ext = self._last_ext + delta if delta < 0x8000 else self._last_ext + delta - 0x10000
        if ext > self._last_ext:
            self._last_ext = ext
        if len(self._arrivals) < 2 * _TWCC_MAX_SPAN:
            self._arrivals[ext] = now

    def feedback(self, sender_ssrc: int, media_ssrc: int) -> TransportCc | None:
        """Feedback for everything recorded since the last call, or ``None`` if nothing was."""
        if not self._arrivals:
            return None
        end = max(self._arrivals)
        base = max(min(self._arrivals), end - _TWCC_MAX_SPAN + 1)
        first = min(t for s, t in self._arrivals.items() if s >= base)
        reference = int(first * 1000 / 64)  # 64 ms units (§3.1)
        previous_us = reference * 64000
        deltas: list[int | None] = []
        for seq in range(base, end + 1):
            arrival = self._arrivals.get(seq)
            if arrival is None:
                deltas.append(None)
                continue
            ticks = max(-32768, min(32767, round((arrival * 1e6 - previous_us) / 250)))
            deltas.append(ticks)
            previous_us += ticks * 250
        self._arrivals.clear()
        count = self._feedback_count
        self._feedback_count = (count + 1) & 0xFF
        return TransportCc(
            sender_ssrc=sender_ssrc,
            media_ssrc=media_ssrc,
            base_sequence=base & 0xFFFF,
            reference_time=reference & 0x7FFFFF,
            feedback_count=count,
            deltas=tuple(deltas),
        )


#: DTLS datagrams a transport holds while it waits for the peer's fingerprints (a
#: ClientHello flight is one or two).
EARLY_DTLS_HELD = 4


@dataclass(eq=False)
class WebRtcTransport:
    """One peer's transport inside a router (see module docstring)."""

    id: str
    router_id: str
    ice: IceLiteResponder
    dtls: DtlsSession | None = None
    srtp: SrtpContext | None = None
    producers: dict[str, Producer] = field(default_factory=dict)
    ssrc_table: dict[int, tuple[Producer, int]] = field(default_factory=dict)
    rtx_table: dict[int, tuple[Producer, int]] = field(default_factory=dict)
    consumers: dict[str, Consumer] = field(default_factory=dict)
    consumers_by_ssrc: dict[int, Consumer] = field(default_factory=dict)
    consumer_offers: list[ConsumerOffer] = field(default_factory=list)
    # Closed consumers' mids whose m-section the subscriber has answered as rejected or
    # inactive: only those slots may be recycled (RFC 8829 §5.2.2), or the subscriber
    # would see an m-section it still uses change its mid.
    recyclable_mids: set[str] = field(default_factory=set)
    mids_issued: int = 0
    # Renegotiation renders and parses only the m-sections that changed (sfu.sdp).
    offer_writer: ConsumerOfferWriter = field(default_factory=ConsumerOfferWriter)
    answer_sections: ValidatedSections = field(default_factory=ValidatedSections)
    extension_ids: dict[str, int] = field(default_factory=dict)
    twcc: TransportCcRecorder = field(default_factory=TransportCcRecorder)
    # The publisher's available bandwidth for REMB; only when it sends abs-send-time.
    estimator: ReceiveSideEstimator | None = None
    rtcp_ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    offer_version: int = 0
    closed: bool = False
    # A pipe joins two routers of the same node on different workers: plain RTP/RTCP on
    # loopback between the workers' ports, no ICE, no DTLS, no SRTP.
    pipe: bool = False
    pipe_address: Address | None = None
    #: DTLS datagrams that came (from an address ICE authenticated) before the peer's
    #: fingerprints did: a subscriber's ClientHello races its answer, which travels through
    #: the gateway and control. Replayed once the transport is armed, so the peer does not
    #: wait out its 1 s retransmission timer. At most :data:`EARLY_DTLS_HELD`.
    early_dtls: list[tuple[bytes, Address]] = field(default_factory=list)

    @classmethod
    def create(cls, transport_id: str, router_id: str) -> WebRtcTransport:
        """A transport with fresh ICE credentials, waiting for the peer."""
        ufrag, pwd = new_credentials()
        return cls(id=transport_id, router_id=router_id, ice=IceLiteResponder(ufrag, pwd))

    @property
    def address(self) -> Address | None:
        """Where media goes: the ICE-selected address, once DTLS-SRTP is up."""
        return self.ice.selected if self.srtp is not None else None

    def connect(
        self, context: SSL.Context, remote_fingerprints: list[tuple[str, str]], now: float
    ) -> list[tuple[bytes, Address]]:
        """Arm the DTLS server with the fingerprints from the peer's SDP; returns what to
        send in answer to DTLS datagrams that arrived before (and where to)."""
        self.dtls = DtlsSession(context, remote_fingerprints)
        early, self.early_dtls = self.early_dtls, []
        return [
            (reply, address)
            for data, address in early
            for reply in self.receive_dtls_untrusted(data, now, address)
        ]

    def receive_dtls_untrusted(
        self, data: bytes, now: float, address: Address | None = None
    ) -> list[bytes]:
        """Feed a DTLS datagram; returns datagrams to send back. Keys SRTP on completion.
        Before :meth:`connect`, a datagram from ``address`` is held (a few at most)."""
        if self.dtls is None:
            if address is not None and len(self.early_dtls) < EARLY_DTLS_HELD:
                self.early_dtls.append((bytes(data), address))
            return []
        self.dtls.receive_untrusted(data, now)
        if self.srtp is None and self.dtls.state is DtlsState.CONNECTED:
            self.srtp = SrtpContext(self.dtls.require_keys())
        return self.dtls.outgoing()

    def add_producer(self, producer: Producer, extensions: dict[int, str]) -> None:
        """Register a producer and the header extension ids its packets carry."""
        self.producers[producer.id] = producer
        for ssrc, layer in producer.streams.items():
            self.ssrc_table[ssrc] = (producer, layer)
        for rtx_ssrc, media_ssrc in producer.rtx_streams.items():
            self.rtx_table[rtx_ssrc] = (producer, media_ssrc)
        for ext_id, uri in extensions.items():
            self.extension_ids[uri] = ext_id

    def learn_ssrc_untrusted(self, packet: bytes, ssrc: int) -> tuple[Producer, int] | None:
        """Map an unsignalled SSRC to a producer layer from its rid (RFC 8852) or mid.

        Simulcast offers name layers by rid and leave SSRCs out; the first packet of each
        layer tells us which SSRC it uses. A table of bounded size: only signalled rids and
        mids can ever be learnt.
        """
        rid_id = self.extension_ids.get(RID)
        if rid_id is not None:
            rid = find_extension_untrusted(packet, rid_id)
            if rid is not None:
                for producer in self.producers.values():
                    layer = producer.rids.get(rid.decode("ascii", "replace"))
                    if layer is not None and ssrc not in producer.streams:
                        producer.add_stream(ssrc, layer)
                        self.ssrc_table[ssrc] = (producer, layer)
                        return producer, layer
                return None
        mid_id = self.extension_ids.get(MID)
        if mid_id is not None:
            mid = find_extension_untrusted(packet, mid_id)
            if mid is not None:
                for producer in self.producers.values():
                    if producer.mid == mid.decode("ascii", "replace") and not producer.rids:
                        if producer.streams:
                            return None  # one SSRC per non-simulcast producer
                        producer.add_stream(ssrc, 0)
                        self.ssrc_table[ssrc] = (producer, 0)
                        return producer, 0
        return None

    def learn_rtx_untrusted(self, packet: bytes, ssrc: int) -> tuple[Producer, int] | None:
        """Map an unsignalled RTX SSRC to ``(producer, media SSRC)`` by its repaired-rid."""
        rrid_id = self.extension_ids.get(REPAIRED_RID)
        if rrid_id is None:
            return None
        rrid = find_extension_untrusted(packet, rrid_id)
        if rrid is None:
            return None
        for producer in self.producers.values():
            layer = producer.rids.get(rrid.decode("ascii", "replace"))
            if layer is None:
                continue
            media = next((s for s, n in producer.streams.items() if n == layer), None)
            if media is None or len(producer.rtx_streams) >= len(producer.rids):
                return None
            producer.rtx_streams[ssrc] = media
            self.rtx_table[ssrc] = (producer, media)
            return producer, media
        return None

    def new_mid(self) -> str:
        """A never-used m-section id for a consumer in this transport's receiving session
        (a recycled m-section takes a new mid too, RFC 8829 §5.2.2)."""
        self.mids_issued += 1
        return str(self.mids_issued - 1)

    def add_consumer_offer(self, offer: ConsumerOffer) -> None:
        """Place a consumer's m-section: in the first recyclable closed slot of its kind,
        else at the end, so the session has as many m-sections as its peak of consumers."""
        for index, slot in enumerate(self.consumer_offers):
            if not slot.active and slot.kind == offer.kind and slot.mid in self.recyclable_mids:
                self.recyclable_mids.discard(slot.mid)
                self.consumer_offers[index] = offer
                return
        self.consumer_offers.append(offer)

    def retire_consumer_offer(self, ssrc: int) -> None:
        """A consumer closed: its m-section turns inactive in the next offer (and stays,
        until the subscriber has answered it so and a new consumer recycles the slot)."""
        for index, slot in enumerate(self.consumer_offers):
            if slot.ssrc == ssrc and slot.active:
                self.consumer_offers[index] = dataclasses.replace(slot, active=False)
                return

    def answered(self, answer: SessionDescription) -> None:
        """Learn from a subscriber's answer which closed m-sections it has rejected."""
        closed = {o.mid for o in self.consumer_offers if not o.active}
        for media in answer.media:
            if media.mid in closed and (media.port == 0 or media.direction == "inactive"):
                self.recyclable_mids.add(media.mid)
