"""Cross-signing: the account's device list, signed by its account signing key.

Each account has an account signing key (Ed25519) held only by its devices: drawn at
registration, handed to a new device inside the sealed provisioning message, and to the
older devices of an account that predates cross-signing over their pairwise sessions.
It signs the account's device list — :func:`contract.signing.device_list_message`: the
user id, a version that only grows, and the devices' identity keys — so adding or
removing a device is something only a device of the account can do. Clients trust a
device only when a list verified under the account key they pinned names its key
(:class:`client.trust.Trust`); the server merely stores and hands out the latest list.

This module is sans-I/O: the list's wire form, signing and verification, and the
decoders of what the server sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from client.errors import ProtocolError, UndecryptableMessage
from client.models import Device
from contract.signing import IDENTITY_KEY_LEN, MAX_LISTED_DEVICES, device_list_message
from e2ee import E2EEError, IdentityKeyPair, pad, unpad

__all__ = [
    "DeviceDirectory",
    "SignedDeviceList",
    "decode_account_key_handover_untrusted",
    "encode_account_key_handover",
]

_MAX_VERSION = 2**53 - 1
# A list's bytes: MAX_LISTED_DEVICES keys and a signature, with msgpack's framing.
_MAX_ENCODED = 8 * 1024


@dataclass(frozen=True)
class SignedDeviceList:
    """One version of an account's device list and the account key's signature of it."""

    version: int
    identity_keys: tuple[bytes, ...]
    signature: bytes

    @classmethod
    def sign(
        cls, account_key: IdentityKeyPair, user_id: str, version: int, keys: list[bytes]
    ) -> SignedDeviceList:
        """Sign ``keys`` (deduplicated, sorted) as version ``version`` of ``user_id``'s list."""
        ordered = sorted(set(keys))
        message = device_list_message(user_id, version, ordered)
        return cls(version, tuple(ordered), account_key.sign(message))

    def verifies(self, account_key: bytes, user_id: str) -> bool:
        """True when the account key ``account_key`` signed this list for ``user_id``."""
        try:
            message = device_list_message(user_id, self.version, list(self.identity_keys))
            VerifyKey(account_key).verify(message, self.signature)
        except (ValueError, TypeError, BadSignatureError):
            return False
        return True

    def names(self, device: Device) -> bool:
        """True when the list names ``device``'s identity key."""
        return device.identity_key in self.identity_keys

    def to_wire(self) -> dict[str, Any]:
        """The ``DeviceList`` body of the control API."""
        return {
            "version": self.version,
            "identity_keys": list(self.identity_keys),
            "signature": self.signature,
        }

    @classmethod
    def from_wire_untrusted(cls, value: object) -> SignedDeviceList:
        """Decode a ``DeviceList`` from the server (or a provisioning message): types and
        bounds only — whether it verifies is :meth:`verifies`'s question."""
        if not isinstance(value, dict):
            raise ProtocolError("the server sent a malformed device list")
        version, keys, signature = (
            value.get("version"),
            value.get("identity_keys"),
            value.get("signature"),
        )
        if isinstance(version, bool) or not isinstance(version, int):
            raise ProtocolError("the server sent a device list without a version")
        if not 0 < version <= _MAX_VERSION:
            raise ProtocolError("the server sent a device list with a version out of range")
        if not isinstance(keys, list) or not 0 < len(keys) <= MAX_LISTED_DEVICES:
            raise ProtocolError("the server sent a device list with a malformed key list")
        if not all(isinstance(k, bytes) and len(k) == IDENTITY_KEY_LEN for k in keys):
            raise ProtocolError("the server sent a device list with a malformed key")
        if not isinstance(signature, bytes) or len(signature) != 64:
            raise ProtocolError("the server sent a device list with a malformed signature")
        return cls(version, tuple(sorted(keys)), signature)

    def encode(self) -> bytes:
        """The list as bytes to keep (msgpack of :meth:`to_wire`), e.g. in a key backup."""
        return msgpack.packb(self.to_wire(), use_bin_type=True)

    @classmethod
    def decode_untrusted(cls, data: bytes) -> SignedDeviceList:
        """Decode :meth:`encode`'s bytes, bounded as :meth:`from_wire_untrusted` is;
        anything malformed is :class:`ProtocolError`."""
        if not isinstance(data, bytes) or len(data) > _MAX_ENCODED:
            raise ProtocolError("a kept device list is not bytes of a bounded length")
        try:
            value = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_array_len=MAX_LISTED_DEVICES,
                max_map_len=8,
                max_ext_len=0,
            )
        except (ValueError, TypeError, RecursionError, msgpack.UnpackException):
            raise ProtocolError("a kept device list is not msgpack") from None
        return cls.from_wire_untrusted(value)


@dataclass(frozen=True)
class DeviceDirectory:
    """A user's devices as the server lists them, with the account key and the signed
    list it serves — all unverified until :class:`client.trust.Trust` checks them."""

    devices: list[Device]
    account_key: bytes | None
    device_list: SignedDeviceList | None

    @classmethod
    def from_wire_untrusted(cls, value: object) -> DeviceDirectory:
        """Decode ``GET /users/{id}/devices``: ``{"devices", "account_key", "device_list"}``."""
        if not isinstance(value, dict):
            raise ProtocolError("the server sent a malformed device directory")
        devices = Device.list_untrusted(value.get("devices"))
        key = value.get("account_key")
        if key is not None and (not isinstance(key, bytes) or len(key) != IDENTITY_KEY_LEN):
            raise ProtocolError("the server sent a malformed account key")
        raw = value.get("device_list")
        signed = None if raw is None else SignedDeviceList.from_wire_untrusted(raw)
        return cls(devices, key, signed)


def encode_account_key_handover(seed: bytes) -> bytes:
    """The DEVICE_SYNC plaintext that hands the account key to another device of the
    account (an account that predates cross-signing; a new device gets it at linking)."""
    return pad(msgpack.packb({"account_key": seed}, use_bin_type=True))


def decode_account_key_handover_untrusted(padded: bytes) -> bytes | None:
    """The account key seed a DEVICE_SYNC plaintext hands over, or None when it is
    something else (a DM's copy). A malformed handover is :class:`UndecryptableMessage`."""
    try:
        value = msgpack.unpackb(unpad(padded), raw=False, strict_map_key=False)
    except (E2EEError, ValueError, TypeError, RecursionError, msgpack.UnpackException):
        return None
    if not isinstance(value, dict) or "account_key" not in value:
        return None
    seed = value["account_key"]
    if len(value) != 1 or not isinstance(seed, bytes) or len(seed) != 32:
        raise UndecryptableMessage("a malformed account key handover")
    return seed
