"""Guilds, channels, roles, overwrites, members, bans and invites.

Every handler decides through ``control.community`` (and so the one permission function).
State changes are published as dispatch events addressed, at publish time, to exactly the
members allowed to see them; a change to permissions also publishes CHANNEL_CREATE and
CHANNEL_DELETE to the members who gained or lost sight of a channel.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from contract.permissions import (
    ALL,
    DEFAULT_EVERYONE,
    Permission,
    can_grant,
    can_manage_member,
    can_manage_role,
)

from ..bus import Event
from ..community import GuildSnapshot, MemberContext, load_channel, member_context
from ..errors import BadRequest, Conflict, Forbidden, Gone, NotFound
from ..ids import new_id, new_invite_code, now
from ..store import schema as t
from ..wire import Field, Schema
from ._routing import Api, Call, id_field, int_field

__all__ = ["full_guild", "register_routes"]

P = Permission
NAME = Field("str", "display name", min=1, max=100)
PERMISSIONS = int_field("permission bits (Discord positions)", 0, ALL)
CHANNEL_TYPES = ("text", "voice", "category")
#: Default retention of channel ciphertext, in days (0 = relay only, never stored).
DEFAULT_RETENTION_DAYS = 90

CREATE_GUILD = Schema("CreateGuild", {"name": NAME})
EDIT_GUILD = Schema(
    "EditGuild", {"name": Field("str", "display name", required=False, min=1, max=100)}
)
TRANSFER = Schema("TransferGuild", {"owner_id": id_field("the new owner (a member)")})
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
CREATE_INVITE = Schema(
    "CreateInvite",
    {
        "max_uses": int_field("0 = unlimited", 0, 1000, required=False),
        "max_age": int_field("seconds until expiry; 0 = never", 0, 30 * 86400, required=False),
    },
)
EMPTY = Schema("Empty", {})


def _guild_name(conn: Connection, guild_id: str) -> str:
    return str(
        conn.execute(sa.select(t.guilds.c.name).where(t.guilds.c.id == guild_id)).scalar_one()
    )


def _role_rows(conn: Connection, guild_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.select(t.roles)
        .where(t.roles.c.guild_id == guild_id)
        .order_by(t.roles.c.position, t.roles.c.id)
    ).all()
    return [
        {"id": r.id, "name": r.name, "permissions": r.permissions, "position": r.position}
        for r in rows
    ]


def full_guild(conn: Connection, guild_id: str, user_id: str) -> dict[str, Any]:
    """The guild as ``user_id`` sees it (READY and GUILD_CREATE)."""
    snapshot = GuildSnapshot(conn, guild_id)
    return {
        "id": guild_id,
        "name": _guild_name(conn, guild_id),
        "owner_id": snapshot.guild.owner_id,
        "roles": _role_rows(conn, guild_id),
        "channels": snapshot.visible_channels(user_id),
    }


def visibility_events(before: GuildSnapshot, after: GuildSnapshot) -> list[Event]:
    """CHANNEL_CREATE / CHANNEL_DELETE for members who gained or lost sight of a channel."""
    events: list[Event] = []
    seen_before = before.visibility()
    for channel_id, viewers in after.visibility().items():
        old = seen_before.get(channel_id, frozenset())
        gained, lost = viewers - old, old - viewers
        if gained:
            events.append(Event("CHANNEL_CREATE", after.channel(channel_id), gained))
        if lost:
            gid = after.guild.id
            events.append(Event("CHANNEL_DELETE", {"id": channel_id, "guild_id": gid}, lost))
    return events


def _member_payload(conn: Connection, guild_id: str, user_id: str) -> dict[str, Any]:
    handle = conn.execute(sa.select(t.users.c.handle).where(t.users.c.id == user_id)).scalar()
    mr = t.member_roles
    roles = sorted(
        conn.execute(
            sa.select(mr.c.role_id).where(mr.c.guild_id == guild_id, mr.c.user_id == user_id)
        ).scalars()
    )
    return {"guild_id": guild_id, "user_id": user_id, "handle": handle, "roles": roles}


def _remove_member(conn: Connection, guild_id: str, user_id: str) -> None:
    conn.execute(
        sa.delete(t.members).where(t.members.c.guild_id == guild_id, t.members.c.user_id == user_id)
    )


def _target_roles(conn: Connection, guild_id: str, user_id: str) -> list[str] | None:
    try:
        return member_context(conn, guild_id, user_id).role_ids
    except NotFound:
        return None


def register_routes(api: Api) -> None:
    """Add the community routes to ``api``."""

    async def run(call: Call, tx: Any) -> Any:
        result, events = await call.state.db.write(tx)
        for event in events:
            await call.state.bus.publish(event)
        return result

    # --- guilds ------------------------------------------------------------------------

    @api.route(
        "POST",
        "/guilds",
        summary="Create a guild (with @everyone and #general)",
        tag="guilds",
        body=CREATE_GUILD,
        status=201,
    )
    async def create_guild(call: Call) -> dict[str, Any]:
        user_id = call.me.user_id

        def tx(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
            guild_id = new_id()
            conn.execute(
                sa.insert(t.guilds).values(id=guild_id, name=call.body["name"], owner_id=user_id)
            )
            conn.execute(
                sa.insert(t.roles).values(
                    id=guild_id,
                    guild_id=guild_id,
                    name="@everyone",
                    permissions=DEFAULT_EVERYONE,
                    position=0,
                )
            )
            conn.execute(sa.insert(t.members).values(guild_id=guild_id, user_id=user_id))
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
            guild = full_guild(conn, guild_id, user_id)
            return guild, [Event("GUILD_CREATE", guild, frozenset({user_id}))]

        return await run(call, tx)  # type: ignore[no-any-return]

    @api.route("GET", "/users/@me/guilds", summary="The guilds the caller belongs to", tag="guilds")
    async def my_guilds(call: Call) -> list[dict[str, Any]]:
        user_id = call.me.user_id
        stmt = (
            sa.select(t.guilds.c.id, t.guilds.c.name, t.guilds.c.owner_id)
            .join(t.members, t.members.c.guild_id == t.guilds.c.id)
            .where(t.members.c.user_id == user_id)
            .order_by(t.guilds.c.id)
        )
        rows = await call.state.db.read(lambda conn: conn.execute(stmt).all())
        return [{"id": r.id, "name": r.name, "owner_id": r.owner_id} for r in rows]

    @api.route(
        "GET",
        "/guilds/{guild_id}",
        summary="A guild with its roles and visible channels",
        tag="guilds",
        errors=(404,),
    )
    async def get_guild(call: Call, guild_id: str) -> dict[str, Any]:
        def load(conn: Connection) -> dict[str, Any]:
            member_context(conn, guild_id, call.me.user_id)
            return full_guild(conn, guild_id, call.me.user_id)

        return await call.state.db.read(load)

    @api.route(
        "PATCH",
        "/guilds/{guild_id}",
        summary="Edit a guild (MANAGE_GUILD)",
        tag="guilds",
        body=EDIT_GUILD,
        errors=(403, 404),
    )
    async def edit_guild(call: Call, guild_id: str) -> dict[str, Any]:
        def tx(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
            ctx = member_context(conn, guild_id, call.me.user_id)
            ctx.require(P.MANAGE_GUILD)
            if "name" in call.body:
                conn.execute(
                    sa.update(t.guilds)
                    .where(t.guilds.c.id == guild_id)
                    .values(name=call.body["name"])
                )
            snap = GuildSnapshot(conn, guild_id)
            data = {
                "id": guild_id,
                "name": _guild_name(conn, guild_id),
                "owner_id": snap.guild.owner_id,
            }
            return data, [Event("GUILD_UPDATE", data, snap.member_ids())]

        return await run(call, tx)  # type: ignore[no-any-return]

    @api.route(
        "DELETE",
        "/guilds/{guild_id}",
        summary="Delete a guild (owner only)",
        tag="guilds",
        status=204,
        errors=(403, 404),
    )
    async def delete_guild(call: Call, guild_id: str) -> None:
        def tx(conn: Connection) -> tuple[None, list[Event]]:
            ctx = member_context(conn, guild_id, call.me.user_id)
            if not ctx.is_owner:
                raise Forbidden("only the owner may delete a guild")
            members = GuildSnapshot(conn, guild_id).member_ids()
            conn.execute(sa.delete(t.guilds).where(t.guilds.c.id == guild_id))
            return None, [Event("GUILD_DELETE", {"id": guild_id}, members)]

        await run(call, tx)

    @api.route(
        "POST",
        "/guilds/{guild_id}/transfer",
        summary="Transfer ownership to another member (owner only)",
        tag="guilds",
        body=TRANSFER,
        errors=(403, 404),
    )
    async def transfer(call: Call, guild_id: str) -> dict[str, Any]:
        new_owner = call.body["owner_id"]

        def tx(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
            ctx = member_context(conn, guild_id, call.me.user_id)
            if not ctx.is_owner:
                raise Forbidden("only the owner may transfer a guild")
            if _target_roles(conn, guild_id, new_owner) is None:
                raise NotFound("the new owner must be a member")
            before = GuildSnapshot(conn, guild_id)
            conn.execute(
                sa.update(t.guilds).where(t.guilds.c.id == guild_id).values(owner_id=new_owner)
            )
            after = GuildSnapshot(conn, guild_id)
            data = {"id": guild_id, "name": _guild_name(conn, guild_id), "owner_id": new_owner}
            events = [Event("GUILD_UPDATE", data, after.member_ids())]
            return data, events + visibility_events(before, after)

        return await run(call, tx)  # type: ignore[no-any-return]

    # --- channels ----------------------------------------------------------------------

    @api.route(
        "GET",
        "/guilds/{guild_id}/channels",
        summary="Channels the caller can see",
        tag="channels",
        errors=(404,),
    )
    async def list_channels(call: Call, guild_id: str) -> list[dict[str, Any]]:
        def load(conn: Connection) -> list[dict[str, Any]]:
            member_context(conn, guild_id, call.me.user_id)
            return GuildSnapshot(conn, guild_id).visible_channels(call.me.user_id)

        return await call.state.db.read(load)

    def _check_parent(conn: Connection, guild_id: str, parent_id: str | None) -> None:
        if parent_id is None:
            return
        row = conn.execute(sa.select(t.channels).where(t.channels.c.id == parent_id)).first()
        if row is None or row.guild_id != guild_id or row.type != "category":
            raise BadRequest("parent_id must be a category channel of this guild")

    @api.route(
        "POST",
        "/guilds/{guild_id}/channels",
        summary="Create a channel (MANAGE_CHANNELS)",
        tag="channels",
        body=CREATE_CHANNEL,
        status=201,
        errors=(403, 404),
    )
    async def create_channel(call: Call, guild_id: str) -> dict[str, Any]:
        body = call.body

        def tx(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
            ctx = member_context(conn, guild_id, call.me.user_id)
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
            return data, [Event("CHANNEL_CREATE", data, snap.holders(channel_id))]

        return await run(call, tx)  # type: ignore[no-any-return]

    @api.route(
        "GET",
        "/channels/{channel_id}",
        summary="A channel (VIEW_CHANNEL)",
        tag="channels",
        errors=(404,),
    )
    async def get_channel(call: Call, channel_id: str) -> dict[str, Any]:
        def load(conn: Connection) -> dict[str, Any]:
            channel = load_channel(conn, channel_id)
            ctx = member_context(conn, channel.guild_id, call.me.user_id)
            ctx.channel_permissions(conn, channel)
            return GuildSnapshot(conn, channel.guild_id).channel(channel_id)

        return await call.state.db.read(load)

    @api.route(
        "PATCH",
        "/channels/{channel_id}",
        summary="Edit a channel (MANAGE_CHANNELS)",
        tag="channels",
        body=EDIT_CHANNEL,
        errors=(403, 404),
    )
    async def edit_channel(call: Call, channel_id: str) -> dict[str, Any]:
        def tx(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
            channel = load_channel(conn, channel_id)
            ctx = member_context(conn, channel.guild_id, call.me.user_id)
            held = ctx.channel_permissions(conn, channel)
            if not held & P.MANAGE_CHANNELS:
                raise Forbidden("missing permission MANAGE_CHANNELS")
            changes = dict(call.body)
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
                conn.execute(
                    sa.update(t.channels).where(t.channels.c.id == channel_id).values(**changes)
                )
            snap = GuildSnapshot(conn, channel.guild_id)
            data = snap.channel(channel_id)
            return data, [Event("CHANNEL_UPDATE", data, snap.holders(channel_id))]

        return await run(call, tx)  # type: ignore[no-any-return]

    @api.route(
        "DELETE",
        "/channels/{channel_id}",
        summary="Delete a channel (MANAGE_CHANNELS)",
        tag="channels",
        status=204,
        errors=(403, 404),
    )
    async def delete_channel(call: Call, channel_id: str) -> None:
        def tx(conn: Connection) -> tuple[None, list[Event]]:
            channel = load_channel(conn, channel_id)
            ctx = member_context(conn, channel.guild_id, call.me.user_id)
            if not ctx.channel_permissions(conn, channel) & P.MANAGE_CHANNELS:
                raise Forbidden("missing permission MANAGE_CHANNELS")
            viewers = GuildSnapshot(conn, channel.guild_id).holders(channel_id)
            conn.execute(sa.delete(t.channels).where(t.channels.c.id == channel_id))
            data = {"id": channel_id, "guild_id": channel.guild_id}
            return None, [Event("CHANNEL_DELETE", data, viewers)]

        await run(call, tx)

    @api.route(
        "PUT",
        "/channels/{channel_id}/permissions/{target_id}",
        summary="Set a role or member overwrite (MANAGE_ROLES; only bits one holds)",
        tag="channels",
        body=OVERWRITE,
        errors=(403, 404),
    )
    async def put_overwrite(call: Call, channel_id: str, target_id: str) -> dict[str, Any]:
        body = call.body

        def tx(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
            channel = load_channel(conn, channel_id)
            ctx = member_context(conn, channel.guild_id, call.me.user_id)
            held = ctx.channel_permissions(conn, channel)
            if not (held & P.MANAGE_ROLES):
                raise Forbidden("missing permission MANAGE_ROLES")
            if not can_grant(held, body["allow"] | body["deny"]):
                raise Forbidden("an overwrite may only name permissions you hold")
            if body["allow"] & body["deny"]:
                raise BadRequest("a bit cannot be both allowed and denied")
            if body["type"] == "role":
                if target_id not in ctx.guild.roles:
                    raise NotFound("no such role")
            elif _target_roles(conn, channel.guild_id, target_id) is None:
                raise NotFound("no such member")
            before = GuildSnapshot(conn, channel.guild_id)
            ow = t.overwrites
            conn.execute(
                sa.delete(ow).where(ow.c.channel_id == channel_id, ow.c.target_id == target_id)
            )
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
            events.append(Event("CHANNEL_UPDATE", data, unchanged))
            return data, events

        return await run(call, tx)  # type: ignore[no-any-return]

    @api.route(
        "DELETE",
        "/channels/{channel_id}/permissions/{target_id}",
        summary="Remove an overwrite (MANAGE_ROLES)",
        tag="channels",
        status=204,
        errors=(403, 404),
    )
    async def delete_overwrite(call: Call, channel_id: str, target_id: str) -> None:
        def tx(conn: Connection) -> tuple[None, list[Event]]:
            channel = load_channel(conn, channel_id)
            ctx = member_context(conn, channel.guild_id, call.me.user_id)
            if not ctx.channel_permissions(conn, channel) & P.MANAGE_ROLES:
                raise Forbidden("missing permission MANAGE_ROLES")
            before = GuildSnapshot(conn, channel.guild_id)
            ow = t.overwrites
            conn.execute(
                sa.delete(ow).where(ow.c.channel_id == channel_id, ow.c.target_id == target_id)
            )
            after = GuildSnapshot(conn, channel.guild_id)
            events = visibility_events(before, after)
            unchanged = after.holders(channel_id) & before.holders(channel_id)
            events.append(Event("CHANNEL_UPDATE", after.channel(channel_id), unchanged))
            return None, events

        await run(call, tx)

    # --- roles -------------------------------------------------------------------------

    @api.route(
        "GET", "/guilds/{guild_id}/roles", summary="The guild's roles", tag="roles", errors=(404,)
    )
    async def list_roles(call: Call, guild_id: str) -> list[dict[str, Any]]:
        def load(conn: Connection) -> list[dict[str, Any]]:
            member_context(conn, guild_id, call.me.user_id)
            return _role_rows(conn, guild_id)

        return await call.state.db.read(load)

    def _role_events(
        conn: Connection, guild_id: str, kind: str, role: dict[str, Any], before: GuildSnapshot
    ) -> list[Event]:
        after = GuildSnapshot(conn, guild_id)
        event = Event(kind, {"guild_id": guild_id, "role": role}, after.member_ids())
        return [event, *visibility_events(before, after)]

    @api.route(
        "POST",
        "/guilds/{guild_id}/roles",
        summary="Create a role just above @everyone (MANAGE_ROLES; only bits one holds)",
        tag="roles",
        body=CREATE_ROLE,
        status=201,
        errors=(403, 404),
    )
    async def create_role(call: Call, guild_id: str) -> dict[str, Any]:
        def tx(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
            ctx = member_context(conn, guild_id, call.me.user_id)
            held = ctx.require(P.MANAGE_ROLES)
            permissions = call.body.get("permissions", 0)
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
                "name": call.body["name"],
                "permissions": permissions,
                "position": 1,
            }
            conn.execute(sa.insert(t.roles).values(guild_id=guild_id, **role))
            return role, _role_events(conn, guild_id, "GUILD_ROLE_CREATE", role, before)

        return await run(call, tx)  # type: ignore[no-any-return]

    def _manageable_role(conn: Connection, ctx: MemberContext, role_id: str) -> None:
        ctx.require(P.MANAGE_ROLES)
        role = ctx.guild.roles.get(role_id)
        if role is None:
            raise NotFound("no such role")
        if not can_manage_role(ctx.guild, ctx.user_id, ctx.role_ids, role):
            raise Forbidden("the role is not below your highest role")

    @api.route(
        "PATCH",
        "/guilds/{guild_id}/roles/{role_id}",
        summary="Edit a role below your highest (MANAGE_ROLES; only bits one holds)",
        tag="roles",
        body=EDIT_ROLE,
        errors=(403, 404),
    )
    async def edit_role(call: Call, guild_id: str, role_id: str) -> dict[str, Any]:
        def tx(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
            ctx = member_context(conn, guild_id, call.me.user_id)
            _manageable_role(conn, ctx, role_id)
            if "permissions" in call.body and not can_grant(
                ctx.permissions(), call.body["permissions"]
            ):
                raise Forbidden("a role may only hold permissions you hold")
            before = GuildSnapshot(conn, guild_id)
            if call.body:
                conn.execute(sa.update(t.roles).where(t.roles.c.id == role_id).values(**call.body))
            role = next(r for r in _role_rows(conn, guild_id) if r["id"] == role_id)
            return role, _role_events(conn, guild_id, "GUILD_ROLE_UPDATE", role, before)

        return await run(call, tx)  # type: ignore[no-any-return]

    @api.route(
        "PATCH",
        "/guilds/{guild_id}/roles",
        summary="Reorder roles below your highest (MANAGE_ROLES)",
        tag="roles",
        body=REORDER_ROLES,
        errors=(403, 404),
    )
    async def reorder_roles(call: Call, guild_id: str) -> list[dict[str, Any]]:
        def tx(conn: Connection) -> tuple[list[dict[str, Any]], list[Event]]:
            ctx = member_context(conn, guild_id, call.me.user_id)
            top = max(
                (ctx.guild.roles[r].position for r in ctx.role_ids if r in ctx.guild.roles),
                default=0,
            )
            for item in call.body["positions"]:
                if item["id"] == guild_id:
                    raise BadRequest("@everyone always stays at position 0")
                _manageable_role(conn, ctx, item["id"])
                if not ctx.is_owner and item["position"] >= top:
                    raise Forbidden("a role cannot be moved to or above your highest role")
            for item in call.body["positions"]:
                conn.execute(
                    sa.update(t.roles)
                    .where(t.roles.c.id == item["id"])
                    .values(position=item["position"])
                )
            roles = _role_rows(conn, guild_id)
            members = GuildSnapshot(conn, guild_id).member_ids()
            event = Event("GUILD_ROLES_UPDATE", {"guild_id": guild_id, "roles": roles}, members)
            return roles, [event]

        return await run(call, tx)  # type: ignore[no-any-return]

    @api.route(
        "DELETE",
        "/guilds/{guild_id}/roles/{role_id}",
        summary="Delete a role below your highest (MANAGE_ROLES)",
        tag="roles",
        status=204,
        errors=(403, 404),
    )
    async def delete_role(call: Call, guild_id: str, role_id: str) -> None:
        def tx(conn: Connection) -> tuple[None, list[Event]]:
            ctx = member_context(conn, guild_id, call.me.user_id)
            if role_id == guild_id:
                raise BadRequest("@everyone cannot be deleted")
            _manageable_role(conn, ctx, role_id)
            before = GuildSnapshot(conn, guild_id)
            conn.execute(sa.delete(t.overwrites).where(t.overwrites.c.target_id == role_id))
            conn.execute(sa.delete(t.roles).where(t.roles.c.id == role_id))
            after = GuildSnapshot(conn, guild_id)
            event = Event(
                "GUILD_ROLE_DELETE", {"guild_id": guild_id, "role_id": role_id}, after.member_ids()
            )
            return None, [event, *visibility_events(before, after)]

        await run(call, tx)

    async def _assign(call: Call, guild_id: str, user_id: str, role_id: str, add: bool) -> None:
        def tx(conn: Connection) -> tuple[None, list[Event]]:
            ctx = member_context(conn, guild_id, call.me.user_id)
            if role_id == guild_id:
                raise BadRequest("@everyone is held by every member")
            _manageable_role(conn, ctx, role_id)
            if _target_roles(conn, guild_id, user_id) is None:
                raise NotFound("no such member")
            before = GuildSnapshot(conn, guild_id)
            mr = t.member_roles
            conn.execute(
                sa.delete(mr).where(
                    mr.c.guild_id == guild_id, mr.c.user_id == user_id, mr.c.role_id == role_id
                )
            )
            if add:
                conn.execute(
                    sa.insert(mr).values(guild_id=guild_id, user_id=user_id, role_id=role_id)
                )
            after = GuildSnapshot(conn, guild_id)
            member = _member_payload(conn, guild_id, user_id)
            events = [Event("GUILD_MEMBER_UPDATE", member, after.member_ids())]
            return None, events + visibility_events(before, after)

        await run(call, tx)

    @api.route(
        "PUT",
        "/guilds/{guild_id}/members/{user_id}/roles/{role_id}",
        summary="Give a member a role below your highest (MANAGE_ROLES)",
        tag="roles",
        status=204,
        errors=(403, 404),
    )
    async def add_member_role(call: Call, guild_id: str, user_id: str, role_id: str) -> None:
        await _assign(call, guild_id, user_id, role_id, True)

    @api.route(
        "DELETE",
        "/guilds/{guild_id}/members/{user_id}/roles/{role_id}",
        summary="Take a role below your highest from a member (MANAGE_ROLES)",
        tag="roles",
        status=204,
        errors=(403, 404),
    )
    async def remove_member_role(call: Call, guild_id: str, user_id: str, role_id: str) -> None:
        await _assign(call, guild_id, user_id, role_id, False)

    # --- members, kicks and bans ---------------------------------------------------------

    @api.route(
        "GET",
        "/guilds/{guild_id}/members",
        summary="The guild's members",
        tag="members",
        errors=(404,),
    )
    async def list_members(call: Call, guild_id: str) -> list[dict[str, Any]]:
        def load(conn: Connection) -> list[dict[str, Any]]:
            member_context(conn, guild_id, call.me.user_id)
            snap = GuildSnapshot(conn, guild_id)
            handles = {
                user_id: handle
                for user_id, handle in conn.execute(
                    sa.select(t.users.c.id, t.users.c.handle).where(
                        t.users.c.id.in_(list(snap.members))
                    )
                )
            }
            return [
                {"user_id": u, "handle": handles.get(u), "roles": sorted(r)}
                for u, r in sorted(snap.members.items())
            ]

        return await call.state.db.read(load)

    def _member_gone(conn: Connection, guild_id: str, user_id: str) -> list[Event]:
        after = GuildSnapshot(conn, guild_id)
        data = {"guild_id": guild_id, "user_id": user_id}
        return [
            Event("GUILD_MEMBER_REMOVE", data, after.member_ids()),
            Event("GUILD_DELETE", {"id": guild_id}, frozenset({user_id})),
        ]

    @api.route(
        "DELETE",
        "/guilds/{guild_id}/members/{user_id}",
        summary="Kick a member below you (KICK_MEMBERS)",
        tag="members",
        status=204,
        errors=(403, 404),
    )
    async def kick(call: Call, guild_id: str, user_id: str) -> None:
        def tx(conn: Connection) -> tuple[None, list[Event]]:
            ctx = member_context(conn, guild_id, call.me.user_id)
            ctx.require(P.KICK_MEMBERS)
            target = _target_roles(conn, guild_id, user_id)
            if target is None:
                raise NotFound("no such member")
            if not can_manage_member(ctx.guild, ctx.user_id, ctx.role_ids, user_id, target):
                raise Forbidden("the member is not below your highest role")
            _remove_member(conn, guild_id, user_id)
            return None, _member_gone(conn, guild_id, user_id)

        await run(call, tx)

    @api.route(
        "DELETE",
        "/users/@me/guilds/{guild_id}",
        summary="Leave a guild",
        tag="members",
        status=204,
        errors=(404, 409),
    )
    async def leave(call: Call, guild_id: str) -> None:
        user_id = call.me.user_id

        def tx(conn: Connection) -> tuple[None, list[Event]]:
            ctx = member_context(conn, guild_id, user_id)
            if ctx.is_owner:
                raise Conflict("the owner must transfer or delete the guild instead")
            _remove_member(conn, guild_id, user_id)
            return None, _member_gone(conn, guild_id, user_id)

        await run(call, tx)

    @api.route(
        "PUT",
        "/guilds/{guild_id}/bans/{user_id}",
        summary="Ban a user (BAN_MEMBERS; members must be below you)",
        tag="members",
        body=EMPTY,
        status=204,
        errors=(403, 404),
    )
    async def ban(call: Call, guild_id: str, user_id: str) -> None:
        def tx(conn: Connection) -> tuple[None, list[Event]]:
            ctx = member_context(conn, guild_id, call.me.user_id)
            ctx.require(P.BAN_MEMBERS)
            if conn.execute(sa.select(t.users.c.id).where(t.users.c.id == user_id)).first() is None:
                raise NotFound("no such user")
            target = _target_roles(conn, guild_id, user_id)
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
            conn.execute(
                sa.delete(bans).where(bans.c.guild_id == guild_id, bans.c.user_id == user_id)
            )
            conn.execute(sa.insert(bans).values(guild_id=guild_id, user_id=user_id))
            events: list[Event] = []
            if target is not None:
                _remove_member(conn, guild_id, user_id)
                events = _member_gone(conn, guild_id, user_id)
            return None, events

        await run(call, tx)

    @api.route(
        "DELETE",
        "/guilds/{guild_id}/bans/{user_id}",
        summary="Unban (BAN_MEMBERS)",
        tag="members",
        status=204,
        errors=(403, 404),
    )
    async def unban(call: Call, guild_id: str, user_id: str) -> None:
        def tx(conn: Connection) -> tuple[None, list[Event]]:
            ctx = member_context(conn, guild_id, call.me.user_id)
            ctx.require(P.BAN_MEMBERS)
            bans = t.bans
            deleted = conn.execute(
                sa.delete(bans).where(bans.c.guild_id == guild_id, bans.c.user_id == user_id)
            ).rowcount
            if not deleted:
                raise NotFound("no such ban")
            return None, []

        await run(call, tx)

    @api.route(
        "GET",
        "/guilds/{guild_id}/bans",
        summary="Banned user ids (BAN_MEMBERS)",
        tag="members",
        errors=(403, 404),
    )
    async def list_bans(call: Call, guild_id: str) -> list[str]:
        def load(conn: Connection) -> list[str]:
            member_context(conn, guild_id, call.me.user_id).require(P.BAN_MEMBERS)
            return sorted(
                conn.execute(
                    sa.select(t.bans.c.user_id).where(t.bans.c.guild_id == guild_id)
                ).scalars()
            )

        return await call.state.db.read(load)

    # --- invites -----------------------------------------------------------------------

    @api.route(
        "POST",
        "/channels/{channel_id}/invites",
        summary="Create an invite (CREATE_INSTANT_INVITE in the channel)",
        tag="invites",
        body=CREATE_INVITE,
        status=201,
        errors=(403, 404),
    )
    async def create_invite(call: Call, channel_id: str) -> dict[str, Any]:
        def tx(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
            channel = load_channel(conn, channel_id)
            ctx = member_context(conn, channel.guild_id, call.me.user_id)
            if not ctx.channel_permissions(conn, channel) & P.CREATE_INSTANT_INVITE:
                raise Forbidden("missing permission CREATE_INSTANT_INVITE")
            max_age = call.body.get("max_age", 86400)
            invite = {
                "code": new_invite_code(),
                "guild_id": channel.guild_id,
                "channel_id": channel_id,
                "creator_id": call.me.user_id,
                "max_uses": call.body.get("max_uses", 0),
                "uses": 0,
                "expires_at": now() + max_age if max_age else None,
            }
            conn.execute(sa.insert(t.invites).values(**invite))
            return invite, []

        return await run(call, tx)  # type: ignore[no-any-return]

    @api.route(
        "GET",
        "/guilds/{guild_id}/invites",
        summary="The guild's invites (MANAGE_GUILD)",
        tag="invites",
        errors=(403, 404),
    )
    async def list_invites(call: Call, guild_id: str) -> list[dict[str, Any]]:
        def load(conn: Connection) -> list[dict[str, Any]]:
            member_context(conn, guild_id, call.me.user_id).require(P.MANAGE_GUILD)
            rows = (
                conn.execute(
                    sa.select(t.invites)
                    .where(t.invites.c.guild_id == guild_id)
                    .order_by(t.invites.c.code)
                )
                .mappings()
                .all()
            )
            return [dict(r) for r in rows]

        return await call.state.db.read(load)

    def _live_invite(conn: Connection, code: str) -> Any:
        row = conn.execute(sa.select(t.invites).where(t.invites.c.code == code)).first()
        if row is None:
            raise NotFound("no such invite")
        if row.expires_at is not None and row.expires_at <= now():
            raise Gone("the invite expired")
        if row.max_uses and row.uses >= row.max_uses:
            raise Gone("the invite has been used up")
        return row

    @api.route(
        "GET",
        "/invites/{code}",
        summary="What an invite leads to",
        tag="invites",
        errors=(404, 410),
    )
    async def get_invite(call: Call, code: str) -> dict[str, Any]:
        def load(conn: Connection) -> dict[str, Any]:
            row = _live_invite(conn, code)
            return {
                "code": code,
                "guild_id": row.guild_id,
                "guild_name": _guild_name(conn, row.guild_id),
            }

        return await call.state.db.read(load)

    @api.route(
        "POST",
        "/invites/{code}",
        summary="Join a guild by invite",
        tag="invites",
        body=EMPTY,
        errors=(403, 404, 410),
    )
    async def accept_invite(call: Call, code: str) -> dict[str, Any]:
        user_id = call.me.user_id

        def tx(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
            row = _live_invite(conn, code)
            guild_id = row.guild_id
            banned = conn.execute(
                sa.select(t.bans.c.user_id).where(
                    t.bans.c.guild_id == guild_id, t.bans.c.user_id == user_id
                )
            ).first()
            if banned is not None:
                raise Forbidden("you are banned from this guild")
            if _target_roles(conn, guild_id, user_id) is not None:
                return full_guild(conn, guild_id, user_id), []
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(t.members).values(guild_id=guild_id, user_id=user_id))
            except IntegrityError:
                raise Conflict("already a member") from None
            conn.execute(
                sa.update(t.invites)
                .where(t.invites.c.code == code)
                .values(uses=t.invites.c.uses + 1)
            )
            guild = full_guild(conn, guild_id, user_id)
            others = GuildSnapshot(conn, guild_id).member_ids() - {user_id}
            member = _member_payload(conn, guild_id, user_id)
            return guild, [
                Event("GUILD_CREATE", guild, frozenset({user_id})),
                Event("GUILD_MEMBER_ADD", member, others),
            ]

        return await run(call, tx)  # type: ignore[no-any-return]

    @api.route(
        "DELETE",
        "/invites/{code}",
        summary="Revoke an invite (creator or MANAGE_GUILD)",
        tag="invites",
        status=204,
        errors=(403, 404),
    )
    async def delete_invite(call: Call, code: str) -> None:
        def tx(conn: Connection) -> tuple[None, list[Event]]:
            row = conn.execute(sa.select(t.invites).where(t.invites.c.code == code)).first()
            if row is None:
                raise NotFound("no such invite")
            ctx = member_context(conn, row.guild_id, call.me.user_id)
            if row.creator_id != ctx.user_id:
                ctx.require(P.MANAGE_GUILD)
            conn.execute(sa.delete(t.invites).where(t.invites.c.code == code))
            return None, []

        await run(call, tx)
