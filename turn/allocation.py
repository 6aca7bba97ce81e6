"""TURN allocation state: permissions, channel bindings and lifetimes (RFC 8656 §2.2, §9, §12).

An :class:`Allocation` is what one client 5-tuple owns on the server: a relayed transport
address, the permissions (per peer IP, port ignored, 300 s), the channel bindings (number
0x4000-0x7FFF to a peer transport address, 600 s) and a lifetime (600 s default, 3600 s
maximum, never past the credential's expiry). It holds no sockets: the relay endpoint is an
opaque handle owned by the I/O shell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "CHANNEL_COOLDOWN",
    "CHANNEL_LIFETIME",
    "CHANNEL_MAX",
    "CHANNEL_MIN",
    "DEFAULT_LIFETIME",
    "MAX_LIFETIME",
    "PERMISSION_LIFETIME",
    "Allocation",
    "Channel",
]

DEFAULT_LIFETIME = 600
MAX_LIFETIME = 3600
PERMISSION_LIFETIME = 300.0
CHANNEL_LIFETIME = 600.0
#: After a binding expires, its number and peer stay reserved this long (RFC 8656 §12).
CHANNEL_COOLDOWN = 300.0
#: RFC 5766's range, as coturn accepts: RFC 8656 §12 narrowed it to 0x4000-0x4FFF, but RFC 5766
#: clients (coturn's turnutils, the libre/baresip family) pick numbers up to 0x7FFF.
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x7FFF

R = TypeVar("R")
Addr = tuple[str, int]


@dataclass(slots=True)
class Channel:
    """One channel binding; ``header`` is the 2-byte channel number, ready for ChannelData."""

    number: int
    peer: Addr
    expires: float
    header: bytes


@dataclass(slots=True, eq=False)
class Allocation(Generic[R]):
    """The server-side state of one allocation (RFC 8656 §2.2)."""

    link: int
    client: Addr
    stream: bool
    username: str
    user_id: str
    key: bytes
    use_sha256: bool
    credential_expiry: float
    relay: R
    relayed_address: Addr
    family: int
    expires: float
    transaction_id: bytes
    response: bytes = b""
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    channel_by_peer: dict[Addr, Channel] = field(default_factory=dict)
    tokens: float = 0.0
    refilled: float = 0.0

    def has_permission(self, ip: str, now: float) -> bool:
        """True when an unexpired permission covers ``ip``."""
        expires = self.permissions.get(ip)
        return expires is not None and expires > now

    def expire(self, now: float) -> None:
        """Drop permissions past their lifetime and bindings past lifetime plus cool-down."""
        for ip in [ip for ip, t in self.permissions.items() if t <= now]:
            del self.permissions[ip]
        stale = [c for c in self.channels.values() if c.expires + CHANNEL_COOLDOWN <= now]
        for channel in stale:
            del self.channels[channel.number]
            del self.channel_by_peer[channel.peer]
