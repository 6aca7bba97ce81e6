"""Default-deny filter on TURN peer addresses (RFC 8656 §21.2.3, "relaying to internal hosts").

A TURN relay that forwards to any address is a door into the operator's network: coturn's
CVE-2020-26262 reached loopback through ``0.0.0.0`` and ``::``, and CVE-2026-27624 through
``::ffff:127.0.0.1``. So the filter works on the address *meaning*, not its spelling: an
IPv6 address that embeds an IPv4 one (IPv4-mapped ``::ffff:0:0/96``, IPv4-compatible
``::/96``, NAT64 ``64:ff9b::/96``) is judged as that IPv4 address as well, and 6to4, Teredo
and local-use NAT64 prefixes are refused outright because their IPv4 end cannot be trusted.

Order of decision: the operator's deny list, then the operator's allow list, then the
built-in denied ranges and the server's own addresses. ``allow_loopback`` (tests only)
admits loopback, including the server's own loopback addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["DEFAULT_DENIED_V4", "DEFAULT_DENIED_V6", "PeerFilter"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: IPv4 ranges no relay should reach (RFC 6890 special-purpose registry and friends).
DEFAULT_DENIED_V4: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network", 0.0.0.0 reaches loopback on Linux
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # CGNAT shared space (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, cloud metadata endpoints
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # TEST-NET-1
    "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # TEST-NET-2
    "203.0.113.0/24",  # TEST-NET-3
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, includes 255.255.255.255 broadcast
)

#: IPv6 ranges refused (embedded-IPv4 prefixes are also checked against the IPv4 list).
DEFAULT_DENIED_V6: tuple[str, ...] = (
    "::/96",  # unspecified, loopback and deprecated IPv4-compatible addresses
    "::ffff:0:0/96",  # IPv4-mapped: refused as IPv6 peers whatever they embed
    "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
    "100::/64",  # discard-only
    "2001::/32",  # Teredo
    "2001:db8::/32",  # documentation
    "2002::/16",  # 6to4
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    raw = int(addr)
    if raw >> 32 == 0 or addr in _NAT64:
        return ipaddress.IPv4Address(raw & 0xFFFFFFFF)
    return None


class PeerFilter:
    """Decides whether the relay may send to a peer IP. Build once; :meth:`allows` is pure."""

    def __init__(
        self,
        *,
        own_addresses: Iterable[str] = (),
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        allow_loopback: bool = False,
    ) -> None:
        self._allow = [ipaddress.ip_network(c, strict=False) for c in allow]
        self._deny = [ipaddress.ip_network(c, strict=False) for c in deny]
        self._builtin: list[IPNetwork] = [
            ipaddress.ip_network(c) for c in DEFAULT_DENIED_V4 + DEFAULT_DENIED_V6
        ]
        self._own: set[IPAddress] = {ipaddress.ip_address(a) for a in own_addresses}
        self._allow_loopback = allow_loopback

    def _is_loopback(self, addr: IPAddress) -> bool:
        if isinstance(addr, ipaddress.IPv6Address):
            v4 = _embedded_v4(addr)
            if addr == ipaddress.IPv6Address("::1"):
                return True
            return v4 is not None and v4 in _LOOPBACK_V4
        return addr in _LOOPBACK_V4

    def _matches(self, addr: IPAddress, networks: list[IPNetwork]) -> bool:
        candidates: list[IPAddress] = [addr]
        if isinstance(addr, ipaddress.IPv6Address):
            v4 = _embedded_v4(addr)
            if v4 is not None:
                candidates.append(v4)
        return any(c.version == n.version and c in n for c in candidates for n in networks)

    def allows(self, ip: str) -> bool:
        """True when a permission, channel or Send towards ``ip`` may go ahead."""
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if self._matches(addr, self._deny):
            return False
        if self._allow_loopback and self._is_loopback(addr):
            # A test deployment's peers live on loopback, next to the server itself.
            return True
        if self._matches(addr, self._allow):
            return True
        if self._matches(addr, self._builtin):
            return False
        own = [addr]
        if isinstance(addr, ipaddress.IPv6Address):
            v4 = _embedded_v4(addr)
            if v4 is not None:
                own.append(v4)
        return not any(a in self._own for a in own)
