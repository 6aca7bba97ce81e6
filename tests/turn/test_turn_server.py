"""The sans-I/O TURN core: methods, lifetimes, authentication and every error code."""

from __future__ import annotations

import socket

import pytest
from turn_support import NOW, UDP, CoreClient, FakePorts, FakeRelay, error_code, make_server

from turn.allocation import CHANNEL_COOLDOWN
from turn.auth import rest_password, rest_username
from turn.server import TurnServer
from turn.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    decode_nonce_features_untrusted,
    decode_password_algorithms_untrusted,
    decode_uint32_untrusted,
    decode_unknown_attributes_untrusted,
    decode_xor_address_untrusted,
    encode_uint32,
    encode_xor_address,
    long_term_key,
    new_transaction_id,
    parse_message_untrusted,
)

PEER = ("198.51.200.9", 5000)  # outside every denied range
PEER2 = ("198.51.200.10", 6000)


def lifetime_of(response: Message) -> int:
    return decode_uint32_untrusted(response.get(Attr.LIFETIME) or b"")


def allocated(server: TurnServer[FakeRelay] | None = None, **kw: object) -> CoreClient:
    server = server or make_server()[0]
    client = CoreClient(server, **kw)  # type: ignore[arg-type]
    response = client.allocate()
    assert error_code(response) is None, response
    return client


# --- Binding and the authentication dance ------------------------------------------------------


def test_binding_needs_no_credentials_and_maps_the_client() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    response = client.request(Method.BINDING, authenticate=False, fingerprint=True)
    assert response.message_class == MessageClass.SUCCESS
    value = response.get(Attr.XOR_MAPPED_ADDRESS) or b""
    assert decode_xor_address_untrusted(value, response.transaction_id) == client.addr
    assert response.check_fingerprint()


def test_unauthenticated_allocate_gets_401_with_realm_nonce_and_algorithms() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    response = client.request(
        Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, UDP)], authenticate=False
    )
    assert error_code(response) == 401
    assert response.get(Attr.REALM) == b"hushroom.test"
    nonce = (response.get(Attr.NONCE) or b"").decode()
    assert nonce.startswith("obMatJos2")
    assert decode_nonce_features_untrusted(nonce) == 0x800000
    algorithms = decode_password_algorithms_untrusted(response.get(Attr.PASSWORD_ALGORITHMS) or b"")
    assert [a for a, _ in algorithms] == [1, 2]
    assert not response.has_integrity
    assert server.counters.auth_challenges == 1


def test_allocate_succeeds_with_rest_credentials() -> None:
    server, ports = make_server()
    client = CoreClient(server)
    response = client.allocate()
    assert response.message_class == MessageClass.SUCCESS
    assert response.check_integrity(client.key())
    relayed = decode_xor_address_untrusted(
        response.get(Attr.XOR_RELAYED_ADDRESS) or b"", response.transaction_id
    )
    assert relayed == ("203.0.113.1", 50000)
    mapped = decode_xor_address_untrusted(
        response.get(Attr.XOR_MAPPED_ADDRESS) or b"", response.transaction_id
    )
    assert mapped == client.addr
    assert lifetime_of(response) == 600
    assert len(ports.opened) == 1
    assert server.counters.allocations_created == 1


def test_allocate_with_sha256_password_algorithm_uses_message_integrity_sha256() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    client.sha256 = True
    response = client.allocate()
    assert error_code(response) is None
    assert response.integrity_sha256_offset >= 0 and response.integrity_offset < 0
    assert response.check_integrity(client.key())


def test_password_algorithm_without_algorithms_list_is_400_bid_down_protection() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    client.fetch_nonce()
    assert client.nonce is not None
    msg = Message(Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id())
    msg.add(Attr.REQUESTED_TRANSPORT, UDP)
    msg.add(Attr.USERNAME, client.username.encode())
    msg.add(Attr.REALM, b"hushroom.test")
    msg.add(Attr.NONCE, client.nonce.encode())
    msg.add(Attr.PASSWORD_ALGORITHM, b"\x00\x02\x00\x00")
    out = client.send_raw(msg.serialize(integrity_sha256_key=client.key()))
    assert isinstance(out, bytes)
    assert error_code(parse_message_untrusted(out)) == 400


