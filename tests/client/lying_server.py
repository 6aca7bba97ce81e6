"""A malicious operator's edits to a real control process's database, between requests.

hushroom promises that the servers relay ciphertext and can neither read nor impersonate
anyone. These functions make the lies an operator with the database could tell — each is
one plain SQL statement or a few, on the control process's SQLite file
(``ControlProcess.database``), while the process runs; the next request serves the lie.
Tests then check that the real client refuses it and says so.

A flat set of functions, one per lie, named for it. Tables: ``control/store/schema.py``.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from pathlib import Path

__all__ = [
    "insert_channel_message",
    "relabel_channel_message_author",
]


def _connect(db_path: Path) -> sqlite3.Connection:
    # The control process writes too: wait for its locks rather than fail.
    return sqlite3.connect(db_path, timeout=10)


def relabel_channel_message_author(
    db_path: Path, message_id: str, author_id: str, author_device_id: str | None = None
) -> None:
    """Say a stored channel message was written by ``author_id`` (and, if given, by that
    user's device ``author_device_id``) — the ciphertext stays the real author's."""
    db = _connect(db_path)
    try:
        with db:
            if author_device_id is None:
                changed = db.execute(
                    "UPDATE messages SET author_id = ? WHERE id = ?", (author_id, message_id)
                ).rowcount
            else:
                changed = db.execute(
                    "UPDATE messages SET author_id = ?, author_device_id = ? WHERE id = ?",
                    (author_id, author_device_id, message_id),
                ).rowcount
        if changed != 1:
            raise LookupError(f"no stored channel message {message_id!r}")
    finally:
        db.close()


def insert_channel_message(
    db_path: Path, channel_id: str, author_id: str, author_device_id: str, ciphertext: bytes
) -> str:
    """Store a channel message nobody posted through the API — say, one written by
    someone who may not post (or even see) the channel — under whatever author labels the
    operator likes, as the channel's next message. Returns its id."""
    message_id = secrets.token_hex(12)
    db = _connect(db_path)
    try:
        with db:
            (last,) = db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE channel_id = ?", (channel_id,)
            ).fetchone()
            db.execute(
                "INSERT INTO messages (id, channel_id, author_id, author_device_id, seq, "
                "ciphertext, created_at, edited_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    message_id,
                    channel_id,
                    author_id,
                    author_device_id,
                    last + 1,
                    ciphertext,
                    int(time.time()),
                ),
            )
    finally:
        db.close()
    return message_id
