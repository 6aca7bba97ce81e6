"""The worker core end to end, sans-I/O: RPC, ICE, DTLS, SRTP, forwarding and RTCP."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.bwe import MAX_INCOMING_BITRATE
from sfu.errors import BadParams, NotFound
from sfu.rtcp import (
    GenericNack,
    PictureLossIndication,
    ReceiverEstimatedMaxBitrate,
    SenderReport,
    TransportCc,
    parse_compound_untrusted,
)
from sfu.rtp import ABS_SEND_TIME, AUDIO_LEVEL, MID, TRANSPORT_CC, RtpPacket
from sfu.sdp import SessionDescription
from sfu.synthetic_peer import SyntheticPeer
from sfu.transport import TransportCcRecorder
from sfu.worker import Worker, reply_for

SFU = ("127.0.0.1", 40000)


class Harness:
    """A worker and synthetic peers exchanging datagrams through lists, no sockets."""

    def __init__(self) -> None:
        self.outbox: list[tuple[bytes, tuple[str, int]]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.worker = Worker(
            "127.0.0.1",
            SFU[1],
            lambda d, a: self.outbox.append((d, a)),
            lambda e, d: self.events.append((e, d)),
        )
        self.peers: dict[tuple[str, int], SyntheticPeer] = {}
        self.now = 0.0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.worker.handle_request(method, params, self.now)

    def deliver(self) -> None:
        while self.outbox:
            data, address = self.outbox.pop(0)
            for reply in self.peers[address].receive(data, self.now):
                self.worker.datagram_received(reply, address, self.now)

    def join(self, router_id: str, port: int) -> tuple[str, SyntheticPeer]:
        created = self.call("transport.create", router_id=router_id)
        peer = SyntheticPeer(created)
        address = ("127.0.0.1", port)
        self.peers[address] = peer
        self.call(
            "transport.connect",
            transport_id=created["transport_id"],
            dtls_parameters=peer.dtls_parameters(),
        )
        self.worker.datagram_received(peer.binding_request(), address, self.now)
        for datagram in peer.start_dtls(self.now):
            self.worker.datagram_received(datagram, address, self.now)
        self.deliver()
        assert peer.connected
        return created["transport_id"], peer

    def send(self, port: int, data: bytes) -> None:
        self.worker.datagram_received(data, ("127.0.0.1", port), self.now)


def _audio(seq: int, level: int, ssrc: int = 1111) -> bytes:
    return RtpPacket(
        111,
        seq,
        960 * seq,
        ssrc,
        extensions={1: bytes([0x80 | level]), 3: b"0"},
        payload=b"sframe-ciphertext-%d" % seq,
    ).serialize()


@pytest.fixture
def room() -> tuple[Harness, str, str, str]:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    pub_id, _ = h.join(router_id, 5001)
    producer_id = h.call(
        "producer.create",
        transport_id=pub_id,
        kind="audio",
        payload_type=111,
        ssrcs={1111: 0},
        extensions={1: AUDIO_LEVEL, 3: MID},
    )["producer_id"]
    sub_id, _ = h.join(router_id, 5002)
    return h, router_id, producer_id, sub_id


def test_audio_is_forwarded_rewritten_and_still_opaque(room) -> None:
    h, _, producer_id, sub_id = room
    consumer = h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)
    pub, sub = h.peers[("127.0.0.1", 5001)], h.peers[("127.0.0.1", 5002)]
    for seq in range(100, 110):
        h.now += 0.02
        h.send(5001, pub.protect(_audio(seq, 30)))
    h.deliver()
    packets = [RtpPacket.parse_untrusted(p) for p in sub.rtp]
    assert len(packets) == 10
    assert {p.ssrc for p in packets} == {consumer["ssrc"]}
    assert {p.payload_type for p in packets} == {consumer["payload_type"]}
    seqs = [p.sequence_number for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert packets[0].payload == b"sframe-ciphertext-100"
    assert packets[0].extensions == {1: bytes([0x80 | 30])}  # only the audio level survives
    offer = h.call("transport.offer", transport_id=sub_id)["sdp_offer"]
    assert f"a=ssrc:{consumer['ssrc']} cname:" in offer


def test_nack_is_answered_and_sender_report_is_translated(room) -> None:
    h, _, producer_id, sub_id = room
    h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)
    pub, sub = h.peers[("127.0.0.1", 5001)], h.peers[("127.0.0.1", 5002)]
    for seq in range(1, 6):
        h.send(5001, pub.protect(_audio(seq, 40)))
    # The network loses the third packet on its way to the subscriber.
    to_sub = [i for i, (_, a) in enumerate(h.outbox) if a[1] == 5002]
    del h.outbox[to_sub[2]]
    h.deliver()
    assert len(sub.rtp) == 4
    first = RtpPacket.parse_untrusted(sub.rtp[0])
    lost = (first.sequence_number + 2) & 0xFFFF
    h.send(5002, sub.protect_rtcp([GenericNack(1, first.ssrc, (lost,))]))
    h.deliver()
    again = RtpPacket.parse_untrusted(sub.rtp[-1])
    assert again.sequence_number == lost
    assert again.payload == b"sframe-ciphertext-3"
    sr = SenderReport(
        ssrc=1111, ntp_timestamp=1 << 40, rtp_timestamp=960 * 5, packet_count=5, octet_count=100
    )
    h.send(5001, pub.protect_rtcp([sr]))
    h.deliver()
    (translated,) = [
        p for raw in sub.rtcp for p in parse_compound_untrusted(raw) if isinstance(p, SenderReport)
    ]
    assert translated.ssrc == first.ssrc
    assert translated.rtp_timestamp == (first.timestamp + 960 * 4) & 0xFFFFFFFF
    assert translated.ntp_timestamp == 1 << 40


def test_server_mute_stops_forwarding_and_pause_resume_is_seamless(room) -> None:
    h, _, producer_id, sub_id = room
    consumer_id = h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)[
        "consumer_id"
    ]
    pub, sub = h.peers[("127.0.0.1", 5001)], h.peers[("127.0.0.1", 5002)]
    seq = 0

    def burst(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            seq += 1
            h.now += 0.02
            h.send(5001, pub.protect(_audio(seq, 30)))
        h.deliver()

    burst(3)
    h.call("producer.mute", producer_id=producer_id, muted=True)
    burst(3)
    assert len(sub.rtp) == 3
    h.call("producer.mute", producer_id=producer_id, muted=False)
    burst(2)
    h.call("consumer.pause", consumer_id=consumer_id)
    burst(2)
    h.call("consumer.resume", consumer_id=consumer_id)
    burst(2)
    seqs = [RtpPacket.parse_untrusted(p).sequence_number for p in sub.rtp]
    assert len(seqs) == 7
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))


def test_active_speaker_event_and_pli_throttle() -> None:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    pub_id, pub = h.join(router_id, 5001)
    video = h.call(
        "producer.create", transport_id=pub_id, kind="video", payload_type=96, ssrcs={2222: 0}
    )["producer_id"]
    audio = h.call(
        "producer.create",
        transport_id=pub_id,
        kind="audio",
        payload_type=111,
        ssrcs={1111: 0},
        extensions={1: AUDIO_LEVEL},
    )["producer_id"]
    sub_id, sub = h.join(router_id, 5002)
    consumer = h.call("consumer.create", transport_id=sub_id, producer_id=video)
    for seq in range(30):
        h.now += 0.02
        h.send(5001, pub.protect(_audio(seq, 20)))
        h.worker.tick(h.now)
    assert ("speaker", {"router_id": router_id, "producer_id": audio}) in h.events
    pub.rtcp.clear()
    for _ in range(5):
        h.send(5002, sub.protect_rtcp([PictureLossIndication(1, consumer["ssrc"])]))
    h.deliver()
    plis = [
        p
        for raw in pub.rtcp
        for p in parse_compound_untrusted(raw)
        if isinstance(p, PictureLossIndication)
    ]
    assert len(plis) == 1 and plis[0].media_ssrc == 2222
    h.now += 1.0
    h.worker.tick(h.now)
    h.deliver()
    rembs = [
        p
        for raw in pub.rtcp
        for p in parse_compound_untrusted(raw)
        if isinstance(p, ReceiverEstimatedMaxBitrate)
    ]
    assert rembs and set(rembs[-1].ssrcs) == {1111, 2222}


def _rembs(peer: SyntheticPeer, *, alone: bool = False) -> list[int]:
    """The bitrates of the REMBs a peer received, oldest first, optionally only those sent on
    their own (not with the periodic receiver report); forgets all RTCP received."""
    bitrates = []
    for raw in peer.rtcp:
        compound = parse_compound_untrusted(raw)
        if alone and len(compound) > 1:
            continue
        bitrates += [p.bitrate for p in compound if isinstance(p, ReceiverEstimatedMaxBitrate)]
    peer.rtcp.clear()
    return bitrates


def test_a_retransmission_counts_once_in_the_incoming_bitrate() -> None:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    pub_id, pub = h.join(router_id, 5001)
    h.call(
        "producer.create",
        transport_id=pub_id,
        kind="video",
        payload_type=96,
        ssrcs={2222: 0},
        rtx_ssrcs={3333: 2222},
        extensions={2: ABS_SEND_TIME},
    )
    estimator = h.worker.transports[pub_id].estimator
    assert estimator is not None
    # Every 10 ms one 500-byte packet and the RTX of the previous one, sent together: the
    # RTX packet is unwrapped and handled again as the packet it repairs, which must not
    # add its bytes a second time.
    for seq in range(1, 201):
        h.now = seq * 0.01
        stamp = {2: (int(h.now * (1 << 18)) & 0xFFFFFF).to_bytes(3, "big")}
        media = RtpPacket(96, seq, 3000 * seq, 2222, extensions=stamp, payload=bytes(500))
        repair = RtpPacket(
            97,
            seq,
            3000 * seq,
            3333,
            extensions=stamp,
            payload=(seq - 1).to_bytes(2, "big") + bytes(500),
        )
        for packet in (media, repair):
            h.send(5001, pub.protect(packet.serialize()))
        h.deliver()
    per_group = len(media.serialize()) + len(repair.serialize())
    incoming = estimator.incoming_bitrate()
    assert incoming is not None
    assert abs(incoming - per_group * 8 / 0.01) < 0.05 * per_group * 8 / 0.01


def test_publisher_remb_follows_the_estimate_and_drops_at_once_when_the_queue_grows() -> None:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    pub_id, pub = h.join(router_id, 5001)
    estimated = h.call(
        "producer.create",
        transport_id=pub_id,
        kind="video",
        payload_type=96,
        ssrcs={2222: 0},
        extensions={2: ABS_SEND_TIME},
    )
    plain_id, plain = h.join(router_id, 5003)
    h.call("producer.create", transport_id=plain_id, kind="video", payload_type=96, ssrcs={3333: 0})
    assert estimated["producer_id"]
    estimator = h.worker.transports[pub_id].estimator
    assert estimator is not None and h.worker.transports[plain_id].estimator is None
    interval = 0.008  # 1000-byte payloads every 8 ms: about 1 Mbit/s
    seq = 0
    sent = arrived = 0.0
    next_tick = 0.0

    def send_for(seconds: float, link_rate: float) -> None:
        """The publisher sends for ``seconds``; its packets cross a ``link_rate`` bottleneck."""
        nonlocal seq, sent, arrived, next_tick
        end = sent + seconds
        while sent < end:
            seq += 1
            size = 12 + 8 + 1000
            arrived = max(sent + 0.02, arrived + size * 8 / link_rate)
            h.now = arrived
            abs_send_time = int(sent * (1 << 18)) & 0xFFFFFF
            packet = RtpPacket(
                96,
                seq,
                3000 * seq,
                2222,
                extensions={2: abs_send_time.to_bytes(3, "big")},
                payload=bytes(1000),
            )
            h.send(5001, pub.protect(packet.serialize()))
            sent += interval
            if h.now >= next_tick:
                next_tick = h.now + 0.05
                h.send(5001, pub.binding_request())  # consent, as a browser keeps it
                h.send(5003, plain.binding_request())
                h.worker.tick(h.now)
                h.deliver()

    send_for(3.0, 10_000_000)
    # No estimate yet: the ceiling, as the publisher without abs-send-time always gets.
    assert set(_rembs(pub)) == {MAX_INCOMING_BITRATE}
    send_for(9.0, 10_000_000)
    steady = _rembs(pub)[-1]
    incoming = estimator.incoming_bitrate()
    assert incoming is not None and 950_000 < incoming < 1_100_000
    assert incoming < steady < MAX_INCOMING_BITRATE
    # A 600 kbit/s bottleneck appears: the queue grows by 0.4 s a second. The cut goes out
    # at once, on its own, not with the next receiver report.
    congested_at = h.now
    prompt: list[int] = []
    while not prompt and h.now - congested_at < 2.0:
        send_for(0.02, 600_000)
        prompt = _rembs(pub, alone=True)
    assert prompt and prompt[0] < 0.97 * steady
    assert h.now - congested_at < 0.5
    send_for(1.0, 600_000)
    assert _rembs(pub)[-1] < 600_000 < incoming
    assert set(_rembs(plain)) == {MAX_INCOMING_BITRATE}


def test_consent_loss_closes_the_transport_and_frees_everything(room) -> None:
    h, _, producer_id, sub_id = room
    h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)
    h.now += 31.0
    h.worker.tick(h.now)
    closed = {d["transport_id"] for e, d in h.events if e == "transport.closed"}
    assert sub_id in closed and len(closed) == 2
    stats = h.call("stats")
    assert (stats["transports"], stats["producers"], stats["consumers"]) == (0, 0, 0)


def test_join_leave_cycles_leave_nothing_behind() -> None:
    h = Harness()
    for cycle in range(200):
        router_id = h.call("router.create")["router_id"]
        created = h.call("transport.create", router_id=router_id)
        producer = h.call(
            "producer.create",
            transport_id=created["transport_id"],
            kind="audio",
            payload_type=111,
            ssrcs={cycle + 1: 0},
        )
        other = h.call("transport.create", router_id=router_id)["transport_id"]
        h.call("consumer.create", transport_id=other, producer_id=producer["producer_id"])
        h.call("transport.close", transport_id=other)
        h.call("router.close", router_id=router_id)
    stats = h.call("stats")
    assert (stats["routers"], stats["transports"], stats["producers"], stats["consumers"]) == (
        0,
        0,
        0,
        0,
    )
    assert not h.worker._by_ufrag and not h.worker._by_address


def test_rpc_errors_are_typed_replies() -> None:
    h = Harness()
    with pytest.raises(NotFound):
        h.call("transport.create", router_id="nope")
    reply = reply_for(h.worker, {"id": 7, "method": "router.close", "params": {}}, 0.0)
    assert reply == {
        "id": 7,
        "error": {"code": "bad_params", "message": "'router_id' must be a non-empty string"},
    }
    assert (
        reply_for(h.worker, {"id": 8, "method": "x.y", "params": {}}, 0.0)["error"]["code"]
        == "bad_params"
    )
    assert reply_for(h.worker, {"id": 9, "method": "router.create", "params": {}}, 0.0)["result"]


def test_unknown_and_garbage_datagrams_are_dropped(room) -> None:
    h, *_ = room
    for data in (
        b"",
        b"\x00\x01\x00\x00",
        b"\x17\xfe\xfd" + bytes(20),
        b"\x80\x6f" + bytes(30),
        b"\x80\xc8" + bytes(30),
        b"\xff" * 10,
    ):
        h.worker.datagram_received(data, ("127.0.0.1", 9999), 0.0)
        h.worker.datagram_received(data, ("127.0.0.1", 5001), 0.0)
    assert h.worker.dropped >= 6


CHROME_SIMULCAST_OFFER_VIDEO = """v=0
o=- 1 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
m=video 9 UDP/TLS/RTP/SAVPF 96
c=IN IP4 0.0.0.0
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 FINGERPRINT
a=setup:actpass
a=mid:0
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=sendonly
a=rtcp-mux
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 nack pli
a=rid:l send
a=rid:h send
a=simulcast:send l;h
"""

KEY = bytes([0x90, 0x80, 0x01, 0x10, 0x00])  # S=1 PID=0, picture id, P=0: key frame
DELTA = bytes([0x90, 0x80, 0x02, 0x11, 0x00])


def _picture(payload: bytes, picture_id: int) -> bytes:
    """``payload`` (a descriptor with a 7-bit picture id) with another picture id."""
    return payload[:2] + bytes([picture_id]) + payload[3:]


def test_simulcast_layers_learnt_by_rid_and_switched_at_key_frames() -> None:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    created = h.call("transport.create", router_id=router_id)
    peer = SyntheticPeer(created)
    offer = CHROME_SIMULCAST_OFFER_VIDEO.replace("FINGERPRINT", peer.certificate.fingerprint())
    connected = h.call("transport.connect", transport_id=created["transport_id"], sdp_offer=offer)
    assert "a=simulcast:recv l;h" in connected["sdp_answer"]
    (producer,) = connected["producers"]
    address = ("127.0.0.1", 5001)
    h.peers[address] = peer
    h.worker.datagram_received(peer.binding_request(), address, 0.0)
    for datagram in peer.start_dtls(0.0):
        h.worker.datagram_received(datagram, address, 0.0)
    h.deliver()
    sub_id, sub = h.join(router_id, 5002)
    consumer = h.call("consumer.create", transport_id=sub_id, producer_id=producer["producer_id"])

    def frame(rid: bytes, ssrc: int, seq: int, payload: bytes) -> None:
        # The high layer carries more bytes per frame, as a higher resolution would.
        payload += b"H" * 200 if rid == b"h" else b""
        packet = RtpPacket(96, seq, 3000 * seq, ssrc, extensions={10: rid}, payload=payload)
        h.send(5001, peer.protect(packet.serialize()))

    # The subscriber has no estimate yet: target is the highest layer (h), but it starts on
    # whatever key frame comes first, and switches to h at h's first key frame.
    h.worker.tick(0.0)
    frame(b"l", 111, 1, KEY)
    frame(b"h", 222, 1, DELTA)
    frame(b"l", 111, 2, DELTA)
    frame(b"h", 222, 2, KEY)
    frame(b"l", 111, 3, DELTA)
    frame(b"h", 222, 3, DELTA)
    h.deliver()
    received = [RtpPacket.parse_untrusted(p) for p in sub.rtp]
    high = b"H" * 200
    # Each layer numbers its pictures from 1; the subscriber's picture ids go on from 2.
    assert [p.payload for p in received] == [
        KEY,
        DELTA,
        _picture(KEY, 3) + high,
        _picture(DELTA, 4) + high,
    ]
    seqs = [p.sequence_number for p in received]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(4)]
    assert {p.ssrc for p in received} == {consumer["ssrc"]}
    # Once layer bitrates are measured, a REMB that only fits the low layer moves the
    # target down; the switch waits for l's key frame.
    h.worker.tick(1.0)
    h.send(5002, sub.protect_rtcp([ReceiverEstimatedMaxBitrate(1, 1000, (consumer["ssrc"],))]))
    h.deliver()
    frame(b"l", 111, 4, DELTA)
    frame(b"h", 222, 4, DELTA)
    frame(b"l", 111, 5, KEY)
    h.deliver()
    assert [RtpPacket.parse_untrusted(p).payload for p in sub.rtp[4:]] == [
        _picture(DELTA, 4) + high,
        _picture(KEY, 5),
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.binary(max_size=120)), max_size=20))
def test_hostile_datagrams_at_the_socket_never_crash_or_grow_state(
    datagrams: list[tuple[int, bytes]],
) -> None:
    h = _FUZZ_ROOM
    before = (len(h.worker._by_address), len(h.worker.transports), h.worker.srtp_failures)
    pub = h.peers[("127.0.0.1", 5001)]
    seeds = [
        pub.binding_request(),
        pub.protect(_audio(7, 30)),
        pub.protect_rtcp([PictureLossIndication(1, 2)]),
        bytes([22, 0xFE, 0xFD]) + bytes(10),
        b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12),
        b"\x80\xc8\x00\x06" + bytes(24),
    ]
    for seed, noise in datagrams:
        data = bytearray(seeds[seed])
        for i, byte in enumerate(noise[:16]):
            data[(i * 7 + byte) % len(data)] ^= byte
        for port in (5001, 5002, 7777):
            h.worker.datagram_received(bytes(data) + noise[16:], ("127.0.0.1", port), 1.0)
    h.worker.tick(1.0)
    after = (len(h.worker._by_address), len(h.worker.transports))
    assert after[0] <= before[0] + 1  # only a correctly signed check may add an address
    assert after[1] == before[1]


def _fuzz_room() -> Harness:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    pub_id, _ = h.join(router_id, 5001)
    producer_id = h.call(
        "producer.create",
        transport_id=pub_id,
        kind="audio",
        payload_type=111,
        ssrcs={1111: 0},
        extensions={1: AUDIO_LEVEL},
    )["producer_id"]
    sub_id, _ = h.join(router_id, 5002)
    h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)
    h.outbox.clear()
    return h


_FUZZ_ROOM = _fuzz_room()


def test_transport_cc_feedback_reports_arrivals_and_losses() -> None:
    recorder = TransportCcRecorder()
    for seq, at in ((65534, 10.000), (65535, 10.001), (1, 10.0105)):  # 0 was lost
        recorder.record(seq, at)
    feedback = recorder.feedback(1, 2)
    assert feedback is not None
    assert feedback.base_sequence == 65534
    assert feedback.deltas[2] is None
    assert [d is not None for d in feedback.deltas] == [True, True, False, True]
    assert feedback.deltas[1] == 4  # 1 ms = 4 ticks of 250 us
    assert feedback.deltas[3] == 38  # 9.5 ms
    assert recorder.feedback(1, 2) is None  # everything was reported


def test_publisher_with_transport_cc_gets_feedback() -> None:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    pub_id, pub = h.join(router_id, 5001)
    h.call(
        "producer.create",
        transport_id=pub_id,
        kind="audio",
        payload_type=111,
        ssrcs={"1111": 0},
        extensions={"1": AUDIO_LEVEL, "5": TRANSPORT_CC},
    )
    for seq in range(5):
        packet = RtpPacket(
            111, seq, 960 * seq, 1111, extensions={5: seq.to_bytes(2, "big")}, payload=b"x"
        )
        h.now = seq * 0.02
        h.send(5001, pub.protect(packet.serialize()))
    h.worker.tick(0.2)
    h.deliver()
    feedback = [
        p for raw in pub.rtcp for p in parse_compound_untrusted(raw) if isinstance(p, TransportCc)
    ]
    assert len(feedback) == 1
    assert feedback[0].base_sequence == 0 and len(feedback[0].deltas) == 5
    assert None not in feedback[0].deltas


def test_video_nack_is_answered_with_rtx() -> None:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    pub_id, pub = h.join(router_id, 5001)
    producer_id = h.call(
        "producer.create",
        transport_id=pub_id,
        kind="video",
        payload_type=96,
        ssrcs={"2222": 0},
    )["producer_id"]
    sub_id, sub = h.join(router_id, 5002)
    consumer = h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)
    offer = h.call("transport.offer", transport_id=sub_id)["sdp_offer"]
    assert f"a=ssrc-group:FID {consumer['ssrc']} {consumer['rtx_ssrc']}" in offer
    assert "a=fmtp:102 apt=101" in offer
    for seq in range(1, 6):
        payload = bytes([0x90, 0x80, seq, 0x10 if seq == 1 else 0x11, 0x00]) + b"frame"
        h.send(5001, pub.protect(RtpPacket(96, seq, 3000 * seq, 2222, payload=payload).serialize()))
    to_sub = [i for i, (_, a) in enumerate(h.outbox) if a[1] == 5002]
    del h.outbox[to_sub[2]]
    h.deliver()
    first = RtpPacket.parse_untrusted(sub.rtp[0])
    lost = (first.sequence_number + 2) & 0xFFFF
    h.send(5002, sub.protect_rtcp([GenericNack(1, first.ssrc, (lost,))]))
    h.deliver()
    rtx = RtpPacket.parse_untrusted(sub.rtp[-1])
    assert (rtx.ssrc, rtx.payload_type) == (consumer["rtx_ssrc"], 102)
    assert int.from_bytes(rtx.payload[:2], "big") == lost
    assert rtx.payload[2:] == bytes([0x90, 0x80, 3, 0x11, 0x00]) + b"frame"
    assert rtx.timestamp == (first.timestamp + 6000) & 0xFFFFFFFF


def test_video_picture_ids_continue_after_a_resume_and_in_retransmissions() -> None:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    pub_id, pub = h.join(router_id, 5001)
    producer_id = h.call(
        "producer.create", transport_id=pub_id, kind="video", payload_type=96, ssrcs={"2222": 0}
    )["producer_id"]
    sub_id, sub = h.join(router_id, 5002)
    consumer = h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)

    def frame(seq: int) -> None:
        # The publisher's picture id follows its sequence number; key frames at 1 and 5.
        payload = bytes([0x90, 0x80, seq, 0x10 if seq in (1, 5) else 0x11, 0x00]) + b"frame"
        h.send(5001, pub.protect(RtpPacket(96, seq, 3000 * seq, 2222, payload=payload).serialize()))

    frame(1)
    frame(2)
    h.call("consumer.pause", consumer_id=consumer["consumer_id"])
    frame(3)
    frame(4)
    h.call("consumer.resume", consumer_id=consumer["consumer_id"])
    for seq in (5, 6, 7):
        frame(seq)
    to_sub = [i for i, (_, a) in enumerate(h.outbox) if a[1] == 5002]
    del h.outbox[to_sub[3]]  # picture 6, the subscriber's fourth packet
    h.deliver()
    received = [RtpPacket.parse_untrusted(p) for p in sub.rtp]
    # Pictures 3 and 4 were never sent: the subscriber's picture ids run 1, 2, 3, (4), 5.
    assert [p.payload[2] for p in received] == [1, 2, 3, 5]
    lost = (received[2].sequence_number + 1) & 0xFFFF
    h.send(5002, sub.protect_rtcp([GenericNack(1, received[0].ssrc, (lost,))]))
    h.deliver()
    rtx = RtpPacket.parse_untrusted(sub.rtp[-1])
    assert rtx.ssrc == consumer["rtx_ssrc"]
    assert int.from_bytes(rtx.payload[:2], "big") == lost
    assert rtx.payload[2:] == bytes([0x90, 0x80, 4, 0x11, 0x00]) + b"frame"


def test_upstream_loss_is_nacked_and_repaired_from_publisher_rtx() -> None:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    pub_id, pub = h.join(router_id, 5001)
    producer_id = h.call(
        "producer.create",
        transport_id=pub_id,
        kind="video",
        payload_type=96,
        ssrcs={"2222": 0},
        rtx_ssrcs={"3333": 2222},
    )["producer_id"]
    sub_id, sub = h.join(router_id, 5002)
    h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)

    def payload(seq: int) -> bytes:
        return bytes([0x90, 0x80, seq, 0x10 if seq == 1 else 0x11, 0x00]) + b"f%d" % seq

    for seq in (1, 2, 5):  # 3 and 4 are lost on the way to the SFU
        h.send(
            5001,
            pub.protect(RtpPacket(96, seq, 3000 * seq, 2222, payload=payload(seq)).serialize()),
        )
    h.deliver()
    nacks = [
        p for raw in pub.rtcp for p in parse_compound_untrusted(raw) if isinstance(p, GenericNack)
    ]
    assert [(n.media_ssrc, n.lost) for n in nacks] == [(2222, (3, 4))]
    # The publisher answers with RTX (RFC 4588): its own SSRC and sequence, OSN first.
    rtx = RtpPacket(97, 900, 9000, 3333, payload=(3).to_bytes(2, "big") + payload(3))
    h.send(5001, pub.protect(rtx.serialize()))
    h.deliver()
    received = [RtpPacket.parse_untrusted(p) for p in sub.rtp]
    assert [p.payload for p in received] == [payload(1), payload(2), payload(5), payload(3)]
    seqs = [p.sequence_number for p in received]
    assert (seqs[3] - seqs[0]) & 0xFFFF == 2  # the repair lands in its original place
    assert received[3].payload_type == received[0].payload_type


def test_a_packet_still_missing_is_nacked_again_a_few_times() -> None:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    pub_id, pub = h.join(router_id, 5001)
    h.call(
        "producer.create",
        transport_id=pub_id,
        kind="video",
        payload_type=96,
        ssrcs={"2222": 0},
        rtx_ssrcs={"3333": 2222},
    )
    payload = bytes([0x90, 0x80, 1, 0x10, 0x00])
    for seq in (1, 2, 5):  # 3 and 4 are lost on the way to the SFU
        h.send(5001, pub.protect(RtpPacket(96, seq, 3000 * seq, 2222, payload=payload).serialize()))
    h.deliver()

    def nacked() -> list[tuple[int, ...]]:
        h.deliver()
        lost = [
            p.lost
            for raw in pub.rtcp
            for p in parse_compound_untrusted(raw)
            if isinstance(p, GenericNack)
        ]
        pub.rtcp.clear()
        return lost

    assert nacked() == [(3, 4)]
    h.worker.tick(0.05)
    assert nacked() == []  # not yet: a retransmission may be on its way
    h.worker.tick(0.1)
    assert nacked() == [(3, 4)]
    # 3 is repaired by RTX; only 4 is asked for again, until NACK_RETRIES are used up.
    rtx = RtpPacket(97, 900, 9000, 3333, payload=(3).to_bytes(2, "big") + payload)
    h.send(5001, pub.protect(rtx.serialize()))
    for now in (0.2, 0.3, 0.4, 0.5):
        h.worker.tick(now)
    assert nacked() == [(4,), (4,)]


def test_unconnected_transports_time_out_but_pipes_do_not() -> None:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    lonely = h.call("transport.create", router_id=router_id)["transport_id"]
    pipe = h.call("pipe.create", router_id=router_id)["pipe_id"]
    h.call("pipe.connect", pipe_id=pipe, ip="127.0.0.1", port=40001)
    h.worker.tick(61.0)
    assert ("transport.closed", {"transport_id": lonely, "reason": "ICE never connected"}) in (
        h.events
    )
    assert set(h.worker.transports) == {pipe}


def test_pipes_of_several_routers_between_two_workers_are_told_apart_by_ssrc() -> None:
    """Two channels spread over the same two workers: both pipes from worker A arrive at
    worker B from A's one port, so B routes each copied packet to the pipe whose router
    holds that SSRC's copy (one pipe per address would hand one channel's media to the
    other's pipe, where it is unknown and dropped, or worse). Key frame requests (RTCP)
    from B reach every router with a pipe from B; closing a copy forgets its SSRC."""
    a_out: list[tuple[bytes, tuple[str, int]]] = []
    b_out: list[tuple[bytes, tuple[str, int]]] = []
    a_address, b_address = ("127.0.0.1", 40000), ("127.0.0.1", 40001)
    a = Worker("127.0.0.1", a_address[1], lambda d, to: a_out.append((d, to)), lambda e, d: None)
    b = Worker("127.0.0.1", b_address[1], lambda d, to: b_out.append((d, to)), lambda e, d: None)
    copies = []
    for ssrc in (5151, 6161):
        here = a.handle_request("router.create", {}, 0.0)["router_id"]
        there = b.handle_request("router.create", {}, 0.0)["router_id"]
        publisher = a.handle_request("transport.create", {"router_id": here}, 0.0)
        producer_id = a.handle_request(
            "producer.create",
            {
                "transport_id": publisher["transport_id"],
                "kind": "audio",
                "payload_type": 111,
                "ssrcs": {str(ssrc): 0},
                "extensions": {"1": AUDIO_LEVEL},
            },
            0.0,
        )["producer_id"]
        source = a.handle_request("pipe.create", {"router_id": here}, 0.0)
        target = b.handle_request("pipe.create", {"router_id": there}, 0.0)
        a.handle_request("pipe.connect", {**target, "pipe_id": source["pipe_id"]}, 0.0)
        b.handle_request("pipe.connect", {**source, "pipe_id": target["pipe_id"]}, 0.0)
        described = a.handle_request(
            "pipe.consume", {"pipe_id": source["pipe_id"], "producer_id": producer_id}, 0.0
        )
        b.handle_request(
            "pipe.produce",
            {**described, "pipe_id": target["pipe_id"], "producer_id": producer_id},
            0.0,
        )
        packet = RtpPacket(111, 1, 960, ssrc, extensions={1: b"\x94"}, payload=b"y" * 40)
        a.routers[here].receive_rtp(
            a.transports[publisher["transport_id"]], packet.serialize(), 0.0
        )
        copies.append((b.routers[there], producer_id))
    assert [to for _, to in a_out] == [b_address, b_address]
    for data, _ in a_out:
        b.datagram_received(data, a_address, 0.0)
    assert [router.packets_in for router, _ in copies] == [1, 1]
    assert b.dropped == 0
    # A third stream under a piped SSRC from the same worker is refused, not misrouted.
    with pytest.raises(BadParams):
        b.handle_request(
            "pipe.produce",
            {**described, "pipe_id": target["pipe_id"], "producer_id": "another"},
            0.0,
        )
    # Closing a copy forgets its SSRC: its packets are dropped, the other's still arrive.
    b.handle_request("producer.close", {"producer_id": copies[0][1]}, 0.0)
    for data, _ in a_out:
        b.datagram_received(data, a_address, 0.0)
    assert [router.packets_in for router, _ in copies] == [1, 2]
    assert b.dropped == 1


def test_new_producers_appear_by_renegotiation_with_stable_mids(room) -> None:
    h, router_id, producer_id, sub_id = room
    first = h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)
    offer1 = SessionDescription.parse_untrusted(
        h.call("transport.offer", transport_id=sub_id)["sdp_offer"]
    )
    h.call("transport.answer", transport_id=sub_id, sdp_answer=offer1.serialize())
    pub2_id, _ = h.join(router_id, 5003)
    video = h.call(
        "producer.create", transport_id=pub2_id, kind="video", payload_type=96, ssrcs={"4444": 0}
    )["producer_id"]
    second = h.call("consumer.create", transport_id=sub_id, producer_id=video)
    h.call("consumer.close", consumer_id=first["consumer_id"])
    offer2 = SessionDescription.parse_untrusted(
        h.call("transport.offer", transport_id=sub_id)["sdp_offer"]
    )
    assert offer2.origin_session_id == offer1.origin_session_id
    assert offer2.origin_version == offer1.origin_version + 1
    assert [(m.mid, m.kind, m.port != 0) for m in offer2.media] == [
        ("0", "audio", False),  # closed consumer: same position, now inactive
        ("1", "video", True),
    ]
    assert int(second["mid"]) == 1
    assert offer2.bundle == ["1"]


def test_a_client_hello_that_beats_the_answer_is_answered_when_the_answer_comes() -> None:
    # A subscriber's answer travels through the gateway and control while its DTLS goes
    # straight to the SFU: the ClientHello arrives first and must not cost the client its
    # 1 s retransmission timer.
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    created = h.call("transport.create", router_id=router_id)
    peer = SyntheticPeer(created)
    address = ("127.0.0.1", 5003)
    h.peers[address] = peer
    h.worker.datagram_received(peer.binding_request(), address, h.now)
    for datagram in peer.start_dtls(h.now):
        h.worker.datagram_received(datagram, address, h.now)
    h.deliver()  # the binding response only: no DTLS answer yet
    assert not peer.connected
    h.call(
        "transport.connect",
        transport_id=created["transport_id"],
        dtls_parameters=peer.dtls_parameters(),
    )
    h.deliver()  # the held ClientHello is answered now, with no retransmission
    assert peer.connected


def test_dtls_from_an_address_ice_never_authenticated_is_not_held() -> None:
    h = Harness()
    router_id = h.call("router.create")["router_id"]
    created = h.call("transport.create", router_id=router_id)
    peer = SyntheticPeer(created)
    for datagram in peer.start_dtls(h.now):
        h.worker.datagram_received(datagram, ("127.0.0.1", 5004), h.now)
    transport = h.worker.transports[created["transport_id"]]
    assert transport.early_dtls == []


def _renegotiate(h: Harness, transport_id: str) -> SessionDescription:
    """One offer and the subscriber's answer: what it accepts, and closed sections rejected."""
    offer = SessionDescription.parse_untrusted(
        h.call("transport.offer", transport_id=transport_id)["sdp_offer"]
    )
    h.call("transport.answer", transport_id=transport_id, sdp_answer=offer.serialize())
    return offer