def test_every_configured_secret_is_accepted_for_rotation() -> None:
    server, _ = make_server(secrets=(b"old-secret", b"new-secret"))
    for secret, session in (("old-secret", "a"), ("new-secret", "b")):
        client = CoreClient(server, secret=secret, session=session, addr=("192.0.2.1", 1000))
        client.link = len(session)  # distinct 5-tuples
        client.addr = ("192.0.2.1", 1000 + ord(session))
        assert error_code(client.allocate()) is None


def test_wrong_password_is_401_and_counted_as_auth_failure() -> None:
    server, _ = make_server()
    client = CoreClient(server, secret="not-the-secret")
    response = client.allocate()
    assert error_code(response) == 401
    assert server.counters.auth_failures == 1


def test_expired_username_is_refused_with_401() -> None:
    server, _ = make_server()
    client = CoreClient(server, expiry=NOW - 1)
    assert error_code(client.allocate()) == 401


def test_username_that_is_not_a_rest_username_is_refused_with_401() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    client.username = "alice"
    client.password = rest_password(b"test-secret-one", "alice")
    assert error_code(client.allocate()) == 401


def test_missing_realm_with_integrity_is_400() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    client.fetch_nonce()
    msg = Message(Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id())
    msg.add(Attr.REQUESTED_TRANSPORT, UDP).add(Attr.USERNAME, client.username.encode())
    out = client.send_raw(msg.serialize(integrity_key=client.key()))
    assert isinstance(out, bytes)
    assert error_code(parse_message_untrusted(out)) == 400


def test_nonce_older_than_ten_minutes_is_438_with_a_fresh_nonce() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    client.retry_stale_nonce = False
    client.fetch_nonce()
    old = client.nonce
    client.now = NOW + 601
    response = client.allocate()
    assert error_code(response) == 438
    fresh = (response.get(Attr.NONCE) or b"").decode()
    assert fresh and fresh != old
    client.nonce = fresh
    assert error_code(client.allocate()) is None


def test_nonce_minted_for_another_address_is_438() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    client.retry_stale_nonce = False
    client.fetch_nonce()
    client.addr = ("192.0.2.51", 40000)
    assert error_code(client.allocate()) == 438


def test_nonce_is_valid_within_ten_minutes() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    client.fetch_nonce()
    client.now = NOW + 590
    assert error_code(client.allocate()) is None


def test_401_answers_are_rate_limited_per_source() -> None:
    server, _ = make_server(unauthenticated_rate=1.0, unauthenticated_burst=3.0)
    client = CoreClient(server)
    raw = Message(Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id()).serialize()
    answers = [client.send_raw(raw) for _ in range(10)]
    assert sum(a is not None for a in answers) == 3
    assert server.counters.rate_limited == 7
    other = CoreClient(server, addr=("192.0.2.99", 1))
    assert other.send_raw(raw) is not None
    client.now = NOW + 1.0
    assert client.send_raw(raw) is not None


def test_rate_limiter_table_is_bounded() -> None:
    server, _ = make_server()
    raw = Message(Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id()).serialize()
    limiter = server._limiter
    limiter.max_sources = 100
    for i in range(1000):
        server.receive_from_client_untrusted(1, (f"10.0.{i // 256}.{i % 256}", 1), raw, NOW)
    assert len(limiter) <= 100


# --- error codes -------------------------------------------------------------------------------


def test_allocate_without_requested_transport_is_400() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    assert error_code(client.request(Method.ALLOCATE, [])) == 400


def test_unknown_method_is_400() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    assert error_code(client.request(0x0ABC, [], authenticate=False)) == 400


