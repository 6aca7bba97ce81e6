"""The store: migrations, SQLite settings, retention rules and serialised writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
import trio

from control.store import MIGRATIONS, RETENTION, Database, metadata, sqlite_url
from control.store import schema as t


async def test_migrations_create_every_table_and_are_idempotent(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path / "db.sqlite3"))
    assert await db.migrate() == MIGRATIONS[-1][0]
    assert await db.migrate() == MIGRATIONS[-1][0]
    names = await db.read(lambda conn: set(sa.inspect(conn).get_table_names()))
    assert names == set(metadata.tables)
    db.close()


def test_every_table_has_a_retention_rule() -> None:
    assert set(RETENTION) == set(metadata.tables)


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path / "db.sqlite3"))
    await db.migrate()

    def pragmas(conn: sa.Connection) -> tuple[str, int]:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        keys = conn.exec_driver_sql("PRAGMA foreign_keys").scalar()
        return str(mode), int(keys or 0)

    assert await db.read(pragmas) == ("wal", 1)
    db.close()


async def test_deleting_a_user_cascades_to_devices(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path / "db.sqlite3"))
    await db.migrate()

    def seed(conn: sa.Connection) -> None:
        conn.execute(sa.insert(t.users).values(id="u1", handle="ann", created_day=1))
        conn.execute(
            sa.insert(t.devices).values(
                id="d1", user_id="u1", identity_key=b"k" * 32, created_day=1, last_seen_day=1
            )
        )

    await db.write(seed)
    await db.write(lambda conn: conn.execute(sa.delete(t.users).where(t.users.c.id == "u1")))
    count = await db.read(
        lambda conn: conn.execute(sa.select(sa.func.count()).select_from(t.devices)).scalar()
    )
    assert count == 0
    db.close()


async def test_concurrent_writes_are_serialised_and_all_commit(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path / "db.sqlite3"))
    await db.migrate()

    async def add(i: int) -> None:
        await db.write(
            lambda conn: conn.execute(
                sa.insert(t.users).values(id=f"u{i}", handle=f"h{i}", created_day=1)
            )
        )

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(add, i)
    count = await db.read(
        lambda conn: conn.execute(sa.select(sa.func.count()).select_from(t.users)).scalar()
    )
    assert count == 40
    db.close()


async def test_migration_2_upgrades_a_version_1_database(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path / "db.sqlite3"))
    await db.migrate()

    def downgrade(conn: sa.Connection) -> None:
        conn.exec_driver_sql("DROP INDEX ix_envelopes_recipient_seq")
        conn.exec_driver_sql("ALTER TABLE envelopes DROP COLUMN seq")
        conn.execute(sa.delete(t.schema_version).where(t.schema_version.c.version > 1))

    await db.write(downgrade)
    assert await db.migrate() == MIGRATIONS[-1][0]
    columns = await db.read(
        lambda conn: {c["name"] for c in sa.inspect(conn).get_columns("envelopes")}
    )
    assert "seq" in columns
    db.close()


async def test_sqlite_deletes_securely_and_vacuums_incrementally(tmp_path: Path) -> None:
    # A file from before: created without auto_vacuum, already holding tables.
    path = tmp_path / "old.sqlite3"
    legacy = sqlite3.connect(path)
    legacy.execute("CREATE TABLE leftover (x BLOB)")
    legacy.commit()
    legacy.close()
    db = Database(sqlite_url(path))
    await db.migrate()

    def pragmas(conn: sa.Connection) -> tuple[int, int]:
        secure = conn.exec_driver_sql("PRAGMA secure_delete").scalar()
        vacuum = conn.exec_driver_sql("PRAGMA auto_vacuum").scalar()
        return int(secure or 0), int(vacuum or 0)

    assert await db.read(pragmas) == (1, 2), "secure_delete on, auto_vacuum incremental"
    db.close()


async def test_migration_3_adds_the_signed_device_lists_to_a_version_2_database(
    tmp_path: Path,
) -> None:
    db = Database(sqlite_url(tmp_path / "db.sqlite3"))
    await db.migrate()

    def downgrade(conn: sa.Connection) -> None:
        conn.exec_driver_sql("DROP TABLE device_lists")
        conn.execute(sa.delete(t.schema_version).where(t.schema_version.c.version > 2))

    await db.write(downgrade)
    assert await db.migrate() == MIGRATIONS[-1][0]
    tables = await db.read(lambda conn: set(sa.inspect(conn).get_table_names()))
    assert "device_lists" in tables
    db.close()


async def test_migration_4_adds_one_time_pq_prekeys_to_a_version_3_database(
    tmp_path: Path,
) -> None:
    db = Database(sqlite_url(tmp_path / "db.sqlite3"))
    await db.migrate()

    def downgrade(conn: sa.Connection) -> None:
        conn.exec_driver_sql("DROP TABLE pq_one_time_prekeys")
        conn.execute(sa.delete(t.schema_version).where(t.schema_version.c.version > 3))

    await db.write(downgrade)
    assert await db.migrate() == MIGRATIONS[-1][0]
    tables = await db.read(lambda conn: set(sa.inspect(conn).get_table_names()))
    assert "pq_one_time_prekeys" in tables
    db.close()
