"""Channels and their permission overwrites.

Reading a channel needs VIEW_CHANNEL; creating, editing and deleting one MANAGE_CHANNELS.
Setting or removing an overwrite needs MANAGE_ROLES in the channel, a target below the caller
(a role below its highest, a member it outranks) and every bit the overwrite names, before
and after the change, held by the caller in the channel. A change of overwrites publishes
CHANNEL_CREATE and CHANNEL_DELETE to the members who gained or lost sight of a channel, and
CHANNEL_UPDATE to those who kept it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from contract.gateway import EventName
from contract.permissions import (
    ALL,
    Overwrite,
    Permission,
    can_change_overwrite,
    can_manage_member,
    can_manage_role,
)

from ..bus import Event
from ..community import GuildSnapshot, MemberContext, load_channel, load_overwrites, member_context
from ..errors import BadRequest, Forbidden, NotFound
from ..ids import new_id
from ..store import schema as t
from ..wire import Field, Schema
from ._routing import Call, Router, commit, id_field, int_field
from .guild_view import member_role_ids, visibility_events

__all__ = ["DEFAULT_RETENTION_DAYS", "router"]

P = Permission
PERMISSIONS = int_field("permission bits (Discord positions)", 0, ALL)
CHANNEL_TYPES = ("text", "voice", "category")
#: Default retention of channel ciphertext, in days (0 = relay only, never stored).
DEFAULT_RETENTION_DAYS = 90

_CHANNEL_FIELDS = {
    "name": Field("str", "channel name", min=1, max=100),
    "type": Field("str", "text, voice or category", required=False, enum=CHANNEL_TYPES),
    "topic": Field("str", "topic", required=False, nullable=True, max=1024),
    "position": int_field("sort position", 0, 10_000, required=False),
    "parent_id": id_field("category channel", required=False, nullable=True),
    "user_limit": int_field("voice: 0 = unlimited", 0, 99, required=False),
    "bitrate": int_field("voice: bits per second", 8_000, 384_000, required=False),
    "retention_days": int_field(
        "days ciphertext is kept; 0 = never stored", 0, 3650, required=False
    ),
}
CREATE_CHANNEL = Schema("CreateChannel", _CHANNEL_FIELDS)
EDIT_CHANNEL = Schema(
    "EditChannel",
    {
        name: Field(
            f.kind, f.doc, required=False, nullable=f.nullable, min=f.min, max=f.max, enum=f.enum
        )
        for name, f in _CHANNEL_FIELDS.items()
        if name != "type"
    },
)
OVERWRITE = Schema(
    "Overwrite",
    {
        "type": Field("str", "role or member", enum=("role", "member")),
        "allow": PERMISSIONS,
        "deny": PERMISSIONS,
    },
)

router = Router(tag="channels")


@router.route(
    "GET",
    "/guilds/{guild_id}/channels",
    summary="Channels the caller can see",
    errors=(404,),
)
async def list_channels(call: Call, guild_id: str) -> list[dict[str, Any]]:
    user_id = call.me.user_id
    return await call.state.db.read(lambda conn: list_channels_tx(conn, user_id, guild_id))


def list_channels_tx(conn: Connection, caller_id: str, guild_id: str) -> list[dict[str, Any]]:
    """The guild's channels the caller can see; 404 unless a member."""
    member_context(conn, guild_id, caller_id)
    return GuildSnapshot(conn, guild_id).visible_channels(caller_id)


def _check_parent(conn: Connection, guild_id: str, parent_id: str | None) -> None:
    if parent_id is None:
        return
    row = conn.execute(sa.select(t.channels).where(t.channels.c.id == parent_id)).first()
    if row is None or row.guild_id != guild_id or row.type != "category":
        raise BadRequest("parent_id must be a category channel of this guild")


@router.route(
    "POST",
    "/guilds/{guild_id}/channels",
    summary="Create a channel (MANAGE_CHANNELS)",
    body=CREATE_CHANNEL,
    status=201,
    errors=(403, 404),
)
async def create_channel(call: Call, guild_id: str) -> dict[str, Any]:
    user_id, body = call.me.user_id, call.body
    return await commit(call, lambda conn: create_channel_tx(conn, user_id, guild_id, body))