def test_unknown_comprehension_required_attribute_is_420_with_unknown_attributes() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    response = client.request(Method.ALLOCATE, [(0x7F01, b"x"), (0xC001, b"ignored")])
    assert error_code(response) == 420
    assert decode_unknown_attributes_untrusted(response.get(Attr.UNKNOWN_ATTRIBUTES) or b"") == [
        0x7F01
    ]


def test_second_allocate_on_same_five_tuple_is_437() -> None:
    client = allocated()
    assert error_code(client.allocate()) == 437


def test_retransmitted_allocate_gets_the_same_success() -> None:
    server, ports = make_server()
    client = CoreClient(server)
    client.fetch_nonce()
    tid = new_transaction_id()
    first = client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, UDP)], tid=tid)
    second = client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, UDP)], tid=tid)
    assert first.raw == second.raw
    assert len(ports.opened) == 1


@pytest.mark.parametrize("method", [Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND])
def test_request_without_allocation_is_437(method: Method) -> None:
    server, _ = make_server()
    client = CoreClient(server)
    assert error_code(client.request(method, [])) == 437


def test_requested_address_family_unknown_is_440() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    response = client.allocate((Attr.REQUESTED_ADDRESS_FAMILY, b"\x07\x00\x00\x00"))
    assert error_code(response) == 440


def test_ipv6_relay_not_offered_is_440() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    response = client.allocate((Attr.REQUESTED_ADDRESS_FAMILY, b"\x02\x00\x00\x00"))
    assert error_code(response) == 440


def test_ipv6_relay_when_offered() -> None:
    server, _ = make_server(relay_families=frozenset({socket.AF_INET, socket.AF_INET6}))
    client = CoreClient(server)
    response = client.allocate((Attr.REQUESTED_ADDRESS_FAMILY, b"\x02\x00\x00\x00"))
    assert error_code(response) is None
    relayed = decode_xor_address_untrusted(
        response.get(Attr.XOR_RELAYED_ADDRESS) or b"", response.transaction_id
    )
    assert relayed[0] == "2001:db8:ffff::1"


def test_other_username_on_an_allocation_is_441() -> None:
    server, _ = make_server()
    client = allocated(server)
    intruder = CoreClient(server, session="mallory")
    assert error_code(intruder.create_permission(PEER)) == 441
    assert error_code(client.create_permission(PEER)) is None


def test_tcp_relay_transport_is_442() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    response = client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x06\x00\x00\x00")])
    assert error_code(response) == 442


def test_ipv6_peer_on_ipv4_allocation_is_443() -> None:
    client = allocated()
    assert error_code(client.create_permission(("2606:4700::1", 443))) == 443
    assert error_code(client.channel_bind(0x4000, ("2606:4700::1", 443))) == 443


def test_refresh_asking_another_family_is_443() -> None:
    client = allocated()
    response = client.request(
        Method.REFRESH, [(Attr.REQUESTED_ADDRESS_FAMILY, b"\x02\x00\x00\x00")]
    )
    assert error_code(response) == 443


def test_per_user_quota_is_486() -> None:
    server, _ = make_server(max_allocations_per_user=2)
    for port in (1, 2):
        assert error_code(CoreClient(server, addr=("192.0.2.1", port)).allocate()) is None
    assert error_code(CoreClient(server, addr=("192.0.2.1", 3)).allocate()) == 486
    other_user = CoreClient(server, addr=("192.0.2.1", 4), session="bob")
    assert error_code(other_user.allocate()) is None


def test_server_wide_allocation_limit_is_508() -> None:
    server, _ = make_server(max_allocations=1)
    assert error_code(CoreClient(server, addr=("192.0.2.1", 1)).allocate()) is None
    response = CoreClient(server, addr=("192.0.2.1", 2), session="bob").allocate()
    assert error_code(response) == 508


def test_no_free_relay_port_is_508() -> None:
    server, _ = make_server(ports=FakePorts(free=0))
    assert error_code(CoreClient(server).allocate()) == 508


