"""Guild facts loaded from the store, and the decisions built on the permission function.

Every endpoint that touches a guild, channel, role or message goes through
:func:`member_context` and :meth:`MemberContext.require` (or a :class:`GuildSnapshot` when it
must know every member's view, e.g. to address a dispatch), so permissions are decided by
``contract.permissions.compute_permissions`` and nowhere else.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from contract.permissions import GuildView, Overwrite, Permission, RoleInfo, compute_permissions

from .errors import Forbidden, NotFound
from .store import schema as t

__all__ = [
    "GuildSnapshot",
    "MemberContext",
    "channel_view",
    "load_channel",
    "load_guild_view",
    "member_context",
]


def load_guild_view(conn: Connection, guild_id: str) -> GuildView | None:
    """The guild's owner and roles, or None when there is no such guild."""
    guild = conn.execute(sa.select(t.guilds).where(t.guilds.c.id == guild_id)).first()
    if guild is None:
        return None
    rows = conn.execute(sa.select(t.roles).where(t.roles.c.guild_id == guild_id)).all()
    roles = {r.id: RoleInfo(r.id, r.permissions, r.position) for r in rows}
    return GuildView(guild.id, guild.owner_id, roles)


def _member_roles(conn: Connection, guild_id: str, user_id: str) -> list[str] | None:
    found = conn.execute(
        sa.select(t.members.c.user_id).where(
            t.members.c.guild_id == guild_id, t.members.c.user_id == user_id
        )
    ).first()
    if found is None:
        return None
    mr = t.member_roles
    return list(
        conn.execute(
            sa.select(mr.c.role_id).where(mr.c.guild_id == guild_id, mr.c.user_id == user_id)
        ).scalars()
    )


def load_overwrites(conn: Connection, channel_id: str) -> list[Overwrite]:
    """A channel's permission overwrites."""
    ow = t.overwrites
    rows = conn.execute(sa.select(ow).where(ow.c.channel_id == channel_id)).all()
    return [Overwrite(r.target_id, r.target_type, r.allow, r.deny) for r in rows]


def load_channel(conn: Connection, channel_id: str) -> Any:
    """The channel row, or raise 404."""
    row = conn.execute(sa.select(t.channels).where(t.channels.c.id == channel_id)).first()
    if row is None:
        raise NotFound("no such channel")
    return row


@dataclass
class MemberContext:
    """A member acting in a guild: the guild's facts and the member's roles."""

    guild: GuildView
    user_id: str
    role_ids: list[str]

    def permissions(self, overwrites: list[Overwrite] | None = None) -> int:
        """Guild-wide permissions, or channel permissions given its overwrites."""
        return compute_permissions(self.guild, self.user_id, self.role_ids, overwrites)

    def require(self, bit: Permission, overwrites: list[Overwrite] | None = None) -> int:
        """Raise 403 unless the member holds ``bit``; return all permissions held."""
        held = self.permissions(overwrites)
        if not held & bit:
            raise Forbidden(f"missing permission {bit.name}")
        return held

    def channel_permissions(self, conn: Connection, channel: Any) -> int:
        """Permissions in ``channel``; 404 when the member cannot see it."""
        held = self.permissions(load_overwrites(conn, channel.id))
        if not held & Permission.VIEW_CHANNEL:
            raise NotFound("no such channel")
        return held

    @property
    def is_owner(self) -> bool:
        """True for the guild owner."""
        return self.user_id == self.guild.owner_id


def member_context(conn: Connection, guild_id: str, user_id: str) -> MemberContext:
    """The caller as a member of ``guild_id``; 404 when not a member (existence is private)."""
    guild = load_guild_view(conn, guild_id)
    roles = _member_roles(conn, guild_id, user_id) if guild is not None else None
    if guild is None or roles is None:
        raise NotFound("no such guild")
    return MemberContext(guild, user_id, roles)


def channel_view(row: Any, overwrites: list[Overwrite]) -> dict[str, Any]:
    """The wire form of a channel."""
    return {
        "id": row.id,
        "guild_id": row.guild_id,
        "type": row.type,
        "name": row.name,
        "topic": row.topic,
        "position": row.position,
        "parent_id": row.parent_id,
        "user_limit": row.user_limit,
        "bitrate": row.bitrate,
        "retention_days": row.retention_days,
        "permission_overwrites": [
            {"id": o.target_id, "type": o.target_type, "allow": o.allow, "deny": o.deny}
            for o in overwrites
        ],
    }


class GuildSnapshot:
    """Everything about one guild needed to know what each member may see."""

    def __init__(self, conn: Connection, guild_id: str) -> None:
        guild = load_guild_view(conn, guild_id)
        if guild is None:
            raise NotFound("no such guild")
        self.guild = guild
        self.members: dict[str, list[str]] = {
            user_id: []
            for user_id in conn.execute(
                sa.select(t.members.c.user_id).where(t.members.c.guild_id == guild_id)
            ).scalars()
        }
        mr = t.member_roles
        for row in conn.execute(
            sa.select(mr.c.user_id, mr.c.role_id).where(mr.c.guild_id == guild_id)
        ):
            self.members.setdefault(row.user_id, []).append(row.role_id)
        self.channels = {
            row.id: row
            for row in conn.execute(
                sa.select(t.channels)
                .where(t.channels.c.guild_id == guild_id)
                .order_by(t.channels.c.position, t.channels.c.id)
            )
        }
        self.overwrites: defaultdict[str, list[Overwrite]] = defaultdict(list)
        if self.channels:
            ow = t.overwrites
            for row in conn.execute(sa.select(ow).where(ow.c.channel_id.in_(list(self.channels)))):
                self.overwrites[row.channel_id].append(
                    Overwrite(row.target_id, row.target_type, row.allow, row.deny)
                )

    def member_ids(self) -> frozenset[str]:
        """Every member."""
        return frozenset(self.members)

    def channel_permissions(self, user_id: str, channel_id: str) -> int:
        """``user_id``'s permissions in ``channel_id`` (0 for non-members)."""
        roles = self.members.get(user_id)
        if roles is None:
            return 0
        return compute_permissions(self.guild, user_id, roles, self.overwrites[channel_id])

    def holders(self, channel_id: str, bit: Permission = Permission.VIEW_CHANNEL) -> frozenset[str]:
        """Members holding ``bit`` in the channel."""
        return frozenset(u for u in self.members if self.channel_permissions(u, channel_id) & bit)

    def visibility(self) -> dict[str, frozenset[str]]:
        """channel id -> members who can see it."""
        return {channel_id: self.holders(channel_id) for channel_id in self.channels}

    def visible_channels(self, user_id: str) -> list[dict[str, Any]]:
        """The channels ``user_id`` can see, in order, in wire form."""
        return [
            channel_view(row, self.overwrites[cid])
            for cid, row in self.channels.items()
            if self.channel_permissions(user_id, cid) & Permission.VIEW_CHANNEL
        ]

    def channel(self, channel_id: str) -> dict[str, Any]:
        """One channel in wire form."""
        return channel_view(self.channels[channel_id], self.overwrites[channel_id])
