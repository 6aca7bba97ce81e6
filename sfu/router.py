"""Router: one voice channel (mediasoup's term) — the forwarding hot path and RTCP.

A router joins the transports of one channel: every RTP packet a producer sends is handed
to each of its consumers, rewritten per consumer (SSRC, sequence number, timestamp,
payload type, header extensions) and protected with the subscriber's SRTP context. The
payload is never looked at beyond the clear VP8 descriptor (key frames) and the RFC 6464
audio level (active speaker): it is SFrame ciphertext.

RTCP: receiver-side NACKs are answered from the producer's packet cache, PLI/FIR are relayed
to the publisher at most once per second per producer, REMB sets each subscriber's bandwidth
estimate (which picks simulcast layers), and publisher SRs are forwarded with the timestamp
translated into each consumer's timeline so lip sync survives rewriting.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from sfu.active_speaker import ActiveSpeakerDetector
from sfu.consumer import Consumer
from sfu.errors import MalformedRtcp, MalformedRtp, SrtpError
from sfu.producer import Producer
from sfu.rtcp import (
    FullIntraRequest,
    GenericNack,
    PictureLossIndication,
    ReceiverEstimatedMaxBitrate,
    ReceiverReport,
    RtcpPacket,
    SenderReport,
    parse_compound_untrusted,
    serialize_compound,
)
from sfu.rtp import ABS_SEND_TIME, AUDIO_LEVEL, HEADER, TRANSPORT_CC
from sfu.srtp import SrtpContext
from sfu.transport import Address, WebRtcTransport
from sfu.vp8 import Vp8Descriptor, parse_descriptor_untrusted, starts_keyframe

__all__ = ["Router", "SendFunction", "SendRtpFunction"]

SendFunction = Callable[[bytes, Address], None]
# (SRTP context, first header byte, second, sequence, timestamp, SSRC, rest, destination)
SendRtpFunction = Callable[[SrtpContext, int, int, int, int, int, bytes, Address], None]

_EXT_HEAD = struct.Struct("!HH")
# The one header extension the SFU writes on audio it sends: RFC 6464 audio level, id 1 as
# offered by :func:`sfu.sdp.consumer_extensions`, in a one-byte-header block (RFC 8285 §4.2).
_AUDIO_EXT_PREFIX = b"\xbe\xde\x00\x01\x10"
_AUDIO_EXT_PAD = b"\x00\x00"
_SILENT = b"\x7f"


def _element_untrusted(block: bytes, wanted: int) -> bytes | None:
    """One-byte-header element ``wanted`` from an extension block (RFC 8285 §4.2)."""
    pos = 0
    end = len(block)
    while pos < end:
        byte = block[pos]
        if byte == 0:
            pos += 1
            continue
        ext_id = byte >> 4
        if ext_id == 15:
            return None
        length = (byte & 0x0F) + 1
        if ext_id == wanted:
            return block[pos + 1 : pos + 1 + length] if pos + 1 + length <= end else None
        pos += 1 + length
    return None


def _video_untrusted(payload: bytes) -> tuple[bool, Vp8Descriptor | None]:
    """Whether a VP8 payload starts a key frame, and its descriptor when it numbers pictures
    (picture id or TL0PICIDX, which consumers then rewrite), from one parse."""
    try:
        descriptor = parse_descriptor_untrusted(payload)
    except MalformedRtp:
        return False, None
    keyframe = starts_keyframe(descriptor, payload)
    if descriptor.picture_id is None and descriptor.tl0_pic_idx is None:
        return keyframe, None
    return keyframe, descriptor


class Router:
    """One channel's producers and consumers, and the forwarding between them."""

    def __init__(
        self, router_id: str, send: SendFunction, send_rtp: SendRtpFunction | None = None
    ) -> None:
        self.id = router_id
        self.send = send
        # Forwarded RTP: protect and send in one step, so a batching sender can protect
        # straight into its send slot (see sfu/udp.py).
        self.send_rtp = send_rtp or self._protect_and_send
        self.transports: dict[str, WebRtcTransport] = {}
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, tuple[Consumer, WebRtcTransport]] = {}
        self.speaker = ActiveSpeakerDetector()
        # producer id -> its consumers and their transports: the forwarding fan-out.
        self._routes: dict[str, list[tuple[Consumer, WebRtcTransport]]] = {}
        # producer id -> pipe transports its packets are copied to (other workers' routers).
        self.pipes: dict[str, list[WebRtcTransport]] = {}
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0

    def _protect_and_send(
        self,
        srtp: SrtpContext,
        first: int,
        second: int,
        seq: int,
        timestamp: int,
        ssrc: int,
        tail: bytes,
        address: Address,
    ) -> None:
        self.send(srtp.protect_rtp(first, second, seq, timestamp, ssrc, tail), address)

    # -- membership -------------------------------------------------------------------

    def add_producer(self, producer: Producer) -> None:
        """Make a producer available for consumers."""
        self.producers[producer.id] = producer
        self._routes.setdefault(producer.id, [])

    def close_producer(self, producer_id: str) -> list[str]:
        """Remove a producer and its consumers; returns the closed consumers' ids."""
        producer = self.producers.pop(producer_id, None)
        if producer is None:
            return []
        transport = self.transports.get(producer.transport_id)
        if transport is not None:
            transport.producers.pop(producer_id, None)
            for ssrc in producer.streams:
                transport.ssrc_table.pop(ssrc, None)
        self.speaker.remove(producer_id)
        self.pipes.pop(producer_id, None)
        closed = [c.id for c, _ in self._routes.pop(producer_id, [])]
        for consumer_id in closed:
            self.close_consumer(consumer_id)
        return closed

    def add_consumer(self, consumer: Consumer, transport: WebRtcTransport) -> None:
        """Start forwarding ``consumer.producer`` to ``transport``."""
        self.consumers[consumer.id] = (consumer, transport)
        transport.consumers[consumer.id] = consumer
        transport.consumers_by_ssrc[consumer.ssrc] = consumer
        self._routes.setdefault(consumer.producer.id, []).append((consumer, transport))

    def close_consumer(self, consumer_id: str) -> None:
        """Stop forwarding to one consumer."""
        entry = self.consumers.pop(consumer_id, None)
        if entry is None:
            return
        consumer, transport = entry
        transport.consumers.pop(consumer_id, None)
        transport.consumers_by_ssrc.pop(consumer.ssrc, None)
        # However it closes (by name, with its producer or its transport), its m-section
        # goes inactive, so the subscriber's next offer says so.
        transport.retire_consumer_offer(consumer.ssrc)
        route = self._routes.get(consumer.producer.id)
        if route is not None:
            route[:] = [(c, t) for c, t in route if c is not consumer]

    def close_transport(self, transport_id: str) -> None:
        """Remove a transport with all its producers and consumers."""
        transport = self.transports.pop(transport_id, None)
        if transport is None:
            return
        transport.closed = True
        for route in self.pipes.values():
            route[:] = [t for t in route if t is not transport]
        for producer_id in list(transport.producers):
            self.close_producer(producer_id)
        for consumer_id in list(transport.consumers):
            self.close_consumer(consumer_id)
        if transport.dtls is not None:
            transport.dtls.close()

    # -- the hot path -----------------------------------------------------------------

    def receive_rtp(
        self, transport: WebRtcTransport, clear: bytes, now: float, repaired: bool = False
    ) -> None:
        """Forward one decrypted RTP packet from a publisher to every admitted consumer.

        ``repaired``: the packet was unwrapped from an RTX packet whose arrival has already
        been counted for congestion feedback and the bandwidth estimate.
        """
        if len(clear) < 12:
            return
        first, second, seq, timestamp, ssrc = HEADER.unpack_from(clear)
        size = len(clear)
        pos = 12 + 4 * (first & 0x0F)
        block = b""
        if first & 0x10:
            if pos + 4 > size:
                return
            words = _EXT_HEAD.unpack_from(clear, pos)[1]
            block = clear[pos + 4 : pos + 4 + 4 * words]
            pos += 4 + 4 * words
            if not repaired:
                self._account_arrival(transport, block, size, now)
        entry = transport.ssrc_table.get(ssrc)
        if entry is None:
            repair = transport.rtx_table.get(ssrc) or transport.learn_rtx_untrusted(clear, ssrc)
            if repair is not None:
                self._receive_rtx(transport, clear, pos, repair, now)
                return
            entry = transport.learn_ssrc_untrusted(clear, ssrc)
            if entry is None:
                return
        producer, layer = entry
        stats = producer.statistics[ssrc]
        if producer.kind == "video" and transport.srtp is not None:
            missing = stats.missing_before(seq)
            if missing:
                self._nack_publisher(transport, ssrc, missing)
                producer.missing[ssrc].nacked(missing, now)
            else:
                producer.missing[ssrc].arrived(seq)
        self.packets_in += 1
        self.bytes_in += size
        stats.update(seq, timestamp, size, now)
        producer.caches[ssrc].store(seq, clear)
        end = size - clear[-1] if first & 0x20 else size
        if pos >= end:
            return  # padding-only probe: nothing to forward
        payload = clear[pos:end]
        piped = self.pipes.get(producer.id)
        if piped and producer.forwarding:
            for pipe in piped:
                if pipe.pipe_address is not None:
                    self.send(clear, pipe.pipe_address)
        pictures: Vp8Descriptor | None = None
        if producer.kind == "audio":
            level = _SILENT
            level_id = transport.extension_ids.get(AUDIO_LEVEL)
            if level_id is not None and block:
                element = _element_untrusted(block, level_id)
                if element:
                    level = element[:1]
                    if producer.forwarding:
                        self.speaker.observe(producer.id, level[0] & 0x7F, now)
            keyframe = True
            extension = _AUDIO_EXT_PREFIX + level + _AUDIO_EXT_PAD
            first_out = 0x90
        else:
            keyframe, pictures = _video_untrusted(payload)
            extension = b""
            first_out = 0x80
        marker = second & 0x80
        tail = extension + payload  # shared by every consumer: one copy per packet
        out_size = 12 + len(tail)
        forwarded = 0
        send_rtp = self.send_rtp
        for consumer, sink in self._routes[producer.id]:
            if not consumer.admit(layer, keyframe):
                continue
            srtp = sink.srtp
            address = sink.ice.selected
            if srtp is None or address is None:
                continue
            rewriter = consumer.rewriter
            out = rewriter.rewrite(ssrc, seq, timestamp, now)
            if out is None:
                continue
            send_rtp(
                srtp,
                first_out,
                marker | consumer.payload_type,
                out[0],
                out[1],
                consumer.ssrc,
                # Video tail = payload: the same bytes unless a layer switch moved this
                # consumer's picture ids (then a copy of its own).
                tail
                if pictures is None
                else consumer.pictures.rewrite(rewriter.segment, tail, pictures),
                address,
            )
            consumer.packets_sent += 1
            consumer.bytes_sent += out_size
            forwarded += 1
        self.packets_out += forwarded
        self.bytes_out += forwarded * out_size

    @staticmethod
    def _account_arrival(transport: WebRtcTransport, block: bytes, size: int, now: float) -> None:
        """Record one arrived datagram for transport-cc feedback and the bandwidth estimate.

        Both must cover every packet that arrived — RTX, padding probes and not-yet-learnt
        layers too — or the sender reads them as lost and backs off; and each exactly once.
        """
        twcc_id = transport.extension_ids.get(TRANSPORT_CC)
        if twcc_id is not None:
            twcc = _element_untrusted(block, twcc_id)
            if twcc is not None and len(twcc) == 2:
                transport.twcc.record((twcc[0] << 8) | twcc[1], now)
        estimator = transport.estimator
        if estimator is not None:
            sent = _element_untrusted(block, transport.extension_ids[ABS_SEND_TIME])
            if sent is not None and len(sent) == 3:
                estimator.on_packet(now, (sent[0] << 16) | (sent[1] << 8) | sent[2], size)

    def _receive_rtx(
        self,
        transport: WebRtcTransport,
        packet: bytes,
        pos: int,
        repair: tuple[Producer, int],
        now: float,
    ) -> None:
        """Unwrap an RTX packet (RFC 4588 §4) into the packet it repairs and handle that."""
        producer, media_ssrc = repair
        end = len(packet) - packet[-1] if packet[0] & 0x20 else len(packet)
        if end - pos < 2:
            return  # padding-only probe on the RTX stream
        original = (packet[pos] << 8) | packet[pos + 1]
        first, second, _, timestamp, _ = HEADER.unpack_from(packet)
        rebuilt = (
            HEADER.pack(
                first & ~0x20 & 0xFF,
                (second & 0x80) | producer.payload_type,
                original,
                timestamp,
                media_ssrc,
            )
            + packet[12:pos]
            + packet[pos + 2 : end]
        )
        self.receive_rtp(transport, rebuilt, now, repaired=True)

    def retry_nacks(self, now: float) -> None:
        """NACK again what publishers were asked to resend and still has not arrived."""
        for producer in self.producers.values():
            if producer.kind != "video":
                continue
            transport = self.transports.get(producer.transport_id)
            if transport is None:
                continue
            for ssrc, missing in producer.missing.items():
                if missing:
                    due = missing.due(now)
                    if due:
                        self._nack_publisher(transport, ssrc, due)

    def _nack_publisher(self, transport: WebRtcTransport, ssrc: int, missing: list[int]) -> None:
        """Ask the publisher to resend what never arrived (RFC 4585 §6.2.1)."""
        if transport.ice.selected is None or transport.srtp is None:
            return
        nack = GenericNack(sender_ssrc=transport.rtcp_ssrc, media_ssrc=ssrc, lost=tuple(missing))
        self.send(transport.srtp.protect_rtcp(nack.serialize()), transport.ice.selected)

    # -- RTCP -------------------------------------------------------------------------

    def receive_rtcp(self, transport: WebRtcTransport, data: bytes, now: float) -> None:
        """Handle one SRTCP datagram from a peer (publisher or subscriber), or one plain RTCP
        datagram from a pipe."""
        try:
            if transport.pipe:
                packets = parse_compound_untrusted(data)
            elif transport.srtp is not None:
                packets = parse_compound_untrusted(transport.srtp.unprotect_rtcp_untrusted(data))
            else:
                return
        except (SrtpError, MalformedRtcp):
            return
        for packet in packets:
            self._handle_rtcp(transport, packet, now)

    def _handle_rtcp(self, transport: WebRtcTransport, packet: RtcpPacket, now: float) -> None:
        if isinstance(packet, SenderReport):
            entry = transport.ssrc_table.get(packet.ssrc)
            if entry is not None:
                self._forward_sender_report(entry[0], packet, now)
        elif isinstance(packet, GenericNack):
            consumer = transport.consumers_by_ssrc.get(packet.media_ssrc)
            if consumer is not None:
                self._retransmit(consumer, transport, packet.lost)
        elif isinstance(packet, PictureLossIndication):
            consumer = transport.consumers_by_ssrc.get(packet.media_ssrc)
            if consumer is not None:
                self.request_keyframe(consumer.producer, now)
            elif transport.pipe:
                # The other worker's consumers want a key frame of a producer piped from here.
                for producer in self.producers.values():
                    if packet.media_ssrc in producer.streams:
                        self.request_keyframe(producer, now)
        elif isinstance(packet, FullIntraRequest):
            for ssrc, _ in packet.entries:
                consumer = transport.consumers_by_ssrc.get(ssrc)
                if consumer is not None:
                    self.request_keyframe(consumer.producer, now)
        elif isinstance(packet, ReceiverEstimatedMaxBitrate):
            video = [c for c in transport.consumers.values() if c.producer.kind == "video"]
            for consumer in video:
                consumer.set_bandwidth(packet.bitrate / len(video))
        elif isinstance(packet, ReceiverReport):
            for block in packet.reports:
                consumer = transport.consumers_by_ssrc.get(block.ssrc)
                if consumer is not None:
                    consumer.fraction_lost = block.fraction_lost

    def _forward_sender_report(self, producer: Producer, report: SenderReport, now: float) -> None:
        stats = producer.statistics.get(report.ssrc)
        if stats is not None:
            stats.on_sender_report(report.ntp_timestamp, now)
        for consumer, sink in self._routes.get(producer.id, ()):
            offset = consumer.rewriter.timestamp_offset(report.ssrc)
            if offset is None or sink.srtp is None or sink.ice.selected is None:
                continue
            translated = SenderReport(
                ssrc=consumer.ssrc,
                ntp_timestamp=report.ntp_timestamp,
                rtp_timestamp=(report.rtp_timestamp + offset) & 0xFFFFFFFF,
                packet_count=consumer.packets_sent & 0xFFFFFFFF,
                octet_count=consumer.bytes_sent & 0xFFFFFFFF,
            )
            self.send(sink.srtp.protect_rtcp(translated.serialize()), sink.ice.selected)

    def _retransmit(
        self, consumer: Consumer, transport: WebRtcTransport, lost: tuple[int, ...]
    ) -> None:
        source = consumer.rewriter.source
        if source is None or transport.srtp is None or transport.ice.selected is None:
            return
        for out_seq in lost[:64]:  # a NACK covers at most a few dozen; bound the work
            seq = consumer.rewriter.source_sequence(out_seq)
            if seq is None:
                continue
            clear = consumer.producer.retransmission(source, seq)
            if clear is None:
                continue
            # Re-run the packet through the rewriter: same segment, so same output numbers.
            first, second, _, timestamp, _ = HEADER.unpack_from(clear)
            out = consumer.rewriter.rewrite(source, seq, timestamp, 0.0)
            if out is None:
                continue
            pos = 12 + 4 * (first & 0x0F)
            extension = b""
            if first & 0x10:
                words = _EXT_HEAD.unpack_from(clear, pos)[1]
                block = clear[pos + 4 : pos + 4 + 4 * words]
                pos += 4 + 4 * words
                publisher = self.transports.get(consumer.producer.transport_id)
                if consumer.producer.kind == "audio" and publisher is not None:
                    level_id = publisher.extension_ids.get(AUDIO_LEVEL)
                    element = _element_untrusted(block, level_id) if level_id else None
                    extension = _AUDIO_EXT_PREFIX + (element or _SILENT)[:1] + _AUDIO_EXT_PAD
            end = len(clear) - clear[-1] if first & 0x20 else len(clear)
            payload = clear[pos:end]
            if consumer.producer.kind == "video":
                # The picture ids it had when first sent: same segment, same offset.
                _, pictures = _video_untrusted(payload)
                if pictures is not None:
                    payload = consumer.pictures.rewrite(
                        consumer.rewriter.segment, payload, pictures
                    )
            if consumer.rtx_ssrc is not None and consumer.rtx_payload_type is not None:
                # RFC 4588 §4: own SSRC and sequence space, original sequence number first.
                consumer.rtx_sequence = (consumer.rtx_sequence + 1) & 0xFFFF
                header = HEADER.pack(
                    0x90 if extension else 0x80,
                    (second & 0x80) | consumer.rtx_payload_type,
                    consumer.rtx_sequence,
                    out[1],
                    consumer.rtx_ssrc,
                )
                body = out[0].to_bytes(2, "big") + payload
            else:
                header = HEADER.pack(
                    0x90 if extension else 0x80,
                    (second & 0x80) | consumer.payload_type,
                    out[0],
                    out[1],
                    consumer.ssrc,
                )
                body = payload
            self.send(transport.srtp.protect(header + extension + body), transport.ice.selected)
            consumer.retransmitted += 1

    def request_keyframe(self, producer: Producer, now: float) -> None:
        """Send a PLI to the publisher, at most once per second per producer (RFC 4585 §6.3.1)."""
        if producer.kind != "video" or not producer.keyframe_request_due(now):
            return
        transport = self.transports.get(producer.transport_id)
        if transport is not None and transport.pipe and transport.pipe_address is not None:
            # A piped producer: ask the worker that has the publisher, in clear over loopback.
            # That worker applies the once-per-second limit again for the real publisher.
            for ssrc in producer.streams:
                pli = PictureLossIndication(sender_ssrc=transport.rtcp_ssrc, media_ssrc=ssrc)
                self.send(pli.serialize(), transport.pipe_address)
            return
        if transport is None or transport.srtp is None or transport.ice.selected is None:
            return
        packets: list[RtcpPacket] = [
            PictureLossIndication(sender_ssrc=transport.rtcp_ssrc, media_ssrc=ssrc)
            for ssrc in producer.streams
        ]
        if packets:
            self.send(
                transport.srtp.protect_rtcp(serialize_compound(packets)), transport.ice.selected
            )