def test_plain_even_port_asks_the_shell_for_an_even_port() -> None:
    server, ports = make_server()
    response = CoreClient(server).allocate((Attr.EVEN_PORT, b"\x00"))
    assert error_code(response) is None
    assert response.get(Attr.RESERVATION_TOKEN) is None
    assert ports.even_requests == 1


def test_even_port_with_reservation_hands_the_next_port_to_the_token_holder() -> None:
    server, ports = make_server()
    rtp = CoreClient(server, addr=("192.0.2.1", 5000))
    response = rtp.allocate((Attr.EVEN_PORT, b"\x80"))
    assert error_code(response) is None
    token = response.get(Attr.RESERVATION_TOKEN)
    assert token is not None and len(token) == 8
    port = decode_xor_address_untrusted(
        response.get(Attr.XOR_RELAYED_ADDRESS) or b"", response.transaction_id
    )[1]
    assert port % 2 == 0
    rtcp = CoreClient(server, addr=("192.0.2.1", 5001))
    response = rtcp.allocate((Attr.RESERVATION_TOKEN, token))
    assert error_code(response) is None
    relayed = decode_xor_address_untrusted(
        response.get(Attr.XOR_RELAYED_ADDRESS) or b"", response.transaction_id
    )
    assert relayed[1] == port + 1
    assert ports.adopted == [(ports.opened[1], 1, rtcp.addr)]
    again = CoreClient(server, addr=("192.0.2.1", 5002), session="bob")
    assert error_code(again.allocate((Attr.RESERVATION_TOKEN, token))) == 508  # used up


def test_unknown_or_expired_reservation_token_is_508_and_frees_the_port() -> None:
    server, ports = make_server()
    rtp = CoreClient(server, addr=("192.0.2.1", 5000))
    token = rtp.allocate((Attr.EVEN_PORT, b"\x80")).get(Attr.RESERVATION_TOKEN) or b""
    stranger = CoreClient(server, addr=("192.0.2.1", 5001))
    assert error_code(stranger.allocate((Attr.RESERVATION_TOKEN, b"12345678"))) == 508
    server.expire(NOW + 31)
    assert ports.closed == [ports.opened[1]]
    stranger.now = NOW + 31
    assert error_code(stranger.allocate((Attr.RESERVATION_TOKEN, token))) == 508


def test_reservations_count_against_the_per_user_quota() -> None:
    server, _ = make_server(max_allocations_per_user=2)
    for port in range(2):
        client = CoreClient(server, addr=("192.0.2.1", 6000 + port))
        assert error_code(client.allocate((Attr.EVEN_PORT, b"\x80"))) is None
        assert error_code(client.refresh(0)) is None  # the allocation goes, the reservation stays
    client = CoreClient(server, addr=("192.0.2.1", 6002))
    assert error_code(client.allocate((Attr.EVEN_PORT, b"\x80"))) == 486


def test_reservation_token_with_even_port_or_bad_length_is_400() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    assert error_code(client.allocate((Attr.RESERVATION_TOKEN, b"1234"))) == 400
    response = client.allocate((Attr.RESERVATION_TOKEN, b"12345678"), (Attr.EVEN_PORT, b"\x00"))
    assert error_code(response) == 400


def test_channel_number_outside_range_is_400() -> None:
    client = allocated()
    for number in (0x0000, 0x3FFF, 0x8000, 0xBFFF, 0xFFFF):
        assert error_code(client.channel_bind(number, PEER)) == 400
    assert client.server.counters.channels_bound == 0


