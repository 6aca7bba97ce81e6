"""sfu/udp.py: batched sending delivers the same datagrams, in order, as one sendto each."""

from __future__ import annotations

import itertools
import select
import socket
from collections.abc import Iterator

import pytest

from sfu import udp
from sfu.dtls import SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_HMAC_SHA1_80, SrtpKeys, SrtpProfile
from sfu.rtp import HEADER
from sfu.srtp import SrtpContext
from sfu.udp import UdpReceiver, UdpSender


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)
    sinks = []
    for _ in range(3):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(10)  # a bound for a starved host; datagrams are queued already
        sinks.append(sink)
    yield out, sinks
    out.close()
    for sink in sinks:
        sink.close()


def _received(sink: socket.socket, count: int) -> list[bytes]:
    return [sink.recv(4096) for _ in range(count)]


def test_batched_datagrams_arrive_in_order_at_each_destination(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    out, sinks = sockets
    sender = UdpSender(out)
    sender.start_batch()
    # More than one batch's worth, so a full batch is sent while the drain goes on.
    for index in range(300):
        sink = sinks[index % 3]
        sender.send(index.to_bytes(2, "big") * (1 + index % 50), sink.getsockname())
    sender.close_batch()
    for position, sink in enumerate(sinks):
        expected = [
            index.to_bytes(2, "big") * (1 + index % 50) for index in range(position, 300, 3)
        ]
        assert _received(sink, 100) == expected


def test_more_destinations_than_the_address_cache_holds_all_arrive_in_one_batch(
    sockets: tuple[socket.socket, list[socket.socket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Queued slots point at cached sockaddr buffers: emptying the cache mid-batch must not
    # free a buffer a queued datagram still names.
    monkeypatch.setattr(udp, "_MAX_NAMES", 2)
    out, sinks = sockets
    sender = UdpSender(out)
    sender.start_batch()
    for round_ in range(4):
        for position, sink in enumerate(sinks):
            sender.send(bytes([round_, position]) * 50, sink.getsockname())
    sender.close_batch()
    for position, sink in enumerate(sinks):
        assert _received(sink, 4) == [bytes([round_, position]) * 50 for round_ in range(4)]


def test_datagrams_outside_a_batch_leave_at_once(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    out, sinks = sockets
    sender = UdpSender(out)
    sender.send(b"now", sinks[0].getsockname())
    assert sinks[0].recv(16) == b"now"


def test_nothing_waits_in_the_batch_after_it_closes(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    out, sinks = sockets
    sender = UdpSender(out)
    sender.start_batch()
    sender.send(b"queued", sinks[0].getsockname())
    sender.close_batch()
    sender.send(b"direct", sinks[0].getsockname())
    assert _received(sinks[0], 2) == [b"queued", b"direct"]


def test_a_host_name_destination_is_sent_by_sendto_inside_a_batch(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    out, sinks = sockets
    sender = UdpSender(out)
    sender.start_batch()
    sender.send(b"by-name", ("localhost", sinks[1].getsockname()[1]))
    sender.close_batch()
    assert sinks[1].recv(16) == b"by-name"


def test_an_unreachable_destination_does_not_stop_the_rest_of_the_batch(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    out, sinks = sockets
    sender = UdpSender(out)
    sender.start_batch()
    sender.send(b"lost", ("127.0.0.1", 0))  # port 0: the kernel refuses this destination
    sender.send(b"kept", sinks[2].getsockname())
    sender.close_batch()
    assert sinks[2].recv(16) == b"kept"


@pytest.mark.parametrize("profile", [SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_HMAC_SHA1_80])
def test_rtp_protected_in_its_send_slot_is_what_protect_rtp_makes(
    sockets: tuple[socket.socket, list[socket.socket]], profile: SrtpProfile
) -> None:
    out, sinks = sockets
    local = bytes(range(profile.key_length + profile.salt_length))
    remote = bytes(reversed(local))
    # Two contexts with the same keys: one protects in the slot, one as bytes.
    in_slot = SrtpContext(SrtpKeys(profile, local, remote))
    as_bytes = SrtpContext(SrtpKeys(profile, local, remote))
    receiver = SrtpContext(SrtpKeys(profile, remote, local))
    sender = UdpSender(out)
    # Packets of two sizes in turn, each sent to two consumers, as the router fans out.
    tails = [b"\xbe\xde\x00\x01\x10\x55\x00\x00" + b"frame" * (20 + seq % 2) for seq in range(4)]
    sender.start_batch()
    for seq, tail in enumerate(tails):
        for ssrc in (4242, 4343):
            sender.send_rtp(in_slot, 0x90, 111, seq, 960 * seq, ssrc, tail, sinks[0].getsockname())
    sender.close_batch()
    datagrams = _received(sinks[0], 8)
    for position, datagram in enumerate(datagrams):
        seq, ssrc, tail = position // 2, (4242, 4343)[position % 2], tails[position // 2]
        assert datagram == as_bytes.protect_rtp(0x90, 111, seq, 960 * seq, ssrc, tail)
        clear = receiver.unprotect_untrusted(datagram)
        assert clear == HEADER.pack(0x90, 111, seq, 960 * seq, ssrc) + tail


def test_received_datagrams_keep_their_order_and_source_across_receive_batches() -> None:
    inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbox.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    inbox.bind(("127.0.0.1", 0))
    inbox.setblocking(False)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for sender in senders:
            sender.bind(("127.0.0.1", 0))
        # More than one recvmmsg call's worth, of varied sizes, from two sources.
        sent = [(index.to_bytes(2, "big") * (1 + index % 40), index % 2) for index in range(150)]
        for data, which in sent:
            senders[which].sendto(data, inbox.getsockname())
        received: list[tuple[bytes, tuple[str, int], float]] = []
        ticks = itertools.count()
        receiver = UdpReceiver(inbox)
        # Loopback usually delivers within sendto, but a busy host may defer delivery: drain
        # again whenever more is readable, until all are in.
        while len(received) < len(sent) and select.select([inbox], [], [], 10)[0]:
            receiver.drain(lambda *datagram: received.append(datagram), lambda: next(ticks))
        assert [datagram[:2] for datagram in received] == [
            (data, senders[which].getsockname()) for data, which in sent
        ]
        # Arrival times are read once per receive batch, not once per drain.
        times = [datagram[2] for datagram in received]
        assert times == sorted(times) and len(set(times)) >= 3
    finally:
        inbox.close()
        for sender in senders:
            sender.close()


def test_draining_an_empty_socket_returns_at_once() -> None:
    inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbox.bind(("127.0.0.1", 0))
    inbox.setblocking(False)
    with inbox:
        received: list[object] = []
        UdpReceiver(inbox).drain(lambda *datagram: received.append(datagram), lambda: 0.0)
        assert received == []


def test_an_ipv6_socket_is_read_one_datagram_at_a_time() -> None:
    try:
        inbox = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        inbox.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    inbox.setblocking(False)
    with inbox, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
        sender.bind(("::1", 0))
        sender.sendto(b"six", inbox.getsockname())
        received: list[tuple[bytes, tuple[str, int], float]] = []
        UdpReceiver(inbox).drain(lambda *datagram: received.append(datagram), lambda: 1.0)
        assert received == [(b"six", sender.getsockname()[:2], 1.0)]
