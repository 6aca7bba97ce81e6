"""Forwarding cores: VP8 key frames, rewriting across switches, packet cache and NACK."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from sfu.consumer import Consumer, RtpRewriter
from sfu.producer import (
    NACK_RETRIES,
    NACK_RETRY_INTERVAL,
    MissingPackets,
    PacketCache,
    Producer,
    ReceiveStatistics,
)
from sfu.vp8 import PictureIdRewriter, is_keyframe_untrusted, parse_descriptor_untrusted

# S=1 PID=0, X with I (15-bit picture id), L and T; then a key frame payload header (P=0).
KEY = bytes([0x90, 0xE0, 0x80 | 0x12, 0x34, 0x05, 0x40, 0x9C, 0x01, 0x2A])
DELTA = bytes([0x90, 0xE0, 0x80 | 0x12, 0x35, 0x05, 0x40, 0x9D, 0x01, 0x2A])
CONTINUATION = bytes([0x80, 0x80, 0x12, 0x10])  # S=0: middle of a frame


def test_vp8_descriptor_fields() -> None:
    descriptor = parse_descriptor_untrusted(KEY)
    assert descriptor.picture_id == 0x1234
    assert descriptor.tl0_pic_idx == 5
    assert descriptor.temporal_id == 1
    assert descriptor.size == 6


def test_vp8_keyframe_detected_from_clear_header_bytes() -> None:
    assert is_keyframe_untrusted(KEY)
    assert is_keyframe_untrusted(bytes([0x10, 0x50]))  # minimal descriptor, P=0
    assert not is_keyframe_untrusted(DELTA)
    assert not is_keyframe_untrusted(CONTINUATION)
    assert not is_keyframe_untrusted(bytes([0x11, 0x50]))  # partition 1
    assert not is_keyframe_untrusted(b"")
    assert not is_keyframe_untrusted(bytes([0x90, 0x80]))  # picture id missing


@given(st.binary(max_size=20))
def test_vp8_parser_never_crashes(data: bytes) -> None:
    is_keyframe_untrusted(data)


def _forward(rewriter: RtpRewriter, source: int, seqs: range, ts0: int, now0: float) -> list:
    out = []
    for i, seq in enumerate(seqs):
        out.append(rewriter.rewrite(source, seq & 0xFFFF, ts0 + 960 * i, now0 + 0.02 * i))
    return out


def test_rewriting_is_continuous_across_source_switches() -> None:
    rewriter = RtpRewriter(clock_rate=48000, first_seq=1000, first_ts=5000)
    first = _forward(rewriter, 0xA, range(65530, 65540), 123456, 0.0)
    assert [s for s, _ in first] == list(range(1000, 1010))
    assert [t for _, t in first] == [5000 + 960 * i for i in range(10)]
    rewriter.switch()
    # The new source starts 0.1 s after the last packet: the output clock advances by that.
    second = _forward(rewriter, 0xB, range(7, 12), 999, 0.18 + 0.1)
    assert [s for s, _ in second] == list(range(1010, 1015))
    assert second[0][1] == 5000 + 960 * 9 + 4800
    assert [t for _, t in second] == [second[0][1] + 960 * i for i in range(5)]


def test_packet_from_before_a_switch_is_dropped_not_renumbered() -> None:
    rewriter = RtpRewriter(clock_rate=90000, first_seq=0, first_ts=0)
    rewriter.rewrite(1, 100, 0, 0.0)
    rewriter.switch()
    assert rewriter.rewrite(2, 500, 0, 0.1) == (1, 9000)
    assert rewriter.rewrite(2, 499, 0, 0.1) is None  # late packet of the new source
    assert rewriter.rewrite(2, 502, 3000, 0.12) == (3, 12000)  # loss upstream stays a gap
    assert rewriter.rewrite(2, 501, 3000, 0.13) == (2, 12000)  # reordering is kept
    assert rewriter.last_sequence == 3
    assert rewriter.source_sequence(2) == 501
    assert rewriter.source_sequence(0) is None  # belongs to the previous segment


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 30)), min_size=1, max_size=20))
def test_output_has_no_gaps_over_any_switch_sequence(runs: list[tuple[int, int]]) -> None:
    rewriter = RtpRewriter(clock_rate=48000, first_seq=65000, first_ts=0)
    now = 0.0
    seqs = []
    stamps = []
    tick = 0
    for source, count in runs:
        if source != rewriter.source:
            rewriter.switch()
        for _ in range(count):
            # Every source keeps sending on its own clock; only one is forwarded at a time.
            tick += 1
            now += 0.02
            seq = (source * 10000 + tick) & 0xFFFF
            out = rewriter.rewrite(source, seq, source * 7 + 960 * tick, now)
            assert out is not None
            seqs.append(out[0])
            stamps.append(out[1])
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert all(0 < (b - a) & 0xFFFFFFFF <= 48000 for a, b in itertools.pairwise(stamps))


def _simulcast_producer() -> Producer:
    producer = Producer(id="p", kind="video", transport_id="t", payload_type=96, clock_rate=90000)
    for layer, ssrc in enumerate((100, 101, 102)):
        producer.add_stream(ssrc, layer)
        producer.layer_bitrates[layer] = (150_000, 500_000, 1_500_000)[layer]
    return producer


def _consumer(producer: Producer) -> Consumer:
    return Consumer(
        id="c",
        producer=producer,
        transport_id="t2",
        ssrc=9,
        payload_type=96,
        rewriter=RtpRewriter(producer.clock_rate, 0, 0),
    )


def test_layer_switch_waits_for_a_keyframe_of_the_target_layer() -> None:
    consumer = _consumer(_simulcast_producer())
    consumer.set_bandwidth(600_000)
    assert consumer.target_layer == 1
    assert consumer.needs_keyframe
    assert not consumer.admit(1, keyframe=False)
    assert consumer.admit(1, keyframe=True)
    assert consumer.admit(1, keyframe=False)
    assert not consumer.admit(0, keyframe=True)
    consumer.set_bandwidth(2_000_000)
    assert consumer.target_layer == 2
    assert not consumer.admit(2, keyframe=False)  # delta frame of the target: keep layer 1
    assert consumer.admit(1, keyframe=False)
    assert consumer.admit(2, keyframe=True)
    assert consumer.current_layer == 2
    assert not consumer.admit(1, keyframe=False)
    consumer.set_bandwidth(10_000)
    assert consumer.target_layer == 0


def test_layer_switch_keeps_the_output_stream_continuous() -> None:
    consumer = _consumer(_simulcast_producer())
    consumer.set_bandwidth(200_000)
    sent = []
    now = 0.0
    for i in range(30):
        now += 1 / 30
        for layer, ssrc in enumerate((100, 101, 102)):
            if i == 10 and layer == 0:
                consumer.set_bandwidth(3_000_000)
            keyframe = i in (0, 20)
            if consumer.admit(layer, keyframe):
                out = consumer.rewriter.rewrite(ssrc, (ssrc * 100 + i) & 0xFFFF, 3000 * i, now)
                assert out is not None
                sent.append((layer, *out))
    assert [layer for layer, _, _ in sent] == [0] * 21 + [2] * 10
    seqs = [s for _, s, _ in sent]
    assert seqs == list(range(len(seqs)))
    stamps = [t for _, _, t in sent]
    assert all(0 < b - a <= 3001 for a, b in itertools.pairwise(stamps))


def test_paused_and_muted_producers_are_not_forwarded_and_resume_seamlessly() -> None:
    producer = Producer(id="a", kind="audio", transport_id="t", payload_type=111, clock_rate=48000)
    producer.add_stream(7, 0)
    consumer = _consumer(producer)
    assert consumer.admit(0, keyframe=True)
    consumer.rewriter.rewrite(7, 10, 0, 0.0)
    producer.muted = True
    assert not consumer.admit(0, keyframe=True)
    producer.muted = False
    assert consumer.admit(0, keyframe=True)
    assert consumer.rewriter.rewrite(7, 60, 48000, 1.0) == (1, 48000)
    consumer.set_paused(True)
    assert not consumer.admit(0, keyframe=True)
    consumer.set_paused(False)
    assert consumer.admit(0, keyframe=True)
    assert consumer.rewriter.rewrite(7, 200, 5 * 48000, 2.0) == (2, 2 * 48000)


def test_nack_is_answered_from_the_packet_cache() -> None:
    producer = _simulcast_producer()
    for seq in range(65500, 65536 + 50):
        producer.caches[101].store(seq & 0xFFFF, b"packet %d" % (seq & 0xFFFF))
    consumer = _consumer(producer)
    for seq in range(10, 20):
        consumer.rewriter.rewrite(101, seq, 0, 0.0)
    # The subscriber lost output 3 and 5; they map back to upstream 13 and 15.
    upstream = [consumer.rewriter.source_sequence(s) for s in (3, 5)]
    assert upstream == [13, 15]
    assert [producer.retransmission(101, s) for s in (13, 15)] == [b"packet 13", b"packet 15"]
    assert producer.retransmission(101, 65499) is None  # never stored
    assert producer.retransmission(999, 13) is None


def test_missing_packets_are_asked_for_again_until_they_arrive_or_retries_run_out() -> None:
    missing = MissingPackets()
    missing.nacked([3, 4], 0.0)
    assert missing.due(NACK_RETRY_INTERVAL / 2) == []
    assert missing.due(NACK_RETRY_INTERVAL) == [3, 4]
    missing.arrived(3)
    asked = [missing.due(NACK_RETRY_INTERVAL * i) for i in range(2, 2 + NACK_RETRIES)]
    assert asked == [[4]] * (NACK_RETRIES - 1) + [[]]
    assert len(missing) == 0


def test_missing_packets_are_bounded() -> None:
    missing = MissingPackets()
    for start in range(0, 1000, 50):
        missing.nacked(list(range(start, start + 50)), 0.0)
    assert len(missing) == 256
    assert missing.due(1.0)[0] == 1000 - 256  # the oldest went first


def test_packet_cache_forgets_overwritten_slots() -> None:
    cache = PacketCache(size=8)
    cache.store(1, b"a")
    cache.store(9, b"b")
    assert cache.get(1) is None
    assert cache.get(9) == b"b"


def test_keyframe_requests_are_throttled_to_one_per_second() -> None:
    producer = _simulcast_producer()
    assert producer.keyframe_request_due(10.0)
    assert not producer.keyframe_request_due(10.5)
    assert producer.keyframe_request_due(11.0)


def test_receive_statistics_count_gaps_as_loss_but_not_dtx() -> None:
    stats = ReceiveStatistics(ssrc=1, clock_rate=48000)
    for i, seq in enumerate([65534, 65535, 0, 2, 3]):
        stats.update(seq, 960 * i, 100, 0.02 * i)
    assert stats.expected == 6
    assert stats.lost == 1
    block = stats.report_block(1.0)
    assert block.highest_sequence == 65536 + 3
    assert block.fraction_lost == 256 // 6
    # DTX: a second of silence, then consecutive sequence numbers with a timestamp jump.
    stats.update(4, 960 * 60, 100, 2.0)
    stats.update(5, 960 * 61, 100, 2.02)
    assert stats.lost == 1
    assert stats.report_block(2.1).fraction_lost == 0


def _vp8(picture_id: int, tl0: int, *, wide: bool = True, keyframe: bool = False) -> bytes:
    """A descriptor with I and L (and T) set, then one payload header byte."""
    pid = bytes([0x80 | picture_id >> 8, picture_id & 0xFF]) if wide else bytes([picture_id])
    return bytes([0x90, 0xE0]) + pid + bytes([tl0, 0x40, 0x00 if keyframe else 0x01, 0x2A])


def _fields(payload: bytes) -> tuple[int | None, int | None]:
    descriptor = parse_descriptor_untrusted(payload)
    return descriptor.picture_id, descriptor.tl0_pic_idx


def _send(pictures: PictureIdRewriter, segment: int, payload: bytes) -> bytes:
    return pictures.rewrite(segment, payload, parse_descriptor_untrusted(payload))


def test_picture_ids_pass_through_until_the_first_switch() -> None:
    pictures = PictureIdRewriter()
    payload = _vp8(1000, 7, keyframe=True)
    assert _send(pictures, 1, payload) is payload


def test_picture_id_and_tl0picidx_continue_across_a_layer_switch() -> None:
    pictures = PictureIdRewriter()
    # Layer 0: pictures 100-102 (two packets for 101), TL0PICIDX 5, 5, 6.
    for pid, tl0 in ((100, 5), (101, 5), (101, 5), (102, 6)):
        _send(pictures, 1, _vp8(pid, tl0))
    # Layer 2's numbering is unrelated; its key frame starts the next segment.
    sent = [_send(pictures, 2, _vp8(7000, 200, keyframe=True))]
    sent += [_send(pictures, 2, _vp8(7001, 200)), _send(pictures, 2, _vp8(7002, 201))]
    assert [_fields(p) for p in sent] == [(103, 7), (104, 7), (105, 8)]
    # Only the numbers change: same size, same payload header.
    assert [len(p) for p in sent] == [8, 8, 8]
    assert is_keyframe_untrusted(sent[0])
    # Back to layer 0, whose numbers moved on meanwhile.
    assert _fields(_send(pictures, 3, _vp8(160, 30, keyframe=True))) == (106, 9)


def test_picture_ids_keep_their_width_and_wrap() -> None:
    pictures = PictureIdRewriter()
    _send(pictures, 1, _vp8(0x7FFE, 255))
    wide = _send(pictures, 2, _vp8(10, 0, keyframe=True))
    assert _fields(wide) == (0x7FFF, 0)
    assert _fields(_send(pictures, 2, _vp8(11, 1))) == (0, 1)
    # A sender using 7-bit picture ids gets them continued modulo 128, in one byte.
    narrow = _send(pictures, 3, _vp8(50, 9, wide=False, keyframe=True))
    assert _fields(narrow) == (1, 2)
    assert len(narrow) == 7


def test_a_late_packet_does_not_move_the_picture_sequence_back() -> None:
    pictures = PictureIdRewriter()
    _send(pictures, 1, _vp8(10, 1))
    _send(pictures, 2, _vp8(500, 40, keyframe=True))  # -> 11, tl0 2
    _send(pictures, 2, _vp8(503, 41))  # -> 14, tl0 3
    assert _fields(_send(pictures, 2, _vp8(501, 40))) == (12, 2)  # a retransmission
    assert _fields(_send(pictures, 3, _vp8(9000, 90, keyframe=True))) == (15, 4)


@given(st.lists(st.tuples(st.integers(0, 0x7FFF), st.integers(1, 4))))
def test_frames_are_numbered_one_after_another_whatever_the_switches(
    runs: list[tuple[int, int]],
) -> None:
    pictures = PictureIdRewriter()
    out: list[int] = []
    for segment, (first, frames) in enumerate(runs, start=1):
        for index in range(frames):
            pid, _ = _fields(_send(pictures, segment, _vp8((first + index) & 0x7FFF, 0)))
            assert pid is not None
            out.append(pid)
    assert all((b - a) & 0x7FFF == 1 for a, b in itertools.pairwise(out))