@pytest.mark.parametrize("number", [0x4000, 0x4FFF, 0x5000, 0x7FFF], ids=hex)
@pytest.mark.parametrize("stream", [False, True], ids=["udp", "stream"])
def test_rfc5766_channel_numbers_bind_and_carry_channel_data(number: int, stream: bool) -> None:
    # RFC 8656 says 0x4000-0x4FFF, RFC 5766 said 0x4000-0x7FFF and its clients use all of it.
    server, _ = make_server()
    client = allocated(server, stream=stream)
    assert error_code(client.channel_bind(number, PEER)) is None
    relay = server.allocations()[0].relay
    header = number.to_bytes(2, "big")
    expected = header + b"\x00\x05abcde" + (b"\x00\x00\x00" if stream else b"")
    assert server.receive_from_peer_untrusted(relay, PEER, b"abcde", NOW) == expected
    assert client.channel_data(number, b"back") == (relay, PEER, b"back")
    assert server.counters.malformed == 0


def test_datagrams_past_the_channel_range_are_malformed_not_channel_data() -> None:
    server, _ = make_server()
    client = allocated(server)
    for first in (0x80, 0xBF, 0xC0, 0xFF):
        assert client.send_raw(bytes([first, 0, 0, 1, 0])) is None
    assert server.counters.malformed == 4
    assert client.channel_data(0x7FFF, b"x") is None  # ChannelData, merely unbound
    assert (server.counters.malformed, server.counters.packets_dropped) == (4, 1)


def test_channel_rebinding_conflicts_are_400() -> None:
    client = allocated()
    assert error_code(client.channel_bind(0x4001, PEER)) is None
    assert error_code(client.channel_bind(0x4001, PEER2)) == 400
    assert error_code(client.channel_bind(0x4002, PEER)) == 400
    assert error_code(client.channel_bind(0x4001, PEER)) is None  # a refresh


def test_create_permission_without_peer_is_400() -> None:
    client = allocated()
    assert error_code(client.request(Method.CREATE_PERMISSION, [])) == 400


def test_permission_to_denied_peer_is_403() -> None:
    client = allocated()
    assert error_code(client.create_permission(("127.0.0.1", 9))) == 403
    assert client.server.counters.peer_refusals == 1


def test_too_many_permissions_is_508() -> None:
    client = allocated()
    for i in range(64):
        assert error_code(client.create_permission((f"198.51.201.{i}", 1))) is None
    assert error_code(client.create_permission(("198.51.202.1", 1))) == 508


def test_error_responses_to_authenticated_requests_carry_integrity() -> None:
    client = allocated()
    response = client.create_permission(("10.1.2.3", 80))
    assert error_code(response) == 403
    assert response.check_integrity(client.key())


# --- lifetimes ---------------------------------------------------------------------------------


def test_requested_lifetime_is_capped_at_3600() -> None:
    server, _ = make_server()
    response = CoreClient(server).allocate((Attr.LIFETIME, encode_uint32(86400)))
    assert lifetime_of(response) == 3600


def test_requested_lifetime_below_default_gets_the_default() -> None:
    server, _ = make_server()
    client = CoreClient(server)
    assert lifetime_of(client.allocate((Attr.LIFETIME, encode_uint32(30)))) == 600
    assert lifetime_of(client.refresh(30)) == 600


def test_lifetime_never_passes_the_credential_expiry() -> None:
    server, _ = make_server()
    client = CoreClient(server, expiry=NOW + 100)
    assert lifetime_of(client.allocate((Attr.LIFETIME, encode_uint32(3600)))) == 100
    client.now = NOW + 50
    assert lifetime_of(client.refresh(3600)) == 50
    client.now = NOW + 99
    assert lifetime_of(client.refresh(600)) == 1


def test_refresh_past_credential_expiry_is_refused() -> None:
    server, _ = make_server()
    client = CoreClient(server, expiry=NOW + 100)
    client.allocate()
    client.now = NOW + 101
    assert error_code(client.refresh(600)) == 401


def test_allocation_expires_without_refresh() -> None:
    server, ports = make_server()
    client = allocated(server)
    server.expire(NOW + 599)
    assert server.allocation_count == 1
    server.expire(NOW + 600)
    assert server.allocation_count == 0
    assert ports.closed == ports.opened
    client.now = NOW + 601
    client.nonce = None
    assert error_code(client.refresh()) == 437


