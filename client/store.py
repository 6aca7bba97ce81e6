"""The encrypted local store of one profile: SQLite, every record sealed with SecretBox.

Layout (one file, ``store.sqlite3`` in the profile directory, mode 0600):

* ``meta`` — the only clear values: the store format, where the key comes from
  (``key_source``: ``keyring`` with the keyring entry's random name, or ``passphrase`` with
  the Argon2id salt and limits), a sealed check value (to tell a wrong key from damage) and
  nothing else;
* ``records(kind, key, value)`` — identity, prekeys, sessions, sender keys, contacts,
  cursors. ``key`` is a blind index, HMAC-SHA256(store key, kind ‖ name), so names (user
  ids, channel ids) are not readable from the file; ``value`` is
  ``XSalsa20-Poly1305(store key, msgpack([kind, name, value]))`` and so also bound to its
  row: a record moved to another row fails to open;
* ``messages(id, conv, ord, expires_at, value)`` — message history, sealed the same way,
  with ``conv`` a blind index and ``expires_at`` in clear so disappearing messages are
  purged without the key.

The 32-byte store key is chosen when the store is created and recorded in ``meta``:

* **OS keyring** (asked for with ``use_keyring``, taken when a keyring backend is there and
  gives a stored key back): a random key kept by :mod:`client.os_keyring`. Opening needs no
  passphrase; a deleted keyring entry makes the profile unopenable, with a sentence saying
  so rather than "wrong passphrase".
* **passphrase** (otherwise): Argon2id (libsodium ``crypto_pwhash``, the INTERACTIVE
  limits: 2 passes, 64 MiB, about 0.15 s here), paid by every CLI command. Stores made
  before ``key_source`` existed have no such row and are passphrase stores.

The passphrase is asked for lazily (a callable), so a keyring store never prompts.

SQLite calls are synchronous: each is a local write of a few hundred bytes in WAL mode,
well under a millisecond, so they run inline rather than in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
from nacl import pwhash
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from nacl.utils import random

from client import os_keyring
from client.errors import StoreError

__all__ = ["KEYRING", "PASSPHRASE", "STORE_FILE", "Passphrase", "Store"]

#: A passphrase, or a function asked for it only when the store really needs one.
Passphrase = str | Callable[[], str]

STORE_FILE = "store.sqlite3"
_FORMAT = 1
_CHECK = b"hushroom client store v1"
_OPS = pwhash.argon2id.OPSLIMIT_INTERACTIVE
_MEM = pwhash.argon2id.MEMLIMIT_INTERACTIVE
#: The two ``key_source`` values of ``meta`` (and of :attr:`Store.key_source`).
KEYRING = "keyring"
PASSPHRASE = "passphrase"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS messages (
    id BLOB PRIMARY KEY, conv BLOB NOT NULL, ord INTEGER NOT NULL,
    expires_at REAL, value BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS messages_conv ON messages (conv, ord);
"""


def _derive(passphrase: Passphrase, salt: bytes, ops: int, mem: int) -> bytes:
    if callable(passphrase):
        passphrase = passphrase()
    if not passphrase:
        raise StoreError("the passphrase must not be empty")
    secret = unicodedata.normalize("NFKC", passphrase).encode()
    return pwhash.argon2id.kdf(SecretBox.KEY_SIZE, secret, salt, opslimit=ops, memlimit=mem)


