"""The synthetic VP8 simulcast frames of the ``video`` scenario: what the SFU reads from
them (key frames, picture ids, TL0PICIDX), what SFrame leaves in clear, and reassembly."""

from __future__ import annotations

import pytest

from e2ee.media import Codec, MediaKeyReceiver, MediaKeySender, protect_frame, unprotect_frame
from loadtest.video_frames import (
    FPS,
    LAYERS,
    MAX_PAYLOAD,
    FrameAssembler,
    Vp8Packetizer,
    read_video_stamp_untrusted,
    video_frame,
)
from sfu.vp8 import PictureIdRewriter, is_keyframe_untrusted, parse_descriptor_untrusted


def _keys() -> tuple[MediaKeySender, MediaKeyReceiver]:
    sender = MediaKeySender(7)
    receiver = MediaKeyReceiver()
    receiver.install(sender.current_key(), user_id="u", device_id="d", now=0.0)
    return sender, receiver


def _push_all(assembler: FrameAssembler, payloads: list[bytes], first_seq: int, ts: int) -> list:
    out = []
    for n, payload in enumerate(payloads):
        frame = assembler.push_untrusted(first_seq + n, ts, n == len(payloads) - 1, payload)
        if frame is not None:
            out.append(frame)
    return out


def test_layer_sizes_follow_the_bitrates() -> None:
    assert [layer.rid for layer in LAYERS] == ["q", "h", "f"]
    for n, layer in enumerate(LAYERS):
        delta = video_frame(n, 1, 1, 0, keyframe=False)
        assert len(delta) * 8 * FPS == pytest.approx(layer.bitrate, rel=0.01)
        assert len(video_frame(n, 1, 1, 0, keyframe=True)) > len(delta)


def test_key_frame_keeps_tag_start_code_and_size_in_clear_and_the_sfu_sees_it() -> None:
    sender, receiver = _keys()
    frame = video_frame(2, 3, 41, 123456789, keyframe=True)
    assert frame[0] & 0x01 == 0 and frame[3:6] == b"\x9d\x01\x2a"
    assert int.from_bytes(frame[6:8], "little") == 1280
    assert int.from_bytes(frame[8:10], "little") == 720
    protected = protect_frame(sender.sframe, Codec.VP8, frame)
    assert protected[:10] == frame[:10]
    payloads = Vp8Packetizer().packetize(protected)
    assert len(payloads) > 1 and all(len(p) <= MAX_PAYLOAD for p in payloads)
    assert is_keyframe_untrusted(payloads[0])
    assert not any(is_keyframe_untrusted(p) for p in payloads[1:])
    # Reassembled and decrypted: the stamp inside the ciphertext comes back.
    (whole,) = _push_all(FrameAssembler(), payloads, 100, 9000)
    clear = unprotect_frame(receiver, Codec.VP8, whole, now=1.0)
    assert read_video_stamp_untrusted(clear) == (2, 3, 41, 123456789)


def test_delta_frame_is_no_key_frame_and_decrypts() -> None:
    sender, receiver = _keys()
    frame = video_frame(0, 5, 2, 99, keyframe=False)
    payloads = Vp8Packetizer().packetize(protect_frame(sender.sframe, Codec.VP8, frame))
    assert len(payloads) == 1 and not is_keyframe_untrusted(payloads[0])
    (whole,) = _push_all(FrameAssembler(), payloads, 65535, 1)  # sequence wraps
    assert read_video_stamp_untrusted(unprotect_frame(receiver, Codec.VP8, whole, now=1.0)) == (
        0,
        5,
        2,
        99,
    )


def test_picture_id_and_tl0picidx_advance_per_frame_and_the_sfu_can_rewrite_them() -> None:
    packetizer = Vp8Packetizer(picture_id=0x7FFE, tl0_pic_idx=0xFE)
    ids = []
    for _ in range(3):
        payloads = packetizer.packetize(bytes(3000))
        descriptors = [parse_descriptor_untrusted(p) for p in payloads]
        assert {(d.picture_id, d.tl0_pic_idx, d.temporal_id) for d in descriptors} == {
            (descriptors[0].picture_id, descriptors[0].tl0_pic_idx, 0)
        }
        assert descriptors[0].start_of_partition and not descriptors[1].start_of_partition
        assert descriptors[0].picture_id_size == 2
        ids.append((descriptors[0].picture_id, descriptors[0].tl0_pic_idx))
    assert ids == [(0x7FFF, 0xFF), (0, 0), (1, 1)]
    # The SFU's rewriter patches them in place (15-bit picture id, TL0PICIDX after it).
    rewriter = PictureIdRewriter()
    first = packetizer.packetize(b"\x00" * 10)[0]
    rewriter.rewrite(1, first, parse_descriptor_untrusted(first))
    other = Vp8Packetizer(picture_id=500, tl0_pic_idx=9).packetize(b"\x00" * 10)[0]
    moved = rewriter.rewrite(2, other, parse_descriptor_untrusted(other))
    assert parse_descriptor_untrusted(moved).picture_id == 3
    assert parse_descriptor_untrusted(moved).tl0_pic_idx == 3


def test_a_frame_with_a_missing_packet_is_dropped_and_the_next_one_counts() -> None:
    packetizer = Vp8Packetizer()
    assembler = FrameAssembler()
    first = packetizer.packetize(bytes(3000))
    assert len(first) == 3
    assert assembler.push_untrusted(10, 3000, False, first[0]) is None
    assert assembler.push_untrusted(12, 3000, True, first[2]) is None  # 11 never came
    assert assembler.broken == 1
    second = packetizer.packetize(bytes(3000))
    expected = b"".join(p[parse_descriptor_untrusted(p).size :] for p in second)
    assert _push_all(assembler, second, 13, 6000) == [expected]
    assert assembler.sequence_gaps == 0 and assembler.picture_id_jumps == 0


def test_discontinuities_across_frames_are_counted() -> None:
    packetizer = Vp8Packetizer()
    assembler = FrameAssembler()
    assert len(_push_all(assembler, packetizer.packetize(bytes(10)), 1, 0)) == 1
    # Next frame's sequence number jumps; and a frame's picture id skips one.
    assert len(_push_all(assembler, packetizer.packetize(bytes(10)), 5, 3000)) == 1
    packetizer.packetize(bytes(10))
    assert len(_push_all(assembler, packetizer.packetize(bytes(10)), 6, 6000)) == 1
    assert assembler.sequence_gaps == 1 and assembler.picture_id_jumps == 1


def test_a_short_frame_has_no_stamp() -> None:
    with pytest.raises(ValueError):
        read_video_stamp_untrusted(b"\x01\x00\x00abc")
