"""The encrypted local store of one profile: SQLite, every record sealed with SecretBox.

Layout (one file, ``store.sqlite3`` in the profile directory, mode 0600):

* ``meta`` — the only clear values: the store format, where the key comes from
  (``key_source``: ``keyring`` with the keyring entry's random name, or ``passphrase`` with
  the Argon2id salt and limits), a sealed check value (to tell a wrong key from damage) and
  nothing else;
* ``records(kind, key, value, seq)`` — identity, prekeys, sessions, sender keys, contacts,
  cursors. ``key`` is a blind index, HMAC-SHA256(store key, kind ‖ name), so names (user
  ids, channel ids) are not readable from the file; ``value`` is
  ``XSalsa20-Poly1305(store key, msgpack([kind, name, value, seq]))`` and so also bound to
  its row: a record moved to another row fails to open. ``seq`` is the store-wide write
  counter at the record's last write (see *Rollback* below);
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

**Rollback.** Someone who can write the file but lacks the key can still put back an older
copy of a record — a session from before some messages were sent, which would then send
under message keys already used. So every write takes the next value of a store-wide
counter; the record carries it, sealed and in clear (``seq``, the two must agree); and
``meta`` holds a sealed *state*: the counter, the number of records and the XOR of
HMAC(state key, kind ‖ index ‖ seq) over every record — a keyed multiset hash, updated in
the same transaction as each write. Opening the store recomputes it and refuses a store
whose records are not the set the state describes (:class:`StoreRolledBack`): an older
record, a deleted one, or one brought back. Without the key none of it can be forged.
What it cannot see is the *whole* file (records and ``meta`` together) replaced by an
older copy: that is a consistent store, and only state kept outside the file could tell;
nor a record changed while a process has the store open, until the store is next opened.
Message history (the ``messages`` table) is not covered: it holds no key material.
Format 1 stores (before ``seq``) are migrated when first opened: every record is sealed
again with a counter value; a format-1 ``meta`` over records already in the new form is a
downgrade, refused.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from nacl import pwhash
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from nacl.utils import random

from client import os_keyring
from client.errors import StoreError

__all__ = [
    "KEYRING",
    "PASSPHRASE",
    "STORE_FILE",
    "Passphrase",
    "Store",
    "StoreRolledBack",
    "write_private_file",
]

#: A passphrase, or a function asked for it only when the store really needs one.
Passphrase = str | Callable[[], str]

STORE_FILE = "store.sqlite3"
_FORMAT = 2
# Stores before the write counter; migrated on open.
_FORMAT_V1 = 1
_CHECK = b"hushroom client store v1"
_STATE_LABEL = b"hushroom store state v1"
_OPS = pwhash.argon2id.OPSLIMIT_INTERACTIVE
_MEM = pwhash.argon2id.MEMLIMIT_INTERACTIVE
#: The two ``key_source`` values of ``meta`` (and of :attr:`Store.key_source`).
KEYRING = "keyring"
PASSPHRASE = "passphrase"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS messages (
    id BLOB PRIMARY KEY, conv BLOB NOT NULL, ord INTEGER NOT NULL,
    expires_at REAL, value BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS messages_conv ON messages (conv, ord);
"""


