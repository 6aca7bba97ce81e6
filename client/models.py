"""Typed models of what the control plane sends, built only by ``*_untrusted`` decoders.

Every value from the server passes through one of these decoders before the SDK touches
it: types are checked, lengths bounded, and anything off is a :class:`ProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from client.errors import ProtocolError

__all__ = [
    "Bundle",
    "Channel",
    "ChannelMessage",
    "Device",
    "Envelope",
    "Guild",
    "Member",
    "Overwrite",
    "PrekeyCounts",
    "Role",
    "User",
]

_MAX_ID = 64
_MAX_CIPHERTEXT = 1024 * 1024


def _map(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"the server sent a malformed {where}")
    return value


def _list(value: object, where: str, max_len: int = 10_000) -> list[Any]:
    if not isinstance(value, list) or len(value) > max_len:
        raise ProtocolError(f"the server sent a malformed {where} list")
    return value


def _str(d: dict[str, Any], key: str, where: str, max_len: int = _MAX_ID) -> str:
    value = d.get(key)
    if not isinstance(value, str) or len(value) > max_len:
        raise ProtocolError(f"the server sent a {where} with a malformed {key}")
    return value


def _opt_str(d: dict[str, Any], key: str, where: str, max_len: int = 1024) -> str | None:
    return None if d.get(key) is None else _str(d, key, where, max_len)


def _int(d: dict[str, Any], key: str, where: str) -> int:
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"the server sent a {where} with a malformed {key}")
    return value


def _opt_int(d: dict[str, Any], key: str, where: str) -> int | None:
    return None if d.get(key) is None else _int(d, key, where)


def _bytes(d: dict[str, Any], key: str, where: str, size: int | None = None) -> bytes:
    value = d.get(key)
    if not isinstance(value, bytes) or len(value) > _MAX_CIPHERTEXT:
        raise ProtocolError(f"the server sent a {where} with a malformed {key}")
    if size is not None and len(value) != size:
        raise ProtocolError(f"the server sent a {where} whose {key} has the wrong length")
    return value


@dataclass(frozen=True)
class User:
    """A user as others see it: id and handle."""

    id: str
    handle: str

    @classmethod
    def from_wire_untrusted(cls, value: object) -> User:
        """Decode ``{"id", "handle"}``."""
        d = _map(value, "user")
        return cls(_str(d, "id", "user"), _str(d, "handle", "user"))


@dataclass(frozen=True)
class Device:
    """One device of a user: its id and Ed25519 identity key."""

    id: str
    identity_key: bytes

    @classmethod
    def from_wire_untrusted(cls, value: object) -> Device:
        """Decode ``{"id", "identity_key"}``."""
        d = _map(value, "device")
        return cls(_str(d, "id", "device"), _bytes(d, "identity_key", "device", 32))

    @classmethod
    def list_untrusted(cls, value: object) -> list[Device]:
        """Decode a device list (at most 64, as the server allows)."""
        return [cls.from_wire_untrusted(v) for v in _list(value, "device", 64)]


@dataclass(frozen=True)
class Bundle:
    """A claimed prekey bundle of one device, as the directory hands it out."""

    device_id: str
    identity_key: bytes
    signed_prekey_id: int
    signed_prekey: bytes
    signed_prekey_signature: bytes
    pq_prekey_id: int | None
    pq_prekey: bytes | None
    pq_prekey_signature: bytes | None
    one_time_prekey_id: int | None
    one_time_prekey: bytes | None
    #: The PQ prekey is a one-time one (else the last-resort one): the server's word,
    #: which picks the label its signature is checked under, so a wrong one fails.
    pq_prekey_one_time: bool = False

    @classmethod
    def from_wire_untrusted(cls, value: object) -> Bundle:
        """Decode one entry of ``POST /users/{id}/keys/claim``."""
        d = _map(value, "prekey bundle")
        one_time_pq = d.get("pq_prekey_one_time", False)
        if not isinstance(one_time_pq, bool):
            raise ProtocolError("the server sent a bundle with a malformed pq_prekey_one_time")
        spk = _map(d.get("signed_prekey"), "signed prekey")
        pq = d.get("pq_prekey")
        otk = d.get("one_time_prekey")
        pq_d = _map(pq, "PQ prekey") if pq is not None else None
        otk_d = _map(otk, "one-time prekey") if otk is not None else None
        return cls(
            device_id=_str(d, "device_id", "bundle"),
            identity_key=_bytes(d, "identity_key", "bundle", 32),
            signed_prekey_id=_int(spk, "key_id", "signed prekey"),
            signed_prekey=_bytes(spk, "public_key", "signed prekey", 32),
            signed_prekey_signature=_bytes(spk, "signature", "signed prekey", 64),
            pq_prekey_id=_int(pq_d, "key_id", "PQ prekey") if pq_d else None,
            pq_prekey=_bytes(pq_d, "public_key", "PQ prekey", 1568) if pq_d else None,
            pq_prekey_signature=_bytes(pq_d, "signature", "PQ prekey", 64) if pq_d else None,
            one_time_prekey_id=_int(otk_d, "key_id", "one-time prekey") if otk_d else None,
            one_time_prekey=_bytes(otk_d, "public_key", "one-time prekey", 32) if otk_d else None,
            pq_prekey_one_time=one_time_pq,
        )


@dataclass(frozen=True)
class PrekeyCounts:
    """How many one-time prekeys of each kind the server holds for this device."""

    one_time: int
    pq_one_time: int

    @classmethod
    def from_wire_untrusted(cls, value: object) -> PrekeyCounts:
        """Decode ``{"one_time_prekeys", "pq_one_time_prekeys"}`` (a key-count answer)."""
        d = _map(value, "key count")
        return cls(
            _int(d, "one_time_prekeys", "key count"), _int(d, "pq_one_time_prekeys", "key count")
        )


@dataclass(frozen=True)
class Role:
    """A guild role: id, name, permission bits and position."""

    id: str
    name: str
    permissions: int
    position: int


@dataclass(frozen=True)
class Overwrite:
    """A channel permission overwrite for a role or a member."""

    id: str
    type: str
    allow: int
    deny: int


@dataclass(frozen=True)
class Channel:
    """A channel with what a client needs to know who may read it."""

    id: str
    guild_id: str
    type: str
    name: str
    retention_days: int
    overwrites: tuple[Overwrite, ...]

    @classmethod
    def from_wire_untrusted(cls, value: object) -> Channel:
        """Decode the channel view."""
        d = _map(value, "channel")
        overwrites = tuple(
            Overwrite(
                _str(o, "id", "overwrite"),
                _str(o, "type", "overwrite"),
                _int(o, "allow", "overwrite"),
                _int(o, "deny", "overwrite"),
            )
            for o in (
                _map(x, "overwrite") for x in _list(d.get("permission_overwrites"), "overwrite")
            )
        )
        return cls(
            id=_str(d, "id", "channel"),
            guild_id=_str(d, "guild_id", "channel"),
            type=_str(d, "type", "channel"),
            name=_str(d, "name", "channel", 100),
            retention_days=_int(d, "retention_days", "channel"),
            overwrites=overwrites,
        )


@dataclass(frozen=True)
class Guild:
    """A guild as its member sees it: owner, roles and visible channels."""

    id: str
    name: str
    owner_id: str
    roles: tuple[Role, ...]
    channels: tuple[Channel, ...]

    @classmethod
    def from_wire_untrusted(cls, value: object) -> Guild:
        """Decode the full guild view (``GET /guilds/{id}``, READY, GUILD_CREATE)."""
        d = _map(value, "guild")
        roles = tuple(
            Role(
                _str(r, "id", "role"),
                _str(r, "name", "role", 100),
                _int(r, "permissions", "role"),
                _int(r, "position", "role"),
            )
            for r in (_map(x, "role") for x in _list(d.get("roles", []), "role"))
        )
        channels = tuple(
            Channel.from_wire_untrusted(c) for c in _list(d.get("channels", []), "channel")
        )
        return cls(
            id=_str(d, "id", "guild"),
            name=_str(d, "name", "guild", 100),
            owner_id=_str(d, "owner_id", "guild"),
            roles=roles,
            channels=channels,
        )


@dataclass(frozen=True)
class Member:
    """A guild member: user id, handle and role ids."""

    user_id: str
    handle: str | None
    roles: tuple[str, ...]

    @classmethod
    def list_untrusted(cls, value: object) -> list[Member]:
        """Decode ``GET /guilds/{id}/members``."""
        out = []
        for item in _list(value, "member"):
            d = _map(item, "member")
            roles = tuple(
                r if isinstance(r, str) else "" for r in _list(d.get("roles"), "member role", 250)
            )
            out.append(
                cls(_str(d, "user_id", "member"), _opt_str(d, "handle", "member", 64), roles)
            )
        return out


@dataclass(frozen=True)
class Envelope:
    """A queued per-device ciphertext: who sent it and the opaque bytes."""

    id: str
    sender_user_id: str
    sender_device_id: str
    ciphertext: bytes
    created_at: int

    @classmethod
    def from_wire_untrusted(cls, value: object) -> Envelope:
        """Decode an envelope (REST fetch, READY, ENVELOPE_CREATE)."""
        d = _map(value, "envelope")
        return cls(
            id=_str(d, "id", "envelope"),
            sender_user_id=_str(d, "sender_user_id", "envelope"),
            sender_device_id=_str(d, "sender_device_id", "envelope"),
            ciphertext=_bytes(d, "ciphertext", "envelope"),
            created_at=_int(d, "created_at", "envelope"),
        )


@dataclass(frozen=True)
class ChannelMessage:
    """A stored or relayed channel message: a Sender-Key ciphertext with its position."""

    id: str
    channel_id: str
    author_id: str
    author_device_id: str
    seq: int
    ciphertext: bytes
    created_at: int
    edited_at: int | None

    @classmethod
    def from_wire_untrusted(cls, value: object) -> ChannelMessage:
        """Decode a channel message (history, MESSAGE_CREATE, MESSAGE_UPDATE)."""
        d = _map(value, "channel message")
        return cls(
            id=_str(d, "id", "message"),
            channel_id=_str(d, "channel_id", "message"),
            author_id=_str(d, "author_id", "message"),
            author_device_id=_str(d, "author_device_id", "message"),
            seq=_int(d, "seq", "message"),
            ciphertext=_bytes(d, "ciphertext", "message"),
            created_at=_int(d, "created_at", "message"),
            edited_at=_opt_int(d, "edited_at", "message"),
        )
