"""Roles: create, edit, reorder and delete them, and give them to or take them from members.

Only roles below the caller's highest can be managed (the owner manages every role) and a
role may only hold permissions the caller holds. Roles are given to and taken from members
the caller outranks (never the owner, never oneself), and a role given may carry, guild-wide
and in its channel overwrites' allows, only bits the caller holds there. Every change
publishes the role event to the guild and CHANNEL_CREATE / CHANNEL_DELETE to members who
gained or lost sight of a channel.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from contract.gateway import EventName
from contract.permissions import (
    ALL,
    Permission,
    RoleInfo,
    can_grant,
    can_manage_member,
    can_manage_role,
    highest_position,
)

from ..bus import Event
from ..community import GuildSnapshot, MemberContext, load_overwrites, member_context
from ..errors import BadRequest, Forbidden, NotFound
from ..ids import new_id
from ..store import schema as t
from ..wire import Field, Schema
from ._routing import Call, Router, commit, id_field, int_field
from .guild_view import member_payload, member_role_ids, role_rows, visibility_events

__all__ = ["router"]

P = Permission
NAME = Field("str", "display name", min=1, max=100)

CREATE_ROLE = Schema(
    "CreateRole",
    {"name": NAME, "permissions": int_field("permission bits", 0, ALL, required=False)},
)
EDIT_ROLE = Schema(
    "EditRole",
    {
        "name": Field("str", "display name", required=False, min=1, max=100),
        "permissions": int_field("permission bits", 0, ALL, required=False),
    },
)
REORDER_ROLES = Schema(
    "ReorderRoles",
    {
        "positions": Field(
            "list",
            "new positions",
            max=250,
            items=Field(
                "object",
                schema=Schema(
                    "RolePosition", {"id": id_field("role"), "position": int_field("", 1, 250)}
                ),
            ),
        )
    },
)

router = Router(tag="roles")


@router.route("GET", "/guilds/{guild_id}/roles", summary="The guild's roles", errors=(404,))
async def list_roles(call: Call, guild_id: str) -> list[dict[str, Any]]:
    user_id = call.me.user_id
    return await call.state.db.read(lambda conn: list_roles_tx(conn, user_id, guild_id))


def list_roles_tx(conn: Connection, caller_id: str, guild_id: str) -> list[dict[str, Any]]:
    """The guild's roles; 404 unless the caller is a member."""
    member_context(conn, guild_id, caller_id)
    return role_rows(conn, guild_id)


def _role_events(
    conn: Connection, guild_id: str, kind: EventName, role: dict[str, Any], before: GuildSnapshot
) -> list[Event]:
    after = GuildSnapshot(conn, guild_id)
    event = Event(kind, {"guild_id": guild_id, "role": role}, after.member_ids())
    return [event, *visibility_events(before, after)]


def _manageable_role(ctx: MemberContext, role_id: str) -> RoleInfo:
    ctx.require(P.MANAGE_ROLES)
    role = ctx.guild.roles.get(role_id)
    if role is None:
        raise NotFound("no such role")
    if not can_manage_role(ctx.guild, ctx.user_id, ctx.role_ids, role):
        raise Forbidden("the role is not below your highest role")
    return role


def _holds_what_role_carries(conn: Connection, ctx: MemberContext, role: RoleInfo) -> bool:
    """Whether the caller holds the role's bits guild-wide and, in every channel where the
    role has an overwrite, the bits that overwrite allows (a role that opens a channel the
    caller cannot see would otherwise let it send anyone there)."""
    held = ctx.permissions()
    if held == ALL:  # the owner and administrators hold every bit in every channel
        return True
    if not can_grant(held, role.permissions):
        return False
    ow = t.overwrites
    allowed = conn.execute(
        sa.select(ow.c.channel_id, ow.c.allow).where(
            ow.c.target_id == role.id, ow.c.target_type == "role", ow.c.allow != 0
        )
    ).all()
    return all(
        can_grant(ctx.permissions(load_overwrites(conn, channel_id)), allow)
        for channel_id, allow in allowed
    )


