"""Configuration of one SFU node process."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from hushroom.config import ConfigError, option
from sfu.bwe import MAX_INCOMING_BITRATE, MIN_BITRATE

__all__ = ["SfuConfig"]


def _check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"expected an IP address, got {value!r}") from None
    return value


def _check_url(value: str) -> str:
    if not value.startswith(("ws://", "wss://")):
        raise ValueError(f"expected a ws:// or wss:// URL, got {value!r}")
    return value


def _check_workers(value: int) -> int:
    if not 0 <= value <= 256:
        raise ValueError("must be 0 (one per core) to 256")
    return value


def _check_spread(value: int) -> int:
    if not 0 <= value <= 100_000:
        raise ValueError("must be 0 (always) to 100000 transports")
    return value


def _check_consent(value: float) -> float:
    if not 1.0 <= value <= 300.0:
        raise ValueError("must be 1 to 300 seconds (RFC 7675 recommends 30)")
    return value


def _check_bitrate(value: int) -> int:
    if not MIN_BITRATE <= value <= 100_000_000:
        raise ValueError(f"must be {MIN_BITRATE} to 100000000 bit/s")
    return value


def _check_node_id(value: str) -> str:
    if not 1 <= len(value) <= 64 or not value.replace("-", "").replace("_", "").isalnum():
        raise ValueError("must be 1-64 letters, digits, '-' or '_'")
    return value


@dataclass(frozen=True)
class SfuConfig:
    """Settings of ``python -m sfu`` (flags > ``HUSHROOM_SFU_*`` > TOML ``[sfu]``)."""

    control_url: str = option(
        "ws://127.0.0.1:8080/internal/v1/sfu",
        help="control plane's internal WebSocket URL",
        check=_check_url,
    )
    node_secret_file: Path = option(
        Path("data/node-secret"), help="file holding the node secret shared with control"
    )
    listen_ip: str = option("127.0.0.1", help="IP address the workers bind", check=_check_ip)
    announce_ip: str | None = option(
        None,
        help="IP address given to clients in ICE candidates (default: listen IP)",
        check=_check_ip,
    )
    workers: int = option(0, help="worker processes, 0 = one per core", check=_check_workers)
    spread_above: int = option(
        8,
        help="transports a channel holds on its first worker before it spreads over the "
        "node's workers (0 = always; docs/sfu.md, 'One channel across cores')",
        check=_check_spread,
    )
    node_id: str | None = option(
        None, help="stable node id (default: random per start)", check=_check_node_id
    )
    log_level: str = option("info", help="debug, info, warning or error")
    consent_timeout: float = option(
        30.0,
        help="seconds without an ICE consent check before a transport is closed (RFC 7675)",
        check=_check_consent,
    )
    max_incoming_bitrate: int = option(
        MAX_INCOMING_BITRATE,
        help="highest bandwidth (bit/s) a publisher is told in REMB, estimated or not",
        check=_check_bitrate,
    )

    @property
    def resolved_announce_ip(self) -> str:
        """The address clients are told to send media to."""
        return self.announce_ip or self.listen_ip

    def validate(self) -> None:
        """Cross-field checks."""
        if ipaddress.ip_address(self.listen_ip).is_unspecified and self.announce_ip is None:
            raise ConfigError("--announce-ip", "is required when --listen-ip is a wildcard")
