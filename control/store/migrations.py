"""Versioned schema migrations, applied in order inside one transaction each.

Each migration is a function of a connection. Migration 1 creates the tables from the
current metadata; every later migration appends its own explicit, portable DDL (never edits
an applied one) and checks what exists first, so it applies both to databases created by an
older version and to fresh ones, on SQLite and PostgreSQL alike.
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


def _v2_envelope_order(conn: Connection) -> None:
    inspector = sa.inspect(conn)
    if "seq" not in {c["name"] for c in inspector.get_columns("envelopes")}:
        conn.exec_driver_sql("ALTER TABLE envelopes ADD COLUMN seq BIGINT NOT NULL DEFAULT 0")
    if "ix_envelopes_recipient_seq" not in {i["name"] for i in inspector.get_indexes("envelopes")}:
        conn.exec_driver_sql(
            "CREATE INDEX ix_envelopes_recipient_seq ON envelopes (recipient_device_id, seq)"
        )


def _v3_device_lists(conn: Connection) -> None:
    # Portable DDL from the table's own definition; migration 1 made it on a fresh database.
    schema.device_lists.create(conn, checkfirst=True)


def _v4_pq_one_time_prekeys(conn: Connection) -> None:
    schema.pq_one_time_prekeys.create(conn, checkfirst=True)


#: (version, description, step) in ascending order.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "accounts, devices, prekeys, communities, messages, envelopes", _v1_initial),
    (2, "envelope arrival order per recipient device", _v2_envelope_order),
    (3, "cross-signing: account signing keys and signed device lists", _v3_device_lists),
    (4, "one-time PQ (ML-KEM-1024) prekeys", _v4_pq_one_time_prekeys),
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
