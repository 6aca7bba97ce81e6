"""The default-deny peer filter: every denied range, in every spelling, on every path."""

from __future__ import annotations

import socket

import pytest
from turn_support import CoreClient, error_code, make_server

from turn.peer_filter import PeerFilter
from turn.server import TurnServer

OWN_V4 = "198.51.200.200"
OWN_V6 = "2a00:1450::200"

DENIED_V4 = [
    "0.0.0.0",
    "0.1.2.3",
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "100.64.0.1",
    "100.127.255.254",
    "169.254.169.254",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.9",
    OWN_V4,
]
DENIED_V6 = [
    "::",
    "::1",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "::ffff:10.0.0.1",
    "::ffff:8.8.8.8",
    "::127.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::a00:1",
    "64:ff9b::c0a8:101",
    "64:ff9b:1::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "febf::1",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "2001::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "2001:db8::1",
    "2002:7f00:1::1",
    "2002:c000:204::1",
    "100::1",
    OWN_V6,
    "::ffff:" + OWN_V4,
]
ALLOWED = ["8.8.8.8", "198.51.200.9", "2606:4700:4700::1111", "64:ff9b::808:808"]


def server_with_filter(**kw: object) -> TurnServer:  # type: ignore[type-arg]
    peer_filter = PeerFilter(own_addresses=[OWN_V4, OWN_V6], **kw)  # type: ignore[arg-type]
    server, _ = make_server(
        peer_filter=peer_filter, relay_families=frozenset({socket.AF_INET, socket.AF_INET6})
    )
    return server


def client_for(server: TurnServer, ip: str) -> CoreClient:  # type: ignore[type-arg]
    client = CoreClient(server, addr=("192.0.2.50", 1000 + len(server.allocations())))
    family = b"\x02\x00\x00\x00" if ":" in ip else b"\x01\x00\x00\x00"
    assert error_code(client.allocate((0x0017, family))) is None
    return client


@pytest.mark.parametrize("ip", DENIED_V4 + DENIED_V6)
def test_denied_peer_is_refused_for_create_permission_channel_bind_and_send(ip: str) -> None:
    server = server_with_filter()
    client = client_for(server, ip)
    assert error_code(client.create_permission((ip, 80))) == 403
    assert error_code(client.channel_bind(0x4000, (ip, 80))) == 403
    assert client.send_indication((ip, 80), b"knock") is None
    assert server.counters.peer_refusals == 3
    assert server.counters.packets_relayed == 0


@pytest.mark.parametrize("ip", ALLOWED)
def test_public_peer_is_allowed(ip: str) -> None:
    server = server_with_filter()
    client = client_for(server, ip)
    assert error_code(client.create_permission((ip, 80))) is None
    assert error_code(client.channel_bind(0x4000, (ip, 80))) is None
    assert client.send_indication((ip, 80), b"hi") is not None


def test_operator_allow_list_opens_a_default_denied_range() -> None:
    f = PeerFilter(allow=["10.20.0.0/16"])
    assert f.allows("10.20.1.1")
    assert f.allows("::ffff:10.20.1.1")
    assert not f.allows("10.21.1.1")
    assert not f.allows("127.0.0.1")


def test_operator_deny_list_wins_over_everything() -> None:
    f = PeerFilter(allow=["8.8.0.0/16"], deny=["8.8.8.0/24", "2606:4700::/32"], allow_loopback=True)
    assert not f.allows("8.8.8.8")
    assert not f.allows("64:ff9b::808:808")  # the same host through NAT64
    assert not f.allows("2606:4700:4700::1111")
    assert f.allows("8.8.4.4")


def test_loopback_switch_admits_loopback_only() -> None:
    f = PeerFilter(own_addresses=["127.0.0.1"], allow_loopback=True)
    assert f.allows("127.0.0.1") and f.allows("::1") and f.allows("127.1.2.3")
    assert not f.allows("10.0.0.1") and not f.allows("169.254.169.254") and not f.allows("::")
    assert not f.allows("0.0.0.0")


def test_unparseable_peer_is_refused() -> None:
    assert not PeerFilter().allows("not-an-ip")
    assert PeerFilter().allows("2606:4700::1%eth0")
