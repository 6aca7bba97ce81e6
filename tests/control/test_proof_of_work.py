"""Proof-of-work puzzles: issued statelessly, redeemed once, harder under load."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.proof_of_work import (
    MAX_DIFFICULTY,
    Purpose,
    decode_proof_untrusted,
    encode_proof,
    is_solution,
    leading_zero_bits,
    solve,
)
from control.proof_of_work import ProofOfWork, ProofOfWorkRefused, derive_key

KEY = derive_key(b"n" * 32)


def solved(pow_: ProofOfWork, purpose: Purpose, now: float) -> str:
    puzzle = pow_.issue(purpose, now)
    return encode_proof(puzzle.seed, solve(puzzle.seed, puzzle.difficulty))


def test_leading_zero_bits_counts_from_the_most_significant_bit() -> None:
    assert leading_zero_bits(b"\x00\x00\xff") == 16
    assert leading_zero_bits(b"\x00\x01") == 15
    assert leading_zero_bits(b"\x80") == 0
    assert leading_zero_bits(b"\x00") == 8


def test_solve_finds_a_nonce_the_checker_accepts_and_not_a_weaker_one() -> None:
    seed = b"s" * 35
    nonce = solve(seed, 10)
    assert is_solution(seed, nonce, 10)
    # The smallest solution: every nonce before it fails.
    assert not any(is_solution(seed, n, 10) for n in range(nonce))
    with pytest.raises(ValueError):
        solve(seed, MAX_DIFFICULTY + 1)


def test_a_solution_is_redeemed_once() -> None:
    pow_ = ProofOfWork(KEY, base_bits=8)
    proof = solved(pow_, Purpose.REGISTER, 1000.0)
    pow_.redeem_untrusted(proof, Purpose.REGISTER, 1001.0)
    with pytest.raises(ProofOfWorkRefused, match="already used"):
        pow_.redeem_untrusted(proof, Purpose.REGISTER, 1002.0)


def test_another_process_with_the_same_key_accepts_the_seed() -> None:
    issuer, redeemer = ProofOfWork(KEY, base_bits=8), ProofOfWork(KEY, base_bits=8)
    redeemer.redeem_untrusted(solved(issuer, Purpose.CHALLENGE, 5.0), Purpose.CHALLENGE, 6.0)


def test_seeds_from_another_key_purpose_or_time_are_refused() -> None:
    pow_ = ProofOfWork(KEY, base_bits=8)
    other = ProofOfWork(derive_key(b"m" * 32), base_bits=8)
    with pytest.raises(ProofOfWorkRefused, match="not a seed"):
        pow_.redeem_untrusted(solved(other, Purpose.REGISTER, 0.0), Purpose.REGISTER, 1.0)
    with pytest.raises(ProofOfWorkRefused, match="issued for challenge"):
        pow_.redeem_untrusted(solved(pow_, Purpose.CHALLENGE, 0.0), Purpose.REGISTER, 1.0)
    with pytest.raises(ProofOfWorkRefused, match="expired"):
        pow_.redeem_untrusted(solved(pow_, Purpose.REGISTER, 0.0), Purpose.REGISTER, 500.0)
    with pytest.raises(ProofOfWorkRefused, match="needs a proof of work"):
        pow_.redeem_untrusted(None, Purpose.REGISTER, 1.0)


def test_a_wrong_nonce_is_refused() -> None:
    pow_ = ProofOfWork(KEY, base_bits=16)
    puzzle = pow_.issue(Purpose.PROVISIONING, 0.0)
    nonce = solve(puzzle.seed, puzzle.difficulty)
    wrong = next(n for n in range(nonce + 1, nonce + 10_000) if not is_solution(puzzle.seed, n, 16))
    with pytest.raises(ProofOfWorkRefused, match="does not solve"):
        pow_.redeem_untrusted(encode_proof(puzzle.seed, wrong), Purpose.PROVISIONING, 1.0)


def test_a_tampered_difficulty_breaks_the_mac() -> None:
    pow_ = ProofOfWork(KEY, base_bits=12)
    puzzle = pow_.issue(Purpose.REGISTER, 0.0)
    easier = bytearray(puzzle.seed)
    easier[2] = 0  # the difficulty byte
    proof = encode_proof(bytes(easier), 0)
    with pytest.raises(ProofOfWorkRefused, match="not a seed"):
        pow_.redeem_untrusted(proof, Purpose.REGISTER, 1.0)


def test_difficulty_climbs_while_solutions_outpace_the_target_and_falls_back() -> None:
    pow_ = ProofOfWork(KEY, base_bits=4, max_bits=12, target_per_s=2.0)
    start = 1000.0
    assert pow_.difficulty(Purpose.REGISTER, start) == 4
    # A flood redeeming 20 solutions a second: one bit more every second it lasts.
    seen = []
    for second in range(1, 6):
        for i in range(20):
            now = start + second - 1 + i / 20
            pow_.redeem_untrusted(solved(pow_, Purpose.REGISTER, now), Purpose.REGISTER, now)
        seen.append(pow_.difficulty(Purpose.REGISTER, start + second))
    assert seen == [5, 6, 7, 8, 9]
    # Asking again within the second does not move it.
    assert pow_.difficulty(Purpose.REGISTER, start + 5.5) == 9
    # Other purposes are priced on their own.
    assert pow_.difficulty(Purpose.CHALLENGE, start + 5) == 4
    # Extra bits from the caller's own load, capped at max_bits.
    assert pow_.difficulty(Purpose.REGISTER, start + 5.5, extra_bits=50) == 12
    # Quiet seconds bring it down by one bit each, even when nobody asked meanwhile.
    assert pow_.difficulty(Purpose.REGISTER, start + 8.6) == 6
    assert pow_.difficulty(Purpose.REGISTER, start + 60) == 4


def test_difficulty_never_exceeds_the_maximum() -> None:
    pow_ = ProofOfWork(KEY, base_bits=0, max_bits=3, target_per_s=1.0)
    for second in range(10):
        for i in range(10):
            now = second + i / 10
            pow_.redeem_untrusted(solved(pow_, Purpose.REGISTER, now), Purpose.REGISTER, now)
        assert pow_.difficulty(Purpose.REGISTER, second + 1.0) <= 3
    assert pow_.difficulty(Purpose.REGISTER, 10.0) == 3


def test_the_spent_set_is_bounded() -> None:
    pow_ = ProofOfWork(KEY, base_bits=0, max_spent=3)
    for _ in range(3):
        pow_.redeem_untrusted(solved(pow_, Purpose.CHALLENGE, 0.0), Purpose.CHALLENGE, 0.0)
    with pytest.raises(ProofOfWorkRefused, match="too many"):
        pow_.redeem_untrusted(solved(pow_, Purpose.CHALLENGE, 0.0), Purpose.CHALLENGE, 0.0)
    # Once those seeds expire, they are forgotten and room comes back.
    later = 0.0 + pow_.ttl_s + 1
    pow_.redeem_untrusted(solved(pow_, Purpose.CHALLENGE, later), Purpose.CHALLENGE, later)


@given(st.text(max_size=300))
def test_header_decoder_refuses_garbage_with_value_error(value: str) -> None:
    try:
        seed, nonce = decode_proof_untrusted(value)
    except ValueError:
        return
    assert 0 < len(seed) <= 64 and 0 <= nonce < 1 << 64


@given(st.binary(min_size=1, max_size=64), st.integers(0, (1 << 64) - 1))
def test_header_round_trips(seed: bytes, nonce: int) -> None:
    assert decode_proof_untrusted(encode_proof(seed, nonce)) == (seed, nonce)


@given(st.text(max_size=200))
def test_redeem_never_raises_anything_but_refused(value: str) -> None:
    pow_ = ProofOfWork(KEY, base_bits=0)
    with contextlib.suppress(ProofOfWorkRefused):
        pow_.redeem_untrusted(value, Purpose.REGISTER, 0.0)
