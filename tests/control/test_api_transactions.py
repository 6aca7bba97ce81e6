"""Route transaction bodies are module-level functions: called here on a real store, with
no app, request or bus, they make the same decisions and return the same events."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from control.api.guilds import create_guild_tx, delete_guild_tx
from control.api.invites import accept_invite_tx, create_invite_tx
from control.api.members import list_members_tx
from control.config import ControlConfig
from control.errors import Forbidden
from control.store import Database
from control.store import schema as t


@pytest.fixture
async def db(config: ControlConfig) -> AsyncIterator[Database]:
    database = Database(config.resolved_database_url)
    await database.migrate()

    def seed(conn: sa.Connection) -> None:
        for user_id in ("ann", "bob"):
            conn.execute(sa.insert(t.users).values(id=user_id, handle=user_id, created_day=1))

    await database.write(seed)
    yield database
    database.close()


async def test_a_guild_is_created_and_joined_by_invite_through_its_transactions(
    db: Database,
) -> None:
    guild, created = await db.write(lambda conn: create_guild_tx(conn, "ann", "Hideout"))
    assert guild["owner_id"] == "ann" and [c["name"] for c in guild["channels"]] == ["general"]
    assert [(e.type, e.user_ids) for e in created] == [("GUILD_CREATE", frozenset({"ann"}))]

    general = guild["channels"][0]["id"]
    invite, _ = await db.write(lambda conn: create_invite_tx(conn, "ann", general, {}))
    joined, events = await db.write(lambda conn: accept_invite_tx(conn, "bob", invite["code"]))
    assert joined["id"] == guild["id"]
    assert [(e.type, e.user_ids) for e in events] == [
        ("GUILD_CREATE", frozenset({"bob"})),
        ("GUILD_MEMBER_ADD", frozenset({"ann"})),
    ]
    members = await db.read(lambda conn: list_members_tx(conn, "bob", guild["id"]))
    assert [m["user_id"] for m in members] == ["ann", "bob"]


async def test_a_member_who_is_not_the_owner_cannot_delete_the_guild(db: Database) -> None:
    guild, _ = await db.write(lambda conn: create_guild_tx(conn, "ann", "Hideout"))
    general = guild["channels"][0]["id"]
    invite, _ = await db.write(lambda conn: create_invite_tx(conn, "ann", general, {}))
    await db.write(lambda conn: accept_invite_tx(conn, "bob", invite["code"]))

    with pytest.raises(Forbidden):
        await db.write(lambda conn: delete_guild_tx(conn, "bob", guild["id"]))
    remaining = await db.read(lambda conn: conn.execute(sa.select(t.guilds.c.id)).scalars().all())
    assert remaining == [guild["id"]]

    _, deleted = await db.write(lambda conn: delete_guild_tx(conn, "ann", guild["id"]))
    assert [(e.type, e.user_ids) for e in deleted] == [("GUILD_DELETE", frozenset({"ann", "bob"}))]
