"""The local store against someone with write access to the file but not the key, and the
other local secrets: files written owner-only, nothing secret in a repr()."""

from __future__ import annotations

import hmac
import os
import sqlite3
from pathlib import Path

import msgpack
import pytest
from nacl import pwhash
from nacl.secret import SecretBox

from client.device_list import SignedDeviceList
from client.linking import LinkExtra
from client.store import Store, StoreRolledBack, write_private_file
from e2ee import IdentityKeyPair, PreKeyStore


def _raw(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "store.sqlite3", isolation_level=None)


def _row(db: sqlite3.Connection, kind: str) -> tuple[bytes, bytes, int]:
    key, value, seq = db.execute(
        "SELECT key, value, seq FROM records WHERE kind = ?", (kind,)
    ).fetchone()
    return key, value, seq


def test_a_session_record_rolled_back_to_an_older_copy_is_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path, "pw", create=True)
    store.put("sessions", "bob/phone", [b"ratchet state after message 1"])
    store.close()
    db = _raw(tmp_path)
    key, old_value, old_seq = _row(db, "sessions")
    db.close()
    store = Store.open(tmp_path, "pw")
    store.put("sessions", "bob/phone", [b"ratchet state after message 2"])
    store.put("contact", "bob", {"verified": None})
    store.close()
    db = _raw(tmp_path)
    _, new_value, new_seq = _row(db, "sessions")
    # The older copy, with its own counter value: the set of records no longer matches.
    db.execute("UPDATE records SET value = ?, seq = ? WHERE key = ?", (old_value, old_seq, key))
    db.close()
    with pytest.raises(StoreRolledBack):
        Store.open(tmp_path, "pw")
    # The older copy under the current counter value: the sealed counter disagrees.
    db = _raw(tmp_path)
    db.execute("UPDATE records SET value = ?, seq = ? WHERE key = ?", (old_value, new_seq, key))
    db.close()
    store = Store.open(tmp_path, "pw")
    with pytest.raises(StoreRolledBack):
        store.get("sessions", "bob/phone")
    with pytest.raises(StoreRolledBack):
        list(store.names("sessions"))
    store.close()
    # Put back what was last written and all is well again.
    db = _raw(tmp_path)
    db.execute("UPDATE records SET value = ?, seq = ? WHERE key = ?", (new_value, new_seq, key))
    db.close()
    store = Store.open(tmp_path, "pw")
    assert store.get("sessions", "bob/phone") == [b"ratchet state after message 2"]
    store.close()


def test_a_deleted_record_or_one_brought_back_is_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path, "pw", create=True)
    store.put("identity", "prekeys", b"prekeys with an unused one-time key")
    store.put("envelope_done", "env-1", 1)
    store.close()
    db = _raw(tmp_path)
    db.execute("DELETE FROM records WHERE kind = 'envelope_done'")
    db.close()
    with pytest.raises(StoreRolledBack):  # an "already handled" mark removed
        Store.open(tmp_path, "pw")
    # A record the store itself deleted, brought back from an older copy.
    fresh = tmp_path / "fresh"
    store = Store.open(fresh, "pw", create=True)
    store.put("identity", "prekeys", b"x")
    store.close()
    db = sqlite3.connect(fresh / "store.sqlite3", isolation_level=None)
    row = db.execute("SELECT kind, key, value, seq FROM records").fetchone()
    db.close()
    store = Store.open(fresh, "pw")
    store.delete("identity", "prekeys")
    store.close()
    db = sqlite3.connect(fresh / "store.sqlite3", isolation_level=None)
    db.execute("INSERT INTO records (kind, key, value, seq) VALUES (?, ?, ?, ?)", row)
    db.close()
    with pytest.raises(StoreRolledBack):
        Store.open(fresh, "pw")


def test_two_handles_on_one_store_keep_its_state_consistent(tmp_path: Path) -> None:
    # Two processes on one profile: each write reads the state inside its transaction.
    first = Store.open(tmp_path, "pw", create=True)
    second = Store.open(tmp_path, "pw")
    for i in range(20):
        (first if i % 2 else second).put("cursor", f"c{i % 3}", i)
        with (second if i % 3 else first).transaction():
            (second if i % 3 else first).put("envelope_done", f"e{i}", i)
            if i % 4 == 0:
                (second if i % 3 else first).delete("envelope_done", f"e{i}")
    first.close()
    second.close()
    store = Store.open(tmp_path, "pw")
    assert store.get("cursor", "c0") == 18
    store.close()


def _format_1_store(profile: Path) -> None:
    """A store exactly as the code before the write counter made it."""
    profile.mkdir()
    salt = bytes(range(16))
    ops, mem = pwhash.argon2id.OPSLIMIT_INTERACTIVE, pwhash.argon2id.MEMLIMIT_INTERACTIVE
    key = pwhash.argon2id.kdf(SecretBox.KEY_SIZE, b"pw", salt, opslimit=ops, memlimit=mem)
    box = SecretBox(key)
    index_key = hmac.digest(key, b"hushroom store index v1", "sha256")
    db = sqlite3.connect(profile / "store.sqlite3", isolation_level=None)
    db.executescript(
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);"
        "CREATE TABLE records (kind TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,"
        " PRIMARY KEY (kind, key));"
    )
    meta = {
        "format": 1,
        "key_source": "passphrase",
        "salt": salt,
        "opslimit": ops,
        "memlimit": mem,
        "check": bytes(box.encrypt(b"hushroom client store v1")),
    }
    db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    for kind, name, value in (("contact", "bob", {"verified": "fp"}), ("cursor", "ch", 7)):
        index = hmac.digest(index_key, f"{kind}\x00{name}".encode(), "sha256")
        sealed = bytes(box.encrypt(msgpack.packb([kind, name, value], use_bin_type=True)))
        db.execute("INSERT INTO records VALUES (?, ?, ?)", (kind, index, sealed))
    db.close()


def test_a_format_1_store_is_migrated_then_protected(tmp_path: Path) -> None:
    profile = tmp_path / "p"
    _format_1_store(profile)
    store = Store.open(profile, "pw")
    assert store.get("contact", "bob") == {"verified": "fp"} and store.get("cursor", "ch") == 7
    store.put("cursor", "ch", 8)
    store.close()
    db = sqlite3.connect(profile / "store.sqlite3", isolation_level=None)
    assert db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone() == (2,)
    # Claiming the store is still format 1 (to have it trusted afresh) is a downgrade.
    db.execute("UPDATE meta SET value = 1 WHERE name = 'format'")
    db.close()
    with pytest.raises(StoreRolledBack):
        Store.open(profile, "pw")


def test_private_files_are_written_owner_only_and_whole(tmp_path: Path) -> None:
    target = tmp_path / "backup.hushroom"
    target.write_bytes(b"an older, world-readable file")
    target.chmod(0o644)
    old_umask = os.umask(0)
    try:
        write_private_file(target, b"encrypted backup")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"encrypted backup"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.hushroom"]


def test_link_extra_does_not_print_the_private_prekeys_nor_the_account_key() -> None:
    prekeys = PreKeyStore.generate(IdentityKeyPair.generate(), 1).serialize()
    account = IdentityKeyPair.generate()
    listed = SignedDeviceList.sign(account, "u1", 1, [IdentityKeyPair.generate().public])
    text = repr(LinkExtra("alice", prekeys, account.seed, listed))
    assert prekeys.hex() not in text and repr(prekeys)[2:40] not in text
    assert account.seed.hex() not in text and repr(account.seed)[2:40] not in text
    assert "alice" in text
