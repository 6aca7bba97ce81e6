"""Configuration of one control-plane process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contract.proof_of_work import MAX_DIFFICULTY
from hushroom.config import ConfigError, option, parse_host_port

from .gateway.session import IDENTIFY_TIMEOUT_S, PENDING_LIMIT

__all__ = ["ControlConfig"]

LOG_LEVELS = ("debug", "info", "warning", "error")


def _check_listen(value: str) -> str:
    parse_host_port(value)
    return value


def _difficulty(value: int) -> int:
    if not 0 <= value <= MAX_DIFFICULTY:
        raise ValueError(f"must be within 0..{MAX_DIFFICULTY} bits")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _not_negative(value: int) -> int:
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _check_turn_urls(values: list[str]) -> list[str]:
    # Each flag may itself be a comma list: --turn-url a,b --turn-url c.
    urls = [part.strip() for value in values for part in value.split(",") if part.strip()]
    for url in urls:
        if not url.startswith(("turn:", "turns:", "stun:")) or len(url) > 256:
            raise ValueError(f"{url!r} is not a turn:, turns: or stun: URL")
    return urls


def _check_log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return value.lower()


@dataclass(frozen=True)
class ControlConfig:
    """Settings of ``python -m control`` (flags > ``HUSHROOM_CONTROL_*`` > TOML ``[control]``)."""

    listen: str = option("127.0.0.1:8080", help="HOST:PORT for the API", check=_check_listen)
    data_dir: Path = option(Path("data"), help="directory for the database and secrets")
    node_secret_file: Path | None = option(
        None,
        help="file holding the secret SFU nodes prove when they dial in "
        "(default: DATA_DIR/node-secret, created on first start)",
    )
    log_level: str = option("info", help="debug, info, warning or error", check=_check_log_level)
    database_url: str | None = option(
        None,
        env="HUSHROOM_DATABASE_URL",
        help="SQLAlchemy URL of the database (default: SQLite file DATA_DIR/control.sqlite3)",
    )
    session_ttl_s: int = option(30 * 86400, help="lifetime of a session token", check=_positive)
    envelope_ttl_s: int = option(
        30 * 86400, help="queued envelopes older than this are purged", check=_positive
    )
    max_body_bytes: int = option(
        256 * 1024, help="largest request body accepted (larger: 413)", check=_positive
    )
    rate_per_s: float = option(
        50.0, help="sustained requests per second per token (and per device)", check=_positive
    )
    rate_burst: int = option(200, help="requests a token may burst above the rate", check=_positive)
    pow_base_bits: int = option(
        12,
        help="proof-of-work difficulty (leading zero bits) of the anonymous routes at rest",
        check=_difficulty,
    )
    pow_max_bits: int = option(
        22,
        help="the highest proof-of-work difficulty asked under load",
        check=_difficulty,
    )
    pow_target_per_s: float = option(
        10.0,
        help="redeemed proofs of work per second per purpose above which difficulty rises",
        check=_positive,
    )
    prekey_claims_per_minute: float = option(
        30.0, help="prekey claims per minute one user may make (more: 429)", check=_positive
    )
    prekey_claim_burst: int = option(
        300, help="prekey claims a user may burst above that rate", check=_positive
    )
    otk_per_claimer_device_per_day: int = option(
        3,
        help="one-time prekeys one user may take from one device per day "
        "(more: bundles without one, i.e. the signed prekey alone)",
        check=_positive,
    )
    otk_per_device_per_hour: int = option(
        50,
        help="one-time prekeys everyone together may take from one device per hour "
        "(more: bundles without one)",
        check=_positive,
    )
    queue_max_envelopes: int = option(
        10_000, help="envelopes one device's queue may hold (more: 409 queue_full)", check=_positive
    )
    queue_max_bytes: int = option(
        64 * 1024 * 1024,
        help="ciphertext bytes one device's queue may hold (more: 409 queue_full)",
        check=_positive,
    )
    sender_queue_max_envelopes: int = option(
        1_000,
        help="envelopes one sender may have queued for one device (more: 409 queue_full)",
        check=_positive,
    )
    sender_queue_max_bytes: int = option(
        8 * 1024 * 1024,
        help="ciphertext bytes one sender may have queued for one device (more: 409 queue_full)",
        check=_positive,
    )
    heartbeat_interval_ms: int = option(
        41250, help="gateway heartbeat interval announced in HELLO", check=_positive
    )
    resume_window_s: int = option(
        120, help="how long a dropped gateway session may RESUME", check=_positive
    )
    gateway_identify_timeout_s: float = option(
        IDENTIFY_TIMEOUT_S,
        help="seconds a new gateway connection may take to IDENTIFY or RESUME (then 4003)",
        check=_positive,
    )
    gateway_pending_limit: int = option(
        PENDING_LIMIT,
        help="gateway connections not yet identified that one process holds at most "
        "(more are refused with 429)",
        check=_positive,
    )
    presence_guild_limit: int = option(
        250,
        help="presence is pushed only through guilds with at most this many members",
        check=_positive,
    )
    session_cache: int = option(
        100_000,
        help="session tokens cached in memory (0: read the store on every request; "
        "see control/sessions.py for running several processes)",
        check=_not_negative,
    )
    purge_interval_s: float = option(
        60.0, help="seconds between runs of the retention purger", check=_positive
    )
    turn_secret_file: Path | None = option(
        None,
        help="file holding the secret shared with the TURN relay (coturn's static-auth-secret); "
        "without it voice sessions get no TURN credentials",
    )
    turn_url: list[str] = option(
        default_factory=list,
        help="TURN URL handed to voice clients, e.g. turn:203.0.113.5:3478?transport=udp "
        "(repeatable or a comma list)",
        check=_check_turn_urls,
    )
    turn_credential_ttl_s: int = option(
        3600, help="lifetime of the TURN credentials minted for a voice session", check=_positive
    )
    voice_grace_s: float = option(
        30.0,
        help="seconds a voice participant whose gateway connection dropped stays in the "
        "channel before it is removed",
        check=_positive,
    )
    voice_large_channel: int = option(
        50,
        help="participants above which a voice channel is large: each subscriber then "
        "consumes only the audio of members who have spoken lately, not everyone's "
        "(docs/voice.md, 'Large channels'); 0 never",
        check=_not_negative,
    )
    voice_silent_drop_s: float = option(
        20.0,
        help="in a large voice channel, seconds a member must have been silent before the "
        "others stop consuming their audio",
        check=_positive,
    )
    sfu_request_timeout_s: float = option(
        5.0, help="seconds an SFU node has to answer one request", check=_positive
    )

    @property
    def listen_address(self) -> tuple[str, int]:
        """``listen`` split into host and port."""
        return parse_host_port(self.listen)

    @property
    def resolved_node_secret_file(self) -> Path:
        """Where the node secret lives."""
        return self.node_secret_file or self.data_dir / "node-secret"

    @property
    def resolved_database_url(self) -> str:
        """The database to open: ``database_url`` or the SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+pysqlite:///{self.data_dir / 'control.sqlite3'}"

    def validate(self) -> None:
        """Cross-field checks that a single field's check cannot make."""
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ConfigError("--data-dir", f"{self.data_dir} exists and is not a directory")
        if self.turn_url and self.turn_secret_file is None:
            raise ConfigError("--turn-url", "needs --turn-secret-file to mint credentials")
        if self.pow_base_bits > self.pow_max_bits:
            raise ConfigError("--pow-base-bits", "must not exceed --pow-max-bits")
