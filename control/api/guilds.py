"""Guilds: create, list, read, edit, delete and transfer.

Every handler decides through ``control.community`` (and so the one permission function).
State changes are published as dispatch events addressed, at publish time, to exactly the
members allowed to see them; a change of owner also publishes CHANNEL_CREATE and
CHANNEL_DELETE to the members who gained or lost sight of a channel.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from contract.gateway import EventName
from contract.permissions import DEFAULT_EVERYONE, Permission

from ..bus import Event
from ..community import GuildSnapshot, member_context
from ..errors import Forbidden, NotFound
from ..ids import new_id
from ..store import schema as t
from ..wire import Field, Schema
from ._routing import Call, Router, commit, id_field
from .channels import DEFAULT_RETENTION_DAYS
from .guild_view import full_guild, guild_name, member_role_ids, visibility_events

__all__ = ["router"]

P = Permission
NAME = Field("str", "display name", min=1, max=100)

CREATE_GUILD = Schema("CreateGuild", {"name": NAME})
EDIT_GUILD = Schema(
    "EditGuild", {"name": Field("str", "display name", required=False, min=1, max=100)}
)
TRANSFER = Schema("TransferGuild", {"owner_id": id_field("the new owner (a member)")})

router = Router(tag="guilds")


@router.route(
    "POST",
    "/guilds",
    summary="Create a guild (with @everyone and #general)",
    body=CREATE_GUILD,
    status=201,
)
async def create_guild(call: Call) -> dict[str, Any]:
    user_id, name = call.me.user_id, call.body["name"]
    return await commit(call, lambda conn: create_guild_tx(conn, user_id, name))


def create_guild_tx(
    conn: Connection, owner_id: str, name: str
) -> tuple[dict[str, Any], list[Event]]:
    """Insert a guild owned by ``owner_id`` with its @everyone role and #general."""
    guild_id = new_id()
    conn.execute(sa.insert(t.guilds).values(id=guild_id, name=name, owner_id=owner_id))
    conn.execute(
        sa.insert(t.roles).values(
            id=guild_id,
            guild_id=guild_id,
            name="@everyone",
            permissions=DEFAULT_EVERYONE,
            position=0,
        )
    )
    conn.execute(sa.insert(t.members).values(guild_id=guild_id, user_id=owner_id))
    conn.execute(
        sa.insert(t.channels).values(
            id=new_id(),
            guild_id=guild_id,
            type="text",
            name="general",
            topic=None,
            position=0,
            parent_id=None,
            user_limit=0,
            bitrate=64_000,
            retention_days=DEFAULT_RETENTION_DAYS,
        )
    )
    guild = full_guild(conn, guild_id, owner_id)
    return guild, [Event(EventName.GUILD_CREATE, guild, frozenset({owner_id}))]


@router.route("GET", "/users/@me/guilds", summary="The guilds the caller belongs to")
async def my_guilds(call: Call) -> list[dict[str, Any]]:
    user_id = call.me.user_id
    return await call.state.db.read(lambda conn: my_guilds_tx(conn, user_id))


def my_guilds_tx(conn: Connection, user_id: str) -> list[dict[str, Any]]:
    """The guilds ``user_id`` belongs to: id, name and owner."""
    stmt = (
        sa.select(t.guilds.c.id, t.guilds.c.name, t.guilds.c.owner_id)
        .join(t.members, t.members.c.guild_id == t.guilds.c.id)
        .where(t.members.c.user_id == user_id)
        .order_by(t.guilds.c.id)
    )
    return [{"id": r.id, "name": r.name, "owner_id": r.owner_id} for r in conn.execute(stmt)]


@router.route(
    "GET",
    "/guilds/{guild_id}",
    summary="A guild with its roles and visible channels",
    errors=(404,),
)
async def get_guild(call: Call, guild_id: str) -> dict[str, Any]:
    user_id = call.me.user_id
    return await call.state.db.read(lambda conn: get_guild_tx(conn, user_id, guild_id))


