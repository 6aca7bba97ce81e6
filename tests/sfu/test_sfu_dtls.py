"""DTLS-SRTP handshake driving and SRTP keying, with both ends sans-I/O."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from sfu.dtls import (
    SRTP_AEAD_AES_128_GCM,
    SRTP_AES128_CM_HMAC_SHA1_80,
    Certificate,
    DtlsSession,
    DtlsState,
    SrtpProfile,
    split_records_untrusted,
)
from sfu.errors import DtlsError, SrtpError
from sfu.rtcp import PictureLossIndication, parse_compound_untrusted
from sfu.rtp import RtpPacket
from sfu.srtp import SrtpContext

SERVER = Certificate.generate()
CLIENT = Certificate.generate()


def _pump(client: DtlsSession, server: DtlsSession, now: float = 0.0) -> int:
    """Move datagrams both ways until both sides are quiet; returns datagrams moved."""
    moved = 0
    for _ in range(20):
        flights = [(server, d) for d in client.outgoing()] + [
            (client, d) for d in server.outgoing()
        ]
        if not flights:
            break
        for peer, datagram in flights:
            assert len(datagram) <= 1200
            peer.receive_untrusted(datagram, now)
            moved += 1
    return moved


def _pair(profile: SrtpProfile | None = None) -> tuple[DtlsSession, DtlsSession]:
    client_ctx = CLIENT.context()
    if profile is not None:
        client_ctx.set_tlsext_use_srtp(profile.openssl_name)
    server = DtlsSession(SERVER.context(), [("sha-256", CLIENT.fingerprint())])
    client = DtlsSession(client_ctx, [("sha-256", SERVER.fingerprint())], server=False)
    client.start(0.0)
    return client, server


@pytest.mark.parametrize("profile", [SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_HMAC_SHA1_80])
def test_handshake_exports_matching_srtp_keys(profile: SrtpProfile) -> None:
    client, server = _pair(profile)
    _pump(client, server)
    assert client.state is server.state is DtlsState.CONNECTED
    client_keys, server_keys = client.require_keys(), server.require_keys()
    assert client_keys.profile == server_keys.profile == profile
    assert client_keys.local == server_keys.remote
    assert client_keys.remote == server_keys.local
    assert len(server_keys.local) == profile.key_length + profile.salt_length
    # SRTP keyed from either side decrypts what the other protects.
    sender, receiver = SrtpContext(client_keys), SrtpContext(server_keys)
    rtp = RtpPacket(111, 1, 960, 0x1234, payload=b"opaque sframe bytes").serialize()
    protected = sender.protect(rtp)
    assert protected != rtp
    assert receiver.unprotect_untrusted(protected) == rtp
    rtcp = PictureLossIndication(1, 2).serialize()
    back = SrtpContext(client_keys).unprotect_rtcp_untrusted(receiver.protect_rtcp(rtcp))
    assert parse_compound_untrusted(back) == [PictureLossIndication(1, 2)]
    with pytest.raises(SrtpError):
        receiver.unprotect_untrusted(protected[:-1] + bytes([protected[-1] ^ 1]))


def test_default_profile_is_gcm() -> None:
    client, server = _pair()
    _pump(client, server)
    assert server.require_keys().profile == SRTP_AEAD_AES_128_GCM


def test_wrong_fingerprint_fails_the_handshake() -> None:
    server = DtlsSession(SERVER.context(), [("sha-256", SERVER.fingerprint())])
    client = DtlsSession(CLIENT.context(), [("sha-256", SERVER.fingerprint())], server=False)
    client.start(0.0)
    _pump(client, server)
    assert server.state is DtlsState.FAILED
    assert server.keys is None
    with pytest.raises(DtlsError):
        server.require_keys()


def test_lost_flight_is_retransmitted_on_timeout() -> None:
    server = DtlsSession(SERVER.context(), [("sha-256", CLIENT.fingerprint())])
    client = DtlsSession(CLIENT.context(), [("sha-256", SERVER.fingerprint())], server=False)
    start = time.monotonic()
    client.start(start)
    assert client.outgoing()  # the ClientHello, lost
    assert client.deadline is not None
    client.handle_timeout(client.deadline - 0.5)
    assert client.outgoing() == []
    # OpenSSL keeps its own clock for the retransmission timer (1 s initially, RFC 6347
    # §4.2.4.1), so the test has to let that second really pass.
    time.sleep(max(0.0, client.deadline - time.monotonic()) + 0.01)
    client.handle_timeout(time.monotonic())
    again = client.outgoing()
    assert again
    for datagram in again:
        server.receive_untrusted(datagram, 1.0)
    _pump(client, server, 1.0)
    assert server.state is DtlsState.CONNECTED


def test_close_sends_close_notify() -> None:
    client, server = _pair()
    _pump(client, server)
    server.close()
    for datagram in server.outgoing():
        client.receive_untrusted(datagram, 1.0)
    assert client.state is DtlsState.CLOSED


def test_records_are_never_split_across_datagrams() -> None:
    record = bytes([22, 0xFE, 0xFD]) + bytes(8) + (500).to_bytes(2, "big") + bytes(500)
    assert [len(d) for d in split_records_untrusted(record * 5)] == [1026, 1026, 513]
    assert split_records_untrusted(record[:100]) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=5))
def test_garbage_datagrams_never_crash_a_server(datagrams: list[bytes]) -> None:
    server = DtlsSession(SERVER.context(), [("sha-256", CLIENT.fingerprint())])
    for datagram in datagrams:
        server.receive_untrusted(bytes([22, 0xFE, 0xFD]) + datagram, 0.0)
        server.outgoing()
    assert server.state in (DtlsState.CONNECTING, DtlsState.FAILED)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_client_hello_never_crashes_a_server(data: st.DataObject) -> None:
    client = DtlsSession(CLIENT.context(), [("sha-256", SERVER.fingerprint())], server=False)
    client.start(0.0)
    hello = bytearray(b"".join(client.outgoing()))
    for _ in range(data.draw(st.integers(1, 8))):
        hello[data.draw(st.integers(0, len(hello) - 1))] = data.draw(st.integers(0, 255))
    server = DtlsSession(SERVER.context(), [("sha-256", CLIENT.fingerprint())])
    server.receive_untrusted(bytes(hello), 0.0)
    server.outgoing()
    assert server.keys is None


def test_srtp_garbage_is_a_typed_error() -> None:
    client, server = _pair()
    _pump(client, server)
    context = SrtpContext(server.require_keys())
    with pytest.raises(SrtpError):
        context.unprotect_untrusted(b"\x80" + bytes(40))
    with pytest.raises(SrtpError):
        context.unprotect_rtcp_untrusted(b"\x80\xc8" + bytes(40))


def test_ssl_module_offers_dtls() -> None:
    assert SSL.DTLS_METHOD