class Store:
    """An open, unlocked store. Create with :meth:`open`."""

    def __init__(
        self, db: sqlite3.Connection, key: bytes, path: Path, meta: dict[str, object]
    ) -> None:
        self._db = db
        self._box = SecretBox(key)
        self._index_key = hmac.digest(key, b"hushroom store index v1", "sha256")
        self.path = path
        self._depth = 0
        #: Where the key came from: ``"keyring"`` or ``"passphrase"``.
        self.key_source = str(meta.get("key_source", PASSPHRASE))
        self._keyring_entry = meta.get("keyring_entry")

    @classmethod
    def exists(cls, profile: Path) -> bool:
        """True when ``profile`` already holds a store."""
        return (profile / STORE_FILE).exists()

    @classmethod
    def open(
        cls,
        profile: Path,
        passphrase: Passphrase,
        *,
        create: bool = False,
        use_keyring: bool = False,
    ) -> Store:
        """Open (or with ``create``, create) the store of ``profile``.

        A new store keeps its key in the OS keyring when ``use_keyring`` is set and a
        keyring works, else derives it from ``passphrase``; an existing store opens the way
        its ``meta`` says, whatever ``use_keyring`` is.
        """
        path = profile / STORE_FILE
        if not path.exists() and not create:
            raise StoreError(f"no profile at {profile}; run 'hushroom register' first")
        made_dir = not profile.exists()
        profile.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not path.exists()
        if fresh:
            # Create the file private before SQLite writes anything into it.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        # Deleted (expired, erased) records are overwritten, not left in free pages.
        db.execute("PRAGMA secure_delete=ON")
        db.executescript(_SCHEMA)
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        try:
            if not meta and not create:
                raise StoreError(f"the profile at {profile} was never finished; remove it")
            if not meta:
                key, meta = _new_key(passphrase, use_keyring)
                try:
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", meta.items())
                    db.execute("COMMIT")
                except BaseException:
                    # Nothing will ever name the keyring entry made for this store.
                    _forget_new_key(meta)
                    raise
                return cls(db, key, path, meta)
            if meta.get("format") != _FORMAT:
                raise StoreError("the profile's store has an unknown format")
            key = _existing_key(meta, passphrase)
        except BaseException:
            db.close()
            if fresh:
                # A store whose key could not be made (no passphrase given) is no profile.
                _unlink_store(path)
                if made_dir:
                    with contextlib.suppress(OSError):
                        profile.rmdir()
            raise
        return cls(db, key, path, meta)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def destroy(self) -> None:
        """Close, delete the store's files (and the profile directory if that leaves it
        empty) and, for a keyring store, its keyring entry.

        The files go first: a keyring entry without a store is harmless, a store without
        its key is a puzzle.
        """
        self._db.close()
        _unlink_store(self.path)
        with contextlib.suppress(OSError):  # only if nothing else lives there
            self.path.parent.rmdir()
        if self.key_source == KEYRING and isinstance(self._keyring_entry, str):
            os_keyring.delete_store_key(self._keyring_entry)

    # --- sealed records ------------------------------------------------------------

    def _index(self, kind: str, name: str) -> bytes:
        return hmac.digest(self._index_key, f"{kind}\x00{name}".encode(), "sha256")

    def _seal(self, kind: str, name: str, value: Any) -> bytes:
        return bytes(self._box.encrypt(msgpack.packb([kind, name, value], use_bin_type=True)))

    def _open(self, kind: str, name: str, sealed: bytes) -> Any:
        try:
            plain = self._box.decrypt(sealed)
            got_kind, got_name, value = msgpack.unpackb(plain, raw=False, strict_map_key=False)
        except (CryptoError, ValueError, TypeError, msgpack.UnpackException):
            raise StoreError(f"a stored {kind} record is damaged") from None
        if got_kind != kind or got_name != name:
            raise StoreError(f"a stored {kind} record is not where it belongs")
        return value

    def get(self, kind: str, name: str, default: Any = None) -> Any:
        """The value stored under (kind, name), or ``default``."""
        row = self._db.execute(
            "SELECT value FROM records WHERE kind = ? AND key = ?", (kind, self._index(kind, name))
        ).fetchone()
        return default if row is None else self._open(kind, name, row[0])

    def put(self, kind: str, name: str, value: Any) -> None:
        """Store ``value`` (msgpack-able) under (kind, name)."""
        self._db.execute(
            "INSERT OR REPLACE INTO records (kind, key, value) VALUES (?, ?, ?)",
            (kind, self._index(kind, name), self._seal(kind, name, value)),
        )

    def delete(self, kind: str, name: str) -> None:
        """Remove (kind, name) if present."""
        self._db.execute(
            "DELETE FROM records WHERE kind = ? AND key = ?", (kind, self._index(kind, name))
        )

    def names(self, kind: str) -> Iterator[tuple[str, Any]]:
        """Every (name, value) of ``kind`` (names are recovered from the sealed values)."""
        for (sealed,) in self._db.execute("SELECT value FROM records WHERE kind = ?", (kind,)):
            try:
                plain = self._box.decrypt(sealed)
                got_kind, name, value = msgpack.unpackb(plain, raw=False, strict_map_key=False)
            except (CryptoError, ValueError, TypeError, msgpack.UnpackException):
                raise StoreError(f"a stored {kind} record is damaged") from None
            if got_kind == kind:
                yield name, value

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """``with store.transaction(): ...``: the writes inside commit together or not at all.

        Nested uses join the outermost transaction.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        self._db.execute("COMMIT")

    # --- message history -----------------------------------------------------------

    def add_message(
        self,
        conv: str,
        message_id: str,
        value: dict[str, Any],
        expires_at: float | None,
        order: int | None = None,
    ) -> bool:
        """Store a message of ``conv``; False when it was already stored (same id).

        ``order`` places it within the conversation (a channel's server sequence number);
        without it the message goes after everything stored so far.
        """
        key = self._index("message", message_id)
        cur = self._db.execute(
            "INSERT OR IGNORE INTO messages (id, conv, ord, expires_at, value) "
            "VALUES (?, ?, COALESCE(?, (SELECT COALESCE(MAX(ord), 0) + 1 FROM messages)), ?, ?)",
            (
                key,
                self._index("conv", conv),
                order,
                expires_at,
                self._seal("message", message_id, value),
            ),
        )
        return cur.rowcount == 1

    def has_message(self, message_id: str) -> bool:
        """True when a message with this id is stored."""
        row = self._db.execute(
            "SELECT 1 FROM messages WHERE id = ?", (self._index("message", message_id),)
        ).fetchone()
        return row is not None

    def messages(self, conv: str, limit: int = 50) -> list[dict[str, Any]]:
        """The last ``limit`` unexpired messages of ``conv``, oldest first."""
        self.purge_expired()
        rows = self._db.execute(
            "SELECT value FROM messages WHERE conv = ? ORDER BY ord DESC LIMIT ?",
            (self._index("conv", conv), limit),
        ).fetchall()
        out = []
        for (sealed,) in reversed(rows):
            try:
                _kind, _name, value = msgpack.unpackb(
                    self._box.decrypt(sealed), raw=False, strict_map_key=False
                )
            except (CryptoError, ValueError, TypeError, msgpack.UnpackException):
                raise StoreError("a stored message is damaged") from None
            out.append(value)
        return out

    def all_messages(self) -> list[dict[str, Any]]:
        """Every unexpired message, in arrival order (for export)."""
        self.purge_expired()
        out = []
        for (sealed,) in self._db.execute("SELECT value FROM messages ORDER BY ord"):
            try:
                _kind, _name, value = msgpack.unpackb(
                    self._box.decrypt(sealed), raw=False, strict_map_key=False
                )
            except (CryptoError, ValueError, TypeError, msgpack.UnpackException):
                raise StoreError("a stored message is damaged") from None
            out.append(value)
        return out

    def purge_expired(self, now: float | None = None) -> int:
        """Delete disappearing messages whose time is up; returns how many went."""
        moment = time.time() if now is None else now
        cur = self._db.execute(
            "DELETE FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ?", (moment,)
        )
        return cur.rowcount


def _unlink_store(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _new_key(passphrase: Passphrase, use_keyring: bool) -> tuple[bytes, dict[str, object]]:
    """A key for a new store and the ``meta`` rows that find it again."""
    if use_keyring:
        try:
            entry, key = os_keyring.new_store_key()
        except os_keyring.KeyringUnavailable:
            pass  # no usable keyring: the passphrase it is
        else:
            check = bytes(SecretBox(key).encrypt(_CHECK))
            return key, {
                "format": _FORMAT,
                "key_source": KEYRING,
                "keyring_entry": entry,
                "check": check,
            }
    salt = random(pwhash.argon2id.SALTBYTES)
    key = _derive(passphrase, salt, _OPS, _MEM)
    return key, {
        "format": _FORMAT,
        "key_source": PASSPHRASE,
        "salt": salt,
        "opslimit": _OPS,
        "memlimit": _MEM,
        "check": bytes(SecretBox(key).encrypt(_CHECK)),
    }


def _forget_new_key(meta: dict[str, object]) -> None:
    """Delete the keyring entry of a store whose ``meta`` could not be written; best
    effort, since the write's own error is the one to report."""
    entry = meta.get("keyring_entry")
    if meta.get("key_source") == KEYRING and isinstance(entry, str):
        with contextlib.suppress(StoreError):
            os_keyring.delete_store_key(entry)


def _existing_key(meta: dict[str, object], passphrase: Passphrase) -> bytes:
    """The key of an existing store, from the source its ``meta`` names, checked."""
    source = meta.get("key_source", PASSPHRASE)
    if source == KEYRING:
        entry = meta.get("keyring_entry")
        if not isinstance(entry, str):
            raise StoreError("the profile's store names no keyring entry; it is damaged")
        key = os_keyring.load_store_key(entry)
        wrong = "the OS keyring holds a different key for this profile, or the store is damaged"
    elif source == PASSPHRASE:
        salt, ops, mem = meta.get("salt"), meta.get("opslimit"), meta.get("memlimit")
        if not isinstance(salt, bytes) or not isinstance(ops, int) or not isinstance(mem, int):
            raise StoreError("the profile's store has damaged key parameters")
        key = _derive(passphrase, salt, ops, mem)
        wrong = "wrong passphrase for this profile, or the store is damaged"
    else:
        raise StoreError("the profile's store names an unknown key source")
    check = meta.get("check")
    try:
        if not isinstance(check, bytes) or SecretBox(key).decrypt(check) != _CHECK:
            raise CryptoError
    except (CryptoError, ValueError, TypeError):
        raise StoreError(wrong) from None
    return key


def fingerprint(keys: list[bytes]) -> str:
    """A short stable digest of a set of identity keys (what "verified" refers to)."""
    return hashlib.sha256(b"".join(sorted(keys))).hexdigest()[:32]
