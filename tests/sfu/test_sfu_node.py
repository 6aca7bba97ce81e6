"""A real SFU node driven through its control RPC, with synthetic peers over loopback UDP."""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest
import trio

from sfu.rtp import AUDIO_LEVEL, RtpPacket
from sfu.synthetic_peer import SyntheticPeer
from turn.stun import Message, MessageClass

pytestmark = pytest.mark.slow


class UdpPeer:
    """A synthetic peer on its own loopback UDP socket."""

    def __init__(self, created: dict[str, Any]) -> None:
        self.created = created
        self.peer = SyntheticPeer(created)
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def connect(self) -> None:
        await self.sock.bind(("127.0.0.1", 0))
        target = self.peer.remote_address
        await self.sock.sendto(self.peer.binding_request(), target)
        for datagram in self.peer.start_dtls(trio.current_time()):
            await self.sock.sendto(datagram, target)
        with trio.fail_after(10):
            while not self.peer.connected:
                data, _ = await self.sock.recvfrom(2048)
                for reply in self.peer.receive(data, trio.current_time()):
                    await self.sock.sendto(reply, target)

    async def send(self, packet: bytes) -> None:
        await self.sock.sendto(self.peer.protect(packet), self.peer.remote_address)

    async def receive_rtp(self, count: int, within: float) -> list[RtpPacket]:
        with trio.move_on_after(within):
            while len(self.peer.rtp) < count:
                data, _ = await self.sock.recvfrom(2048)
                self.peer.receive(data, trio.current_time())
        return [RtpPacket.parse_untrusted(p) for p in self.peer.rtp]


async def _connected(control: Any, created: dict[str, Any]) -> UdpPeer:
    peer = UdpPeer(created)
    await control.call(
        "transport.connect",
        transport_id=created["transport_id"],
        dtls_parameters=peer.peer.dtls_parameters(),
    )
    await peer.connect()
    return peer


async def _join(control: Any, router_id: str) -> UdpPeer:
    return await _connected(control, await control.call("transport.create", router_id=router_id))


async def test_node_forwards_audio_and_reports_through_rpc(
    control: Any, sfu_node: list[str]
) -> None:
    assert any(line.startswith("sfu worker 0 listening udp 127.0.0.1:") for line in sfu_node)
    assert control.registration["capacity"] == {"workers": 1}
    router_id = (await control.call("router.create"))["router_id"]
    publisher = await _join(control, router_id)
    producer = await control.call(
        "producer.create",
        transport_id=publisher.created["transport_id"],
        kind="audio",
        payload_type=111,
        # msgpack map keys on the link are strings (strict_map_key); the node converts them.
        ssrcs={"4242": 0},
        extensions={"1": AUDIO_LEVEL},
    )
    subscriber = await _join(control, router_id)
    consumer = await control.call(
        "consumer.create",
        transport_id=subscriber.created["transport_id"],
        producer_id=producer["producer_id"],
    )
    for seq in range(50):
        packet = RtpPacket(111, seq, 960 * seq, 4242, extensions={1: b"\x94"}, payload=b"x" * 80)
        await publisher.send(packet.serialize())
        await trio.sleep(0.005)
    received = await subscriber.receive_rtp(50, within=10.0)
    assert len(received) >= 45  # loopback; allow for a scheduler hiccup, not for a bug
    assert {p.ssrc for p in received} == {consumer["ssrc"]}
    speaker = await control.wait_event("speaker")
    assert speaker["producer_id"] == producer["producer_id"]
    stats = await control.call("stats")
    assert stats["workers"][0]["packets_in"] >= 45
    assert stats["workers"][0]["consumers"] == 1
    await control.call("consumer.pause", consumer_id=consumer["consumer_id"])
    await control.call("transport.close", transport_id=subscriber.created["transport_id"])
    missing = await control.call_raw("consumer.resume", consumer_id=consumer["consumer_id"])
    assert missing["error"]["code"] == "not_found"
    await control.call("router.close", router_id=router_id)
    stats = await control.call("stats")
    assert stats["workers"][0]["transports"] == 0


async def test_node_refuses_bad_requests_with_typed_errors(
    control: Any, sfu_node: list[str]
) -> None:
    reply = await control.call_raw("transport.create", router_id="nope")
    assert reply["error"]["code"] == "not_found"
    reply = await control.call_raw("no.such.method")
    assert reply["error"]["code"] == "bad_params"
    router_id = (await control.call("router.create"))["router_id"]
    created = await control.call("transport.create", router_id=router_id)
    reply = await control.call_raw(
        "transport.connect", transport_id=created["transport_id"], sdp_offer="v=0\r\nm=audio x"
    )
    assert reply["error"]["code"] == "bad_params"


async def test_stats_event_is_pushed(control: Any, sfu_node: list[str]) -> None:
    stats = await control.wait_event("stats", within=12)
    (worker,) = stats["workers"]
    assert worker["rss_bytes"] > 0
    assert {"packets_in_per_s", "packets_out_per_s", "loss", "cpu_percent"} <= set(worker)