def _second_producer(h: Harness, router_id: str, kind: str, payload_type: int) -> str:
    """A producer of another publisher in the room (SSRC 4444)."""
    transport_id, _ = h.join(router_id, 5003)
    return str(
        h.call(
            "producer.create",
            transport_id=transport_id,
            kind=kind,
            payload_type=payload_type,
            ssrcs={"4444": 0},
        )["producer_id"]
    )


def test_join_leave_cycles_recycle_m_sections_under_new_mids(room) -> None:
    # In a long call, every leave used to leave an inactive m-section behind for good: the
    # session grew until the client's answer outgrew the gateway's frame.
    h, router_id, producer_id, sub_id = room
    video = _second_producer(h, router_id, "video", 96)
    h.call("consumer.create", transport_id=sub_id, producer_id=video)
    mids_seen: set[str] = set()
    for _ in range(100):
        created = h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)
        assert created["mid"] not in mids_seen  # a recycled slot takes a new mid
        mids_seen.add(created["mid"])
        offer = _renegotiate(h, sub_id)
        assert [(m.kind, m.port != 0) for m in offer.media] == [
            ("video", True),
            ("audio", True),
        ]
        assert offer.media[1].mid == created["mid"]
        h.call("consumer.close", consumer_id=created["consumer_id"])
        offer = _renegotiate(h, sub_id)
        assert [(m.kind, m.port != 0) for m in offer.media] == [
            ("video", True),
            ("audio", False),
        ]
    assert len(h.worker.transports[sub_id].consumer_offers) == 2


