"""Who may read a channel, decided by the wire contract's permission function.

The client distributes its sender key only to members holding VIEW_CHANNEL, so it must
know them itself; the server offers the facts (roles, members, overwrites) but no list of
readers. The decision is :func:`contract.permissions.compute_permissions` — the function
the server runs too, so client and server can never disagree on Discord's order.
"""

from __future__ import annotations

from client.models import Channel, Guild, Member
from contract.permissions import GuildView, Overwrite, Permission, RoleInfo, compute_permissions

__all__ = ["VIEW_CHANNEL", "can_view", "readers"]

VIEW_CHANNEL = int(Permission.VIEW_CHANNEL)


def _guild_view(guild: Guild) -> GuildView:
    roles = {r.id: RoleInfo(r.id, r.permissions, r.position) for r in guild.roles}
    if guild.id not in roles:
        # A guild view without its @everyone role grants nothing by default.
        roles[guild.id] = RoleInfo(guild.id, 0, 0)
    return GuildView(guild.id, guild.owner_id, roles)


def _overwrites(channel: Channel) -> list[Overwrite]:
    return [Overwrite(o.id, o.type, o.allow, o.deny) for o in channel.overwrites]


def can_view(guild: Guild, member: Member, channel: Channel) -> bool:
    """Whether ``member`` holds VIEW_CHANNEL in ``channel``."""
    permissions = compute_permissions(
        _guild_view(guild), member.user_id, member.roles, _overwrites(channel)
    )
    return bool(permissions & VIEW_CHANNEL)


def readers(guild: Guild, members: list[Member], channel: Channel) -> list[str]:
    """User ids of the members who can read ``channel``."""
    view, overwrites = _guild_view(guild), _overwrites(channel)
    return sorted(
        m.user_id
        for m in members
        if compute_permissions(view, m.user_id, m.roles, overwrites) & VIEW_CHANNEL
    )
