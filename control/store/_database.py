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
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
import trio
from sqlalchemy.engine import Connection, Engine

from .migrations import migrate

__all__ = ["Database", "sqlite_url"]

T = TypeVar("T")

#: Worker threads that may hold a database connection at once.
_THREADS = 8


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
    cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


class _Job(Generic[T]):
    """One queued write and, once its batch committed, its outcome."""

    def __init__(self, fn: Callable[[Connection], T]) -> None:
        self.fn = fn
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
        return await self.write(migrate)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in a worker thread on a read connection."""
        return await trio.to_thread.run_sync(
            functools.partial(self._run_read, fn), limiter=self._threads
        )

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` atomically, serialised with every other write; return after the
        commit. ``fn`` may run in a transaction shared with other writes (inside its own
        SAVEPOINT), so it must not commit or roll back itself."""
        job = _Job(fn)
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
        except Exception as exc:
            # The commit itself failed: no write of the batch happened.
            for job in batch:
                job.error = exc
        finally:
            for job in batch:
                job.done = True

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