def test_a_closed_m_section_is_recycled_only_once_answered_and_only_for_its_kind(room) -> None:
    h, router_id, producer_id, sub_id = room
    first = h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)
    _renegotiate(h, sub_id)
    h.call("consumer.close", consumer_id=first["consumer_id"])
    # The subscriber still has mid 0 live until it answers the offer that closes it.
    second = h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)
    offer = _renegotiate(h, sub_id)
    assert [(m.mid, m.port != 0) for m in offer.media] == [("0", False), ("1", True)]
    pub2_id, _ = h.join(router_id, 5003)
    video = h.call(
        "producer.create", transport_id=pub2_id, kind="video", payload_type=96, ssrcs={"4444": 0}
    )["producer_id"]
    h.call("consumer.create", transport_id=sub_id, producer_id=video)
    offer = _renegotiate(h, sub_id)
    assert [(m.mid, m.kind, m.port != 0) for m in offer.media] == [
        ("0", "audio", False),
        ("1", "audio", True),
        ("2", "video", True),
    ]
    third = h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)
    offer = _renegotiate(h, sub_id)
    assert [(m.mid, m.kind, m.port != 0) for m in offer.media] == [
        ("3", "audio", True),
        ("1", "audio", True),
        ("2", "video", True),
    ]
    assert third["mid"] == "3" and offer.bundle == ["3", "1", "2"]
    assert offer.media[0].ssrcs.keys() == {third["ssrc"]}
    sub = h.peers[("127.0.0.1", 5002)]
    h.send(5001, h.peers[("127.0.0.1", 5001)].protect(_audio(100, 30)))
    h.deliver()
    arrived = {RtpPacket.parse_untrusted(p).ssrc for p in sub.rtp}
    assert arrived == {second["ssrc"], third["ssrc"]}


