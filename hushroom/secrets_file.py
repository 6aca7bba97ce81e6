"""Secrets kept on disk: created once with 0600 permissions, read back stripped."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["ensure_secret_file", "read_secret_file"]


def ensure_secret_file(path: Path) -> None:
    """Create ``path`` holding a fresh random secret unless it already exists.

    The file is created with ``O_EXCL`` and mode 0600 in one step, so there is no moment
    when another user could read it.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")


def read_secret_file(path: Path) -> list[bytes]:
    """Read every non-empty line of a secret file (several lines allow rotation).

    Raises ``ValueError`` with a readable message when the file is missing or empty.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    lines = [line.strip().encode() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no secret")
    return lines