@router.route(
    "POST",
    "/guilds/{guild_id}/roles",
    summary="Create a role just above @everyone (MANAGE_ROLES; only bits one holds)",
    body=CREATE_ROLE,
    status=201,
    errors=(403, 404),
)
async def create_role(call: Call, guild_id: str) -> dict[str, Any]:
    user_id, body = call.me.user_id, call.body
    return await commit(call, lambda conn: create_role_tx(conn, user_id, guild_id, body))


def create_role_tx(
    conn: Connection, caller_id: str, guild_id: str, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Event]]:
    """Insert a role at position 1 (the others move up); GUILD_ROLE_CREATE."""
    ctx = member_context(conn, guild_id, caller_id)
    held = ctx.require(P.MANAGE_ROLES)
    permissions = body.get("permissions", 0)
    if not can_grant(held, permissions):
        raise Forbidden("a role may only hold permissions you hold")
    before = GuildSnapshot(conn, guild_id)
    conn.execute(
        sa.update(t.roles)
        .where(t.roles.c.guild_id == guild_id, t.roles.c.position >= 1)
        .values(position=t.roles.c.position + 1)
    )
    role = {
        "id": new_id(),
        "name": body["name"],
        "permissions": permissions,
        "position": 1,
    }
    conn.execute(sa.insert(t.roles).values(guild_id=guild_id, **role))
    return role, _role_events(conn, guild_id, EventName.GUILD_ROLE_CREATE, role, before)


@router.route(
    "PATCH",
    "/guilds/{guild_id}/roles/{role_id}",
    summary="Edit a role below your highest (MANAGE_ROLES; only bits one holds)",
    body=EDIT_ROLE,
    errors=(403, 404),
)
async def edit_role(call: Call, guild_id: str, role_id: str) -> dict[str, Any]:
    user_id, body = call.me.user_id, call.body
    return await commit(call, lambda conn: edit_role_tx(conn, user_id, guild_id, role_id, body))


def edit_role_tx(
    conn: Connection, caller_id: str, guild_id: str, role_id: str, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Event]]:
    """Apply an EditRole body; GUILD_ROLE_UPDATE."""
    ctx = member_context(conn, guild_id, caller_id)
    _manageable_role(ctx, role_id)
    if "permissions" in body and not can_grant(ctx.permissions(), body["permissions"]):
        raise Forbidden("a role may only hold permissions you hold")
    before = GuildSnapshot(conn, guild_id)
    if body:
        conn.execute(sa.update(t.roles).where(t.roles.c.id == role_id).values(**body))
    role = next(r for r in role_rows(conn, guild_id) if r["id"] == role_id)
    return role, _role_events(conn, guild_id, EventName.GUILD_ROLE_UPDATE, role, before)


@router.route(
    "PATCH",
    "/guilds/{guild_id}/roles",
    summary="Reorder roles below your highest (MANAGE_ROLES)",
    body=REORDER_ROLES,
    errors=(403, 404),
)
async def reorder_roles(call: Call, guild_id: str) -> list[dict[str, Any]]:
    user_id, positions = call.me.user_id, call.body["positions"]
    return await commit(call, lambda conn: reorder_roles_tx(conn, user_id, guild_id, positions))


def reorder_roles_tx(
    conn: Connection, caller_id: str, guild_id: str, positions: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[Event]]:
    """Move roles to new positions; GUILD_ROLES_UPDATE with every role."""
    ctx = member_context(conn, guild_id, caller_id)
    top = highest_position(ctx.guild, ctx.user_id, ctx.role_ids)
    for item in positions:
        if item["id"] == guild_id:
            raise BadRequest("@everyone always stays at position 0")
        _manageable_role(ctx, item["id"])
        if item["position"] >= top:
            raise Forbidden("a role cannot be moved to or above your highest role")
    for item in positions:
        conn.execute(
            sa.update(t.roles).where(t.roles.c.id == item["id"]).values(position=item["position"])
        )
    roles = role_rows(conn, guild_id)
    members = GuildSnapshot(conn, guild_id).member_ids()
    event = Event(EventName.GUILD_ROLES_UPDATE, {"guild_id": guild_id, "roles": roles}, members)
    return roles, [event]


