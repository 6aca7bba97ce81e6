"""One SFU worker process: owns a UDP port on one core and the routers placed on it.

The node starts ``python -m sfu.worker`` per core. The worker binds its UDP socket, reports
``{"event": "ready", "port": P}`` as one JSON line on stdout, then speaks length-prefixed
msgpack frames (:mod:`sfu.channel`) on stdin/stdout: requests from the node, replies and
events back. It lives until stdin reaches end of file (the node closed it or died) or it
receives SIGTERM/SIGINT.

:class:`Worker` is the sans-I/O core — datagrams, time and requests in; datagrams and
events out — so the forwarding and every RPC are unit-tested without sockets. The trio
shell (:func:`run_worker`) is the hot path: a stdlib non-blocking UDP socket, one
``wait_readable`` per wake-up, then every queued datagram drained with no await and no
logging per packet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil
import trio

from sfu.bwe import MAX_INCOMING_BITRATE, MIN_BITRATE, ReceiveSideEstimator
from sfu.channel import FrameDecoder, FrameError, encode_frame
from sfu.consumer import Consumer, RtpRewriter
from sfu.demux import Kind, classify
from sfu.dtls import Certificate
from sfu.errors import BadParams, NotFound, RpcError, SfuError, SrtpError
from sfu.ice import CONSENT_TIMEOUT, decode_binding_untrusted, local_ufrag_untrusted
from sfu.producer import Producer
from sfu.router import Router, SendRtpFunction
from sfu.rtcp import ReceiverEstimatedMaxBitrate, ReceiverReport, RtcpPacket, serialize_compound
from sfu.rtp import ABS_SEND_TIME
from sfu.sdp import (
    MAX_MEDIA_SECTIONS,
    ConsumerOffer,
    IceDtlsParameters,
    SessionDescription,
    answer_offer,
    remote_fingerprints,
)
from sfu.transport import Address, WebRtcTransport
from sfu.udp import UdpReceiver, UdpSender

__all__ = ["Worker", "main", "run_worker"]

EmitFunction = Callable[[str, dict[str, Any]], None]

RTCP_INTERVAL = 1.0
TWCC_INTERVAL = 0.1
SPEAKER_INTERVAL = 0.3
TICK_INTERVAL = 0.05
# A transport nobody connects to within this time is closed (the client never showed up).
ICE_CONNECT_TIMEOUT = 60.0
# A REMB goes out at once, not at the next report, when the estimate falls below this
# share of the last one sent: a publisher told about a cut a second late has filled the
# queue for that second (WebRTC's receiver uses the same 97 %).
REMB_PROMPT_DECREASE = 0.97
# Authenticated ICE addresses remembered per transport (candidate pairs being checked).
MAX_ADDRESSES_PER_TRANSPORT = 8


def _str(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise BadParams(f"{key!r} must be a non-empty string")
    return value


def _int(params: dict[str, Any], key: str, default: int | None = None) -> int:
    value = params.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadParams(f"{key!r} must be an integer")
    return value


class Worker:
    """The sans-I/O core of one worker process (see module docstring)."""

    def __init__(
        self,
        announce_ip: str,
        port: int,
        send: Callable[[bytes, Address], None],
        emit: EmitFunction,
        local_ip: str | None = None,
        consent_timeout: float = CONSENT_TIMEOUT,
        send_rtp: SendRtpFunction | None = None,
        max_incoming_bitrate: int = MAX_INCOMING_BITRATE,
    ) -> None:
        self.consent_timeout = consent_timeout
        self.max_incoming_bitrate = max_incoming_bitrate
        self.send_rtp = send_rtp
        self.announce_ip = announce_ip
        # Where other workers of this node reach us for pipes (the bound address).
        self.local_ip = local_ip or announce_ip
        self.port = port
        self.send = send
        self.emit = emit
        self.certificate = Certificate.generate()
        self.fingerprint = self.certificate.fingerprint()
        self._context = self.certificate.context()
        self.routers: dict[str, Router] = {}
        self.transports: dict[str, WebRtcTransport] = {}
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self._by_ufrag: dict[str, WebRtcTransport] = {}
        self._by_address: dict[Address, WebRtcTransport] = {}
        self._addresses: dict[str, list[Address]] = {}
        # Pipes by the other worker's address. Every pipe from one worker shares that
        # worker's one port, so the pipes of several routers (channels) between the same two
        # workers are told apart by SSRC: (address, SSRC) -> the pipe whose router has the
        # copy of that stream.
        self._pipes_at: dict[Address, list[WebRtcTransport]] = {}
        self._pipe_in: dict[tuple[Address, int], WebRtcTransport] = {}
        self._created: dict[str, float] = {}
        self._remb_sent: dict[str, int] = {}
        self._next_rtcp = 0.0
        self._next_twcc = 0.0
        self._next_speaker = 0.0
        self.dropped = 0
        self.srtp_failures = 0
        self._process = psutil.Process()

    # -- datagrams --------------------------------------------------------------------

    def datagram_received(self, data: bytes, address: Address, now: float) -> None:
        """Handle one datagram from the UDP port (RFC 7983 demultiplexing)."""
        kind = classify(data)
        if kind is Kind.RTP:
            transport = self._by_address.get(address)
            if transport is None:
                pipe = self._pipe_for(data, address)
                if pipe is None:
                    self.dropped += 1
                else:
                    self.routers[pipe.router_id].receive_rtp(pipe, data, now)
                return
            if transport.srtp is None:
                self.dropped += 1
                return
            try:
                clear = transport.srtp.unprotect_untrusted(data)
            except SrtpError:
                self.srtp_failures += 1
                return
            self.routers[transport.router_id].receive_rtp(transport, clear, now)
        elif kind is Kind.RTCP:
            transport = self._by_address.get(address)
            if transport is None:
                pipes = self._pipes_at.get(address)
                if not pipes:
                    self.dropped += 1
                # Only key frame requests cross pipes (at most one a second per producer):
                # each router with a pipe from there looks for the SSRC among its producers.
                for pipe in pipes or ():
                    self.routers[pipe.router_id].receive_rtcp(pipe, data, now)
                return
            self.routers[transport.router_id].receive_rtcp(transport, data, now)
        elif kind is Kind.STUN:
            self._receive_stun(data, address, now)
        elif kind is Kind.DTLS:
            transport = self._by_address.get(address)
            if transport is None:
                self.dropped += 1
                return
            for datagram in transport.receive_dtls_untrusted(data, now, address):
                self.send(datagram, address)
        else:
            self.dropped += 1

    def _pipe_for(self, data: bytes, address: Address) -> WebRtcTransport | None:
        """The pipe an RTP packet from another worker of the node belongs to."""
        pipes = self._pipes_at.get(address)
        if not pipes:
            return None
        if len(data) >= 12:
            pipe = self._pipe_in.get((address, int.from_bytes(data[8:12], "big")))
            if pipe is not None:
                return pipe
        # A stream not announced when piped (a simulcast layer whose SSRC the source learnt
        # later): unambiguous only if this is the one pipe from there.
        return pipes[0] if len(pipes) == 1 else None

    def _receive_stun(self, data: bytes, address: Address, now: float) -> None:
        message = decode_binding_untrusted(data)
        if message is None:
            self.dropped += 1
            return
        ufrag = local_ufrag_untrusted(message)
        transport = self._by_ufrag.get(ufrag) if ufrag is not None else None
        if transport is None:
            self.dropped += 1
            return
        reply = transport.ice.receive(message, address, now)
        if reply.response is not None:
            self.send(reply.response, address)
        if reply.accepted and self._by_address.get(address) is not transport:
            known = self._addresses.setdefault(transport.id, [])
            if len(known) >= MAX_ADDRESSES_PER_TRANSPORT:
                self._by_address.pop(known.pop(0), None)
            known.append(address)
            self._by_address[address] = transport

    # -- timers -----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run timers: DTLS retransmission, consent, RTCP reports, NACK retries, speaker,
        key frames."""
        for transport in list(self.transports.values()):
            dtls = transport.dtls
            if dtls is not None and dtls.deadline is not None and now >= dtls.deadline:
                dtls.handle_timeout(now)
                known = self._addresses.get(transport.id)
                for datagram in dtls.outgoing():
                    if known:
                        self.send(datagram, known[-1])
            if transport.ice.consent_expired(now, self.consent_timeout):
                self._close_transport(transport, "consent expired")
            elif (
                not transport.pipe
                and transport.ice.selected is None
                and now - self._created.get(transport.id, now) > ICE_CONNECT_TIMEOUT
            ):
                self._close_transport(transport, "ICE never connected")
        if now >= self._next_rtcp:
            self._next_rtcp = now + RTCP_INTERVAL
            for producer in self.producers.values():
                if producer.kind == "video":
                    producer.measure_layers(now)
            for consumer in self.consumers.values():
                if consumer.producer.kind == "video":
                    consumer.set_bandwidth(consumer.bandwidth)
            for transport in self.transports.values():
                self._report_to_publisher(transport, now)
        else:
            for transport in self.transports.values():
                estimator = transport.estimator
                if estimator is not None and estimator.estimate() < REMB_PROMPT_DECREASE * (
                    self._remb_sent.get(transport.id, self.max_incoming_bitrate)
                ):
                    self._send_remb(transport)
        for router in self.routers.values():
            router.retry_nacks(now)
        if now >= self._next_twcc:
            self._next_twcc = now + TWCC_INTERVAL
            for transport in self.transports.values():
                self._send_twcc(transport)
        for router in self.routers.values():
            # Every tick, not every speaker poll: a new speaker's first words wait for
            # this event before any large channel's subscriber consumes them.
            for producer_id, voiced in router.speaker.voice_activity(now):
                self.emit(
                    "voice", {"router_id": router.id, "producer_id": producer_id, "active": voiced}
                )
        if now >= self._next_speaker:
            self._next_speaker = now + SPEAKER_INTERVAL
            for router in self.routers.values():
                speaker = router.speaker.poll(now)
                if speaker is not None:
                    self.emit("speaker", {"router_id": router.id, "producer_id": speaker})
            for router in self.routers.values():
                for consumer, _ in router.consumers.values():
                    if (
                        consumer.needs_keyframe
                        and not consumer.paused
                        and consumer.producer.forwarding
                    ):
                        router.request_keyframe(consumer.producer, now)

    def _report_to_publisher(self, transport: WebRtcTransport, now: float) -> None:
        if not transport.producers or transport.srtp is None or transport.ice.selected is None:
            return
        blocks = [
            stats.report_block(now)
            for producer in transport.producers.values()
            for stats in producer.statistics.values()
        ][:31]  # RC is five bits (RFC 3550 §6.4.2)
        packets: list[RtcpPacket] = [
            ReceiverReport(ssrc=transport.rtcp_ssrc, reports=tuple(blocks))
        ]
        remb = self._remb(transport)
        if remb is not None:
            packets.append(remb)
        self.send(transport.srtp.protect_rtcp(serialize_compound(packets)), transport.ice.selected)

    def _remb(self, transport: WebRtcTransport) -> ReceiverEstimatedMaxBitrate | None:
        """The REMB for a publisher: its estimated bandwidth, or the ceiling without one."""
        ssrcs = tuple(s for p in transport.producers.values() for s in p.streams)
        if not ssrcs:
            return None
        estimator = transport.estimator
        bitrate = estimator.estimate() if estimator is not None else self.max_incoming_bitrate
        self._remb_sent[transport.id] = bitrate
        return ReceiverEstimatedMaxBitrate(
            sender_ssrc=transport.rtcp_ssrc, bitrate=bitrate, ssrcs=ssrcs[:255]
        )

    def _send_remb(self, transport: WebRtcTransport) -> None:
        if transport.srtp is None or transport.ice.selected is None:
            return
        remb = self._remb(transport)
        if remb is not None:
            self.send(transport.srtp.protect_rtcp(remb.serialize()), transport.ice.selected)

    def _send_twcc(self, transport: WebRtcTransport) -> None:
        if transport.srtp is None or transport.ice.selected is None:
            return
        media = next((s for p in transport.producers.values() for s in p.streams), 0)
        feedback = transport.twcc.feedback(transport.rtcp_ssrc, media)
        if feedback is not None:
            self.send(transport.srtp.protect_rtcp(feedback.serialize()), transport.ice.selected)

    def _close_transport(self, transport: WebRtcTransport, reason: str) -> None:
        router = self.routers.get(transport.router_id)
        for producer_id in list(transport.producers):
            self.producers.pop(producer_id, None)
            if router is not None:
                for consumer_id in router.close_producer(producer_id):
                    self.consumers.pop(consumer_id, None)
        for consumer_id in list(transport.consumers):
            self.consumers.pop(consumer_id, None)
        if router is not None:
            router.close_transport(transport.id)
            # The DTLS close_notify, if any, goes to the selected address.
            if transport.dtls is not None and transport.ice.selected is not None:
                for datagram in transport.dtls.outgoing():
                    self.send(datagram, transport.ice.selected)
        self.transports.pop(transport.id, None)
        self._by_ufrag.pop(transport.ice.local_ufrag, None)
        for address in self._addresses.pop(transport.id, []):
            if self._by_address.get(address) is transport:
                del self._by_address[address]
        self._created.pop(transport.id, None)
        self._remb_sent.pop(transport.id, None)
        if transport.pipe and transport.pipe_address is not None:
            pipes = self._pipes_at.get(transport.pipe_address, [])
            if transport in pipes:
                pipes.remove(transport)
            if not pipes:
                self._pipes_at.pop(transport.pipe_address, None)
            for key in [k for k, pipe in self._pipe_in.items() if pipe is transport]:
                del self._pipe_in[key]
        if reason:
            self.emit("transport.closed", {"transport_id": transport.id, "reason": reason})

    # -- requests from the node -------------------------------------------------------

    def handle_request(self, method: str, params: dict[str, Any], now: float) -> dict[str, Any]:
        """Carry out one RPC; raises :class:`RpcError` subclasses for refusals."""
        handler = _METHODS.get(method)
        if handler is None:
            raise BadParams(f"unknown method {method!r}")
        return handler(self, params, now)

    def _router(self, params: dict[str, Any]) -> Router:
        router = self.routers.get(_str(params, "router_id"))
        if router is None:
            raise NotFound("no such router")
        return router

    def _transport(self, params: dict[str, Any]) -> WebRtcTransport:
        transport = self.transports.get(_str(params, "transport_id"))
        if transport is None:
            raise NotFound("no such transport")
        return transport

    def _producer(self, params: dict[str, Any]) -> Producer:
        producer = self.producers.get(_str(params, "producer_id"))
        if producer is None:
            raise NotFound("no such producer")
        return producer

    def _consumer(self, params: dict[str, Any]) -> Consumer:
        consumer = self.consumers.get(_str(params, "consumer_id"))
        if consumer is None:
            raise NotFound("no such consumer")
        return consumer

    def _local(self, transport: WebRtcTransport) -> IceDtlsParameters:
        return IceDtlsParameters(
            ice_ufrag=transport.ice.local_ufrag,
            ice_pwd=transport.ice.local_pwd,
            fingerprint=self.fingerprint,
            ip=self.announce_ip,
            port=self.port,
        )

    def router_create(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``router.create``: a new router (voice channel) on this worker."""
        router_id = params.get("router_id") or secrets.token_hex(8)
        if not isinstance(router_id, str) or router_id in self.routers:
            raise BadParams("router_id must be a new string")
        self.routers[router_id] = Router(router_id, self.send, self.send_rtp)
        return {"router_id": router_id}

    def router_close(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``router.close``: close a router and everything in it."""
        router = self._router(params)
        for transport in list(router.transports.values()):
            self._close_transport(transport, "")
        del self.routers[router.id]
        return {}

    def transport_create(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``transport.create``: ICE-lite and DTLS parameters and the host candidate."""
        router = self._router(params)
        transport = WebRtcTransport.create(secrets.token_hex(8), router.id)
        router.transports[transport.id] = transport
        self.transports[transport.id] = transport
        self._by_ufrag[transport.ice.local_ufrag] = transport
        self._created[transport.id] = now
        local = self._local(transport)
        return {
            "transport_id": transport.id,
            "ice_parameters": {
                "username_fragment": local.ice_ufrag,
                "password": local.ice_pwd,
                "ice_lite": True,
            },
            "dtls_parameters": {
                "role": "server",
                "fingerprints": [{"algorithm": "sha-256", "value": local.fingerprint}],
            },
            "ice_candidates": [
                {
                    "foundation": "1",
                    "priority": 2130706431,
                    "ip": local.ip,
                    "port": local.port,
                    "protocol": "udp",
                    "type": "host",
                }
            ],
        }

    def transport_connect(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``transport.connect``: either ``dtls_parameters`` (fingerprints) or a publishing
        client's ``sdp_offer``, which is answered and turned into producers."""
        transport = self._transport(params)
        offer_text = params.get("sdp_offer")
        if offer_text is not None:
            if not isinstance(offer_text, str):
                raise BadParams("'sdp_offer' must be a string")
            try:
                offer = SessionDescription.parse_untrusted(offer_text)
                answer, tracks = answer_offer(offer, self._local(transport), secrets.randbits(62))
            except SfuError as exc:
                raise BadParams(str(exc)) from None
            if transport.dtls is None:
                self._arm_dtls(transport, remote_fingerprints(offer), now)
            created = []
            for track in tracks:
                producer = self._add_producer(
                    transport,
                    kind=track.kind,
                    payload_type=track.payload_type,
                    clock_rate=track.clock_rate,
                    mid=track.mid,
                    ssrcs=track.ssrcs,
                    rids=track.layers,
                    extensions=track.extensions,
                    rtx_streams={
                        rtx: media
                        for rtx, rtx_layer in track.rtx_ssrcs.items()
                        for media, layer in track.ssrcs.items()
                        if layer == rtx_layer
                    },
                )
                created.append(
                    {"producer_id": producer.id, "kind": producer.kind, "mid": track.mid}
                )
            return {"sdp_answer": answer.serialize(), "producers": created}
        dtls = params.get("dtls_parameters")
        if not isinstance(dtls, dict) or not isinstance(dtls.get("fingerprints"), list):
            raise BadParams("need 'sdp_offer' or 'dtls_parameters' with 'fingerprints'")
        fingerprints = []
        for item in dtls["fingerprints"][:8]:
            if not isinstance(item, dict):
                raise BadParams("fingerprints must be maps")
            fingerprints.append((_str(item, "algorithm"), _str(item, "value")))
        if transport.dtls is not None:
            raise BadParams("transport is already connected")
        self._arm_dtls(transport, fingerprints, now)
        return {}

    def _arm_dtls(
        self, transport: WebRtcTransport, fingerprints: list[tuple[str, str]], now: float
    ) -> None:
        for datagram, address in transport.connect(self._context, fingerprints, now):
            self.send(datagram, address)

    def transport_offer(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``transport.offer``: the SFU's offer for everything this transport consumes."""
        transport = self._transport(params)
        if not transport.consumer_offers:
            raise BadParams("transport has no consumers to offer")
        return {"sdp_offer": self._offer(transport)}

    def _offer(self, transport: WebRtcTransport) -> str:
        transport.offer_version += 1
        return transport.offer_writer.write(
            self._local(transport),
            transport.consumer_offers,
            session_id=int(transport.id, 16) >> 2,
            version=transport.offer_version,
        )

    def transport_answer(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``transport.answer``: a subscriber's answer to :meth:`transport_offer`."""
        transport = self._transport(params)
        text = params.get("sdp_answer")
        if not isinstance(text, str):
            raise BadParams("'sdp_answer' must be a string")
        try:
            answer = SessionDescription.parse_untrusted(text, transport.answer_sections)
        except SfuError as exc:
            raise BadParams(str(exc)) from None
        fingerprints = remote_fingerprints(answer)
        if not fingerprints:
            raise BadParams("answer carries no DTLS fingerprint")
        transport.answered(answer)
        if transport.dtls is None:
            self._arm_dtls(transport, fingerprints, now)
        return {}

    def pipe_create(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``pipe.create``: a plain transport in a router, for another worker's router."""
        router = self._router(params)
        transport = WebRtcTransport.create(secrets.token_hex(8), router.id)
        transport.pipe = True
        router.transports[transport.id] = transport
        self.transports[transport.id] = transport
        return {"pipe_id": transport.id, "ip": self.local_ip, "port": self.port}

    def pipe_connect(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``pipe.connect``: the other end's address (loopback, same node)."""
        transport = self._transport({"transport_id": params.get("pipe_id")})
        if not transport.pipe or transport.pipe_address is not None:
            raise BadParams("not an unconnected pipe")
        address = (_str(params, "ip"), _int(params, "port"))
        transport.pipe_address = address
        self._pipes_at.setdefault(address, []).append(transport)
        return {}

    def pipe_consume(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``pipe.consume``: copy a producer's packets into a pipe; returns what the other
        worker needs to recreate the producer (``pipe.produce``)."""
        transport = self._transport({"transport_id": params.get("pipe_id")})
        producer = self._producer(params)
        router = self.routers[transport.router_id]
        if not transport.pipe or producer.id not in router.producers:
            raise BadParams("pipe and producer must be in the same router")
        router.pipes.setdefault(producer.id, []).append(transport)
        publisher = self.transports[producer.transport_id]
        return {
            "kind": producer.kind,
            "payload_type": producer.payload_type,
            "clock_rate": producer.clock_rate,
            "mid": producer.mid,
            "ssrcs": {str(ssrc): layer for ssrc, layer in producer.streams.items()},
            "rids": [rid for rid, _ in sorted(producer.rids.items(), key=lambda r: r[1])],
            "extensions": {str(i): uri for uri, i in publisher.extension_ids.items()},
        }

    def pipe_produce(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``pipe.produce``: the far side of :meth:`pipe_consume`, under the same producer id."""
        transport = self._transport({"transport_id": params.get("pipe_id")})
        producer_id = _str(params, "producer_id")
        if not transport.pipe or producer_id in self.producers:
            raise BadParams("not a pipe, or that producer already exists here")
        if transport.pipe_address is None:
            raise BadParams("the pipe is not connected")
        raw_ssrcs = params.get("ssrcs", {})
        keys = (
            [(transport.pipe_address, int(k)) for k in raw_ssrcs]
            if isinstance(raw_ssrcs, dict)
            else []
        )
        if any(key in self._pipe_in for key in keys):
            raise BadParams("an SSRC of that producer is already piped from that worker")
        producer = self._producer_from_params(transport, params, producer_id)
        for key in keys:
            self._pipe_in[key] = transport
        return {"producer_id": producer.id}

    def transport_close(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``transport.close``."""
        self._close_transport(self._transport(params), "")
        return {}

    def _add_producer(
        self,
        transport: WebRtcTransport,
        *,
        kind: str,
        payload_type: int,
        clock_rate: int,
        mid: str,
        ssrcs: dict[int, int],
        rids: tuple[str, ...],
        extensions: dict[int, str],
        producer_id: str | None = None,
        rtx_streams: dict[int, int] | None = None,
    ) -> Producer:
        producer = Producer(
            id=producer_id or secrets.token_hex(8),
            kind=kind,
            transport_id=transport.id,
            payload_type=payload_type,
            clock_rate=clock_rate,
            mid=mid,
            rids={rid: layer for layer, rid in enumerate(rids)},
        )
        for ssrc, layer in ssrcs.items():
            producer.add_stream(ssrc, layer)
        producer.rtx_streams.update(rtx_streams or {})
        transport.add_producer(producer, extensions)
        if (
            transport.estimator is None
            and not transport.pipe
            and ABS_SEND_TIME in extensions.values()
        ):
            # A pipe's packets crossed loopback only: nothing to estimate, nobody to tell.
            transport.estimator = ReceiveSideEstimator(self.max_incoming_bitrate)
        self.routers[transport.router_id].add_producer(producer)
        self.producers[producer.id] = producer
        return producer

    def producer_create(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``producer.create`` from explicit RTP parameters (the non-SDP path)."""
        return {"producer_id": self._producer_from_params(self._transport(params), params).id}

    def _producer_from_params(
        self, transport: WebRtcTransport, params: dict[str, Any], producer_id: str | None = None
    ) -> Producer:
        kind = params.get("kind")
        if kind not in ("audio", "video"):
            raise BadParams("'kind' must be 'audio' or 'video'")
        raw_ssrcs = params.get("ssrcs", {})
        raw_rids = params.get("rids", [])
        raw_ext = params.get("extensions", {})
        if not isinstance(raw_ssrcs, dict) or not isinstance(raw_rids, list):
            raise BadParams("'ssrcs' must be a map and 'rids' a list")
        if not isinstance(raw_ext, dict):
            raise BadParams("'extensions' must be a map")
        raw_rtx = params.get("rtx_ssrcs", {})
        if not isinstance(raw_rtx, dict):
            raise BadParams("'rtx_ssrcs' must be a map")
        ssrcs = {int(k): int(v) for k, v in list(raw_ssrcs.items())[:8]}
        extensions = {int(k): str(v) for k, v in list(raw_ext.items())[:16]}
        rtx_streams = {int(k): int(v) for k, v in list(raw_rtx.items())[:8]}
        return self._add_producer(
            transport,
            kind=kind,
            payload_type=_int(params, "payload_type"),
            clock_rate=_int(params, "clock_rate", 48000 if kind == "audio" else 90000),
            mid=str(params.get("mid", "")),
            ssrcs=ssrcs,
            rids=tuple(str(r) for r in raw_rids[:4]),
            extensions=extensions,
            producer_id=producer_id,
            rtx_streams=rtx_streams,
        )

    def producer_pause(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``producer.pause``: stop forwarding (the publisher asked)."""
        self._producer(params).paused = True
        return {}

    def producer_resume(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``producer.resume``."""
        self._producer(params).paused = False
        return {}

    def producer_mute(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``producer.mute``: server-side mute (a moderator); ``muted`` true or false."""
        muted = params.get("muted", True)
        if not isinstance(muted, bool):
            raise BadParams("'muted' must be a boolean")
        self._producer(params).muted = muted
        return {}

    def producer_close(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``producer.close``: also closes its consumers."""
        producer = self._producer(params)
        pipe = self.transports[producer.transport_id]
        if pipe.pipe and pipe.pipe_address is not None:
            for ssrc in producer.streams:
                if self._pipe_in.get((pipe.pipe_address, ssrc)) is pipe:
                    del self._pipe_in[(pipe.pipe_address, ssrc)]
        for consumer_id in self.routers[
            self.transports[producer.transport_id].router_id
        ].close_producer(producer.id):
            self.consumers.pop(consumer_id, None)
        del self.producers[producer.id]
        return {}

    def consumer_create(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``consumer.create``: forward a producer of the same router to a transport."""
        transport = self._transport(params)
        producer = self._producer(params)
        if producer.id not in self.routers[transport.router_id].producers:
            raise BadParams("producer is in another router")
        return self._add_consumer(
            transport, producer, bool(params.get("paused", False)), params.get("preferred_layer")
        )

    def transport_consume(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``transport.consume``: one subscriber's renegotiation in one round trip — close
        the consumers named in ``close`` (their m-sections turn inactive), create one
        consumer per ``{producer_id, paused}`` in ``consume``, and return the transport's
        new offer (``sdp_offer``, absent when it has nothing to offer). Producers that are
        gone or in another router are listed in ``missing`` rather than failing the rest:
        control's view may trail a producer that closed a moment ago."""
        transport = self._transport(params)
        router = self.routers[transport.router_id]
        close, consume = params.get("close", []), params.get("consume", [])
        if not isinstance(close, list) or not isinstance(consume, list):
            raise BadParams("'close' and 'consume' must be lists")
        if len(close) + len(consume) > MAX_MEDIA_SECTIONS:
            raise BadParams(f"at most {MAX_MEDIA_SECTIONS} consumers per request")
        for consumer_id in close:
            consumer = self.consumers.get(consumer_id) if isinstance(consumer_id, str) else None
            if consumer is not None and consumer.transport_id == transport.id:
                self._close_consumer(consumer)
        created, missing = [], []
        for item in consume:
            if not isinstance(item, dict):
                raise BadParams("'consume' holds maps")
            producer = self.producers.get(_str(item, "producer_id"))
            if producer is None or producer.id not in router.producers:
                missing.append(item["producer_id"])
                continue
            created.append(
                self._add_consumer(
                    transport,
                    producer,
                    bool(item.get("paused", False)),
                    item.get("preferred_layer"),
                )
            )
        result: dict[str, Any] = {"consumers": created, "missing": missing}
        if transport.consumer_offers:
            result["sdp_offer"] = self._offer(transport)
        return result

    def _add_consumer(
        self, transport: WebRtcTransport, producer: Producer, paused: bool, preferred: object
    ) -> dict[str, Any]:
        router = self.routers[transport.router_id]
        ssrc = secrets.randbits(32) or 1
        consumer = Consumer(
            id=secrets.token_hex(8),
            producer=producer,
            transport_id=transport.id,
            ssrc=ssrc,
            payload_type=100 if producer.kind == "audio" else 101,
            rewriter=RtpRewriter(producer.clock_rate, secrets.randbits(16), secrets.randbits(32)),
            paused=paused,
        )
        if producer.kind == "video":
            consumer.rtx_ssrc = secrets.randbits(32) or 2
            consumer.rtx_payload_type = 102
            consumer.rtx_sequence = secrets.randbits(16)
        if isinstance(preferred, int) and not isinstance(preferred, bool):
            consumer.preferred_layer = preferred
        consumer.set_bandwidth(consumer.bandwidth)
        mid = transport.new_mid()
        transport.add_consumer_offer(
            ConsumerOffer(
                mid=mid,
                kind=producer.kind,
                payload_type=consumer.payload_type,
                ssrc=ssrc,
                cname=producer.transport_id,
                stream_id=producer.transport_id,
                track_id=producer.id,
                rtx_payload_type=consumer.rtx_payload_type,
                rtx_ssrc=consumer.rtx_ssrc,
            )
        )
        router.add_consumer(consumer, transport)
        self.consumers[consumer.id] = consumer
        return {
            "consumer_id": consumer.id,
            "producer_id": producer.id,
            "kind": producer.kind,
            "ssrc": ssrc,
            "payload_type": consumer.payload_type,
            "rtx_ssrc": consumer.rtx_ssrc,
            "mid": mid,
        }

    def consumer_pause(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``consumer.pause``."""
        self._consumer(params).set_paused(True)
        return {}

    def consumer_resume(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``consumer.resume``: continues seamlessly (new rewrite segment, key frame asked)."""
        self._consumer(params).set_paused(False)
        return {}

    def consumer_close(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``consumer.close``: its m-section stays in the next offer, inactive, until the
        subscriber has answered it so and a new consumer of its kind recycles it."""
        self._close_consumer(self._consumer(params))
        return {}

    def _close_consumer(self, consumer: Consumer) -> None:
        transport = self.transports.get(consumer.transport_id)
        if transport is not None:
            # The router retires the m-section (as for consumers a closing producer takes).
            self.routers[transport.router_id].close_consumer(consumer.id)
        self.consumers.pop(consumer.id, None)

    def stats(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        """``stats``: counters of this worker (rates are computed by the node)."""
        packets_in = sum(r.packets_in for r in self.routers.values())
        lost = expected = 0
        for producer in self.producers.values():
            for stats in producer.statistics.values():
                lost += stats.lost
                expected += stats.expected
        return {
            "routers": len(self.routers),
            "transports": len(self.transports),
            "producers": len(self.producers),
            "consumers": len(self.consumers),
            "packets_in": packets_in,
            "bytes_in": sum(r.bytes_in for r in self.routers.values()),
            "packets_out": sum(r.packets_out for r in self.routers.values()),
            "bytes_out": sum(r.bytes_out for r in self.routers.values()),
            "packets_lost": lost,
            "packets_expected": expected,
            "dropped": self.dropped,
            "srtp_failures": self.srtp_failures,
            "cpu_s": time.process_time(),
            "rss_bytes": self._process.memory_info().rss,
        }


_METHODS: dict[str, Callable[[Worker, dict[str, Any], float], dict[str, Any]]] = {
    "router.create": Worker.router_create,
    "router.close": Worker.router_close,
    "transport.create": Worker.transport_create,
    "transport.connect": Worker.transport_connect,
    "transport.offer": Worker.transport_offer,
    "transport.answer": Worker.transport_answer,
    "transport.close": Worker.transport_close,
    "transport.consume": Worker.transport_consume,
    "pipe.create": Worker.pipe_create,
    "pipe.connect": Worker.pipe_connect,
    "pipe.consume": Worker.pipe_consume,
    "pipe.produce": Worker.pipe_produce,
    "producer.create": Worker.producer_create,
    "producer.pause": Worker.producer_pause,
    "producer.resume": Worker.producer_resume,
    "producer.mute": Worker.producer_mute,
    "producer.close": Worker.producer_close,
    "consumer.create": Worker.consumer_create,
    "consumer.pause": Worker.consumer_pause,
    "consumer.resume": Worker.consumer_resume,
    "consumer.close": Worker.consumer_close,
    "stats": Worker.stats,
}


def reply_for(worker: Worker, frame: dict[str, Any], now: float) -> dict[str, Any]:
    """The reply frame to one request frame: ``{id, result}`` or ``{id, error}``."""
    request_id = frame.get("id")
    method = frame.get("method")
    params = frame.get("params", {})
    try:
        if not isinstance(method, str) or not isinstance(params, dict):
            raise BadParams("a request needs a string 'method' and a map 'params'")
        return {"id": request_id, "result": worker.handle_request(method, params, now)}
    except RpcError as exc:
        return {"id": request_id, "error": {"code": exc.code, "message": str(exc)}}
    except (ValueError, TypeError, KeyError) as exc:
        return {"id": request_id, "error": {"code": BadParams.code, "message": str(exc)}}


async def _serve_udp(
    worker: Worker, sock: socket.socket, receiver: UdpReceiver, sender: UdpSender
) -> None:
    """The hot path: wait once, then drain every queued datagram without awaiting (many per
    recvmmsg); what the drain sends leaves in batches (one sendmmsg per batch) before the
    next wait."""
    received = worker.datagram_received
    clock = time.monotonic
    while True:
        await trio.lowlevel.wait_readable(sock)
        sender.start_batch()
        try:
            receiver.drain(received, clock)
        finally:
            sender.close_batch()


async def _tick(worker: Worker) -> None:
    while True:
        worker.tick(time.monotonic())
        await trio.sleep(TICK_INTERVAL)


async def run_worker(
    listen_ip: str,
    port: int,
    announce_ip: str | None = None,
    consent_timeout: float = CONSENT_TIMEOUT,
    max_incoming_bitrate: int = MAX_INCOMING_BITRATE,
) -> None:
    """Bind, announce the port, serve datagrams and the node's requests until told to stop."""
    family = socket.AF_INET6 if ":" in listen_ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        # A burst from many publishers must queue, not drop, while we are busy forwarding.
        sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
    sock.bind((listen_ip, port))
    bound_port = sock.getsockname()[1]
    sys.stdout.write(json.dumps({"event": "ready", "port": bound_port}) + "\n")
    sys.stdout.flush()
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    events_out, events_in = trio.open_memory_channel[bytes](1024)

    sender = UdpSender(sock)

    def emit(event: str, data: dict[str, Any]) -> None:
        # The node is not reading when this is full; events are advisory and may be dropped.
        with contextlib.suppress(trio.WouldBlock):
            events_out.send_nowait(encode_frame({"event": event, "data": data}))

    local_ip = "127.0.0.1" if listen_ip in ("0.0.0.0", "::") else listen_ip
    worker = Worker(
        announce_ip or listen_ip,
        bound_port,
        sender.send,
        emit,
        local_ip,
        consent_timeout,
        sender.send_rtp,
        max_incoming_bitrate,
    )
    with sock, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery, stdin, stdout:

            async def until_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            async def write_events() -> None:
                async for frame in events_in:
                    await stdout.send_all(frame)

            nursery.start_soon(until_signal)
            nursery.start_soon(write_events)
            nursery.start_soon(_serve_udp, worker, sock, UdpReceiver(sock), sender)
            nursery.start_soon(_tick, worker)
            decoder = FrameDecoder()
            while chunk := await stdin.receive_some(65536):
                try:
                    frames = decoder.feed_untrusted(chunk)
                except FrameError:
                    break  # the node speaks nonsense: stop rather than guess
                for frame in frames:
                    reply = reply_for(worker, frame, time.monotonic())
                    await events_out.send(encode_frame(reply))
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sfu.worker`` (started by the node, not by people)."""
    parser = argparse.ArgumentParser(prog="python -m sfu.worker")
    parser.add_argument("--listen-ip", required=True)
    parser.add_argument("--announce-ip", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--consent-timeout", type=float, default=CONSENT_TIMEOUT)
    parser.add_argument("--max-incoming-bitrate", type=int, default=MAX_INCOMING_BITRATE)
    args = parser.parse_args(argv)
    if args.max_incoming_bitrate < MIN_BITRATE:
        parser.error(f"--max-incoming-bitrate must be at least {MIN_BITRATE} bit/s")
    trio.run(
        run_worker,
        args.listen_ip,
        args.port,
        args.announce_ip,
        args.consent_timeout,
        args.max_incoming_bitrate,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
