"""Safety numbers: a fingerprint of two users' identities that both compute identically.

Follows libsignal's NumericFingerprintGenerator (version 0): for each side,
``hash = SHA-512(version(2) || identity keys || stable id)`` is iterated 5,200 times as
``SHA-512(hash || identity keys)``; the first 30 bytes become 30 digits (six 5-byte chunks,
each taken mod 100,000). The two 30-digit halves are ordered by comparing them, so the
60-digit number is the same on both sides. hushroom users have several devices, so a
side's "identity keys" are all its device identity keys, sorted and concatenated: adding a
device changes the number, which is what the user should notice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from e2ee._primitives import ED25519_LEN
from e2ee.errors import E2EEError

__all__ = ["ITERATIONS", "format_safety_number", "safety_number"]

ITERATIONS = 5200
_VERSION = b"\x00\x00"
MAX_DEVICES = 64


def _keys(keys: Sequence[bytes]) -> bytes:
    if not 1 <= len(keys) <= MAX_DEVICES:
        raise E2EEError("a side needs 1..64 identity keys")
    for key in keys:
        if not isinstance(key, bytes) or len(key) != ED25519_LEN:
            raise E2EEError("identity keys must be 32-byte Ed25519 public keys")
    return b"".join(sorted(set(keys)))


def _half(user_id: bytes, keys: bytes) -> str:
    digest = hashlib.sha512(_VERSION + keys + user_id).digest()
    for _ in range(ITERATIONS):
        digest = hashlib.sha512(digest + keys).digest()
    return "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5)
    )


def safety_number(
    local_user_id: bytes,
    local_identity_keys: Sequence[bytes],
    remote_user_id: bytes,
    remote_identity_keys: Sequence[bytes],
) -> str:
    """The 60-digit safety number of two users (the same from either side)."""
    if not isinstance(local_user_id, bytes) or not isinstance(remote_user_id, bytes):
        raise E2EEError("user ids must be bytes")
    if len(local_user_id) > 255 or len(remote_user_id) > 255:
        raise E2EEError("user ids must be at most 255 bytes")
    local = _half(local_user_id, _keys(local_identity_keys))
    remote = _half(remote_user_id, _keys(remote_identity_keys))
    return local + remote if local < remote else remote + local


def format_safety_number(number: str) -> str:
    """Group a 60-digit safety number as twelve blocks of five for display."""
    if len(number) != 60 or not number.isdigit():
        raise E2EEError("a safety number has 60 digits")
    return " ".join(number[i : i + 5] for i in range(0, 60, 5))
