"""A malicious operator's edits to a real control process's database, between requests.

hushroom promises that the servers relay ciphertext and can neither read nor impersonate
anyone. These functions make the lies an operator with the database could tell — each is
one plain SQL statement or a few, on the control process's SQLite file
(``ControlProcess.database``; WAL mode, so the server keeps running), while the process
runs; the next request serves the lie. Tests then check that the real client refuses it and
says so (docs/e2ee.md, "Threat model"): relabelled channel authors, messages nobody posted,
devices the account never signed, device lists rolled back, account keys replaced, one-time
prekeys withheld or passed off as the other kind, first messages replayed.

A flat set of functions, one per lie, named for it. Tables: ``control/store/schema.py``.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from client._prekeys import directory_prekeys
from contract.signing import device_list_message
from e2ee import IdentityKeyPair, PreKeyStore

__all__ = [
    "envelopes_for",
    "forge_device_list",
    "insert_channel_message",
    "pass_one_time_pq_prekey_off_as_last_resort",
    "plant_device",
    "queued_envelopes",
    "relabel_channel_message_author",
    "replace_account_key",
    "replay_envelope",
    "roll_back_device_list",
    "stored_device_list",
    "strip_one_time_prekeys",
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


def plant_device(
    database: Path, user_id: str, identity: IdentityKeyPair | None = None
) -> tuple[str, IdentityKeyPair]:
    """Add a device to ``user_id``'s account behind its back: a device row and a full
    prekey bundle (signed prekey, PQ prekey, one-time prekeys) under an identity key the
    operator holds — or under ``identity``, to bring a removed device back. Nothing is
    added to the account's signed device list: the operator cannot sign one.

    Returns the new device id and the identity key pair (whose holder could read what
    is encrypted to it).
    """
    identity = identity or IdentityKeyPair.generate()
    prekeys = PreKeyStore.generate(identity)
    bundle = directory_prekeys(identity, prekeys, prekeys.generate_one_time_prekeys(5))
    device_id = "planted" + secrets.token_hex(8)
    db = _connect(database)
    with db:
        db.execute(
            "INSERT INTO devices (id, user_id, identity_key, created_day, last_seen_day) "
            "VALUES (?, ?, ?, 0, 0)",
            (device_id, user_id, identity.public),
        )
        for table in ("signed_prekeys", "pq_prekeys"):
            key = bundle["signed_prekey" if table == "signed_prekeys" else "pq_prekey"]
            db.execute(
                f"INSERT INTO {table} (device_id, key_id, public_key, signature) "
                "VALUES (?, ?, ?, ?)",
                (device_id, key["key_id"], key["public_key"], key["signature"]),
            )
        db.executemany(
            "INSERT INTO one_time_prekeys (device_id, key_id, public_key) VALUES (?, ?, ?)",
            [(device_id, o["key_id"], o["public_key"]) for o in bundle["one_time_prekeys"]],
        )
    db.close()
    return device_id, identity


def stored_device_list(database: Path, user_id: str) -> dict[str, Any]:
    """The account key and signed device list the server holds for ``user_id`` now (to
    be served again later by :func:`roll_back_device_list`)."""
    db = _connect(database)
    db.row_factory = sqlite3.Row
    row = db.execute("SELECT * FROM device_lists WHERE user_id = ?", (user_id,)).fetchone()
    db.close()
    assert row is not None, "the account has no signed device list"
    return dict(row)


def roll_back_device_list(database: Path, user_id: str, older: dict[str, Any]) -> None:
    """Serve ``older`` (from :func:`stored_device_list`) as ``user_id``'s device list
    again: a genuine list, signed by the account key, but not the newest — say one that
    still names a device the user removed since."""
    db = _connect(database)
    with db:
        db.execute(
            "UPDATE device_lists SET account_key = ?, version = ?, device_keys = ?, "
            "signature = ? WHERE user_id = ?",
            (
                older["account_key"],
                older["version"],
                older["device_keys"],
                older["signature"],
                user_id,
            ),
        )
    db.close()


def replace_account_key(database: Path, user_id: str, version: int = 10**6) -> IdentityKeyPair:
    """Swap ``user_id``'s account key for one the operator drew, with a device list it
    signs naming every device row of the account (planted ones included): a list that
    verifies, under the wrong key. Returns the operator's account key."""
    key = IdentityKeyPair.generate()
    db = _connect(database)
    with db:
        keys = sorted(
            r[0]
            for r in db.execute("SELECT identity_key FROM devices WHERE user_id = ?", (user_id,))
        )
        signature = key.sign(device_list_message(user_id, version, keys))
        db.execute(
            "UPDATE device_lists SET account_key = ?, version = ?, device_keys = ?, "
            "signature = ? WHERE user_id = ?",
            (key.public, version, b"".join(keys), signature, user_id),
        )
    db.close()
    return key


