"""Members: list them, kick, leave, ban and unban.

Kicking and banning reach only members below the caller's highest role; the owner cannot
leave (ownership must move or the guild go first). A member who goes is announced to the
rest with GUILD_MEMBER_REMOVE and told GUILD_DELETE.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from contract.gateway import EventName
from contract.permissions import Permission, can_manage_member

from ..bus import Event
from ..community import GuildSnapshot, member_context
from ..errors import Conflict, Forbidden, NotFound
from ..store import schema as t
from ..wire import Schema
from ._routing import Call, Router, commit
from .guild_view import member_role_ids

__all__ = ["router"]

P = Permission
EMPTY = Schema("Empty", {})

router = Router(tag="members")


@router.route("GET", "/guilds/{guild_id}/members", summary="The guild's members", errors=(404,))
async def list_members(call: Call, guild_id: str) -> list[dict[str, Any]]:
    user_id = call.me.user_id
    return await call.state.db.read(lambda conn: list_members_tx(conn, user_id, guild_id))


def list_members_tx(conn: Connection, caller_id: str, guild_id: str) -> list[dict[str, Any]]:
    """Every member with handle and roles; 404 unless the caller is a member."""
    member_context(conn, guild_id, caller_id)
    snap = GuildSnapshot(conn, guild_id)
    handles = {
        user_id: handle
        for user_id, handle in conn.execute(
            sa.select(t.users.c.id, t.users.c.handle).where(t.users.c.id.in_(list(snap.members)))
        )
    }
    return [
        {"user_id": u, "handle": handles.get(u), "roles": sorted(r)}
        for u, r in sorted(snap.members.items())
    ]


def _remove_member(conn: Connection, guild_id: str, user_id: str) -> None:
    conn.execute(
        sa.delete(t.members).where(t.members.c.guild_id == guild_id, t.members.c.user_id == user_id)
    )


def _member_gone(conn: Connection, guild_id: str, user_id: str) -> list[Event]:
    after = GuildSnapshot(conn, guild_id)
    data = {"guild_id": guild_id, "user_id": user_id}
    return [
        Event(EventName.GUILD_MEMBER_REMOVE, data, after.member_ids()),
        Event(EventName.GUILD_DELETE, {"id": guild_id}, frozenset({user_id})),
    ]


@router.route(
    "DELETE",
    "/guilds/{guild_id}/members/{user_id}",
    summary="Kick a member below you (KICK_MEMBERS)",
    status=204,
    errors=(403, 404),
)
async def kick(call: Call, guild_id: str, user_id: str) -> None:
    caller_id = call.me.user_id
    await commit(call, lambda conn: kick_tx(conn, caller_id, guild_id, user_id))


def kick_tx(
    conn: Connection, caller_id: str, guild_id: str, user_id: str
) -> tuple[None, list[Event]]:
    """Remove the member ``user_id``, who must be below the caller."""
    ctx = member_context(conn, guild_id, caller_id)
    ctx.require(P.KICK_MEMBERS)
    target = member_role_ids(conn, guild_id, user_id)
    if target is None:
        raise NotFound("no such member")
    if not can_manage_member(ctx.guild, ctx.user_id, ctx.role_ids, user_id, target):
        raise Forbidden("the member is not below your highest role")
    _remove_member(conn, guild_id, user_id)
    return None, _member_gone(conn, guild_id, user_id)


@router.route(
    "DELETE",
    "/users/@me/guilds/{guild_id}",
    summary="Leave a guild",
    status=204,
    errors=(404, 409),
)
async def leave(call: Call, guild_id: str) -> None:
    user_id = call.me.user_id
    await commit(call, lambda conn: leave_tx(conn, user_id, guild_id))


def leave_tx(conn: Connection, user_id: str, guild_id: str) -> tuple[None, list[Event]]:
    """Remove ``user_id`` from the guild at their own request (not the owner)."""
    ctx = member_context(conn, guild_id, user_id)
    if ctx.is_owner:
        raise Conflict("the owner must transfer or delete the guild instead")
    _remove_member(conn, guild_id, user_id)
    return None, _member_gone(conn, guild_id, user_id)


@router.route(
    "PUT",
    "/guilds/{guild_id}/bans/{user_id}",
    summary="Ban a user (BAN_MEMBERS; members must be below you)",
    body=EMPTY,
    status=204,
    errors=(403, 404),
)
async def ban(call: Call, guild_id: str, user_id: str) -> None:
    caller_id = call.me.user_id
    await commit(call, lambda conn: ban_tx(conn, caller_id, guild_id, user_id))


def ban_tx(
    conn: Connection, caller_id: str, guild_id: str, user_id: str
) -> tuple[None, list[Event]]:
    """Ban ``user_id`` (a member below the caller, or any other user) and remove them."""
    ctx = member_context(conn, guild_id, caller_id)
    ctx.require(P.BAN_MEMBERS)
    if conn.execute(sa.select(t.users.c.id).where(t.users.c.id == user_id)).first() is None:
        raise NotFound("no such user")
    target = member_role_ids(conn, guild_id, user_id)
    if (
        user_id == ctx.guild.owner_id
        or user_id == ctx.user_id
        or (
            target is not None
            and not can_manage_member(ctx.guild, ctx.user_id, ctx.role_ids, user_id, target)
        )
    ):
        raise Forbidden("the member is not below your highest role")
    bans = t.bans
    conn.execute(sa.delete(bans).where(bans.c.guild_id == guild_id, bans.c.user_id == user_id))
    conn.execute(sa.insert(bans).values(guild_id=guild_id, user_id=user_id))
    events: list[Event] = []
    if target is not None:
        _remove_member(conn, guild_id, user_id)
        events = _member_gone(conn, guild_id, user_id)
    return None, events


@router.route(
    "DELETE",
    "/guilds/{guild_id}/bans/{user_id}",
    summary="Unban (BAN_MEMBERS)",
    status=204,
    errors=(403, 404),
)
async def unban(call: Call, guild_id: str, user_id: str) -> None:
    caller_id = call.me.user_id
    await commit(call, lambda conn: unban_tx(conn, caller_id, guild_id, user_id))


def unban_tx(
    conn: Connection, caller_id: str, guild_id: str, user_id: str
) -> tuple[None, list[Event]]:
    """Lift the ban of ``user_id``; 404 when there is none."""
    ctx = member_context(conn, guild_id, caller_id)
    ctx.require(P.BAN_MEMBERS)
    bans = t.bans
    deleted = conn.execute(
        sa.delete(bans).where(bans.c.guild_id == guild_id, bans.c.user_id == user_id)
    ).rowcount
    if not deleted:
        raise NotFound("no such ban")
    return None, []


@router.route(
    "GET",
    "/guilds/{guild_id}/bans",
    summary="Banned user ids (BAN_MEMBERS)",
    errors=(403, 404),
)
async def list_bans(call: Call, guild_id: str) -> list[str]:
    user_id = call.me.user_id
    return await call.state.db.read(lambda conn: list_bans_tx(conn, user_id, guild_id))


def list_bans_tx(conn: Connection, caller_id: str, guild_id: str) -> list[str]:
    """The banned user ids, sorted."""
    member_context(conn, guild_id, caller_id).require(P.BAN_MEMBERS)
    return sorted(
        conn.execute(sa.select(t.bans.c.user_id).where(t.bans.c.guild_id == guild_id)).scalars()
    )