def create_channel_tx(
    conn: Connection, caller_id: str, guild_id: str, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Event]]:
    """Insert a channel from a CreateChannel body; CHANNEL_CREATE to those who see it."""
    ctx = member_context(conn, guild_id, caller_id)
    ctx.require(P.MANAGE_CHANNELS)
    kind = body.get("type", "text")
    parent = body.get("parent_id")
    if parent is not None and kind == "category":
        raise BadRequest("a category cannot have a parent")
    _check_parent(conn, guild_id, parent)
    channel_id = new_id()
    conn.execute(
        sa.insert(t.channels).values(
            id=channel_id,
            guild_id=guild_id,
            type=kind,
            name=body["name"],
            topic=body.get("topic"),
            position=body.get("position", 0),
            parent_id=parent,
            user_limit=body.get("user_limit", 0),
            bitrate=body.get("bitrate", 64_000),
            retention_days=body.get("retention_days", DEFAULT_RETENTION_DAYS),
        )
    )
    snap = GuildSnapshot(conn, guild_id)
    data = snap.channel(channel_id)
    return data, [Event(EventName.CHANNEL_CREATE, data, snap.holders(channel_id))]


@router.route(
    "GET",
    "/channels/{channel_id}",
    summary="A channel (VIEW_CHANNEL)",
    errors=(404,),
)
async def get_channel(call: Call, channel_id: str) -> dict[str, Any]:
    user_id = call.me.user_id
    return await call.state.db.read(lambda conn: get_channel_tx(conn, user_id, channel_id))


def get_channel_tx(conn: Connection, caller_id: str, channel_id: str) -> dict[str, Any]:
    """The channel; 404 unless the caller can see it."""
    channel = load_channel(conn, channel_id)
    ctx = member_context(conn, channel.guild_id, caller_id)
    ctx.channel_permissions(conn, channel)
    return GuildSnapshot(conn, channel.guild_id).channel(channel_id)


@router.route(
    "PATCH",
    "/channels/{channel_id}",
    summary="Edit a channel (MANAGE_CHANNELS)",
    body=EDIT_CHANNEL,
    errors=(403, 404),
)
async def edit_channel(call: Call, channel_id: str) -> dict[str, Any]:
    user_id, body = call.me.user_id, call.body
    return await commit(call, lambda conn: edit_channel_tx(conn, user_id, channel_id, body))


def edit_channel_tx(
    conn: Connection, caller_id: str, channel_id: str, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Event]]:
    """Apply an EditChannel body; CHANNEL_UPDATE to those who see the channel."""
    channel = load_channel(conn, channel_id)
    ctx = member_context(conn, channel.guild_id, caller_id)
    held = ctx.channel_permissions(conn, channel)
    if not held & P.MANAGE_CHANNELS:
        raise Forbidden("missing permission MANAGE_CHANNELS")
    changes = dict(body)
    if "name" in changes and changes["name"] is None:
        raise BadRequest("name cannot be null")
    if "parent_id" in changes:
        if channel.type == "category" and changes["parent_id"] is not None:
            raise BadRequest("a category cannot have a parent")
        _check_parent(conn, channel.guild_id, changes["parent_id"])
    for key in ("position", "user_limit", "bitrate", "retention_days"):
        if key in changes and changes[key] is None:
            raise BadRequest(f"{key} cannot be null")
    if changes:
        conn.execute(sa.update(t.channels).where(t.channels.c.id == channel_id).values(**changes))
    snap = GuildSnapshot(conn, channel.guild_id)
    data = snap.channel(channel_id)
    return data, [Event(EventName.CHANNEL_UPDATE, data, snap.holders(channel_id))]


@router.route(
    "DELETE",
    "/channels/{channel_id}",
    summary="Delete a channel (MANAGE_CHANNELS)",
    status=204,
    errors=(403, 404),
)
async def delete_channel(call: Call, channel_id: str) -> None:
    user_id = call.me.user_id
    await commit(call, lambda conn: delete_channel_tx(conn, user_id, channel_id))


def delete_channel_tx(
    conn: Connection, caller_id: str, channel_id: str
) -> tuple[None, list[Event]]:
    """Delete the channel; CHANNEL_DELETE to those who saw it."""
    channel = load_channel(conn, channel_id)
    ctx = member_context(conn, channel.guild_id, caller_id)
    if not ctx.channel_permissions(conn, channel) & P.MANAGE_CHANNELS:
        raise Forbidden("missing permission MANAGE_CHANNELS")
    viewers = GuildSnapshot(conn, channel.guild_id).holders(channel_id)
    conn.execute(sa.delete(t.channels).where(t.channels.c.id == channel_id))
    data = {"id": channel_id, "guild_id": channel.guild_id}
    return None, [Event(EventName.CHANNEL_DELETE, data, viewers)]


@router.route(
    "PUT",
    "/channels/{channel_id}/permissions/{target_id}",
    summary="Set the overwrite of a role or member below you (MANAGE_ROLES; bits one holds)",
    body=OVERWRITE,
    errors=(403, 404),
)
async def put_overwrite(call: Call, channel_id: str, target_id: str) -> dict[str, Any]:
    user_id, body = call.me.user_id, call.body
    return await commit(
        call, lambda conn: put_overwrite_tx(conn, user_id, channel_id, target_id, body)
    )


