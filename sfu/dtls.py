"""DTLS 1.2 (RFC 6347) handshake driving for DTLS-SRTP (RFC 5764), without I/O.

pyOpenSSL runs the handshake on memory BIOs, as aiortc's ``rtcdtlstransport.py`` does, but
here the object is fed datagrams and the current time and hands back datagrams to send
(the h11 pattern): the worker's UDP loop moves the bytes, tests move them by hand.

The SFU is always the DTLS server: it answers ``a=setup:passive`` and offers
``a=setup:actpass`` (RFC 8842 §5.3), so a client always speaks first. The peer's
certificate is accepted only if it matches a fingerprint from its SDP (RFC 8122 §5).
When the handshake completes the SRTP master keys are exported as RFC 5764 §4.2 lays
them out: client key ‖ server key ‖ client salt ‖ server salt.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from sfu.errors import DtlsError

__all__ = [
    "SRTP_PROFILES",
    "Certificate",
    "DtlsSession",
    "DtlsState",
    "SrtpKeys",
    "SrtpProfile",
    "split_records_untrusted",
]

# Datagram size for handshake flights: below any path MTU a WebRTC peer would use.
_MTU = 1200
_DIGESTS: dict[str, hashes.HashAlgorithm] = {
    "sha-256": hashes.SHA256(),
    "sha-384": hashes.SHA384(),
    "sha-512": hashes.SHA512(),
}


@dataclass(frozen=True)
class SrtpProfile:
    """An RFC 5764 §4.1.2 / RFC 7714 §14.2 protection profile and its key/salt lengths."""

    name: str
    openssl_name: bytes
    key_length: int
    salt_length: int


SRTP_AEAD_AES_128_GCM = SrtpProfile("AEAD_AES_128_GCM", b"SRTP_AEAD_AES_128_GCM", 16, 12)
SRTP_AES128_CM_HMAC_SHA1_80 = SrtpProfile(
    "AES_CM_128_HMAC_SHA1_80", b"SRTP_AES128_CM_SHA1_80", 16, 14
)
# Preference order: GCM authenticates with less CPU per packet and shorter tags.
SRTP_PROFILES = (SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_HMAC_SHA1_80)


@dataclass(frozen=True)
class SrtpKeys:
    """Master key ‖ salt for each direction, as negotiated by the handshake."""

    profile: SrtpProfile
    local: bytes
    remote: bytes


class Certificate:
    """A self-signed ECDSA P-256 certificate, generated per worker (RFC 8827 §6.5)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def generate(cls) -> Certificate:
        """A fresh key and a certificate valid from yesterday for 30 days, random subject."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, os.urandom(8).hex())])
        now = datetime.datetime.now(tz=datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def fingerprint(self, algorithm: str = "sha-256") -> str:
        """Colon-separated upper-case hex digest, the ``a=fingerprint`` form (RFC 8122 §5)."""
        return _fingerprint(self.cert, algorithm)

    def context(self) -> SSL.Context:
        """An OpenSSL context offering DTLS 1.2 with ECDHE-ECDSA and our SRTP profiles."""
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_QUERY_MTU)
        # Self-signed peers: trust comes from the SDP fingerprint, checked after the handshake.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: True)
        # pyOpenSSL ≥ 24.3 takes cryptography objects (and deprecates its own wrappers);
        # the types-pyOpenSSL stubs have not caught up.
        ctx.use_certificate(self.cert)  # type: ignore[arg-type]
        ctx.use_privatekey(self.key)  # type: ignore[arg-type]
        ctx.set_cipher_list(b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")
        ctx.set_tlsext_use_srtp(b":".join(p.openssl_name for p in SRTP_PROFILES))
        return ctx


def _fingerprint(cert: x509.Certificate, algorithm: str) -> str:
    digest = cert.fingerprint(_DIGESTS[algorithm]).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def split_records_untrusted(data: bytes, mtu: int = _MTU) -> list[bytes]:
    """Pack DTLS records (RFC 6347 §4.1: 13-byte header, length in bytes 11-12) into
    datagrams of at most ``mtu`` bytes without ever cutting a record in two."""
    datagrams: list[bytes] = []
    current = bytearray()
    pos = 0
    while pos + 13 <= len(data):
        end = pos + 13 + int.from_bytes(data[pos + 11 : pos + 13], "big")
        if end > len(data):
            break
        if current and len(current) + end - pos > mtu:
            datagrams.append(bytes(current))
            current.clear()
        current += data[pos:end]
        pos = end
    if current:
        datagrams.append(bytes(current))
    return datagrams


class DtlsState(enum.Enum):
    """Where the association is (W3C RTCDtlsTransportState's values)."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


class DtlsSession:
    """One DTLS association on one transport, fed datagrams and time.

    ``server=False`` exists for tests and the benchmark's synthetic clients; the SFU itself
    is always the server.
    """

    def __init__(
        self,
        context: SSL.Context,
        remote_fingerprints: list[tuple[str, str]],
        *,
        server: bool = True,
    ) -> None:
        self.state = DtlsState.NEW
        self.keys: SrtpKeys | None = None
        self.error: str | None = None
        self._server = server
        self._remote_fingerprints = [
            (alg.lower(), value.upper())
            for alg, value in remote_fingerprints
            if alg.lower() in _DIGESTS
        ]
        self._ssl = SSL.Connection(context, None)
        self._ssl.set_ciphertext_mtu(_MTU)
        if server:
            self._ssl.set_accept_state()
        else:
            self._ssl.set_connect_state()
        self._deadline: float | None = None
        self._outgoing: list[bytes] = []

    def start(self, now: float) -> None:
        """Begin the handshake (the client sends its ClientHello; a server only waits)."""
        if self.state is DtlsState.NEW:
            self.state = DtlsState.CONNECTING
            self._advance(now)

    def receive_untrusted(self, data: bytes, now: float) -> None:
        """Feed one datagram from the peer; afterwards see :attr:`state` and :meth:`outgoing`."""
        if self.state in (DtlsState.FAILED, DtlsState.CLOSED):
            return
        if self.state is DtlsState.NEW:
            self.state = DtlsState.CONNECTING
        self._ssl.bio_write(data)
        self._advance(now)

    def _advance(self, now: float) -> None:
        if self.state is DtlsState.CONNECTING:
            try:
                self._ssl.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                self._fail(f"handshake failed: {exc}")
            else:
                self._complete()
        elif self.state is DtlsState.CONNECTED:
            # Post-handshake records (alerts, retransmitted Finished): let OpenSSL answer.
            try:
                self._ssl.recv(4096)
            except SSL.ZeroReturnError:
                self.state = DtlsState.CLOSED
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                self._fail(f"record error: {exc}")
        self._flush()
        timeout = self._ssl.DTLSv1_get_timeout() if self.state is DtlsState.CONNECTING else None
        self._deadline = None if timeout is None else now + timeout

    def _complete(self) -> None:
        cert: x509.Certificate | None = self._ssl.get_peer_certificate(  # type: ignore[call-arg,assignment]
            as_cryptography=True
        )
        if cert is None or not self._remote_fingerprints:
            self._fail("peer presented no certificate or SDP carried no usable fingerprint")
            return
        if any(_fingerprint(cert, alg) != value for alg, value in self._remote_fingerprints):
            self._fail("peer certificate does not match its SDP fingerprint")
            return
        selected = self._ssl.get_selected_srtp_profile()
        profile = next((p for p in SRTP_PROFILES if p.openssl_name == selected), None)
        if profile is None:
            self._fail("no SRTP protection profile negotiated")
            return
        material = self._ssl.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length)
        )
        k, s = profile.key_length, profile.salt_length
        client = material[:k] + material[2 * k : 2 * k + s]
        server = material[k : 2 * k] + material[2 * k + s : 2 * k + 2 * s]
        local, remote = (server, client) if self._server else (client, server)
        self.keys = SrtpKeys(profile=profile, local=local, remote=remote)
        self.state = DtlsState.CONNECTED

    def _fail(self, reason: str) -> None:
        self.state = DtlsState.FAILED
        self.error = reason

    def _flush(self) -> None:
        chunks = []
        while True:
            try:
                chunk = self._ssl.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if chunks:
            self._outgoing.extend(split_records_untrusted(b"".join(chunks)))

    def outgoing(self) -> list[bytes]:
        """Datagrams to send to the peer now (handshake flights, alerts); clears the queue."""
        out, self._outgoing = self._outgoing, []
        return out

    @property
    def deadline(self) -> float | None:
        """When :meth:`handle_timeout` must run for retransmission (RFC 6347 §4.2.4)."""
        return self._deadline

    def handle_timeout(self, now: float) -> None:
        """Retransmit the last flight if its timer expired."""
        if self._deadline is None or now < self._deadline or self.state is not DtlsState.CONNECTING:
            return
        try:
            self._ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self._fail(f"retransmission failed: {exc}")
        self._flush()
        timeout = self._ssl.DTLSv1_get_timeout()
        self._deadline = None if timeout is None else now + timeout

    def close(self) -> None:
        """Send close_notify (RFC 5246 §7.2.1) if connected; the session is then closed."""
        if self.state is DtlsState.CONNECTED:
            with contextlib.suppress(SSL.Error):
                self._ssl.shutdown()
            self._flush()
        self.state = DtlsState.CLOSED

    def require_keys(self) -> SrtpKeys:
        """The exported SRTP keys; raises if the handshake has not completed."""
        if self.keys is None:
            raise DtlsError(self.error or "DTLS handshake has not completed")
        return self.keys
