"""Issuing and redeeming proof-of-work puzzles, with a difficulty that rises under load.

The anonymous routes (challenge, register, provisioning) cost the caller CPU instead of an
address-keyed quota (contract/proof_of_work.py says what a solution is). Puzzles are
stateless: the seed carries its purpose, difficulty and expiry under an HMAC with a key all
control processes of a deployment derive from the node secret, so any process can check a
seed another issued. Only spent seeds are remembered (in memory, until they expire, bounded),
which stops a solution being used twice on one process.

Difficulty is an integral controller per purpose: at most once a second, one bit more while
redeemed solutions arrive faster than ``target_per_s`` (over a sliding window of a few
seconds), one bit less for each second they arrive at under half of it, never below
``base_bits`` nor above ``max_bits``. It drives a flood's accepted rate down to about the
target whatever CPU the flooder has (a price proportional to the rate would only hold it to
the square root). Only *redeemed* solutions count, so raising the price costs an attacker
the work it raises it by, and a flooder pays what a legitimate client pays: at the
equilibrium a legitimate solve costs about ``1/target_per_s`` seconds of a core per core the
flood brings. Callers may add bits for their own load (the provisioning table's occupancy).
Everything here is sans-I/O: time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections import deque
from dataclasses import dataclass

from contract.proof_of_work import (
    MAX_DIFFICULTY,
    Purpose,
    decode_proof_untrusted,
    is_solution,
)

__all__ = ["ProofOfWork", "ProofOfWorkRefused", "Puzzle", "derive_key"]

_VERSION = 1
_PURPOSES = list(Purpose)
# version, purpose index, difficulty, expiry (unix seconds), 12 random bytes.
_BODY = struct.Struct(">BBBI12s")
_MAC_LEN = 16
SEED_LEN = _BODY.size + _MAC_LEN
_WINDOW_S = 2.0
#: How often the price may move by one bit.
_ADJUST_EVERY_S = 1.0


class ProofOfWorkRefused(Exception):
    """The request's proof of work is missing, malformed, expired, spent or too weak."""


@dataclass(frozen=True)
class Puzzle:
    """What ``POST /auth/proof-of-work`` returns."""

    seed: bytes
    difficulty: int
    expires_in: int


def derive_key(node_secret: bytes) -> bytes:
    """The puzzle MAC key: shared by every control process that shares the node secret."""
    return hmac.digest(node_secret, b"hushroom-v1 proof-of-work key", "sha256")


class _Rate:
    """Events per second over a sliding window (two fixed windows, interpolated)."""

    __slots__ = ("_current", "_previous", "_start")

    def __init__(self) -> None:
        self._start = 0.0
        self._current = 0
        self._previous = 0

    def _roll(self, now: float) -> None:
        elapsed = now - self._start
        if elapsed >= 2 * _WINDOW_S:
            self._start, self._current, self._previous = now, 0, 0
        elif elapsed >= _WINDOW_S:
            self._start += _WINDOW_S
            self._previous, self._current = self._current, 0

    def add(self, now: float) -> None:
        self._roll(now)
        self._current += 1

    def per_second(self, now: float) -> float:
        self._roll(now)
        weight = 1.0 - (now - self._start) / _WINDOW_S
        return (self._previous * weight + self._current) / _WINDOW_S


class _Price:
    """One purpose's difficulty and the rate it is steered by."""

    __slots__ = ("adjusted_at", "bits", "rate")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.adjusted_at = 0.0
        self.rate = _Rate()


