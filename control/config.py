"""Configuration of one control-plane process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hushroom.config import ConfigError, option, parse_host_port

__all__ = ["ControlConfig"]

LOG_LEVELS = ("debug", "info", "warning", "error")


def _check_listen(value: str) -> str:
    parse_host_port(value)
    return value


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

    @property
    def listen_address(self) -> tuple[str, int]:
        """``listen`` split into host and port."""
        return parse_host_port(self.listen)

    @property
    def resolved_node_secret_file(self) -> Path:
        """Where the node secret lives."""
        return self.node_secret_file or self.data_dir / "node-secret"

    def validate(self) -> None:
        """Cross-field checks that a single field's check cannot make."""
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ConfigError("--data-dir", f"{self.data_dir} exists and is not a directory")
