"""Configuration of ``python -m turn`` / ``hushroom turn``: one frozen dataclass.

Loaded by :func:`hushroom.config.run_main` from flags, then ``HUSHROOM_TURN_*`` variables,
then the ``[turn]`` table of the TOML file. Every check runs at start-up, so a bad value
stops the process with one line naming the key. See ``docs/turn.md`` for operator notes.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from hushroom.config import ConfigError, option, parse_host_port, parse_port_range
from hushroom.secrets_file import read_secret_file

__all__ = ["TurnConfig"]


def _check_listen(values: list[str]) -> list[str]:
    for value in values:
        host, _ = parse_host_port(value)
        ipaddress.ip_address(host)  # a literal address: we never resolve names at start-up
    return values


def _check_port_range(value: str) -> str:
    parse_port_range(value)
    return value


def _check_ips(values: list[str]) -> list[str]:
    seen: set[int] = set()
    for value in values:
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        if addr.version in seen:
            raise ValueError("at most one address per IP version")
        seen.add(addr.version)
    return values


def _check_cidrs(values: list[str]) -> list[str]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR block") from None
    return values


def _check_positive(value: int) -> int:
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _check_non_negative(value: float) -> float:
    if value < 0:
        raise ValueError("must not be negative")
    return value


@dataclass(frozen=True)
class TurnConfig:
    """Every setting of the TURN relay process."""

    listen: list[str] = option(
        default_factory=lambda: ["127.0.0.1:3478"],
        help="HOST:PORT to serve STUN/TURN on, over both UDP and TCP",
        check=_check_listen,
    )
    tls_listen: list[str] = option(
        default_factory=list,
        help="HOST:PORT to serve TURN over TLS on (needs --tls-cert and --tls-key)",
        check=_check_listen,
    )
    tls_cert: str = option("", help="PEM certificate chain for the TLS listeners")
    tls_key: str = option("", help="PEM private key for the TLS listeners")
    realm: str = option("hushroom", help="authentication realm (the control plane uses it too)")
    secret_file: str = option(
        "", help="file holding the shared REST secret(s), one per line (rotation)"
    )
    secret: str = option(
        "",
        env="HUSHROOM_TURN_SECRET",
        help="shared REST secret(s), comma-separated; prefer the environment or --secret-file",
    )
    relay_ports: str = option(
        "49152-65535",
        help="LO-HI range of UDP ports for relayed addresses",
        check=_check_port_range,
    )
    relay_ip: list[str] = option(
        default_factory=list,
        help="address to bind relay ports on, one per IP version (default: the --listen host)",
        check=_check_ips,
    )
    external_ip: list[str] = option(
        default_factory=list,
        help="public address advertised for relays (behind 1:1 NAT), one per IP version",
        check=_check_ips,
    )
    allow_loopback_peers: bool = option(
        False, help="let peers be loopback addresses (TESTS ONLY: opens the host to clients)"
    )
    allow_peer: list[str] = option(
        default_factory=list,
        help="CIDR the peer filter lets through although it is denied by default",
        check=_check_cidrs,
    )
    deny_peer: list[str] = option(
        default_factory=list, help="CIDR the peer filter always refuses", check=_check_cidrs
    )
    max_allocations: int = option(
        10000, help="allocations on the whole server", check=_check_positive
    )
    max_allocations_per_user: int = option(
        10, help="allocations per REST credential id", check=_check_positive
    )
    bandwidth: int = option(
        1_250_000, help="bytes/s per allocation and direction, 0 = unlimited", check=int
    )
    unauthenticated_rate: float = option(
        5.0, help="401 answers per second per source IP", check=_check_non_negative
    )
    unauthenticated_burst: float = option(
        20.0, help="burst of 401 answers per source IP", check=_check_non_negative
    )
    max_connections: int = option(
        1000, help="simultaneous TCP/TLS connections", check=_check_positive
    )
    workers: int = option(
        1,
        help="processes sharing the listening ports (SO_REUSEPORT); allocations, quotas and"
        " rate limits are per process",
        check=_check_positive,
    )
    stats_interval: float = option(
        0.0, help="seconds between counter log lines, 0 = only at exit", check=_check_non_negative
    )
    log_level: str = option("info", help="debug, info, warning or error")

    def validate(self) -> None:
        """Cross-field checks; raise :class:`ConfigError` naming the flag to fix."""
        if self.tls_listen and not (self.tls_cert and self.tls_key):
            raise ConfigError("--tls-cert", "TLS listeners need --tls-cert and --tls-key")
        if not self.secret_file and not self.secret:
            raise ConfigError(
                "--secret-file", "a shared secret is required (or HUSHROOM_TURN_SECRET)"
            )
        if self.secret_file:
            try:
                read_secret_file(Path(self.secret_file))
            except ValueError as exc:
                raise ConfigError("--secret-file", str(exc)) from None
        if self.bandwidth < 0:
            raise ConfigError("--bandwidth", "must not be negative")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("--log-level", "expected debug, info, warning or error")
        for family in self.relay_families():
            if ipaddress.ip_address(self.bind_ip(family)).is_unspecified and not any(
                ":" in ip if family == socket.AF_INET6 else ":" not in ip for ip in self.external_ip
            ):
                raise ConfigError(
                    "--external-ip",
                    "relays bound to a wildcard address need --external-ip (or --relay-ip)",
                )

    def secrets(self) -> list[bytes]:
        """The shared secrets: the file's lines, then those of ``--secret``."""
        out = read_secret_file(Path(self.secret_file)) if self.secret_file else []
        out += [s.strip().encode() for s in self.secret.split(",") if s.strip()]
        return out

    def port_range(self) -> tuple[int, int]:
        """``--relay-ports`` as an inclusive ``(lo, hi)``."""
        return parse_port_range(self.relay_ports)

    def listen_addresses(self) -> list[tuple[str, int]]:
        """``--listen`` as ``(host, port)`` pairs."""
        return [parse_host_port(v) for v in self.listen]

    def tls_addresses(self) -> list[tuple[str, int]]:
        """``--tls-listen`` as ``(host, port)`` pairs."""
        return [parse_host_port(v) for v in self.tls_listen]

    def relay_families(self) -> list[int]:
        """Address families relays are offered in: those of ``--relay-ip`` or the listeners."""
        hosts = self.relay_ip or [h for h, _ in self.listen_addresses() + self.tls_addresses()]
        families = {socket.AF_INET6 if ":" in h else socket.AF_INET for h in hosts}
        return sorted(families)

    def bind_ip(self, family: int) -> str:
        """The address relay sockets of ``family`` bind to."""
        candidates = self.relay_ip or [h for h, _ in self.listen_addresses() + self.tls_addresses()]
        for host in candidates:
            if (":" in host) == (family == socket.AF_INET6):
                return host
        raise ValueError("no relay address for that family")

    def advertised_ip(self, family: int) -> str:
        """The relayed address announced to clients for ``family``."""
        for ip in self.external_ip:
            if (":" in ip) == (family == socket.AF_INET6):
                return ip
        return self.bind_ip(family)
