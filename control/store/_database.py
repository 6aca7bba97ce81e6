"""The database handle: SQLAlchemy Core on a blocking driver, driven from trio threads.

SQLite is the default (one WAL-mode file under the data directory, foreign keys on);
PostgreSQL fits the same interface because every statement is written with SQLAlchemy Core
and nothing here depends on SQLite-only SQL. Blocking calls run in worker threads through
``trio.to_thread.run_sync``; writes are serialised by one trio lock so SQLite never sees two
writers at once (and PostgreSQL simply sees one writer per process).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
    cursor = dbapi_connection.cursor()
    # WAL lets readers run while the single writer commits; foreign keys enforce the
    # ownership rules the retention design relies on (ON DELETE CASCADE erases dependants).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    # FULL: a commit is on disk before the API answers 2xx (durable envelopes).
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


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
        self._write_lock = trio.Lock()
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
        """Run ``fn(conn)`` in one transaction, serialised with every other write."""
        async with self._write_lock:
            return await trio.to_thread.run_sync(
                functools.partial(self._run_write, fn), limiter=self._threads
            )

    def _run_read(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return fn(conn)

    def _run_write(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.begin() as conn:
            return fn(conn)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
