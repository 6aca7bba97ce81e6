"""SFrame (RFC 9605): the published test vectors, byte-exact, and the stateful API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2ee import sframe
from e2ee.errors import (
    CounterExhausted,
    DecodeError,
    DecryptionFailed,
    DuplicateMessage,
    E2EEError,
    UnknownKey,
    UnsupportedSuite,
)

VECTORS: dict[str, list[dict[str, Any]]] = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "sframe-rfc9605.json").read_text()
)
h = bytes.fromhex


@pytest.mark.parametrize("v", VECTORS["header"], ids=lambda v: f"kid{v['kid']}-ctr{v['ctr']}")
def test_header_vector_encodes_and_decodes_exactly(v: dict[str, Any]) -> None:
    assert sframe.encode_header(v["kid"], v["ctr"]).hex() == v["encoded"]
    encoded = h(v["encoded"])
    assert sframe.decode_header_untrusted(encoded + b"payload") == (
        v["kid"],
        v["ctr"],
        len(encoded),
    )


@pytest.mark.parametrize("v", VECTORS["aes_ctr_hmac"], ids=lambda v: f"suite{v['cipher_suite']}")
def test_aes_ctr_hmac_vector_seals_and_opens_exactly(v: dict[str, Any]) -> None:
    suite = sframe.SUITES[v["cipher_suite"]]
    key = h(v["key"])
    assert key[: suite.nka] == h(v["enc_key"]) and key[suite.nka :] == h(v["auth_key"])
    ct = sframe._ctr_hmac_seal(
        h(v["enc_key"]), h(v["auth_key"]), suite.nt, h(v["nonce"]), h(v["aad"]), h(v["pt"])
    )
    assert ct.hex() == v["ct"]
    pt = sframe._ctr_hmac_open(
        h(v["enc_key"]), h(v["auth_key"]), suite.nt, h(v["nonce"]), h(v["aad"]), ct
    )
    assert pt == h(v["pt"])


@pytest.mark.parametrize("v", VECTORS["sframe"], ids=lambda v: f"suite{v['cipher_suite']}")
def test_sframe_vector_is_reproduced_byte_exact(v: dict[str, Any]) -> None:
    suite, kid, ctr = v["cipher_suite"], v["kid"], v["ctr"]
    key, salt = sframe.derive_key_and_salt(suite, h(v["base_key"]), kid)
    assert key.hex() == v["sframe_key"]
    assert salt.hex() == v["sframe_salt"]
    header = sframe.encode_header(kid, ctr)
    assert (header + h(v["metadata"])).hex() == v["aad"]
    nonce = (int.from_bytes(salt, "big") ^ ctr).to_bytes(12, "big")
    assert nonce.hex() == v["nonce"]
    frame = sframe.encrypt_frame(suite, h(v["base_key"]), kid, ctr, h(v["metadata"]), h(v["pt"]))
    assert frame.hex() == v["ct"]
    assert sframe.decrypt_frame(suite, h(v["base_key"]), h(v["ct"]), h(v["metadata"])) == (
        kid,
        ctr,
        h(v["pt"]),
    )


@pytest.mark.parametrize("v", VECTORS["sframe"], ids=lambda v: f"suite{v['cipher_suite']}")
def test_sframe_vector_opens_with_stateful_receiver(v: dict[str, Any]) -> None:
    receiver = sframe.SFrameReceiver(v["cipher_suite"])
    receiver.add_key(v["kid"], h(v["base_key"]))
    assert receiver.decrypt(h(v["ct"]), h(v["metadata"])) == (v["kid"], v["ctr"], h(v["pt"]))
    sender = sframe.SFrameSender(
        v["cipher_suite"], h(v["base_key"]), v["kid"], initial_ctr=v["ctr"]
    )
    assert sender.encrypt(h(v["pt"]), h(v["metadata"])).hex() == v["ct"]


@pytest.mark.parametrize("suite", sorted(sframe.SUITES))
def test_every_flipped_bit_of_a_frame_fails(suite: int) -> None:
    frame = sframe.encrypt_frame(suite, b"k" * 16, 300, 70000, b"meta", b"opus payload")
    for i in range(len(frame)):
        for bit in (0x01, 0x80):
            bad = bytearray(frame)
            bad[i] ^= bit
            with pytest.raises(E2EEError):
                got = sframe.decrypt_frame(suite, b"k" * 16, bytes(bad), b"meta")
                # A header bit flip may still decode (other KID/CTR) but must not open.
                raise AssertionError(f"flipped frame opened: {got}")
    with pytest.raises(DecryptionFailed):
        sframe.decrypt_frame(suite, b"k" * 16, frame, b"metA")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_header_roundtrips(kid: int, ctr: int) -> None:
    encoded = sframe.encode_header(kid, ctr)
    assert sframe.decode_header_untrusted(encoded) == (kid, ctr, len(encoded))


def test_non_minimal_header_is_refused() -> None:
    with pytest.raises(DecodeError):
        sframe.decode_header_untrusted(bytes([0x80, 0x05]))  # KID 5 in extended form
    with pytest.raises(DecodeError):
        sframe.decode_header_untrusted(bytes([0x09, 0x00, 0x09]))  # leading zero byte


def test_sender_counter_never_repeats_or_wraps() -> None:
    sender = sframe.SFrameSender(4, b"k" * 16, 1, initial_ctr=sframe.MAX_CTR)
    frame = sender.encrypt(b"last")
    assert sframe.decode_header_untrusted(frame)[1] == sframe.MAX_CTR
    with pytest.raises(CounterExhausted):
        sender.encrypt(b"one too many")


def test_receiver_rejects_replay_and_too_old_but_accepts_reordering() -> None:
    sender = sframe.SFrameSender(4, b"k" * 16, 2)
    receiver = sframe.SFrameReceiver(4, replay_window=16)
    receiver.add_key(2, b"k" * 16)
    frames = [sender.encrypt(b"f%d" % i) for i in range(40)]
    assert receiver.decrypt(frames[20])[2] == b"f20"
    assert receiver.decrypt(frames[10])[2] == b"f10"  # late but inside the window
    with pytest.raises(DuplicateMessage):
        receiver.decrypt(frames[10])
    with pytest.raises(DuplicateMessage):
        receiver.decrypt(frames[2])  # older than the window
    assert receiver.decrypt(frames[39])[2] == b"f39"


def test_forged_frame_does_not_advance_the_replay_window() -> None:
    sender = sframe.SFrameSender(4, b"k" * 16, 2)
    receiver = sframe.SFrameReceiver(4, replay_window=16)
    receiver.add_key(2, b"k" * 16)
    first = sender.encrypt(b"a")
    forged = sframe.encode_header(2, 10_000) + bytes(32)
    with pytest.raises(DecryptionFailed):
        receiver.decrypt(forged)
    assert receiver.decrypt(first)[2] == b"a"


def test_unknown_kid_and_suite_are_typed_errors() -> None:
    receiver = sframe.SFrameReceiver(4)
    with pytest.raises(UnknownKey):
        receiver.decrypt(sframe.encrypt_frame(4, b"k" * 16, 9, 0, b"", b"x"))
    with pytest.raises(UnsupportedSuite):
        sframe.encrypt_frame(6, b"k" * 16, 9, 0, b"", b"x")


def test_receiver_follows_sender_ratchet_steps() -> None:
    r_bits = 4
    base = b"b" * 16
    receiver = sframe.SFrameReceiver(4, ratchet_bits=r_bits)
    receiver.add_key(7 << r_bits, base)  # generation 7, step 0
    ratcheted = sframe.ratchet_base_key(4, sframe.ratchet_base_key(4, base))
    kid = (7 << r_bits) | 2
    frame = sframe.SFrameSender(4, ratcheted, kid).encrypt(b"after two steps")
    assert receiver.decrypt(frame) == (kid, 0, b"after two steps")
    # The step before stays usable for reordered frames; stepping back further does not.
    old = sframe.SFrameSender(4, base, 7 << r_bits, initial_ctr=5).encrypt(b"late")
    assert receiver.decrypt(old)[2] == b"late"
    forged = sframe.encode_header((7 << r_bits) | 5, 0) + bytes(20)
    with pytest.raises(DecryptionFailed):
        receiver.decrypt(forged)
    assert receiver.decrypt(sframe.SFrameSender(4, ratcheted, kid, initial_ctr=1).encrypt(b"x"))


def test_ratchet_base_key_has_hash_length() -> None:
    assert len(sframe.ratchet_base_key(4, b"k" * 16)) == 32
    assert len(sframe.ratchet_base_key(5, b"k" * 16)) == 64


@pytest.mark.parametrize("kid", [0, 7, 8, 300, 2**40 + 5])
def test_sender_headers_match_encode_header_across_ctr_length_changes(kid: int) -> None:
    receiver = sframe.SFrameReceiver(4)
    receiver.add_key(kid, b"k" * 16)
    for start in (0, 250, 65530, 2**24 - 3, 2**56 - 2):
        sender = sframe.SFrameSender(4, b"k" * 16, kid, initial_ctr=start)
        for ctr in range(start, start + 10):
            frame = sender.encrypt(b"x", b"meta")
            hlen = len(sframe.encode_header(kid, ctr))
            assert frame[:hlen] == sframe.encode_header(kid, ctr)
            assert receiver.decrypt(frame, b"meta") == (kid, ctr, b"x")


def test_counter_jump_past_the_window_is_accepted_without_huge_shifts() -> None:
    receiver = sframe.SFrameReceiver(4, replay_window=16)
    receiver.add_key(3, b"k" * 16)
    ratcheting = sframe.SFrameReceiver(4, ratchet_bits=4, replay_window=16)
    ratcheting.add_key(3, b"k" * 16)
    for r in (receiver, ratcheting):
        first = sframe.SFrameSender(4, b"k" * 16, 3, initial_ctr=1).encrypt(b"a")
        far = sframe.SFrameSender(4, b"k" * 16, 3, initial_ctr=2**62).encrypt(b"b")
        assert r.decrypt(first)[2] == b"a"
        assert r.decrypt(far)[1:] == (2**62, b"b")
        with pytest.raises(DuplicateMessage):
            r.decrypt(far)
        with pytest.raises(DuplicateMessage):
            r.decrypt(first)  # now far older than the window


def test_removed_small_kid_is_unknown_and_can_be_reinstalled() -> None:
    sender = sframe.SFrameSender(4, b"k" * 16, 5)
    receiver = sframe.SFrameReceiver(4)
    receiver.add_key(5, b"k" * 16)
    assert receiver.decrypt(sender.encrypt(b"a"))[2] == b"a"
    receiver.remove_key(5)
    with pytest.raises(UnknownKey):
        receiver.decrypt(sender.encrypt(b"b"))
    receiver.add_key(5, b"other key")
    with pytest.raises(DecryptionFailed):
        receiver.decrypt(sender.encrypt(b"c"))


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        bytes([0x39, 0x01]),  # KID 3, 2-byte CTR, truncated
        bytes([0x38, 0x05]) + bytes(20),  # CTR 5 in extended form
        bytes([0x39, 0x00, 0x09]) + bytes(20),  # CTR with a leading zero byte
        bytes([0x80, 0x03]) + bytes(20),  # KID 3 in extended form
        bytes([0x90, 0x00, 0x09]) + bytes(20),  # KID with a leading zero byte
        bytes([0xF8]) + bytes(5),  # 8-byte KID, truncated
    ],
)
def test_receiver_refuses_malformed_headers_with_decode_error(frame: bytes) -> None:
    receiver = sframe.SFrameReceiver(4)
    receiver.add_key(3, b"k" * 16)
    with pytest.raises(DecodeError):
        receiver.decrypt(frame)
    with pytest.raises(DecodeError):
        sframe.decode_header_untrusted(frame)


def test_receiver_and_decoder_take_any_byte_buffer() -> None:
    frame = sframe.SFrameSender(4, b"k" * 16, 300, initial_ctr=70000).encrypt(b"x")
    receiver = sframe.SFrameReceiver(4)
    receiver.add_key(300, b"k" * 16)
    assert sframe.decode_header_untrusted(memoryview(frame)) == (300, 70000, 6)
    assert sframe.decode_header_untrusted(bytearray(frame)) == (300, 70000, 6)
    assert receiver.decrypt(bytearray(frame)) == (300, 70000, b"x")
    with pytest.raises(DecodeError):
        sframe.decode_header_untrusted("not bytes")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 40), st.lists(st.integers(0, 200), max_size=120), st.booleans())
def test_replay_window_accepts_exactly_what_a_set_of_seen_counters_allows(
    size: int, offsets: list[int], near_max: bool
) -> None:
    window = sframe._ReplayWindow(size)
    seen: set[int] = set()
    for offset in offsets:
        ctr = sframe.MAX_CTR - offset if near_max else offset
        top = max(seen, default=-1)
        fresh = ctr > top or (top - ctr < size and ctr not in seen)
        if fresh:
            window.check(ctr)
            window.accept(ctr)
            seen.add(ctr)
        else:
            with pytest.raises(DuplicateMessage):
                window.check(ctr)


def test_forged_frames_far_ahead_cost_no_ratchet_work(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each derivation is counted (and still performed): the work a frame causes before it
    # authenticates is what an attacker who can inject frames controls.
    derived: list[int] = []
    real = sframe.ratchet_base_key

    def counting(suite: int, base_key: bytes) -> bytes:
        derived.append(1)
        return real(suite, base_key)

    monkeypatch.setattr(sframe, "ratchet_base_key", counting)
    base = b"b" * 16
    receiver = sframe.SFrameReceiver(4, ratchet_bits=16)
    receiver.add_key(7 << 16, base)
    far = sframe.encode_header((7 << 16) | 32768, 0) + bytes(20)
    started = time.perf_counter()
    with pytest.raises(UnknownKey):
        receiver.decrypt(far)
    assert derived == [] and time.perf_counter() - started < 0.01  # was 32,768 HKDFs, ~150 ms
    # Forged frames within reach derive each step once, however many of them arrive.
    for ctr in range(50):
        forged = sframe.encode_header((7 << 16) | 16, ctr) + bytes(20)
        with pytest.raises(DecryptionFailed):
            receiver.decrypt(forged)
    assert len(derived) == 16
    # The genuine sender, 3 steps on, opens from the keys already derived.
    key = base
    for _ in range(3):
        key = real(4, key)
    frame = sframe.SFrameSender(4, key, (7 << 16) | 3).encrypt(b"genuine")
    assert receiver.decrypt(frame) == ((7 << 16) | 3, 0, b"genuine")
    assert len(derived) == 16
    # Beyond the bound a receiver needs a new key rather than following blindly.
    for _ in range(17):
        key = real(4, key)
    too_far = sframe.SFrameSender(4, key, (7 << 16) | 20).encrypt(b"x")
    with pytest.raises(UnknownKey):
        receiver.decrypt(too_far)
