"""Versioned schema migrations, applied in order inside one transaction each.

Each migration is a function of a connection. Migration 1 creates the first tables; a later
change appends a new numbered migration with its own explicit DDL (never edits an applied
one), so SQLite and PostgreSQL databases of any age reach the same schema.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import schema

__all__ = ["MIGRATIONS", "migrate"]


def _v1_initial(conn: Connection) -> None:
    tables = [t for name, t in schema.metadata.tables.items() if name != "schema_version"]
    schema.metadata.create_all(conn, tables=tables)


#: (version, description, step) in ascending order.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "accounts, devices, prekeys, communities, messages, envelopes", _v1_initial),
]


def current_version(conn: Connection) -> int:
    """The highest applied migration, 0 on an empty database."""
    schema.schema_version.create(conn, checkfirst=True)
    version = conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar()
    return int(version or 0)


def migrate(conn: Connection) -> int:
    """Apply every migration newer than the database; return the resulting version."""
    version = current_version(conn)
    newest = MIGRATIONS[-1][0]
    if version > newest:
        raise RuntimeError(
            f"database schema version {version} is newer than this program ({newest})"
        )
    for number, _description, step in MIGRATIONS:
        if number > version:
            step(conn)
            conn.execute(sa.insert(schema.schema_version).values(version=number))
            version = number
    return version
