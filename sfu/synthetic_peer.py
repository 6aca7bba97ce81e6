"""A minimal WebRTC endpoint for load generation and tests: ICE checks, DTLS client, SRTP.

It speaks to an SFU transport exactly as a browser would on the wire (authenticated STUN
Binding requests with USE-CANDIDATE, a DTLS 1.2 client handshake, SRTP/SRTCP keyed from
it), but without codecs or SDP: the benchmark drives thousands of packets per second
through it, and tests use it to observe what the SFU sends. Sans-I/O like the SFU's cores.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sfu.demux import Kind, classify
from sfu.dtls import Certificate, DtlsSession, DtlsState
from sfu.errors import SrtpError
from sfu.ice import new_credentials
from sfu.rtcp import RtcpPacket, serialize_compound
from sfu.srtp import SrtpContext
from turn.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    encode_xor_address,
    new_transaction_id,
    parse_message_untrusted,
    short_term_key,
)

__all__ = ["SyntheticPeer"]


class SyntheticPeer:
    """One client transport, configured from the SFU's ``transport.create`` result."""

    def __init__(
        self,
        transport: dict[str, Any],
        certificate: Certificate | None = None,
        *,
        dtls_server: bool = False,
    ) -> None:
        ice = transport["ice_parameters"]
        self.remote_ufrag: str = ice["username_fragment"]
        self.remote_pwd: str = ice["password"]
        candidate = transport["ice_candidates"][0]
        self.remote_address: tuple[str, int] = (candidate["ip"], candidate["port"])
        fingerprints = [
            (f["algorithm"], f["value"]) for f in transport["dtls_parameters"]["fingerprints"]
        ]
        self.certificate = certificate or Certificate.generate()
        self.ufrag, self.pwd = new_credentials()
        # A browser is the DTLS client towards an SFU that answers ``a=setup:passive``; an
        # SFU that answers ``a=setup:active`` (Janus) makes the peer the server.
        self.dtls = DtlsSession(self.certificate.context(), fingerprints, server=dtls_server)
        self.srtp: SrtpContext | None = None
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.stun: list[Message] = []

    def dtls_parameters(self) -> dict[str, Any]:
        """What ``transport.connect`` needs from this peer."""
        return {
            "role": "client",
            "fingerprints": [{"algorithm": "sha-256", "value": self.certificate.fingerprint()}],
        }

    def binding_request(self, *, use_candidate: bool = True) -> bytes:
        """A connectivity check as the controlling full agent (RFC 8445 §7.2.2)."""
        message = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id())
        message.add(Attr.USERNAME, f"{self.remote_ufrag}:{self.ufrag}".encode())
        message.add(Attr.PRIORITY, (1853824767).to_bytes(4, "big"))
        message.add(Attr.ICE_CONTROLLING, bytes(8))
        if use_candidate:
            message.add(Attr.USE_CANDIDATE, b"")
        return message.serialize(integrity_key=short_term_key(self.remote_pwd), fingerprint=True)

    def start_dtls(self, now: float) -> list[bytes]:
        """The ClientHello flight (nothing as the server: it waits for the remote's)."""
        self.dtls.start(now)
        return self.dtls.outgoing()

    def handle_timeout(self, now: float) -> list[bytes]:
        """The DTLS flight again if its retransmission timer (RFC 6347 §4.2.4) has fired:
        a datagram lost, or sent before the SFU knew this peer, is not waited for forever."""
        self.dtls.handle_timeout(now)
        return self.dtls.outgoing()

    @property
    def connected(self) -> bool:
        """True once SRTP is keyed."""
        return self.srtp is not None

    def receive(self, data: bytes, now: float) -> list[bytes]:
        """Take one datagram from the SFU; returns datagrams to send back (DTLS)."""
        kind = classify(data)
        if kind is Kind.DTLS:
            self.dtls.receive_untrusted(data, now)
            if self.srtp is None and self.dtls.state is DtlsState.CONNECTED:
                self.srtp = SrtpContext(self.dtls.require_keys())
            return self.dtls.outgoing()
        if kind is Kind.STUN:
            message = parse_message_untrusted(data)
            if message.message_class == MessageClass.REQUEST:
                return self._answer_check(message)
            self.stun.append(message)
        elif kind is Kind.RTP and self.srtp is not None:
            with contextlib.suppress(SrtpError):
                self.rtp.append(self.srtp.unprotect_untrusted(data))
        elif kind is Kind.RTCP and self.srtp is not None:
            with contextlib.suppress(SrtpError):
                self.rtcp.append(self.srtp.unprotect_rtcp_untrusted(data))
        return []

    def _answer_check(self, request: Message) -> list[bytes]:
        """The remote's own connectivity check (a full agent, or a lite one's triggered
        check, as libnice sends): answered when it carries our credentials (RFC 8445
        §7.3), so the remote can select the pair too."""
        username = request.get(Attr.USERNAME)
        key = short_term_key(self.pwd)
        if (
            request.method != Method.BINDING
            or username is None
            or username.partition(b":")[0] != self.ufrag.encode()
            or not request.check_integrity(key)
        ):
            return []
        response = Message(Method.BINDING, MessageClass.SUCCESS, request.transaction_id)
        # The remote checks from the address it gave as its candidate: that is where the
        # request came from.
        host, port = self.remote_address
        response.add(
            Attr.XOR_MAPPED_ADDRESS, encode_xor_address(host, port, request.transaction_id)
        )
        return [response.serialize(integrity_key=key, fingerprint=True)]

    def protect(self, packet: bytes) -> bytes:
        """SRTP-protect one clear RTP packet for the SFU."""
        if self.srtp is None:
            raise RuntimeError("DTLS-SRTP is not established yet")
        return self.srtp.protect(packet)

    def protect_rtcp(self, packets: list[RtcpPacket]) -> bytes:
        """SRTCP-protect a compound RTCP packet for the SFU."""
        if self.srtp is None:
            raise RuntimeError("DTLS-SRTP is not established yet")
        return self.srtp.protect_rtcp(serialize_compound(packets))