async def test_producer_piped_to_a_router_on_another_worker(
    control: Any, sfu_node_two_workers: list[str]
) -> None:
    first = (await control.call("router.create"))["router_id"]
    second = (await control.call("router.create"))["router_id"]
    publisher = await _join(control, first)
    subscriber = await _join(control, second)
    assert publisher.peer.remote_address != subscriber.peer.remote_address  # two workers
    producer = await control.call(
        "producer.create",
        transport_id=publisher.created["transport_id"],
        kind="audio",
        payload_type=111,
        ssrcs={"5151": 0},
        extensions={"1": AUDIO_LEVEL},
    )
    same_worker = await control.call_raw(
        "producer.pipe", producer_id=producer["producer_id"], router_id=first
    )
    assert same_worker["error"]["code"] == "bad_params"
    await control.call("producer.pipe", producer_id=producer["producer_id"], router_id=second)
    consumer = await control.call(
        "consumer.create",
        transport_id=subscriber.created["transport_id"],
        producer_id=producer["producer_id"],
    )
    for seq in range(40):
        packet = RtpPacket(111, seq, 960 * seq, 5151, extensions={1: b"\x94"}, payload=b"y" * 60)
        await publisher.send(packet.serialize())
        await trio.sleep(0.005)
    received = await subscriber.receive_rtp(40, within=10.0)
    assert len(received) >= 35
    assert {p.ssrc for p in received} == {consumer["ssrc"]}
    assert received[0].payload == b"y" * 60
    # The publisher leaves: the copy in the other worker's router goes with it.
    await control.call("transport.close", transport_id=publisher.created["transport_id"])
    with trio.fail_after(5):
        while True:
            workers = (await control.call("stats"))["workers"]
            if [w["producers"] for w in workers] == [0, 0]:
                break
            await trio.sleep(0.05)  # closing the copy is asynchronous; poll the RPC


async def _stats_until(control: Any, key: str, wanted: list[int]) -> None:
    """Poll the node's ``stats`` until ``key`` per worker is ``wanted`` (closing copies
    is asynchronous)."""
    with trio.fail_after(5):
        while True:
            if [w[key] for w in (await control.call("stats"))["workers"]] == wanted:
                return
            await trio.sleep(0.05)


async def test_a_channel_spreads_over_the_workers_with_every_producer_piped_everywhere(
    control: Any, sfu_node_spread: list[str]
) -> None:
    """One channel (one ``router.create``) across two workers: transports go to the
    least-loaded worker (a transport created ``near`` another joins it), every producer is
    copied into the other worker's router, a consumer on either worker takes any producer,
    a mute silences the copies too, events name the channel's router once per producer,
    and a leave or the router's close leaves nothing behind on either worker."""
    home = (await control.call("router.create"))["router_id"]
    ann = await _join(control, home)
    bob = await _join(control, home)
    assert ann.peer.remote_address != bob.peer.remote_address  # one per worker
    ann_listens = await _connected(
        control,
        await control.call("transport.create", router_id=home, near=ann.created["transport_id"]),
    )
    bob_listens = await _connected(
        control,
        await control.call("transport.create", router_id=home, near=bob.created["transport_id"]),
    )
    assert ann_listens.peer.remote_address == ann.peer.remote_address
    assert bob_listens.peer.remote_address == bob.peer.remote_address
    producers = {}
    for name, peer, ssrc in (("ann", ann, 5151), ("bob", bob, 6161)):
        created = await control.call(
            "producer.create",
            transport_id=peer.created["transport_id"],
            kind="audio",
            payload_type=111,
            ssrcs={str(ssrc): 0},
            extensions={"1": AUDIO_LEVEL},
        )
        producers[name] = created["producer_id"]
    await _stats_until(control, "producers", [2, 2])  # its own and the other's copy
    # Each listener consumes the other worker's publisher: through the copy.
    from_bob = await control.call(
        "consumer.create",
        transport_id=ann_listens.created["transport_id"],
        producer_id=producers["bob"],
    )
    from_ann = await control.call(
        "consumer.create",
        transport_id=bob_listens.created["transport_id"],
        producer_id=producers["ann"],
    )

    async def speak(start: int, count: int) -> None:
        for seq in range(start, start + count):
            for peer, ssrc in ((ann, 5151), (bob, 6161)):
                packet = RtpPacket(
                    111, seq, 960 * seq, ssrc, extensions={1: b"\x94"}, payload=b"y" * 60
                )
                await peer.send(packet.serialize())
            await trio.sleep(0.005)

    await speak(0, 40)
    heard_bob = await ann_listens.receive_rtp(35, within=10.0)
    heard_ann = await bob_listens.receive_rtp(35, within=10.0)
    assert {p.ssrc for p in heard_bob} == {from_bob["ssrc"]}
    assert {p.ssrc for p in heard_ann} == {from_ann["ssrc"]}
    # Voice activity and the speaker: once per producer, naming the router control knows.
    await control.wait_event("voice")
    reports = [d for e, d in control.events if e in ("voice", "speaker")]
    assert {d["router_id"] for d in reports} == {home}
    onsets = [d["producer_id"] for d in reports if d.get("active") is True]
    assert sorted(onsets) == sorted(producers.values())

    # Server mute of bob's original: the copy ann listens to falls silent as well.
    await control.call("producer.mute", producer_id=producers["bob"], muted=True)
    before = len(await ann_listens.receive_rtp(1 << 20, within=0.3))  # all sent before
    await speak(40, 40)
    assert len(await bob_listens.receive_rtp(len(heard_ann) + 35, within=10.0)) > len(heard_ann)
    await ann_listens.receive_rtp(before + 1, within=0.5)
    assert len(ann_listens.peer.rtp) == before

    # bob leaves: his producer's copy on ann's worker goes with his transport.
    for peer in (bob, bob_listens):
        await control.call("transport.close", transport_id=peer.created["transport_id"])
    await _stats_until(control, "producers", [1, 1])  # ann's, and its copy
    await control.call("router.close", router_id=home)
    await _stats_until(control, "routers", [0, 0])
    await _stats_until(control, "producers", [0, 0])