def test_refresh_extends_the_allocation() -> None:
    server, _ = make_server()
    client = allocated(server)
    client.now = NOW + 500
    assert lifetime_of(client.refresh()) == 600
    server.expire(NOW + 1000)
    assert server.allocation_count == 1


def test_refresh_with_lifetime_zero_deletes_the_allocation() -> None:
    server, ports = make_server()
    client = allocated(server)
    response = client.refresh(0)
    assert error_code(response) is None and lifetime_of(response) == 0
    assert server.allocation_count == 0 and len(ports.closed) == 1
    assert error_code(client.allocate()) is None  # the 5-tuple is free again


def test_permission_lasts_300_seconds() -> None:
    server, _ = make_server()
    client = allocated(server)
    client.create_permission(PEER)
    relay = server.allocations()[0].relay
    assert server.receive_from_peer_untrusted(relay, PEER, b"x", NOW + 299) is not None
    assert server.receive_from_peer_untrusted(relay, PEER, b"x", NOW + 300) is None
    client.now = NOW + 299
    assert client.send_indication(PEER, b"y") is not None
    client.now = NOW + 300
    assert client.send_indication(PEER, b"y") is None


def test_permission_ignores_the_peer_port() -> None:
    server, _ = make_server()
    client = allocated(server)
    client.create_permission(PEER)
    relay = server.allocations()[0].relay
    assert server.receive_from_peer_untrusted(relay, (PEER[0], 1), b"x", NOW) is not None


def test_channel_binding_lasts_600_seconds_and_refreshes_its_permission() -> None:
    server, _ = make_server()
    client = allocated(server)
    client.channel_bind(0x4000, PEER)
    client.now = NOW + 299
    assert client.channel_bind(0x4000, PEER).message_class == MessageClass.SUCCESS
    client.now = NOW + 590
    assert client.channel_data(0x4000, b"z") is not None  # permission was refreshed at 299
    client.now = NOW + 299 + 600
    assert client.channel_data(0x4000, b"z") is None


def test_expired_channel_number_stays_reserved_during_cooldown() -> None:
    server, _ = make_server()
    client = allocated(server)
    client.channel_bind(0x4000, PEER)
    client.now = NOW + 601
    client.refresh()
    server.expire(client.now)
    assert error_code(client.channel_bind(0x4000, PEER2)) == 400
    client.now = NOW + 600 + CHANNEL_COOLDOWN + 1
    client.refresh()
    server.expire(client.now)
    assert error_code(client.channel_bind(0x4000, PEER2)) is None


# --- data path ---------------------------------------------------------------------------------


def test_send_indication_relays_to_a_permitted_peer() -> None:
    server, _ = make_server()
    client = allocated(server)
    assert client.send_indication(PEER, b"hello") is None  # no permission yet
    client.create_permission(PEER)
    relay, peer, payload = client.send_indication(PEER, b"hello")
    assert (relay, peer, payload) == (server.allocations()[0].relay, PEER, b"hello")
    assert server.counters.packets_relayed == 1 and server.counters.bytes_relayed == 5


def test_peer_data_without_channel_becomes_data_indication() -> None:
    server, _ = make_server()
    client = allocated(server)
    client.create_permission(PEER)
    relay = server.allocations()[0].relay
    out = server.receive_from_peer_untrusted(relay, PEER, b"payload", NOW)
    assert out is not None
    indication = parse_message_untrusted(out)
    assert (indication.method, indication.message_class) == (Method.DATA, MessageClass.INDICATION)
    assert indication.get(Attr.DATA) == b"payload"
    peer_value = indication.get(Attr.XOR_PEER_ADDRESS) or b""
    assert decode_xor_address_untrusted(peer_value, indication.transaction_id) == PEER


