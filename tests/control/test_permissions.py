"""The permission function, table-driven: Discord's order, bits and hierarchy rules."""

from __future__ import annotations

import pytest

from contract.permissions import (
    ALL,
    GuildView,
    Overwrite,
    RoleInfo,
    can_change_overwrite,
    can_grant,
    can_manage_member,
    can_manage_role,
    compute_permissions,
)
from contract.permissions import Permission as P

G = "guild"
VIEW, SEND, CONNECT, SPEAK = P.VIEW_CHANNEL, P.SEND_MESSAGES, P.CONNECT, P.SPEAK
EVERYONE_BASE = int(VIEW | SEND | CONNECT | SPEAK | P.MENTION_EVERYONE | P.ATTACH_FILES)

GUILD = GuildView(
    G,
    "owner",
    {
        G: RoleInfo(G, EVERYONE_BASE, 0),
        "mod": RoleInfo("mod", int(P.KICK_MEMBERS | P.BAN_MEMBERS | P.MANAGE_ROLES), 5),
        "admin": RoleInfo("admin", int(P.ADMINISTRATOR), 10),
        "muted": RoleInfo("muted", 0, 2),
        "helper": RoleInfo("helper", int(P.MANAGE_MESSAGES), 3),
    },
)


def role_ow(target: str, allow: int = 0, deny: int = 0) -> Overwrite:
    return Overwrite(target, "role", int(allow), int(deny))


def member_ow(target: str, allow: int = 0, deny: int = 0) -> Overwrite:
    return Overwrite(target, "member", int(allow), int(deny))


CASES = [
    # (name, user, roles, overwrites or None for guild-wide, bits that must be set, must be clear)
    ("owner has everything", "owner", [], None, ALL, 0),
    ("owner ignores channel denies", "owner", [], [role_ow(G, deny=VIEW)], ALL, 0),
    ("everyone base applies", "u", [], None, EVERYONE_BASE, P.KICK_MEMBERS),
    ("roles are OR-ed into the base", "u", ["mod"], None, P.KICK_MEMBERS | VIEW, P.ADMINISTRATOR),
    ("administrator has everything", "u", ["admin"], None, ALL, 0),
    ("administrator ignores overwrites", "u", ["admin"], [role_ow(G, deny=VIEW)], ALL, 0),
    ("everyone overwrite denies", "u", [], [role_ow(G, deny=SEND)], VIEW, SEND),
    (
        "role allow beats everyone deny",
        "u",
        ["mod"],
        [role_ow(G, deny=SEND), role_ow("mod", allow=SEND)],
        SEND,
        0,
    ),
    (
        "role allow beats another role's deny",
        "u",
        ["mod", "muted"],
        [role_ow("muted", deny=SEND), role_ow("mod", allow=SEND)],
        SEND,
        0,
    ),
    ("role deny alone removes", "u", ["muted"], [role_ow("muted", deny=SEND)], VIEW, SEND),
    (
        "member overwrite beats role allow",
        "u",
        ["mod"],
        [role_ow("mod", allow=SEND), member_ow("u", deny=SEND)],
        VIEW,
        SEND,
    ),
    (
        "member overwrite allow beats role deny",
        "u",
        ["muted"],
        [role_ow("muted", deny=SEND), member_ow("u", allow=SEND)],
        SEND,
        0,
    ),
    ("another member's overwrite does not apply", "u", [], [member_ow("v", deny=SEND)], SEND, 0),
    ("missing view channel means nothing", "u", ["mod"], [role_ow(G, deny=VIEW)], 0, ALL),
    (
        "member view grant restores a hidden channel",
        "u",
        [],
        [role_ow(G, deny=VIEW), member_ow("u", allow=VIEW)],
        VIEW | SEND,
        0,
    ),
    (
        "no send clears mention and attach",
        "u",
        [],
        [role_ow(G, deny=SEND)],
        VIEW,
        P.MENTION_EVERYONE | P.ATTACH_FILES,
    ),
    ("no connect clears voice permissions", "u", [], [role_ow(G, deny=CONNECT)], VIEW, SPEAK),
    ("unknown role ids are ignored", "u", ["ghost"], None, EVERYONE_BASE, P.KICK_MEMBERS),
]