def _require_target_below(
    conn: Connection, ctx: MemberContext, target_id: str, kind: str, *, present: bool
) -> None:
    """403 unless the caller ranks above the role or member ``target_id``; 404 when the role,
    or with ``present`` the member, does not exist (an overwrite outlives its member's leaving,
    and removing one of a non-member concerns no one's rank)."""
    if kind == "role":
        role = ctx.guild.roles.get(target_id)
        if role is None:
            raise NotFound("no such role")
        if not can_manage_role(ctx.guild, ctx.user_id, ctx.role_ids, role):
            raise Forbidden("the role is not below your highest role")
        return
    roles = member_role_ids(conn, ctx.guild.id, target_id)
    if roles is None:
        if present:
            raise NotFound("no such member")
        return
    if not can_manage_member(ctx.guild, ctx.user_id, ctx.role_ids, target_id, roles):
        raise Forbidden("the member is not below your highest role")


def _current_overwrite(conn: Connection, channel_id: str, target_id: str) -> Overwrite | None:
    return next((o for o in load_overwrites(conn, channel_id) if o.target_id == target_id), None)


def put_overwrite_tx(
    conn: Connection, caller_id: str, channel_id: str, target_id: str, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Event]]:
    """Set the overwrite of ``target_id`` from an Overwrite body; visibility events."""
    channel = load_channel(conn, channel_id)
    ctx = member_context(conn, channel.guild_id, caller_id)
    held = ctx.channel_permissions(conn, channel)
    if not (held & P.MANAGE_ROLES):
        raise Forbidden("missing permission MANAGE_ROLES")
    if body["allow"] & body["deny"]:
        raise BadRequest("a bit cannot be both allowed and denied")
    _require_target_below(conn, ctx, target_id, body["type"], present=True)
    current = _current_overwrite(conn, channel_id, target_id)
    wanted = Overwrite(target_id, body["type"], body["allow"], body["deny"])
    if not can_change_overwrite(held, current, wanted):
        raise Forbidden("an overwrite may only name permissions you hold, before and after")
    before = GuildSnapshot(conn, channel.guild_id)
    ow = t.overwrites
    conn.execute(sa.delete(ow).where(ow.c.channel_id == channel_id, ow.c.target_id == target_id))
    conn.execute(
        sa.insert(ow).values(
            channel_id=channel_id,
            target_id=target_id,
            target_type=body["type"],
            allow=body["allow"],
            deny=body["deny"],
        )
    )
    after = GuildSnapshot(conn, channel.guild_id)
    data = after.channel(channel_id)
    events = visibility_events(before, after)
    unchanged = after.holders(channel_id) & before.holders(channel_id)
    events.append(Event(EventName.CHANNEL_UPDATE, data, unchanged))
    return data, events


@router.route(
    "DELETE",
    "/channels/{channel_id}/permissions/{target_id}",
    summary="Remove the overwrite of a role or member below you (MANAGE_ROLES; bits one holds)",
    status=204,
    errors=(403, 404),
)
async def delete_overwrite(call: Call, channel_id: str, target_id: str) -> None:
    user_id = call.me.user_id
    await commit(call, lambda conn: delete_overwrite_tx(conn, user_id, channel_id, target_id))


def delete_overwrite_tx(
    conn: Connection, caller_id: str, channel_id: str, target_id: str
) -> tuple[None, list[Event]]:
    """Remove the overwrite of ``target_id`` (none there: nothing happens); visibility events."""
    channel = load_channel(conn, channel_id)
    ctx = member_context(conn, channel.guild_id, caller_id)
    held = ctx.channel_permissions(conn, channel)
    if not held & P.MANAGE_ROLES:
        raise Forbidden("missing permission MANAGE_ROLES")
    current = _current_overwrite(conn, channel_id, target_id)
    if current is None:
        return None, []
    _require_target_below(conn, ctx, target_id, current.target_type, present=False)
    if not can_change_overwrite(held, current, None):
        raise Forbidden("an overwrite may only name permissions you hold, before and after")
    before = GuildSnapshot(conn, channel.guild_id)
    ow = t.overwrites
    conn.execute(sa.delete(ow).where(ow.c.channel_id == channel_id, ow.c.target_id == target_id))
    after = GuildSnapshot(conn, channel.guild_id)
    events = visibility_events(before, after)
    unchanged = after.holders(channel_id) & before.holders(channel_id)
    events.append(Event(EventName.CHANNEL_UPDATE, after.channel(channel_id), unchanged))
    return None, events
