"""Discord's permission bits and the one function that computes a member's permissions.

Order (Discord's, see REFERENCES.md "Control plane"): the guild owner has everything; the
base is @everyone (role id = guild id) OR-ed with the member's roles; ADMINISTRATOR grants
everything; in a channel the @everyone overwrite applies (deny, then allow), then all of the
member's role overwrites OR-ed together (deny, then allow), then the member's own overwrite.
Without VIEW_CHANNEL a member has nothing in the channel; without SEND_MESSAGES no mention or
attachment permission; without CONNECT no other voice permission.

Hierarchy (Discord's, ADMINISTRATOR included; only the owner stands above it): a member's rank
is the position of its highest role (0 with none), the owner's is above every role. One acts
only on members ranked strictly below oneself (never the owner, never oneself) and on roles
strictly below one's rank; a role one creates, edits or gives, and every bit a channel
overwrite names before and after one changes it, carries only bits one holds (all of them for
the owner and administrators). docs/control.md, "Permissions", has the table by route.

Everything here is pure: callers load a :class:`GuildView` and overwrites from the store.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "ALL",
    "GuildView",
    "Overwrite",
    "Permission",
    "RoleInfo",
    "can_change_overwrite",
    "can_grant",
    "can_manage_member",
    "can_manage_role",
    "compute_permissions",
    "highest_position",
]


class Permission(enum.IntFlag):
    """Permission bits at Discord's positions."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    CONNECT = 1 << 20
    SPEAK = 1 << 21
    MUTE_MEMBERS = 1 << 22
    DEAFEN_MEMBERS = 1 << 23
    MOVE_MEMBERS = 1 << 24
    USE_VAD = 1 << 25
    MANAGE_NICKNAMES = 1 << 27
    MANAGE_ROLES = 1 << 28
    MODERATE_MEMBERS = 1 << 40


#: Every bit this server knows; what the owner and administrators hold.
ALL = 0
for _bit in Permission:
    ALL |= int(_bit)

#: What @everyone holds in a new guild (Discord's defaults, restricted to known bits).
DEFAULT_EVERYONE = int(
    Permission.CREATE_INSTANT_INVITE
    | Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.MENTION_EVERYONE
    | Permission.CONNECT
    | Permission.SPEAK
    | Permission.USE_VAD
)

_NEEDS_SEND = int(Permission.MENTION_EVERYONE | Permission.ATTACH_FILES)
_NEEDS_CONNECT = int(
    Permission.SPEAK
    | Permission.MUTE_MEMBERS
    | Permission.DEAFEN_MEMBERS
    | Permission.MOVE_MEMBERS
    | Permission.USE_VAD
)


@dataclass(frozen=True)
class RoleInfo:
    """A role as the permission function needs it."""

    id: str
    permissions: int
    position: int


@dataclass(frozen=True)
class Overwrite:
    """A channel permission overwrite for a role or a member."""

    target_id: str
    target_type: str  # "role" or "member"
    allow: int
    deny: int


@dataclass(frozen=True)
class GuildView:
    """The guild facts every permission decision depends on."""

    id: str
    owner_id: str
    roles: Mapping[str, RoleInfo]

    @property
    def everyone(self) -> RoleInfo:
        """The @everyone role, whose id is the guild id."""
        return self.roles[self.id]


def compute_permissions(
    guild: GuildView,
    user_id: str,
    role_ids: Iterable[str],
    overwrites: Iterable[Overwrite] | None = None,
) -> int:
    """The permissions of member ``user_id`` holding ``role_ids``.

    With ``overwrites`` None the result is guild-wide; otherwise it is for the channel the
    overwrites belong to.
    """
    if user_id == guild.owner_id:
        return ALL
    role_ids = [r for r in role_ids if r in guild.roles and r != guild.id]
    permissions = guild.everyone.permissions
    for role_id in role_ids:
        permissions |= guild.roles[role_id].permissions
    if permissions & Permission.ADMINISTRATOR:
        return ALL
    if overwrites is None:
        return permissions
    by_target = {o.target_id: o for o in overwrites}
    everyone = by_target.get(guild.id)
    if everyone is not None:
        permissions = (permissions & ~everyone.deny) | everyone.allow
    allow = deny = 0
    for role_id in role_ids:
        overwrite = by_target.get(role_id)
        if overwrite is not None and overwrite.target_type == "role":
            allow |= overwrite.allow
            deny |= overwrite.deny
    permissions = (permissions & ~deny) | allow
    own = by_target.get(user_id)
    if own is not None and own.target_type == "member":
        permissions = (permissions & ~own.deny) | own.allow
    if not permissions & Permission.VIEW_CHANNEL:
        return 0
    if not permissions & Permission.SEND_MESSAGES:
        permissions &= ~_NEEDS_SEND
    if not permissions & Permission.CONNECT:
        permissions &= ~_NEEDS_CONNECT
    return permissions


def highest_position(guild: GuildView, user_id: str, role_ids: Iterable[str]) -> float:
    """The position of a member's highest role (the owner ranks above every role)."""
    if user_id == guild.owner_id:
        return float("inf")
    positions = [guild.roles[r].position for r in role_ids if r in guild.roles]
    return float(max(positions, default=0))


def can_manage_member(
    guild: GuildView,
    actor_id: str,
    actor_roles: Iterable[str],
    target_id: str,
    target_roles: Iterable[str],
) -> bool:
    """Whether the actor outranks the target (for kick, ban, role assignment, member
    overwrites); never the owner, never oneself."""
    if target_id == guild.owner_id or target_id == actor_id:
        return False
    return highest_position(guild, actor_id, actor_roles) > highest_position(
        guild, target_id, target_roles
    )


def can_manage_role(
    guild: GuildView, actor_id: str, actor_roles: Iterable[str], role: RoleInfo
) -> bool:
    """Whether the actor's highest role is strictly above ``role`` (to edit, move, delete or
    assign it, or set its channel overwrites)."""
    return highest_position(guild, actor_id, actor_roles) > role.position


def can_grant(actor_permissions: int, requested: int) -> bool:
    """Whether every bit in ``requested`` is one the actor holds."""
    return requested & ~actor_permissions == 0


def can_change_overwrite(
    actor_permissions: int, before: Overwrite | None, after: Overwrite | None
) -> bool:
    """Whether an actor holding ``actor_permissions`` in a channel may turn its overwrite
    ``before`` into ``after`` (None: absent).

    Every bit named on either side must be held: setting an allow or deny of a bit one lacks
    is granting or managing it, and so is clearing one (lifting a deny of a bit one lacks
    would hand it to everyone the overwrite covers, oneself included).
    """
    named = 0
    for overwrite in (before, after):
        if overwrite is not None:
            named |= overwrite.allow | overwrite.deny
    return can_grant(actor_permissions, named)