@router.route(
    "DELETE",
    "/guilds/{guild_id}/roles/{role_id}",
    summary="Delete a role below your highest (MANAGE_ROLES)",
    status=204,
    errors=(403, 404),
)
async def delete_role(call: Call, guild_id: str, role_id: str) -> None:
    user_id = call.me.user_id
    await commit(call, lambda conn: delete_role_tx(conn, user_id, guild_id, role_id))


def delete_role_tx(
    conn: Connection, caller_id: str, guild_id: str, role_id: str
) -> tuple[None, list[Event]]:
    """Delete the role and its overwrites; GUILD_ROLE_DELETE and visibility events."""
    ctx = member_context(conn, guild_id, caller_id)
    if role_id == guild_id:
        raise BadRequest("@everyone cannot be deleted")
    _manageable_role(ctx, role_id)
    before = GuildSnapshot(conn, guild_id)
    conn.execute(sa.delete(t.overwrites).where(t.overwrites.c.target_id == role_id))
    conn.execute(sa.delete(t.roles).where(t.roles.c.id == role_id))
    after = GuildSnapshot(conn, guild_id)
    event = Event(
        EventName.GUILD_ROLE_DELETE, {"guild_id": guild_id, "role_id": role_id}, after.member_ids()
    )
    return None, [event, *visibility_events(before, after)]


def assign_role_tx(
    conn: Connection, caller_id: str, guild_id: str, user_id: str, role_id: str, add: bool
) -> tuple[None, list[Event]]:
    """Give (``add``) or take ``role_id`` to or from the member ``user_id``, who must rank
    below the caller; GUILD_MEMBER_UPDATE and visibility events."""
    ctx = member_context(conn, guild_id, caller_id)
    if role_id == guild_id:
        raise BadRequest("@everyone is held by every member")
    role = _manageable_role(ctx, role_id)
    target = member_role_ids(conn, guild_id, user_id)
    if target is None:
        raise NotFound("no such member")
    if not can_manage_member(ctx.guild, ctx.user_id, ctx.role_ids, user_id, target):
        raise Forbidden("the member is not below your highest role")
    # Taking a role away is decided by hierarchy alone (as kicking the member would be).
    if add and not _holds_what_role_carries(conn, ctx, role):
        raise Forbidden("a role may only be given by someone holding all its permissions")
    before = GuildSnapshot(conn, guild_id)
    mr = t.member_roles
    conn.execute(
        sa.delete(mr).where(
            mr.c.guild_id == guild_id, mr.c.user_id == user_id, mr.c.role_id == role_id
        )
    )
    if add:
        conn.execute(sa.insert(mr).values(guild_id=guild_id, user_id=user_id, role_id=role_id))
    after = GuildSnapshot(conn, guild_id)
    member = member_payload(conn, guild_id, user_id)
    events = [Event(EventName.GUILD_MEMBER_UPDATE, member, after.member_ids())]
    return None, events + visibility_events(before, after)


@router.route(
    "PUT",
    "/guilds/{guild_id}/members/{user_id}/roles/{role_id}",
    summary="Give a member below you a role below your highest (MANAGE_ROLES; only bits one holds)",
    status=204,
    errors=(403, 404),
)
async def add_member_role(call: Call, guild_id: str, user_id: str, role_id: str) -> None:
    caller_id = call.me.user_id
    await commit(
        call, lambda conn: assign_role_tx(conn, caller_id, guild_id, user_id, role_id, True)
    )


@router.route(
    "DELETE",
    "/guilds/{guild_id}/members/{user_id}/roles/{role_id}",
    summary="Take a role below your highest from a member below you (MANAGE_ROLES)",
    status=204,
    errors=(403, 404),
)
async def remove_member_role(call: Call, guild_id: str, user_id: str, role_id: str) -> None:
    caller_id = call.me.user_id
    await commit(
        call, lambda conn: assign_role_tx(conn, caller_id, guild_id, user_id, role_id, False)
    )
