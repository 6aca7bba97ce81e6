"""The database handle: SQLAlchemy Core on a blocking driver, driven from trio threads.

SQLite is the default (one WAL-mode file under the data directory, foreign keys on);
PostgreSQL fits the same interface because every statement is written with SQLAlchemy Core
and nothing here depends on SQLite-only SQL. Blocking calls run in worker threads through
``trio.to_thread.run_sync``; writes are serialised by one trio lock so SQLite never sees two
writers at once (and PostgreSQL simply sees one writer per process).

Writes are group-committed: whoever holds the write lock runs every write queued so far in
one transaction, each inside its own SAVEPOINT (so one failing write rolls back alone and
its exception goes to its own caller), and commits once. Every caller still returns only
after the commit that holds its write is on disk, but one fsync serves many requests.

Deleted data leaves the SQLite files, not just the tables. ``secure_delete`` overwrites
deleted content with zeros (set explicitly: some builds default to it, others do not).
``auto_vacuum=INCREMENTAL`` (set by :meth:`Database.migrate`) lets freed pages be cut off the
end of the file: after a commit that left at least :data:`RECLAIM_BYTES` free, they are, and
the WAL is checkpointed into the database and truncated, so the files shrink back once a queue
is acknowledged. A write made with ``scrub=True`` (account erasure) always ends that way
before it returns: the WAL still holds earlier images of the erased rows until a checkpoint
copies the zeroed pages back, so only after ``wal_checkpoint(TRUNCATE)`` is the data gone
from the database, WAL and SHM files.
PostgreSQL needs none of this here: autovacuum reclaims dead rows and reuses their space.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
import trio
from sqlalchemy.engine import Connection, Engine

from .migrations import migrate

__all__ = ["RECLAIM_BYTES", "Database", "StoreError", "sqlite_url"]

T = TypeVar("T")

log = logging.getLogger("control.store")

#: Worker threads that may hold a database connection at once.
_THREADS = 8
#: Free space in the SQLite file that is handed back to the file system after a commit;
#: smaller amounts stay for the next inserts to reuse.
RECLAIM_BYTES = 1024 * 1024


class StoreError(Exception):
    """The store could not do what durability or erasure requires."""


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite file at ``path``."""
    return f"sqlite+pysqlite:///{path}"


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module (which would defer BEGIN and
    # break SAVEPOINTs); SQLAlchemy's "begin" event below emits BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers run while the single writer commits; foreign keys enforce the
    # ownership rules the retention design relies on (ON DELETE CASCADE erases dependants).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    # FULL: a commit is on disk before the API answers 2xx (durable envelopes).
    cursor.execute("PRAGMA synchronous=FULL")
    # Deleted rows are overwritten with zeros, whatever this SQLite build's default is.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


class _Job(Generic[T]):
    """One queued write and, once its batch committed, its outcome."""

    def __init__(self, fn: Callable[[Connection], T], scrub: bool) -> None:
        self.fn = fn
        self.scrub = scrub
        self.done = False
        self.value: T | None = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class Database:
    """One database behind ``read`` and ``write``; callers pass plain synchronous functions.

    ``read(fn)`` runs ``fn(conn)`` on a connection in a worker thread; ``write(fn)`` does the
    same inside one transaction, committed before it returns, with writes serialised.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False}
            kwargs["pool_size"] = _THREADS
        self.engine: Engine = sa.create_engine(url, **kwargs)
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _on_sqlite_connect)
            sa.event.listen(self.engine, "begin", _on_sqlite_begin)
        self._write_lock = trio.Lock()
        self._pending: list[_Job[Any]] = []
        self._threads = trio.CapacityLimiter(_THREADS)

    async def migrate(self) -> int:
        """Bring the schema to the newest version; return that version."""
        if self.is_sqlite:
            await trio.to_thread.run_sync(self._enable_incremental_vacuum, limiter=self._threads)
        return await self.write(migrate)

    def _enable_incremental_vacuum(self) -> None:
        raw = self.engine.raw_connection()
        try:
            # Set once per file, not per connection: setting it opens a write transaction.
            # The mode takes effect with a VACUUM (instant on a new, empty file).
            if raw.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                tables = raw.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
                raw.execute("VACUUM")
                if tables:
                    log.info("database rebuilt once for incremental vacuum")
        finally:
            raw.close()

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in a worker thread on a read connection."""
        return await trio.to_thread.run_sync(
            functools.partial(self._run_read, fn), limiter=self._threads
        )

    async def write(self, fn: Callable[[Connection], T], *, scrub: bool = False) -> T:
        """Run ``fn(conn)`` atomically, serialised with every other write; return after the
        commit. ``fn`` may run in a transaction shared with other writes (inside its own
        SAVEPOINT), so it must not commit or roll back itself.

        ``scrub=True`` (erasure): return only once what ``fn`` deleted is gone from every
        file of the store, not only from its tables (see the module docstring).
        """
        job = _Job(fn, scrub)
        self._pending.append(job)
        try:
            async with self._write_lock:
                if not job.done:
                    batch, self._pending = self._pending, []
                    await trio.to_thread.run_sync(
                        functools.partial(self._run_batch, batch), limiter=self._threads
                    )
        except BaseException:
            # Cancelled while waiting: a write whose caller is gone must not run later.
            if job in self._pending:
                self._pending.remove(job)
            raise
        return job.outcome()

    def _run_read(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return fn(conn)

    def _run_batch(self, batch: list[_Job[Any]]) -> None:
        try:
            with self.engine.begin() as conn:
                for job in batch:
                    try:
                        with conn.begin_nested():
                            job.value = job.fn(conn)
                    except Exception as exc:
                        job.error = exc
            if self.is_sqlite:
                scrubbing = [job for job in batch if job.scrub and job.error is None]
                try:
                    self._reclaim_sqlite(scrub=bool(scrubbing))
                except Exception as exc:
                    # Committed, but the erasure is not yet out of every file: say so.
                    for job in scrubbing:
                        job.error = exc
                    if not scrubbing:
                        log.warning("space reclaim failed: %s", type(exc).__name__)
        except Exception as exc:
            # The commit itself failed: no write of the batch happened.
            for job in batch:
                job.error = exc
        finally:
            for job in batch:
                job.done = True

    def _reclaim_sqlite(self, scrub: bool) -> None:
        """After a commit: cut free pages off the file once they add up to
        :data:`RECLAIM_BYTES` (always when scrubbing), then fold the WAL into the database
        and truncate it, so neither file keeps deleted content or freed space."""
        raw = self.engine.raw_connection()
        try:
            free = raw.execute("PRAGMA freelist_count").fetchone()[0]
            page = raw.execute("PRAGMA page_size").fetchone()[0]
            reclaim = free * page >= RECLAIM_BYTES
            if not (scrub or reclaim):
                return
            if free:
                # Each step of this pragma frees one page and sqlite3's execute() steps once;
                # executescript() steps every statement to the end.
                raw.executescript("PRAGMA incremental_vacuum")
            busy, _frames, _copied = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise StoreError("the WAL checkpoint could not complete: a reader held it")
        finally:
            raw.close()

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
