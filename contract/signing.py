"""The byte strings devices sign, built the same way by signer and verifier.

Each signed message starts with a context label ending in NUL, so a signature made for one
purpose can never be replayed for another. Lengths of every variable part are fixed or come
last, so no two distinct inputs share an encoding. docs/control.md lists them.
"""

from __future__ import annotations

import struct

__all__ = [
    "CHALLENGE_LEN",
    "IDENTITY_KEY_LEN",
    "MAX_LISTED_DEVICES",
    "PQ_PUBLIC_KEY_LEN",
    "SIGNATURE_LEN",
    "X25519_KEY_LEN",
    "add_device_message",
    "device_list_message",
    "login_message",
    "pq_one_time_prekey_message",
    "pq_prekey_message",
    "register_message",
    "signed_prekey_message",
]

IDENTITY_KEY_LEN = 32
X25519_KEY_LEN = 32
#: An ML-KEM-1024 encapsulation key (FIPS 203).
PQ_PUBLIC_KEY_LEN = 1568
SIGNATURE_LEN = 64
CHALLENGE_LEN = 32
#: A signed device list names at most this many devices (the server's device limit).
MAX_LISTED_DEVICES = 64


def register_message(challenge: bytes, identity_key: bytes, handle: str) -> bytes:
    """``"hushroom-v1 register" NUL ‖ challenge(32) ‖ identity_key(32) ‖ handle (UTF-8)``."""
    return b"hushroom-v1 register\x00" + challenge + identity_key + handle.encode()


def login_message(challenge: bytes, identity_key: bytes) -> bytes:
    """``"hushroom-v1 login" NUL ‖ challenge(32) ‖ identity_key(32)``."""
    return b"hushroom-v1 login\x00" + challenge + identity_key


def add_device_message(challenge: bytes, identity_key: bytes, user_id: str) -> bytes:
    """``"hushroom-v1 add-device" NUL ‖ challenge(32) ‖ new identity_key(32) ‖ user id``."""
    return b"hushroom-v1 add-device\x00" + challenge + identity_key + user_id.encode()


def signed_prekey_message(key_id: int, public_key: bytes) -> bytes:
    """``"hushroom-v1 signed-prekey" NUL ‖ key_id (u32 BE) ‖ X25519 public key(32)``."""
    return b"hushroom-v1 signed-prekey\x00" + struct.pack(">I", key_id) + public_key


def pq_prekey_message(key_id: int, public_key: bytes) -> bytes:
    """``"hushroom-v1 pq-prekey" NUL ‖ key_id (u32 BE) ‖ ML-KEM-1024 public key(1568)``.

    The PQ *last-resort* prekey: used by every initiator while no one-time PQ prekey is left.
    """
    return b"hushroom-v1 pq-prekey\x00" + struct.pack(">I", key_id) + public_key


def pq_one_time_prekey_message(key_id: int, public_key: bytes) -> bytes:
    """``"hushroom-v1 pq-one-time-prekey" NUL ‖ key_id (u32 BE) ‖ ML-KEM-1024 key(1568)``.

    A one-time PQ prekey (Signal's one-time Kyber prekey). Its own label, rather than the
    last-resort one, makes the signature say which kind of key it is: a server cannot hand
    out the last-resort key as one-time (or the reverse), whatever the key ids.
    """
    return b"hushroom-v1 pq-one-time-prekey\x00" + struct.pack(">I", key_id) + public_key


def device_list_message(user_id: str, version: int, identity_keys: list[bytes]) -> bytes:
    """``"hushroom-v1 device-list" NUL ‖ len(user id) (u8) ‖ user id ‖ version (u64 BE) ‖
    count (u16 BE) ‖ identity keys (32 each, sorted)``, signed by the account signing key.

    The keys are sorted here, so signer and verifier agree whatever order a list travels
    in; a key listed twice, a key of the wrong length or more than
    :data:`MAX_LISTED_DEVICES` keys is a :class:`ValueError` (no such list is signed).
    """
    uid = user_id.encode()
    if not 0 < len(uid) < 256:
        raise ValueError("a user id is 1 to 255 bytes")
    if not 0 <= version < 2**64:
        raise ValueError("a device-list version is an unsigned 64-bit integer")
    if len(identity_keys) > MAX_LISTED_DEVICES:
        raise ValueError(f"a device list names at most {MAX_LISTED_DEVICES} devices")
    if any(len(k) != IDENTITY_KEY_LEN for k in identity_keys):
        raise ValueError("an identity key is 32 bytes")
    keys = sorted(identity_keys)
    if len(set(keys)) != len(keys):
        raise ValueError("a device list names a key twice")
    return (
        b"hushroom-v1 device-list\x00"
        + bytes([len(uid)])
        + uid
        + struct.pack(">QH", version, len(keys))
        + b"".join(keys)
    )
