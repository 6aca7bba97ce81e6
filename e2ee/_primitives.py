"""Thin, checked wrappers around the primitives the package builds on.

HKDF is RFC 5869 written out over :func:`hmac.digest` (two lines of arithmetic, and several
times faster than constructing a ``cryptography`` HKDF object per ratchet step); it is
checked against RFC 5869's test vectors. X25519 and Ed25519 come from libsodium (pynacl),
ML-KEM-1024 and ChaCha20-Poly1305 from OpenSSL (``cryptography``). Every failure of those
libraries on attacker-supplied input becomes a typed :mod:`e2ee.errors` error here.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field

import nacl.bindings as sodium
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.mlkem import (
    MLKEM1024PrivateKey,
    MLKEM1024PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from e2ee.errors import BadSignature, DecryptionFailed, InvalidKey

X25519_LEN = 32
ED25519_LEN = 32
SIGNATURE_LEN = 64
MLKEM1024_PUBLIC_LEN = 1568
MLKEM1024_CIPHERTEXT_LEN = 1568
MLKEM1024_SEED_LEN = 64
_ZERO32 = bytes(32)
_ZERO_NONCE = bytes(12)

# Key-type bytes of Encode(PK) (X3DH §2.5, PQXDH §2.5): one byte naming the curve or KEM,
# then the raw key. 0x05 and 0x08 are libsignal's bytes for X25519 and Kyber/ML-KEM-1024;
# 0x06 names an Ed25519 identity key, which Signal (XEdDSA over X25519) has no byte for.
KEY_TYPE_X25519 = b"\x05"
KEY_TYPE_ED25519 = b"\x06"
KEY_TYPE_MLKEM1024 = b"\x08"


def random_bytes(n: int) -> bytes:
    """Return ``n`` bytes from the operating system's CSPRNG."""
    return os.urandom(n)


def hkdf(salt: bytes, ikm: bytes, info: bytes, length: int, hash_name: str = "sha256") -> bytes:
    """HKDF (RFC 5869 §2.2–2.3) with HMAC-``hash_name``."""
    prk = hmac.digest(salt, ikm, hash_name)
    return hkdf_expand(prk, info, length, hash_name)


def hkdf_expand(prk: bytes, info: bytes, length: int, hash_name: str = "sha256") -> bytes:
    """HKDF-Expand (RFC 5869 §2.3)."""
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), hash_name)
        out += block
        counter += 1
    return out[:length]


def encode_x25519(public: bytes) -> bytes:
    """Encode(PK) of an X25519 public key."""
    return KEY_TYPE_X25519 + public


def encode_ed25519(public: bytes) -> bytes:
    """Encode(PK) of an Ed25519 identity key."""
    return KEY_TYPE_ED25519 + public


def encode_mlkem(public: bytes) -> bytes:
    """EncodeKEM(PK) of an ML-KEM-1024 encapsulation key."""
    return KEY_TYPE_MLKEM1024 + public


@dataclass(frozen=True, slots=True)
class X25519KeyPair:
    """An X25519 key pair (private scalar and public u-coordinate, 32 bytes each)."""

    # Secrets stay out of repr(): a key object in a log line or a traceback must not leak.
    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls) -> X25519KeyPair:
        """Create a fresh key pair."""
        return cls.from_private(random_bytes(X25519_LEN))

    @classmethod
    def from_private(cls, private: bytes) -> X25519KeyPair:
        """Rebuild a key pair from its private scalar."""
        if len(private) != X25519_LEN:
            raise InvalidKey("X25519 private key must be 32 bytes")
        return cls(private, sodium.crypto_scalarmult_base(private))


def x25519(private: bytes, public: bytes) -> bytes:
    """X25519 Diffie–Hellman, refusing an all-zero output (a low-order peer key)."""
    if len(public) != X25519_LEN:
        raise InvalidKey("X25519 public key must be 32 bytes")
    try:
        shared = sodium.crypto_scalarmult(private, public)
    except Exception:  # libsodium refuses low-order points itself on some builds
        raise InvalidKey("X25519 output is all-zero (low-order public key)") from None
    if hmac.compare_digest(shared, _ZERO32):
        raise InvalidKey("X25519 output is all-zero (low-order public key)")
    return shared


def ed25519_to_x25519_public(public: bytes) -> bytes:
    """The X25519 form of an Ed25519 public key (the birational map, via libsodium)."""
    if len(public) != ED25519_LEN:
        raise InvalidKey("Ed25519 public key must be 32 bytes")
    try:
        return sodium.crypto_sign_ed25519_pk_to_curve25519(public)
    except Exception:
        raise InvalidKey("not a valid Ed25519 public key") from None


def ed25519_sign(secret_key: bytes, message: bytes) -> bytes:
    """Detached Ed25519 signature with a 64-byte libsodium secret key."""
    return sodium.crypto_sign(message, secret_key)[:SIGNATURE_LEN]


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Verify a detached Ed25519 signature or raise :class:`BadSignature`."""
    if len(public) != ED25519_LEN or len(signature) != SIGNATURE_LEN:
        raise BadSignature("malformed key or signature")
    try:
        sodium.crypto_sign_open(signature + message, public)
    except Exception:
        raise BadSignature("signature does not verify") from None


def mlkem_public_from_bytes(public: bytes) -> MLKEM1024PublicKey:
    """Load an ML-KEM-1024 encapsulation key (OpenSSL performs FIPS 203's input check)."""
    if len(public) != MLKEM1024_PUBLIC_LEN:
        raise InvalidKey("ML-KEM-1024 public key must be 1568 bytes")
    try:
        return MLKEM1024PublicKey.from_public_bytes(public)
    except Exception:
        raise InvalidKey("invalid ML-KEM-1024 public key") from None


def mlkem_private_from_seed(seed: bytes) -> MLKEM1024PrivateKey:
    """Rebuild an ML-KEM-1024 decapsulation key from its 64-byte seed."""
    if len(seed) != MLKEM1024_SEED_LEN:
        raise InvalidKey("ML-KEM-1024 seed must be 64 bytes")
    try:
        return MLKEM1024PrivateKey.from_seed_bytes(seed)
    except Exception:
        raise InvalidKey("invalid ML-KEM-1024 seed") from None


def aead_seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """ChaCha20-Poly1305 (RFC 8439) under a single-use key with the constant zero nonce.

    Every caller derives a fresh key per message from a KDF chain, so a fixed nonce is
    safe (Double Ratchet §5.2 allows exactly this) and saves 12 bytes per message.
    """
    return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plaintext, ad)


def aead_open(key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`aead_seal`; raises :class:`DecryptionFailed` on any mismatch."""
    try:
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, ciphertext, ad)
    except (InvalidTag, ValueError, OverflowError):
        raise DecryptionFailed("authentication failed") from None