def forge_device_list(database: Path, user_id: str, version: int = 10**6) -> None:
    """Keep ``user_id``'s account key but serve a list of every device row, planted ones
    included, under a newer version and a signature the operator cannot make right."""
    db = _connect(database)
    with db:
        keys = sorted(
            r[0]
            for r in db.execute("SELECT identity_key FROM devices WHERE user_id = ?", (user_id,))
        )
        db.execute(
            "UPDATE device_lists SET version = ?, device_keys = ?, signature = ? WHERE user_id = ?",
            (version, b"".join(keys), secrets.token_bytes(64), user_id),
        )
    db.close()


def envelopes_for(database: Path, device_id: str) -> int:
    """How many envelopes the relay queued for ``device_id`` (delivered ones are gone
    only once acked: a device nobody runs keeps them all)."""
    db = _connect(database)
    (count,) = db.execute(
        "SELECT count(*) FROM envelopes WHERE recipient_device_id = ?", (device_id,)
    ).fetchone()
    db.close()
    return int(count)


def strip_one_time_prekeys(database: Path, device_id: str) -> int:
    """Withhold every one-time prekey of ``device_id``, of both kinds (X25519 and PQ): the
    next bundle anyone claims carries the signed prekey and the last-resort PQ prekey
    alone, so a first message to the device uses no key that only one message can use.
    Returns how many keys were withheld."""
    db = _connect(database)
    with db:
        count = sum(
            db.execute(f"DELETE FROM {table} WHERE device_id = ?", (device_id,)).rowcount
            for table in ("one_time_prekeys", "pq_one_time_prekeys")
        )
    db.close()
    return count


def pass_one_time_pq_prekey_off_as_last_resort(database: Path, device_id: str) -> int:
    """Serve one of ``device_id``'s one-time PQ prekeys as its last-resort PQ prekey (the
    row moved into ``pq_prekeys``), so any number of first messages would use it, and the
    bundle says it is the last-resort kind. Returns its key id."""
    db = _connect(database)
    with db:
        key_id, public_key, signature = db.execute(
            "SELECT key_id, public_key, signature FROM pq_one_time_prekeys WHERE device_id = ? "
            "ORDER BY key_id LIMIT 1",
            (device_id,),
        ).fetchone()
        db.execute(
            "UPDATE pq_prekeys SET key_id = ?, public_key = ?, signature = ? WHERE device_id = ?",
            (key_id, public_key, signature, device_id),
        )
        db.execute("DELETE FROM pq_one_time_prekeys WHERE device_id = ?", (device_id,))
    db.close()
    return int(key_id)


def queued_envelopes(database: Path, device_id: str) -> list[dict[str, Any]]:
    """The envelopes queued for ``device_id`` now, whole rows: what the operator copies
    before the device acks them (an ack deletes them) to replay them later."""
    db = _connect(database)
    db.row_factory = sqlite3.Row
    rows = db.execute(
        "SELECT * FROM envelopes WHERE recipient_device_id = ? ORDER BY seq", (device_id,)
    ).fetchall()
    db.close()
    return [dict(row) for row in rows]


def replay_envelope(database: Path, envelope: dict[str, Any]) -> str:
    """Queue ``envelope`` (a row from :func:`queued_envelopes`) again, byte for byte, under a
    new envelope id as its recipient's next: a delivered message the device sees as new.
    Returns the new id."""
    envelope_id = secrets.token_hex(12)
    db = _connect(database)
    with db:
        (last,) = db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM envelopes WHERE recipient_device_id = ?",
            (envelope["recipient_device_id"],),
        ).fetchone()
        db.execute(
            "INSERT INTO envelopes (id, recipient_device_id, sender_user_id, sender_device_id, "
            "ciphertext, created_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                envelope_id,
                envelope["recipient_device_id"],
                envelope["sender_user_id"],
                envelope["sender_device_id"],
                envelope["ciphertext"],
                int(time.time()),
                last + 1,
            ),
        )
    db.close()
    return envelope_id