def get_guild_tx(conn: Connection, caller_id: str, guild_id: str) -> dict[str, Any]:
    """The guild as the caller sees it; 404 unless the caller is a member."""
    member_context(conn, guild_id, caller_id)
    return full_guild(conn, guild_id, caller_id)


@router.route(
    "PATCH",
    "/guilds/{guild_id}",
    summary="Edit a guild (MANAGE_GUILD)",
    body=EDIT_GUILD,
    errors=(403, 404),
)
async def edit_guild(call: Call, guild_id: str) -> dict[str, Any]:
    user_id, changes = call.me.user_id, call.body
    return await commit(call, lambda conn: edit_guild_tx(conn, user_id, guild_id, changes))


def edit_guild_tx(
    conn: Connection, caller_id: str, guild_id: str, changes: dict[str, Any]
) -> tuple[dict[str, Any], list[Event]]:
    """Apply an EditGuild body; GUILD_UPDATE to every member."""
    ctx = member_context(conn, guild_id, caller_id)
    ctx.require(P.MANAGE_GUILD)
    if "name" in changes:
        conn.execute(
            sa.update(t.guilds).where(t.guilds.c.id == guild_id).values(name=changes["name"])
        )
    snap = GuildSnapshot(conn, guild_id)
    data = {
        "id": guild_id,
        "name": guild_name(conn, guild_id),
        "owner_id": snap.guild.owner_id,
    }
    return data, [Event(EventName.GUILD_UPDATE, data, snap.member_ids())]


@router.route(
    "DELETE",
    "/guilds/{guild_id}",
    summary="Delete a guild (owner only)",
    status=204,
    errors=(403, 404),
)
async def delete_guild(call: Call, guild_id: str) -> None:
    user_id = call.me.user_id
    await commit(call, lambda conn: delete_guild_tx(conn, user_id, guild_id))


def delete_guild_tx(conn: Connection, caller_id: str, guild_id: str) -> tuple[None, list[Event]]:
    """Delete the guild (and by cascade everything in it); GUILD_DELETE to its members."""
    ctx = member_context(conn, guild_id, caller_id)
    if not ctx.is_owner:
        raise Forbidden("only the owner may delete a guild")
    members = GuildSnapshot(conn, guild_id).member_ids()
    conn.execute(sa.delete(t.guilds).where(t.guilds.c.id == guild_id))
    return None, [Event(EventName.GUILD_DELETE, {"id": guild_id}, members)]


@router.route(
    "POST",
    "/guilds/{guild_id}/transfer",
    summary="Transfer ownership to another member (owner only)",
    body=TRANSFER,
    errors=(403, 404),
)
async def transfer(call: Call, guild_id: str) -> dict[str, Any]:
    user_id, new_owner = call.me.user_id, call.body["owner_id"]
    return await commit(call, lambda conn: transfer_tx(conn, user_id, guild_id, new_owner))


def transfer_tx(
    conn: Connection, caller_id: str, guild_id: str, new_owner: str
) -> tuple[dict[str, Any], list[Event]]:
    """Make the member ``new_owner`` the owner; GUILD_UPDATE and any visibility changes."""
    ctx = member_context(conn, guild_id, caller_id)
    if not ctx.is_owner:
        raise Forbidden("only the owner may transfer a guild")
    if member_role_ids(conn, guild_id, new_owner) is None:
        raise NotFound("the new owner must be a member")
    before = GuildSnapshot(conn, guild_id)
    conn.execute(sa.update(t.guilds).where(t.guilds.c.id == guild_id).values(owner_id=new_owner))
    after = GuildSnapshot(conn, guild_id)
    data = {"id": guild_id, "name": guild_name(conn, guild_id), "owner_id": new_owner}
    events = [Event(EventName.GUILD_UPDATE, data, after.member_ids())]
    return data, events + visibility_events(before, after)