async def test_200_join_leave_cycles_leave_nothing_behind(
    control: Any, sfu_node: list[str]
) -> None:
    router_id = (await control.call("router.create"))["router_id"]
    publisher = await control.call("transport.create", router_id=router_id)
    producer = await control.call(
        "producer.create",
        transport_id=publisher["transport_id"],
        kind="audio",
        payload_type=111,
        ssrcs={"777": 0},
    )
    baseline = (await control.call("stats"))["workers"][0]["rss_bytes"]
    for _ in range(200):
        joined = await control.call("transport.create", router_id=router_id)
        await control.call(
            "consumer.create",
            transport_id=joined["transport_id"],
            producer_id=producer["producer_id"],
        )
        await control.call("transport.close", transport_id=joined["transport_id"])
    worker = (await control.call("stats"))["workers"][0]
    assert (worker["transports"], worker["consumers"], worker["producers"]) == (1, 0, 1)
    # 200 cycles may not leave more than a few MiB behind.
    assert worker["rss_bytes"] - baseline < 8 << 20
    await control.call("router.close", router_id=router_id)
    worker = (await control.call("stats"))["workers"][0]
    assert (worker["routers"], worker["transports"], worker["producers"]) == (0, 0, 0)


async def test_garbage_at_the_udp_port_leaves_the_worker_serving(
    control: Any, sfu_node: list[str]
) -> None:
    router_id = (await control.call("router.create"))["router_id"]
    peer = await _join(control, router_id)
    port = peer.peer.remote_address
    seeds = [
        peer.peer.binding_request(),
        peer.peer.protect(RtpPacket(111, 1, 960, 1, payload=b"z" * 50).serialize()),
        bytes([22, 0xFE, 0xFD]) + bytes(40),
        b"\x80\xc9\x00\x01" + bytes(4),
    ]
    rng = random.Random(6)
    attacker = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await attacker.bind(("127.0.0.1", 0))
    # Rounds of 200 until the worker has counted 1000 refusals: on a busy host the kernel
    # drops what overflows the worker's receive buffer, so a fixed count sent proves nothing.
    sent = 0
    with trio.fail_after(60):
        while True:
            for _ in range(200):
                data = bytearray(rng.choice(seeds))
                for _ in range(rng.randint(0, 6)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                if sent % 7 == 0:
                    data = bytearray(rng.randbytes(rng.randint(0, 1400)))
                sender = peer.sock if sent % 2 else attacker
                await sender.sendto(bytes(data), port)
                sent += 1
            worker = (await control.call("stats"))["workers"][0]
            if worker["dropped"] + worker["srtp_failures"] > 1000:
                break
            assert sent < 50_000, worker
    assert worker["transports"] == 1
    # Still serving the peer: a connectivity check is answered. Resent every second, as the
    # kernel may drop it while the flood drains; a late answer to an earlier one counts.
    checks: set[bytes] = set()
    answers: list[Message] = []
    with trio.fail_after(30):
        while not answers:
            request = peer.peer.binding_request()
            checks.add(request[8:20])
            await peer.sock.sendto(request, port)
            with trio.move_on_after(1):
                while not answers:
                    data, _ = await peer.sock.recvfrom(2048)
                    peer.peer.receive(data, trio.current_time())
                    answers = [m for m in peer.peer.stun if m.transaction_id in checks]
    assert answers[0].message_class == MessageClass.SUCCESS


async def test_silent_peer_loses_consent_and_its_transport_is_closed(
    control: Any, sfu_node_short_consent: list[str]
) -> None:
    router_id = (await control.call("router.create"))["router_id"]
    peer = await _join(control, router_id)
    await control.call(
        "producer.create",
        transport_id=peer.created["transport_id"],
        kind="audio",
        payload_type=111,
        ssrcs={"99": 0},
    )
    closed = await control.wait_event("transport.closed", within=10)
    assert closed["transport_id"] == peer.created["transport_id"]
    assert closed["reason"] == "consent expired"
    worker = (await control.call("stats"))["workers"][0]
    assert (worker["transports"], worker["producers"]) == (0, 0)
    reply = await control.call_raw("transport.close", transport_id=peer.created["transport_id"])
    assert reply["error"]["code"] == "not_found"
