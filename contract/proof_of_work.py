"""Proof of work for the anonymous routes: what a solution is, and how it travels.

hushroom refuses to rate-limit by address (it never sees or keeps one), so what an anonymous
client pays for a challenge, a registration or a provisioning mailbox is CPU time instead:
hashcash (Back, 2002) over a server-issued seed. The server hands out ``{seed, difficulty}``
from ``POST /auth/proof-of-work``; a solution is a ``nonce`` such that
``SHA-256("hushroom-v1 proof-of-work" NUL ‖ seed ‖ nonce (u64 BE))`` starts with
``difficulty`` zero bits. It is sent in the :data:`HEADER` request header as
``base64url(seed) "." nonce``, once: the server remembers spent seeds until they expire.
The seed's layout is the server's business; to a client it is opaque bytes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import struct

__all__ = [
    "HEADER",
    "MAX_DIFFICULTY",
    "MAX_SEED_LEN",
    "Purpose",
    "decode_proof_untrusted",
    "encode_proof",
    "is_solution",
    "leading_zero_bits",
    "solve",
]

#: The request header carrying a solution.
HEADER = "Hushroom-Proof-Of-Work"
#: No difficulty above this is ever asked (2^28 hashes is minutes of a CPython core).
MAX_DIFFICULTY = 28
#: A seed is at most this long (the server's is shorter).
MAX_SEED_LEN = 64
_MAX_NONCE = (1 << 64) - 1
_LABEL = b"hushroom-v1 proof-of-work\x00"
_NONCE = struct.Struct(">Q")


class Purpose(enum.StrEnum):
    """What a puzzle pays for: a solution for one purpose is refused for another."""

    CHALLENGE = "challenge"
    REGISTER = "register"
    PROVISIONING = "provisioning"


def leading_zero_bits(digest: bytes) -> int:
    """How many zero bits ``digest`` starts with."""
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def is_solution(seed: bytes, nonce: int, difficulty: int) -> bool:
    """Whether ``nonce`` solves ``seed`` at ``difficulty`` bits."""
    if not 0 <= nonce <= _MAX_NONCE:
        return False
    digest = hashlib.sha256(_LABEL + seed + _NONCE.pack(nonce)).digest()
    return leading_zero_bits(digest) >= difficulty


def solve(seed: bytes, difficulty: int) -> int:
    """The smallest nonce solving ``seed`` (about 2^difficulty hashes; run it off the event
    loop). The prefix hash is computed once and copied per attempt, which is what keeps a
    CPython solver within a small factor of the server's single check."""
    if not 0 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be within 0..{MAX_DIFFICULTY}")
    prefix = hashlib.sha256(_LABEL + seed)
    # A digest below this bound, read as an integer, has ``difficulty`` leading zero bits.
    bound = 1 << (256 - difficulty)
    pack, copy, from_bytes = _NONCE.pack, prefix.copy, int.from_bytes
    nonce = 0
    while True:
        attempt = copy()
        attempt.update(pack(nonce))
        if from_bytes(attempt.digest(), "big") < bound:
            return nonce
        nonce += 1


def encode_proof(seed: bytes, nonce: int) -> str:
    """The :data:`HEADER` value for a solution."""
    return base64.urlsafe_b64encode(seed).decode().rstrip("=") + "." + str(nonce)


def decode_proof_untrusted(value: str) -> tuple[bytes, int]:
    """``(seed, nonce)`` from a header value; ``ValueError`` on anything malformed."""
    if len(value) > 2 * MAX_SEED_LEN:
        raise ValueError("proof of work too long")
    seed_text, dot, nonce_text = value.partition(".")
    if not dot or not nonce_text.isascii() or not nonce_text.isdigit() or len(nonce_text) > 20:
        raise ValueError("a proof of work is base64url(seed) '.' nonce")
    try:
        padded = seed_text + "=" * (-len(seed_text) % 4)
        seed = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the seed is not base64url") from None
    nonce = int(nonce_text)
    if not seed or len(seed) > MAX_SEED_LEN or nonce > _MAX_NONCE:
        raise ValueError("seed or nonce out of range")
    return seed, nonce