def test_one_consume_request_renegotiates_a_subscriber(room) -> None:
    # transport.consume: what control needs for one subscriber's renegotiation in one round
    # trip — consumers closed and created, a producer that closed meanwhile skipped, and
    # the new offer.
    h, router_id, producer_id, sub_id = room
    second = _second_producer(h, router_id, "audio", 111)
    result = h.call(
        "transport.consume",
        transport_id=sub_id,
        consume=[{"producer_id": producer_id}, {"producer_id": "gone"}, {"producer_id": second}],
    )
    assert [c["producer_id"] for c in result["consumers"]] == [producer_id, second]
    assert result["missing"] == ["gone"]
    offer = SessionDescription.parse_untrusted(result["sdp_offer"])
    assert [(m.mid, m.port != 0) for m in offer.media] == [("0", True), ("1", True)]
    first_id = result["consumers"][0]["consumer_id"]
    result = h.call("transport.consume", transport_id=sub_id, close=[first_id], consume=[])
    assert result["consumers"] == [] and first_id not in h.worker.consumers
    offer = SessionDescription.parse_untrusted(result["sdp_offer"])
    assert [(m.mid, m.port != 0) for m in offer.media] == [("0", False), ("1", True)]


def test_a_closing_producer_turns_its_consumers_m_sections_inactive(room) -> None:
    # Control closes a leaver's producers (or transport) without naming every consumer of
    # them: the subscribers' next offers must still mark those m-sections inactive.
    h, _, producer_id, sub_id = room
    h.call("consumer.create", transport_id=sub_id, producer_id=producer_id)
    h.call("producer.close", producer_id=producer_id)
    offer = SessionDescription.parse_untrusted(
        h.call("transport.offer", transport_id=sub_id)["sdp_offer"]
    )
    assert [(m.mid, m.port != 0) for m in offer.media] == [("0", False)]