@pytest.mark.parametrize(
    ("user", "roles", "overwrites", "present", "absent"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_compute_permissions(
    user: str, roles: list[str], overwrites: list[Overwrite] | None, present: int, absent: int
) -> None:
    result = compute_permissions(GUILD, user, roles, overwrites)
    assert result & present == present
    assert result & absent == 0
    if present == 0:
        assert result == 0


HIERARCHY = [
    # (name, actor, actor roles, target, target roles, allowed)
    ("owner may act on anyone", "owner", [], "u", ["admin"], True),
    ("nobody acts on the owner", "u", ["admin"], "owner", [], False),
    ("higher role acts on lower", "a", ["mod"], "u", ["muted"], True),
    ("equal highest role may not act", "a", ["mod"], "u", ["mod"], False),
    ("lower may not act on higher", "a", ["muted"], "u", ["mod"], False),
    ("administrator is still bound by hierarchy", "a", ["admin"], "u", ["admin", "mod"], False),
    ("no one acts on themselves", "a", ["mod"], "a", ["mod"], False),
    ("any role outranks a member with none", "a", ["muted"], "u", [], True),
]


@pytest.mark.parametrize(
    ("actor", "actor_roles", "target", "target_roles", "allowed"),
    [case[1:] for case in HIERARCHY],
    ids=[case[0] for case in HIERARCHY],
)
def test_hierarchy_for_kick_and_ban(
    actor: str, actor_roles: list[str], target: str, target_roles: list[str], allowed: bool
) -> None:
    assert can_manage_member(GUILD, actor, actor_roles, target, target_roles) is allowed


ROLE_EDITS = [
    ("owner edits the top role", "owner", [], "admin", True),
    ("mod edits a lower role", "a", ["mod"], "helper", True),
    ("mod may not edit its own role", "a", ["mod"], "mod", False),
    ("mod may not edit a higher role", "a", ["mod"], "admin", False),
]


@pytest.mark.parametrize(
    ("actor", "actor_roles", "role", "allowed"),
    [case[1:] for case in ROLE_EDITS],
    ids=[case[0] for case in ROLE_EDITS],
)
def test_hierarchy_for_role_edits(
    actor: str, actor_roles: list[str], role: str, allowed: bool
) -> None:
    assert can_manage_role(GUILD, actor, actor_roles, GUILD.roles[role]) is allowed


def test_only_held_permissions_can_be_granted() -> None:
    mod = compute_permissions(GUILD, "a", ["mod"])
    assert can_grant(mod, int(P.KICK_MEMBERS))
    assert not can_grant(mod, int(P.ADMINISTRATOR))
    assert can_grant(compute_permissions(GUILD, "a", ["admin"]), int(P.ADMINISTRATOR))


OVERWRITE_CHANGES = [
    # (name, before, after, allowed) for an actor holding VIEW and SEND only
    ("set held bits", None, role_ow(G, deny=SEND), True),
    ("allow a bit one lacks", None, role_ow(G, allow=P.KICK_MEMBERS), False),
    ("deny a bit one lacks", None, role_ow(G, deny=P.KICK_MEMBERS), False),
    ("replace held with held", role_ow(G, deny=SEND), role_ow(G, allow=SEND), True),
    ("clear a deny of a bit one lacks", role_ow(G, deny=CONNECT), role_ow(G), False),
    ("remove a deny of a bit one lacks", role_ow(G, deny=CONNECT), None, False),
    ("remove an allow of a bit one lacks", member_ow("u", allow=CONNECT), None, False),
    ("remove held bits", member_ow("u", allow=VIEW, deny=SEND), None, True),
]


@pytest.mark.parametrize(
    ("before", "after", "allowed"),
    [case[1:] for case in OVERWRITE_CHANGES],
    ids=[case[0] for case in OVERWRITE_CHANGES],
)
def test_overwrite_changes_name_only_held_bits(
    before: Overwrite | None, after: Overwrite | None, allowed: bool
) -> None:
    assert can_change_overwrite(int(VIEW | SEND), before, after) is allowed
    assert can_change_overwrite(ALL, before, after), "owner and administrators hold every bit"


def test_bits_are_at_discords_positions() -> None:
    positions = {
        "CREATE_INSTANT_INVITE": 0,
        "KICK_MEMBERS": 1,
        "BAN_MEMBERS": 2,
        "ADMINISTRATOR": 3,
        "MANAGE_CHANNELS": 4,
        "MANAGE_GUILD": 5,
        "VIEW_CHANNEL": 10,
        "SEND_MESSAGES": 11,
        "MANAGE_MESSAGES": 13,
        "ATTACH_FILES": 15,
        "READ_MESSAGE_HISTORY": 16,
        "MENTION_EVERYONE": 17,
        "CONNECT": 20,
        "SPEAK": 21,
        "MUTE_MEMBERS": 22,
        "DEAFEN_MEMBERS": 23,
        "MOVE_MEMBERS": 24,
        "USE_VAD": 25,
        "MANAGE_NICKNAMES": 27,
        "MANAGE_ROLES": 28,
        "MODERATE_MEMBERS": 40,
    }
    assert {p.name: p.value.bit_length() - 1 for p in P} == positions