class ProofOfWork:
    """Issue puzzles and redeem solutions for one control process."""

    def __init__(
        self,
        key: bytes,
        *,
        base_bits: int = 12,
        max_bits: int = 22,
        target_per_s: float = 10.0,
        ttl_s: int = 120,
        max_spent: int = 200_000,
    ) -> None:
        if not 0 <= base_bits <= max_bits <= MAX_DIFFICULTY:
            raise ValueError(f"need 0 <= base_bits <= max_bits <= {MAX_DIFFICULTY}")
        self._key = key
        self.base_bits = base_bits
        self.max_bits = max_bits
        self.target_per_s = target_per_s
        self.ttl_s = ttl_s
        self.max_spent = max_spent
        self._prices = {purpose: _Price(base_bits) for purpose in Purpose}
        #: Spent seeds until their expiry; the deque holds them in expiry order.
        self._spent: set[bytes] = set()
        self._expiries: deque[tuple[int, bytes]] = deque()

    def difficulty(self, purpose: Purpose, now: float, extra_bits: int = 0) -> int:
        """The number of leading zero bits a new puzzle of ``purpose`` asks for."""
        price = self._prices[purpose]
        steps = int((now - price.adjusted_at) / _ADJUST_EVERY_S)
        if steps > 0:
            rate = price.rate.per_second(now)
            if rate > self.target_per_s:
                price.bits = min(self.max_bits, price.bits + 1)
            elif rate < self.target_per_s / 2:
                # Quiet seconds nobody asked in count too: after a flood the price falls
                # back as fast as it would have with someone asking every second.
                price.bits = max(self.base_bits, price.bits - steps)
            price.adjusted_at = now
        return min(self.max_bits, price.bits + max(0, extra_bits))

    def issue(self, purpose: Purpose, now: float, extra_bits: int = 0) -> Puzzle:
        """A fresh puzzle for ``purpose`` at the current difficulty."""
        difficulty = self.difficulty(purpose, now, extra_bits)
        body = _BODY.pack(
            _VERSION,
            _PURPOSES.index(purpose),
            difficulty,
            int(now) + self.ttl_s,
            secrets.token_bytes(12),
        )
        return Puzzle(body + self._mac(body), difficulty, self.ttl_s)

    def redeem_untrusted(self, proof: str | None, purpose: Purpose, now: float) -> None:
        """Accept the header value ``proof`` for ``purpose`` once, or raise
        :class:`ProofOfWorkRefused` saying why."""
        if proof is None:
            raise ProofOfWorkRefused("this route needs a proof of work (POST /auth/proof-of-work)")
        try:
            seed, nonce = decode_proof_untrusted(proof)
        except ValueError as exc:
            raise ProofOfWorkRefused(str(exc)) from None
        if len(seed) != SEED_LEN:
            raise ProofOfWorkRefused("not a seed this server issued")
        body, mac = seed[: _BODY.size], seed[_BODY.size :]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise ProofOfWorkRefused("not a seed this server issued")
        version, purpose_index, difficulty, expires, _ = _BODY.unpack(body)
        if version != _VERSION or purpose_index >= len(_PURPOSES):
            raise ProofOfWorkRefused("not a seed this server issued")
        if _PURPOSES[purpose_index] != purpose:
            raise ProofOfWorkRefused(
                f"this proof of work was issued for {_PURPOSES[purpose_index]}"
            )
        if expires < now:
            raise ProofOfWorkRefused("the puzzle expired: ask for a new one")
        self._forget_expired(now)
        if seed in self._spent:
            raise ProofOfWorkRefused("this proof of work was already used")
        if not is_solution(seed, nonce, difficulty):
            raise ProofOfWorkRefused("the nonce does not solve the puzzle")
        if len(self._spent) >= self.max_spent:
            # Refusing is safe: what fills the set is solved work, and it drains as seeds expire.
            raise ProofOfWorkRefused("too many recent solutions: try again shortly")
        self._spent.add(seed)
        self._expiries.append((expires, seed))
        self._prices[purpose].rate.add(now)

    def _forget_expired(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] < now:
            self._spent.discard(expiries.popleft()[1])

    def _mac(self, body: bytes) -> bytes:
        return hmac.digest(self._key, body, hashlib.sha256)[:_MAC_LEN]
