"""Invites: create, list, look up, accept and revoke.

An invite names a channel, expires after ``max_age`` seconds and is used up after
``max_uses`` joins (0 = never / unlimited). Banned users cannot join; a member accepting
again just gets the guild back.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from contract.gateway import EventName
from contract.permissions import Permission

from ..bus import Event
from ..community import GuildSnapshot, load_channel, member_context
from ..errors import Conflict, Forbidden, Gone, NotFound
from ..ids import new_invite_code, now
from ..store import schema as t
from ..wire import Schema
from ._routing import Call, Router, commit, int_field
from .guild_view import full_guild, guild_name, member_payload, member_role_ids

__all__ = ["router"]

P = Permission
CREATE_INVITE = Schema(
    "CreateInvite",
    {
        "max_uses": int_field("0 = unlimited", 0, 1000, required=False),
        "max_age": int_field("seconds until expiry; 0 = never", 0, 30 * 86400, required=False),
    },
)
EMPTY = Schema("Empty", {})

router = Router(tag="invites")


@router.route(
    "POST",
    "/channels/{channel_id}/invites",
    summary="Create an invite (CREATE_INSTANT_INVITE in the channel)",
    body=CREATE_INVITE,
    status=201,
    errors=(403, 404),
)
async def create_invite(call: Call, channel_id: str) -> dict[str, Any]:
    user_id, body = call.me.user_id, call.body
    return await commit(call, lambda conn: create_invite_tx(conn, user_id, channel_id, body))


def create_invite_tx(
    conn: Connection, caller_id: str, channel_id: str, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Event]]:
    """Insert an invite to the channel from a CreateInvite body (default: one day)."""
    channel = load_channel(conn, channel_id)
    ctx = member_context(conn, channel.guild_id, caller_id)
    if not ctx.channel_permissions(conn, channel) & P.CREATE_INSTANT_INVITE:
        raise Forbidden("missing permission CREATE_INSTANT_INVITE")
    max_age = body.get("max_age", 86400)
    invite = {
        "code": new_invite_code(),
        "guild_id": channel.guild_id,
        "channel_id": channel_id,
        "creator_id": caller_id,
        "max_uses": body.get("max_uses", 0),
        "uses": 0,
        "expires_at": now() + max_age if max_age else None,
    }
    conn.execute(sa.insert(t.invites).values(**invite))
    return invite, []


@router.route(
    "GET",
    "/guilds/{guild_id}/invites",
    summary="The guild's invites (MANAGE_GUILD)",
    errors=(403, 404),
)
async def list_invites(call: Call, guild_id: str) -> list[dict[str, Any]]:
    user_id = call.me.user_id
    return await call.state.db.read(lambda conn: list_invites_tx(conn, user_id, guild_id))


def list_invites_tx(conn: Connection, caller_id: str, guild_id: str) -> list[dict[str, Any]]:
    """Every invite of the guild, by code."""
    member_context(conn, guild_id, caller_id).require(P.MANAGE_GUILD)
    rows = (
        conn.execute(
            sa.select(t.invites).where(t.invites.c.guild_id == guild_id).order_by(t.invites.c.code)
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]


def _live_invite(conn: Connection, code: str) -> Any:
    row = conn.execute(sa.select(t.invites).where(t.invites.c.code == code)).first()
    if row is None:
        raise NotFound("no such invite")
    if row.expires_at is not None and row.expires_at <= now():
        raise Gone("the invite expired")
    if row.max_uses and row.uses >= row.max_uses:
        raise Gone("the invite has been used up")
    return row


@router.route(
    "GET",
    "/invites/{code}",
    summary="What an invite leads to",
    errors=(404, 410),
)
async def get_invite(call: Call, code: str) -> dict[str, Any]:
    return await call.state.db.read(lambda conn: get_invite_tx(conn, code))


def get_invite_tx(conn: Connection, code: str) -> dict[str, Any]:
    """The guild a live invite leads to; 404 unknown, 410 expired or used up."""
    row = _live_invite(conn, code)
    return {"code": code, "guild_id": row.guild_id, "guild_name": guild_name(conn, row.guild_id)}


@router.route(
    "POST",
    "/invites/{code}",
    summary="Join a guild by invite",
    body=EMPTY,
    errors=(403, 404, 410),
)
async def accept_invite(call: Call, code: str) -> dict[str, Any]:
    user_id = call.me.user_id
    return await commit(call, lambda conn: accept_invite_tx(conn, user_id, code))


def accept_invite_tx(
    conn: Connection, user_id: str, code: str
) -> tuple[dict[str, Any], list[Event]]:
    """Make ``user_id`` a member through a live invite; GUILD_CREATE to them and
    GUILD_MEMBER_ADD to the others. A member accepting again gets the guild, no events."""
    row = _live_invite(conn, code)
    guild_id = row.guild_id
    bans = t.bans
    banned = conn.execute(
        sa.select(bans.c.user_id).where(bans.c.guild_id == guild_id, bans.c.user_id == user_id)
    ).first()
    if banned is not None:
        raise Forbidden("you are banned from this guild")
    if member_role_ids(conn, guild_id, user_id) is not None:
        return full_guild(conn, guild_id, user_id), []
    try:
        with conn.begin_nested():
            conn.execute(sa.insert(t.members).values(guild_id=guild_id, user_id=user_id))
    except IntegrityError:
        raise Conflict("already a member") from None
    conn.execute(
        sa.update(t.invites).where(t.invites.c.code == code).values(uses=t.invites.c.uses + 1)
    )
    guild = full_guild(conn, guild_id, user_id)
    others = GuildSnapshot(conn, guild_id).member_ids() - {user_id}
    member = member_payload(conn, guild_id, user_id)
    return guild, [
        Event(EventName.GUILD_CREATE, guild, frozenset({user_id})),
        Event(EventName.GUILD_MEMBER_ADD, member, others),
    ]


@router.route(
    "DELETE",
    "/invites/{code}",
    summary="Revoke an invite (creator or MANAGE_GUILD)",
    status=204,
    errors=(403, 404),
)
async def delete_invite(call: Call, code: str) -> None:
    user_id = call.me.user_id
    await commit(call, lambda conn: delete_invite_tx(conn, user_id, code))


def delete_invite_tx(conn: Connection, caller_id: str, code: str) -> tuple[None, list[Event]]:
    """Delete the invite; its creator may, anyone else needs MANAGE_GUILD."""
    row = conn.execute(sa.select(t.invites).where(t.invites.c.code == code)).first()
    if row is None:
        raise NotFound("no such invite")
    ctx = member_context(conn, row.guild_id, caller_id)
    if row.creator_id != ctx.user_id:
        ctx.require(P.MANAGE_GUILD)
    conn.execute(sa.delete(t.invites).where(t.invites.c.code == code))
    return None, []