def test_peer_data_on_a_channel_becomes_channel_data() -> None:
    server, _ = make_server()
    client = allocated(server)
    client.channel_bind(0x4ABC, PEER)
    relay = server.allocations()[0].relay
    assert (
        server.receive_from_peer_untrusted(relay, PEER, b"abcde", NOW) == b"\x4a\xbc\x00\x05abcde"
    )
    relay_out, peer, payload = client.channel_data(0x4ABC, b"back")
    assert (relay_out, peer, payload) == (relay, PEER, b"back")


def test_channel_data_is_padded_over_streams() -> None:
    server, _ = make_server()
    client = allocated(server, stream=True)
    client.channel_bind(0x4000, PEER)
    relay = server.allocations()[0].relay
    assert server.receive_from_peer_untrusted(relay, PEER, b"abcde", NOW) == (
        b"\x40\x00\x00\x05abcde\x00\x00\x00"
    )
    assert client.channel_data(0x4000, b"abcde") is not None


def test_peer_without_permission_is_dropped() -> None:
    server, _ = make_server()
    allocated(server)
    relay = server.allocations()[0].relay
    assert server.receive_from_peer_untrusted(relay, PEER, b"x", NOW) is None
    assert server.counters.packets_dropped == 1


def test_unbound_or_truncated_channel_data_is_dropped() -> None:
    server, _ = make_server()
    client = allocated(server)
    assert client.channel_data(0x4000, b"x") is None
    client.channel_bind(0x4000, PEER)
    assert client.send_raw(b"\x40\x00\x00\x09abc") is None


def test_bandwidth_quota_drops_excess_per_allocation() -> None:
    server, _ = make_server(bandwidth_per_allocation=100_000)
    client = allocated(server)
    client.channel_bind(0x4000, PEER)
    payload = b"x" * 1000
    relayed = sum(client.channel_data(0x4000, payload) is not None for _ in range(200))
    assert 60 <= relayed <= 110  # the burst (64 KiB minimum), then nothing within one instant
    client.now += 1.0
    assert client.channel_data(0x4000, payload) is not None


def test_closing_a_stream_link_deletes_its_allocation() -> None:
    server, ports = make_server()
    allocated(server, link=7, stream=True)
    server.link_closed(7)
    assert server.allocation_count == 0 and len(ports.closed) == 1


def test_counters_snapshot_lists_everything_without_addresses() -> None:
    server, _ = make_server()
    client = allocated(server)
    client.create_permission(PEER)
    client.channel_bind(0x4000, PEER2)
    snapshot = server.counters.snapshot(server.allocation_count)
    assert snapshot["allocations_active"] == 1
    assert snapshot["permissions_created"] == 2
    assert snapshot["channels_bound"] == 1
    assert all(isinstance(v, int) for v in snapshot.values())


def test_rest_username_format() -> None:
    assert rest_username(1700000000, "abc") == "1700000000:abc"
    assert rest_username(1700000000) == "1700000000"
    key = long_term_key("1:a", "r", rest_password(b"s", "1:a"))
    assert len(key) == 16


def test_xor_peer_address_v6_roundtrip_in_requests() -> None:
    tid = new_transaction_id()
    value = encode_xor_address("2606:4700::1", 443, tid)
    assert decode_xor_address_untrusted(value, tid) == ("2606:4700::1", 443)


def test_largest_ipv6_peer_datagram_is_dropped_not_crashing() -> None:
    server, _ = make_server(relay_families=frozenset({socket.AF_INET6}))
    client = CoreClient(server)
    assert error_code(client.allocate((Attr.REQUESTED_ADDRESS_FAMILY, b"\x02\x00\x00\x00"))) is None
    peer = ("2606:4700::1", 443)
    client.create_permission(peer)
    relay = server.allocations()[0].relay
    assert server.receive_from_peer_untrusted(relay, peer, b"x" * 65527, NOW) is None
    out = server.receive_from_peer_untrusted(relay, peer, b"x" * 65504, NOW)
    assert out is not None and parse_message_untrusted(out).get(Attr.DATA) == b"x" * 65504
