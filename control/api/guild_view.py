"""A guild as its members see it: the guild, its roles and members in their wire form, and
who gains or loses sight of a channel when permissions change.

Shared by the guild resources' routes and by the gateway's READY.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from contract.gateway import EventName

from ..bus import Event
from ..community import GuildSnapshot, member_context
from ..errors import NotFound
from ..store import schema as t

__all__ = [
    "full_guild",
    "guild_name",
    "member_payload",
    "member_role_ids",
    "role_rows",
    "visibility_events",
]


def guild_name(conn: Connection, guild_id: str) -> str:
    """The guild's display name."""
    return str(
        conn.execute(sa.select(t.guilds.c.name).where(t.guilds.c.id == guild_id)).scalar_one()
    )


def role_rows(conn: Connection, guild_id: str) -> list[dict[str, Any]]:
    """The guild's roles, lowest position first."""
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
        "name": guild_name(conn, guild_id),
        "owner_id": snapshot.guild.owner_id,
        "roles": role_rows(conn, guild_id),
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
            events.append(Event(EventName.CHANNEL_CREATE, after.channel(channel_id), gained))
        if lost:
            gid = after.guild.id
            events.append(
                Event(EventName.CHANNEL_DELETE, {"id": channel_id, "guild_id": gid}, lost)
            )
    return events


def member_payload(conn: Connection, guild_id: str, user_id: str) -> dict[str, Any]:
    """A member as GUILD_MEMBER_ADD and GUILD_MEMBER_UPDATE carry it."""
    handle = conn.execute(sa.select(t.users.c.handle).where(t.users.c.id == user_id)).scalar()
    mr = t.member_roles
    roles = sorted(
        conn.execute(
            sa.select(mr.c.role_id).where(mr.c.guild_id == guild_id, mr.c.user_id == user_id)
        ).scalars()
    )
    return {"guild_id": guild_id, "user_id": user_id, "handle": handle, "roles": roles}


def member_role_ids(conn: Connection, guild_id: str, user_id: str) -> list[str] | None:
    """The roles ``user_id`` holds in the guild, or None when they are not a member."""
    try:
        return member_context(conn, guild_id, user_id).role_ids
    except NotFound:
        return None
