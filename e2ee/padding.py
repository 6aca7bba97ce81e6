"""Padding of plaintexts to size buckets, so ciphertext length leaks only the bucket.

ISO/IEC 7816-4 padding (the scheme Signal uses for message bodies): append 0x80, then zero
bytes up to the bucket size. Buckets are powers of two from 64 bytes to 16 KiB, then
multiples of 16 KiB up to the 1 MiB plaintext limit — fine-grained where most chat
messages are, coarse where the relative overhead is small.
"""

from __future__ import annotations

from e2ee.errors import DecodeError, E2EEError

__all__ = ["MAX_PADDED", "bucket_size", "pad", "unpad"]

MIN_BUCKET = 64
_LARGE_STEP = 16 * 1024
MAX_PADDED = 1024 * 1024


def bucket_size(length: int) -> int:
    """The padded size for a plaintext of ``length`` bytes (room for the 0x80 marker)."""
    need = length + 1
    if need > MAX_PADDED:
        raise E2EEError("plaintext too long to pad")
    if need <= _LARGE_STEP:
        size = MIN_BUCKET
        while size < need:
            size *= 2
        return size
    return -(-need // _LARGE_STEP) * _LARGE_STEP


def pad(plaintext: bytes) -> bytes:
    """Pad ``plaintext`` to its bucket."""
    size = bucket_size(len(plaintext))
    return plaintext + b"\x80" + bytes(size - len(plaintext) - 1)


def unpad(padded: bytes) -> bytes:
    """Remove padding from untrusted (though authenticated) bytes."""
    if not isinstance(padded, bytes) or not 0 < len(padded) <= MAX_PADDED:
        raise DecodeError("padded plaintext of invalid length")
    end = len(padded.rstrip(b"\x00"))
    if end == 0 or padded[end - 1] != 0x80:
        raise DecodeError("missing padding marker")
    # Only the canonical bucket size is accepted, so padding carries no hidden bits.
    if len(padded) != bucket_size(end - 1):
        raise DecodeError("padded length is not the plaintext's bucket")
    return padded[: end - 1]
