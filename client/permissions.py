"""Who may read a channel: Discord's permission order, evaluated on the client.

The client distributes its sender key only to members holding VIEW_CHANNEL, so it must
know them itself; the server offers the facts (roles, members, overwrites) but no list of
readers. Order (REFERENCES.md "Control plane"): owner → all; base = @everyone | the
member's roles; ADMINISTRATOR → all; @everyone overwrite (deny, then allow); the member's
role overwrites OR-ed (deny, then allow); the member's own overwrite.
"""

from __future__ import annotations

from client.models import Channel, Guild, Member

__all__ = ["ADMINISTRATOR", "VIEW_CHANNEL", "can_view", "readers"]

ADMINISTRATOR = 1 << 3
VIEW_CHANNEL = 1 << 10


def can_view(guild: Guild, member: Member, channel: Channel) -> bool:
    """Whether ``member`` holds VIEW_CHANNEL in ``channel``."""
    if member.user_id == guild.owner_id:
        return True
    roles = {r.id: r for r in guild.roles}
    everyone = roles.get(guild.id)
    held = everyone.permissions if everyone is not None else 0
    mine = [r for r in member.roles if r in roles and r != guild.id]
    for role_id in mine:
        held |= roles[role_id].permissions
    if held & ADMINISTRATOR:
        return True
    by_target = {o.id: o for o in channel.overwrites}
    ow = by_target.get(guild.id)
    if ow is not None:
        held = (held & ~ow.deny) | ow.allow
    allow = deny = 0
    for role_id in mine:
        ow = by_target.get(role_id)
        if ow is not None and ow.type == "role":
            allow |= ow.allow
            deny |= ow.deny
    held = (held & ~deny) | allow
    ow = by_target.get(member.user_id)
    if ow is not None and ow.type == "member":
        held = (held & ~ow.deny) | ow.allow
    return bool(held & VIEW_CHANNEL)


def readers(guild: Guild, members: list[Member], channel: Channel) -> list[str]:
    """User ids of the members who can read ``channel``."""
    return sorted(m.user_id for m in members if can_view(guild, m, channel))