class StoreRolledBack(StoreError):
    """The store's records are not the ones this profile last wrote: some were replaced by
    older copies, deleted or brought back by someone with access to the file."""


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (mode 0600), atomically.

    The bytes go to a new 0600 file beside ``path`` that then replaces it, so no reader
    ever sees a partial file and a file that was more open before is not reused.
    """
    tmp = path.with_name(f".{path.name}.{random(8).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
        self._state_key = hmac.digest(key, _STATE_LABEL, "sha256")
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
                store = cls(db, key, path, meta)
                try:
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", meta.items())
                    store._save_state(_State(0, 0, 0))
                    db.execute("COMMIT")
                except BaseException:
                    # Nothing will ever name the keyring entry made for this store.
                    _forget_new_key(meta)
                    raise
                return store
            if meta.get("format") not in (_FORMAT, _FORMAT_V1):
                raise StoreError("the profile's store has an unknown format")
            key = _existing_key(meta, passphrase)
            store = cls(db, key, path, meta)
            if meta.get("format") == _FORMAT_V1:
                store._migrate_v1()
            store._verify_state()
        except BaseException:
            db.close()
            if fresh:
                # A store whose key could not be made (no passphrase given) is no profile.
                _unlink_store(path)
                if made_dir:
                    with contextlib.suppress(OSError):
                        profile.rmdir()
            raise
        return store

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

    # --- the rollback state -------------------------------------------------------

    def _element(self, kind: str, index: bytes, seq: int) -> int:
        """One record's term of the multiset hash (see *Rollback* in the module docs)."""
        mac = hmac.digest(
            self._state_key, kind.encode() + b"\x00" + index + seq.to_bytes(8, "big"), "sha256"
        )
        return int.from_bytes(mac, "big")

    def _load_state(self) -> _State:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'state'").fetchone()
        try:
            if row is None:
                raise ValueError
            label, counter, count, digest = msgpack.unpackb(self._box.decrypt(row[0]))
            if label != _STATE_LABEL:
                raise ValueError
            return _State(int(counter), int(count), int.from_bytes(digest, "big"))
        except (CryptoError, ValueError, TypeError, msgpack.UnpackException):
            raise StoreRolledBack(
                "the profile's store has lost or damaged its integrity state"
            ) from None

    def _save_state(self, state: _State) -> None:
        sealed = self._box.encrypt(
            msgpack.packb(
                [_STATE_LABEL, state.counter, state.count, state.digest.to_bytes(32, "big")],
                use_bin_type=True,
            )
        )
        self._db.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES ('state', ?)", (bytes(sealed),)
        )

    def _verify_state(self) -> None:
        """Refuse a store whose records are not the set its sealed state describes."""
        self._db.execute("BEGIN")  # one consistent snapshot of state and records
        try:
            state = self._load_state()
            digest = count = top = 0
            for kind, index, seq in self._db.execute("SELECT kind, key, seq FROM records"):
                digest ^= self._element(kind, index, seq)
                count += 1
                top = max(top, seq)
        finally:
            self._db.execute("COMMIT")
        if (digest, count) != (state.digest, state.count) or top > state.counter:
            raise StoreRolledBack(
                "the profile's store holds records other than the ones it last wrote "
                "(an older copy of some of them, or some deleted): refusing to use it"
            )

    def _migrate_v1(self) -> None:
        """Give every record of a format 1 store a counter value and the store a state."""
        with self.transaction():
            row = self._db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
            if row is None or row[0] != _FORMAT_V1:
                return  # another process migrated it meanwhile
            columns = {c[1] for c in self._db.execute("PRAGMA table_info(records)")}
            if "seq" not in columns:
                self._db.execute("ALTER TABLE records ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
            state = _State(0, 0, 0)
            rows = self._db.execute("SELECT kind, key, value FROM records").fetchall()
            for kind, index, sealed in rows:
                try:
                    fields = msgpack.unpackb(
                        self._box.decrypt(sealed), raw=False, strict_map_key=False
                    )
                except (CryptoError, ValueError, TypeError, msgpack.UnpackException):
                    raise StoreError(f"a stored {kind} record is damaged") from None
                if not isinstance(fields, list) or len(fields) != 3:
                    # Records in the new form under a format 1 meta: an old meta put back.
                    raise StoreRolledBack("the profile's store was downgraded; refusing it")
                got_kind, name, value = fields
                if got_kind != kind or self._index(kind, name) != index:
                    raise StoreError(f"a stored {kind} record is not where it belongs")
                state = _State(state.counter + 1, state.count + 1, state.digest)
                state.digest ^= self._element(kind, index, state.counter)
                self._db.execute(
                    "UPDATE records SET value = ?, seq = ? WHERE kind = ? AND key = ?",
                    (
                        self._seal_record(kind, name, value, state.counter),
                        state.counter,
                        kind,
                        index,
                    ),
                )
            self._save_state(state)
            self._db.execute("UPDATE meta SET value = ? WHERE name = 'format'", (_FORMAT,))

    # --- sealed records ------------------------------------------------------------

    def _index(self, kind: str, name: str) -> bytes:
        return hmac.digest(self._index_key, f"{kind}\x00{name}".encode(), "sha256")

    def _seal(self, kind: str, name: str, value: Any) -> bytes:
        return bytes(self._box.encrypt(msgpack.packb([kind, name, value], use_bin_type=True)))

    def _seal_record(self, kind: str, name: str, value: Any, seq: int) -> bytes:
        return bytes(self._box.encrypt(msgpack.packb([kind, name, value, seq], use_bin_type=True)))

    def _open_record(self, kind: str, index: bytes, sealed: bytes, seq: int) -> tuple[str, Any]:
        """``(name, value)`` of the sealed record in the row (``kind``, ``index``, ``seq``)."""
        try:
            plain = self._box.decrypt(sealed)
            got_kind, name, value, got_seq = msgpack.unpackb(plain, raw=False, strict_map_key=False)
        except (CryptoError, ValueError, TypeError, msgpack.UnpackException):
            raise StoreError(f"a stored {kind} record is damaged") from None
        if got_kind != kind or not isinstance(name, str) or self._index(kind, name) != index:
            raise StoreError(f"a stored {kind} record is not where it belongs")
        if got_seq != seq:
            raise StoreRolledBack(f"a stored {kind} record is not the one last written")
        return name, value

    def _row(self, kind: str, index: bytes) -> tuple[bytes, int] | None:
        row = self._db.execute(
            "SELECT value, seq FROM records WHERE kind = ? AND key = ?", (kind, index)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def get(self, kind: str, name: str, default: Any = None) -> Any:
        """The value stored under (kind, name), or ``default``."""
        index = self._index(kind, name)
        row = self._row(kind, index)
        if row is None:
            return default
        return self._open_record(kind, index, row[0], row[1])[1]

    def put(self, kind: str, name: str, value: Any) -> None:
        """Store ``value`` (msgpack-able) under (kind, name)."""
        index = self._index(kind, name)
        with self.transaction():
            state = self._load_state()
            old = self._db.execute(
                "SELECT seq FROM records WHERE kind = ? AND key = ?", (kind, index)
            ).fetchone()
            seq = state.counter + 1
            digest = state.digest ^ self._element(kind, index, seq)
            count = state.count + 1
            if old is not None:
                digest ^= self._element(kind, index, old[0])
                count -= 1
            self._db.execute(
                "INSERT OR REPLACE INTO records (kind, key, value, seq) VALUES (?, ?, ?, ?)",
                (kind, index, self._seal_record(kind, name, value, seq), seq),
            )
            self._save_state(_State(seq, count, digest))

    def delete(self, kind: str, name: str) -> None:
        """Remove (kind, name) if present."""
        index = self._index(kind, name)
        with self.transaction():
            old = self._db.execute(
                "SELECT seq FROM records WHERE kind = ? AND key = ?", (kind, index)
            ).fetchone()
            if old is None:
                return
            state = self._load_state()
            self._db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, index))
            digest = state.digest ^ self._element(kind, index, old[0])
            self._save_state(_State(state.counter + 1, state.count - 1, digest))

    def names(self, kind: str) -> Iterator[tuple[str, Any]]:
        """Every (name, value) of ``kind`` (names are recovered from the sealed values)."""
        rows = self._db.execute("SELECT key, value, seq FROM records WHERE kind = ?", (kind,))
        for index, sealed, seq in rows:
            yield self._open_record(kind, index, sealed, seq)

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


@dataclass(slots=True)
class _State:
    """The sealed rollback state: write counter, record count, multiset hash."""

    counter: int
    count: int
    digest: int


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
