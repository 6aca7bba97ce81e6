"""Guilds, channels, roles, overwrites, invites, membership: every path through permissions."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from control_harness import Harness, User, give, make_guild, new_role

from contract.permissions import Permission as P
from control.store import schema as t

API = "/api/v1"


async def test_creating_a_guild_makes_everyone_role_and_general(harness: Harness) -> None:
    ann = await harness.register("ann")
    guild = await make_guild(harness, ann)
    assert guild["owner_id"] == ann.id
    assert [r["id"] for r in guild["roles"]] == [guild["id"]], "@everyone id = guild id"
    assert [c["name"] for c in guild["channels"]] == ["general"]
    status, mine = await harness.call("GET", f"{API}/users/@me/guilds", ann)
    assert status == 200 and [g["id"] for g in mine] == [guild["id"]]


async def test_non_members_cannot_see_a_guild(harness: Harness) -> None:
    ann, eve = await harness.register("ann"), await harness.register("eve")
    guild = await make_guild(harness, ann)
    status, body = await harness.call("GET", f"{API}/guilds/{guild['id']}", eve)
    assert status == 404 and body["error"]["code"] == "not_found"
    channel = guild["channels"][0]["id"]
    status, _ = await harness.call("GET", f"{API}/channels/{channel}", eve)
    assert status == 404


async def test_members_without_manage_channels_cannot_create_channels(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    status, body = await harness.call(
        "POST", f"{API}/guilds/{guild['id']}/channels", bob, json={"name": "x"}
    )
    assert status == 403 and "MANAGE_CHANNELS" in body["error"]["message"]
    status, channel = await harness.call(
        "POST",
        f"{API}/guilds/{guild['id']}/channels",
        ann,
        json={"name": "voice", "type": "voice", "user_limit": 5, "bitrate": 96000},
    )
    assert status == 201 and channel["user_limit"] == 5 and channel["type"] == "voice"


async def test_overwrite_hides_a_channel_until_a_role_allows_it(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    gid = guild["id"]
    status, secret = await harness.call(
        "POST", f"{API}/guilds/{gid}/channels", ann, json={"name": "secret"}
    )
    assert status == 201
    status, _ = await harness.call(
        "PUT",
        f"{API}/channels/{secret['id']}/permissions/{gid}",
        ann,
        json={"type": "role", "allow": 0, "deny": int(P.VIEW_CHANNEL)},
    )
    assert status == 200
    status, channels = await harness.call("GET", f"{API}/guilds/{gid}/channels", bob)
    assert [c["name"] for c in channels] == ["general"]
    status, _ = await harness.call("GET", f"{API}/channels/{secret['id']}", bob)
    assert status == 404
    insiders = await new_role(harness, ann, gid, "insiders", 0)
    await harness.call(
        "PUT",
        f"{API}/channels/{secret['id']}/permissions/{insiders}",
        ann,
        json={"type": "role", "allow": int(P.VIEW_CHANNEL), "deny": 0},
    )
    assert await give(harness, ann, gid, bob, insiders) == 204
    status, channels = await harness.call("GET", f"{API}/guilds/{gid}/channels", bob)
    assert sorted(c["name"] for c in channels) == ["general", "secret"]


async def test_overwrites_may_only_name_held_bits(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    gid = guild["id"]
    managers = await new_role(harness, ann, gid, "managers", int(P.MANAGE_ROLES))
    await give(harness, ann, gid, bob, managers)
    general = guild["channels"][0]["id"]
    status, body = await harness.call(
        "PUT",
        f"{API}/channels/{general}/permissions/{gid}",
        bob,
        json={"type": "role", "allow": int(P.BAN_MEMBERS), "deny": 0},
    )
    assert status == 403, body


async def test_role_hierarchy_limits_edits_and_grants(harness: Harness) -> None:
    ann, bob, cat = [await harness.register(n) for n in ("ann", "bob", "cat")]
    guild = await make_guild(harness, ann, bob, cat)
    gid = guild["id"]
    low = await new_role(harness, ann, gid, "low", 0)
    mod = await new_role(harness, ann, gid, "mod", int(P.MANAGE_ROLES | P.KICK_MEMBERS))
    status, roles = await harness.call("GET", f"{API}/guilds/{gid}/roles", ann)
    positions = {r["name"]: r["position"] for r in roles}
    assert positions["mod"] < positions["low"], "new roles go just above @everyone"
    status, _ = await harness.call(
        "PATCH",
        f"{API}/guilds/{gid}/roles",
        ann,
        json={"positions": [{"id": mod, "position": 5}, {"id": low, "position": 2}]},
    )
    assert status == 200
    assert await give(harness, ann, gid, bob, mod) == 204
    # bob (mod, position 5) may give the lower role but not his own or grant what he lacks.
    assert await give(harness, bob, gid, cat, low) == 204
    assert await give(harness, bob, gid, cat, mod) == 403
    status, _ = await harness.call(
        "PATCH", f"{API}/guilds/{gid}/roles/{mod}", bob, json={"name": "boss"}
    )
    assert status == 403
    status, _ = await harness.call(
        "PATCH",
        f"{API}/guilds/{gid}/roles/{low}",
        bob,
        json={"permissions": int(P.ADMINISTRATOR)},
    )
    assert status == 403
    status, role = await harness.call(
        "PATCH", f"{API}/guilds/{gid}/roles/{low}", bob, json={"name": "newbies"}
    )
    assert status == 200 and role["name"] == "newbies"


async def test_kick_respects_hierarchy(harness: Harness) -> None:
    ann, bob, cat = [await harness.register(n) for n in ("ann", "bob", "cat")]
    guild = await make_guild(harness, ann, bob, cat)
    gid = guild["id"]
    status, _ = await harness.call("DELETE", f"{API}/guilds/{gid}/members/{cat.id}", bob)
    assert status == 403, "no KICK_MEMBERS"
    mod = await new_role(harness, ann, gid, "mod", int(P.KICK_MEMBERS))
    await give(harness, ann, gid, bob, mod)
    await give(harness, ann, gid, cat, mod)
    status, _ = await harness.call("DELETE", f"{API}/guilds/{gid}/members/{cat.id}", bob)
    assert status == 403, "equal roles"
    status, _ = await harness.call("DELETE", f"{API}/guilds/{gid}/members/{ann.id}", bob)
    assert status == 403, "never the owner"
    status, _ = await harness.call("DELETE", f"{API}/guilds/{gid}/members/{cat.id}", ann)
    assert status == 204
    status, _ = await harness.call("GET", f"{API}/guilds/{gid}", cat)
    assert status == 404


async def test_ban_removes_and_blocks_rejoin_until_unban(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    gid = guild["id"]
    general = guild["channels"][0]["id"]
    status, _ = await harness.call("PUT", f"{API}/guilds/{gid}/bans/{bob.id}", ann, json={})
    assert status == 204
    status, _ = await harness.call("GET", f"{API}/guilds/{gid}", bob)
    assert status == 404
    _, invite = await harness.call("POST", f"{API}/channels/{general}/invites", ann, json={})
    status, body = await harness.call("POST", f"{API}/invites/{invite['code']}", bob, json={})
    assert status == 403 and "banned" in body["error"]["message"]
    status, bans = await harness.call("GET", f"{API}/guilds/{gid}/bans", ann)
    assert bans == [bob.id]
    status, _ = await harness.call("DELETE", f"{API}/guilds/{gid}/bans/{bob.id}", ann)
    assert status == 204
    status, _ = await harness.call("POST", f"{API}/invites/{invite['code']}", bob, json={})
    assert status == 200


async def test_invite_max_uses_and_expiry(harness: Harness) -> None:
    ann, bob, cat = [await harness.register(n) for n in ("ann", "bob", "cat")]
    guild = await make_guild(harness, ann)
    general = guild["channels"][0]["id"]
    _, once = await harness.call(
        "POST", f"{API}/channels/{general}/invites", ann, json={"max_uses": 1}
    )
    assert (await harness.call("POST", f"{API}/invites/{once['code']}", bob, json={}))[0] == 200
    status, body = await harness.call("POST", f"{API}/invites/{once['code']}", cat, json={})
    assert status == 410 and body["error"]["code"] == "gone"
    state = harness.app.extensions["hushroom.control"]
    _, later = await harness.call("POST", f"{API}/channels/{general}/invites", ann, json={})
    await state.db.write(
        lambda conn: conn.execute(
            sa.update(t.invites).where(t.invites.c.code == later["code"]).values(expires_at=1)
        )
    )
    status, _ = await harness.call("POST", f"{API}/invites/{later['code']}", cat, json={})
    assert status == 410


async def test_leave_transfer_and_delete(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    gid = guild["id"]
    status, body = await harness.call("DELETE", f"{API}/users/@me/guilds/{gid}", ann)
    assert status == 409 and "owner" in body["error"]["message"]
    status, _ = await harness.call("DELETE", f"{API}/guilds/{gid}", bob)
    assert status == 403
    status, moved = await harness.call(
        "POST", f"{API}/guilds/{gid}/transfer", ann, json={"owner_id": bob.id}
    )
    assert status == 200 and moved["owner_id"] == bob.id
    assert (await harness.call("DELETE", f"{API}/users/@me/guilds/{gid}", ann))[0] == 204
    assert (await harness.call("DELETE", f"{API}/guilds/{gid}", bob))[0] == 204
    status, _ = await harness.call("GET", f"{API}/guilds/{gid}", bob)
    assert status == 404


async def test_channel_edit_and_delete_need_manage_channels(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    general = guild["channels"][0]["id"]
    status, _ = await harness.call("PATCH", f"{API}/channels/{general}", bob, json={"topic": "x"})
    assert status == 403
    status, channel = await harness.call(
        "PATCH", f"{API}/channels/{general}", ann, json={"topic": "hello", "retention_days": 0}
    )
    assert status == 200 and channel["topic"] == "hello" and channel["retention_days"] == 0
    assert (await harness.call("DELETE", f"{API}/channels/{general}", bob))[0] == 403
    assert (await harness.call("DELETE", f"{API}/channels/{general}", ann))[0] == 204


async def ranked_guild(harness: Harness) -> dict[str, Any]:
    """ann owns; dan holds "senior" (6), bob "mod" (5: MANAGE_ROLES, KICK, BAN), eve "admin"
    (3: ADMINISTRATOR); "boss" (4) carries ADMINISTRATOR and nobody holds it; "low" (1) is
    empty; cat holds nothing."""
    users = {n: await harness.register(n) for n in ("ann", "bob", "cat", "dan", "eve")}
    ann = users["ann"]
    guild = await make_guild(harness, ann, *(u for n, u in users.items() if n != "ann"))
    gid = guild["id"]
    mod_bits = int(P.MANAGE_ROLES | P.KICK_MEMBERS | P.BAN_MEMBERS)
    roles = {
        "low": await new_role(harness, ann, gid, "low", 0),
        "admin": await new_role(harness, ann, gid, "admin", int(P.ADMINISTRATOR)),
        "boss": await new_role(harness, ann, gid, "boss", int(P.ADMINISTRATOR)),
        "mod": await new_role(harness, ann, gid, "mod", mod_bits),
        "senior": await new_role(harness, ann, gid, "senior", 0),
    }
    order = {"low": 1, "admin": 3, "boss": 4, "mod": 5, "senior": 6}
    status, body = await harness.call(
        "PATCH",
        f"{API}/guilds/{gid}/roles",
        ann,
        json={"positions": [{"id": roles[n], "position": p} for n, p in order.items()]},
    )
    assert status == 200, body
    for user, role in (("dan", "senior"), ("bob", "mod"), ("eve", "admin")):
        assert await give(harness, ann, gid, users[user], roles[role]) == 204
    return {"gid": gid, "general": guild["channels"][0]["id"], "roles": roles, **users}


async def member_roles(harness: Harness, gid: str, user: User, viewer: User) -> set[str]:
    status, members = await harness.call("GET", f"{API}/guilds/{gid}/members", viewer)
    assert status == 200
    return next(set(m["roles"]) for m in members if m["user_id"] == user.id)


async def test_a_role_carrying_bits_one_lacks_cannot_be_given(harness: Harness) -> None:
    g = await ranked_guild(harness)
    gid, bob, cat, boss = g["gid"], g["bob"], g["cat"], g["roles"]["boss"]
    # "boss" is below bob's "mod" but carries ADMINISTRATOR, which bob lacks.
    assert await give(harness, bob, gid, bob, boss) == 403
    assert await give(harness, bob, gid, cat, boss) == 403
    assert boss not in await member_roles(harness, gid, bob, g["ann"])
    status, _ = await harness.call(
        "POST", f"{API}/guilds/{gid}/channels", bob, json={"name": "mine"}
    )
    assert status == 403, "bob still lacks MANAGE_CHANNELS"
    # An administrator holds every bit, so, once ranked above "boss", may give it.
    assert await give(harness, g["eve"], gid, cat, boss) == 403, "boss is above eve's admin"
    status, _ = await harness.call(
        "PATCH",
        f"{API}/guilds/{gid}/roles",
        g["ann"],
        json={"positions": [{"id": g["roles"]["admin"], "position": 7}]},
    )
    assert status == 200
    assert await give(harness, g["eve"], gid, cat, boss) == 204


async def test_roles_are_given_and_taken_only_below_oneself(harness: Harness) -> None:
    g = await ranked_guild(harness)
    gid, ann, bob, cat, dan, low = (
        g["gid"],
        g["ann"],
        g["bob"],
        g["cat"],
        g["dan"],
        g["roles"]["low"],
    )
    assert await give(harness, bob, gid, dan, low) == 403, "dan (senior) is above bob"
    assert await give(harness, bob, gid, ann, low) == 403, "never the owner"
    assert await give(harness, bob, gid, bob, low) == 403, "never oneself"
    assert await give(harness, bob, gid, cat, low) == 204
    assert await give(harness, ann, gid, dan, low) == 204
    for target in (dan, ann):
        status, _ = await harness.call(
            "DELETE", f"{API}/guilds/{gid}/members/{target.id}/roles/{g['roles']['senior']}", bob
        )
        assert status == 403
        status, _ = await harness.call(
            "DELETE", f"{API}/guilds/{gid}/members/{target.id}/roles/{low}", bob
        )
        assert status == 403
    assert low in await member_roles(harness, gid, dan, ann)
    # The hierarchy binds an administrator too: eve (admin, 3) cannot touch bob (mod, 5).
    assert await give(harness, g["eve"], gid, bob, low) == 403
    status, _ = await harness.call(
        "DELETE", f"{API}/guilds/{gid}/members/{cat.id}/roles/{low}", bob
    )
    assert status == 204


async def test_overwrites_reach_only_members_and_roles_below(harness: Harness) -> None:
    g = await ranked_guild(harness)
    gid, general, ann, bob, dan = g["gid"], g["general"], g["ann"], g["bob"], g["dan"]
    deny_view = {"allow": 0, "deny": int(P.VIEW_CHANNEL)}
    for target, kind in (
        (dan.id, "member"),
        (ann.id, "member"),
        (bob.id, "member"),
        (g["roles"]["senior"], "role"),
        (g["roles"]["mod"], "role"),
    ):
        status, body = await harness.call(
            "PUT",
            f"{API}/channels/{general}/permissions/{target}",
            bob,
            json={"type": kind, **deny_view},
        )
        assert status == 403, (kind, body)
    status, channels = await harness.call("GET", f"{API}/guilds/{gid}/channels", dan)
    assert [c["id"] for c in channels] == [general]
    # ann's overwrite for dan cannot be removed by bob either.
    allow_send = {"type": "member", "allow": int(P.SEND_MESSAGES), "deny": 0}
    status, _ = await harness.call(
        "PUT", f"{API}/channels/{general}/permissions/{dan.id}", ann, json=allow_send
    )
    assert status == 200
    status, _ = await harness.call("DELETE", f"{API}/channels/{general}/permissions/{dan.id}", bob)
    assert status == 403
    status, channel = await harness.call("GET", f"{API}/channels/{general}", ann)
    assert [o["id"] for o in channel["permission_overwrites"]] == [dan.id]
    for target, kind in ((g["cat"].id, "member"), (g["roles"]["low"], "role"), (gid, "role")):
        status, body = await harness.call(
            "PUT",
            f"{API}/channels/{general}/permissions/{target}",
            bob,
            json={"type": kind, "allow": int(P.SEND_MESSAGES), "deny": 0},
        )
        assert status == 200, (kind, body)


async def test_an_overwrite_denying_a_bit_one_lacks_cannot_be_lifted(harness: Harness) -> None:
    g = await ranked_guild(harness)
    gid, general, ann, bob = g["gid"], g["general"], g["ann"], g["bob"]
    mention = int(P.MENTION_EVERYONE)
    status, _ = await harness.call(
        "PUT",
        f"{API}/channels/{general}/permissions/{gid}",
        ann,
        json={"type": "role", "allow": 0, "deny": mention},
    )
    assert status == 200
    # bob lacks MENTION_EVERYONE in #general because of that deny: clearing it would grant it.
    status, _ = await harness.call(
        "PUT",
        f"{API}/channels/{general}/permissions/{gid}",
        bob,
        json={"type": "role", "allow": 0, "deny": 0},
    )
    assert status == 403
    status, _ = await harness.call("DELETE", f"{API}/channels/{general}/permissions/{gid}", bob)
    assert status == 403
    status, channel = await harness.call("GET", f"{API}/channels/{general}", ann)
    assert channel["permission_overwrites"] == [
        {"id": gid, "type": "role", "allow": 0, "deny": mention}
    ]


async def test_a_role_opening_a_channel_one_cannot_see_cannot_be_given(harness: Harness) -> None:
    g = await ranked_guild(harness)
    gid, ann, bob, cat, low = g["gid"], g["ann"], g["bob"], g["cat"], g["roles"]["low"]
    status, secret = await harness.call(
        "POST", f"{API}/guilds/{gid}/channels", ann, json={"name": "secret"}
    )
    assert status == 201
    for target, allow, deny in ((gid, 0, P.VIEW_CHANNEL), (low, P.VIEW_CHANNEL, 0)):
        status, _ = await harness.call(
            "PUT",
            f"{API}/channels/{secret['id']}/permissions/{target}",
            ann,
            json={"type": "role", "allow": int(allow), "deny": int(deny)},
        )
        assert status == 200
    # "low" carries no guild-wide bit, but in #secret it allows VIEW_CHANNEL, which bob lacks.
    assert await give(harness, bob, gid, cat, low) == 403
    status, channels = await harness.call("GET", f"{API}/guilds/{gid}/channels", cat)
    assert [c["name"] for c in channels] == ["general"]
    status, _ = await harness.call(
        "PUT",
        f"{API}/channels/{secret['id']}/permissions/{g['roles']['mod']}",
        ann,
        json={"type": "role", "allow": int(P.VIEW_CHANNEL), "deny": 0},
    )
    assert status == 200
    assert await give(harness, bob, gid, cat, low) == 204
    status, channels = await harness.call("GET", f"{API}/guilds/{gid}/channels", cat)
    assert sorted(c["name"] for c in channels) == ["general", "secret"]


async def test_role_and_member_paths_stop_below_the_actor(harness: Harness) -> None:
    """The other paths an attacker with MANAGE_ROLES, KICK and BAN would try (these held
    before the assignment fix too; kept so they keep holding)."""
    g = await ranked_guild(harness)
    gid, ann, bob, dan, eve, roles = g["gid"], g["ann"], g["bob"], g["dan"], g["eve"], g["roles"]
    status, _ = await harness.call(
        "POST",
        f"{API}/guilds/{gid}/roles",
        bob,
        json={"name": "x", "permissions": int(P.ADMINISTRATOR)},
    )
    assert status == 403, "a new role carrying a bit bob lacks"
    for role in ("mod", "senior"):
        path = f"{API}/guilds/{gid}/roles/{roles[role]}"
        status, _ = await harness.call("PATCH", path, bob, json={"name": "mine"})
        assert status == 403, f"edit {role}"
        assert (await harness.call("DELETE", path, bob))[0] == 403, f"delete {role}"
    for role, position in (("low", 5), ("low", 6), ("senior", 2), ("mod", 4)):
        status, _ = await harness.call(
            "PATCH",
            f"{API}/guilds/{gid}/roles",
            bob,
            json={"positions": [{"id": roles[role], "position": position}]},
        )
        assert status == 403, f"move {role} to {position}"
    status, _ = await harness.call(
        "PATCH",
        f"{API}/guilds/{gid}/roles",
        bob,
        json={"positions": [{"id": roles["low"], "position": 4}]},
    )
    assert status == 200, "a role below bob may move up to just below him"
    for target in (ann, dan, bob):
        status, _ = await harness.call("DELETE", f"{API}/guilds/{gid}/members/{target.id}", bob)
        assert status == 403, "kick"
        status, _ = await harness.call("PUT", f"{API}/guilds/{gid}/bans/{target.id}", bob, json={})
        assert status == 403, "ban"
    # ADMINISTRATOR holds every bit but not a higher rank.
    status, _ = await harness.call("DELETE", f"{API}/guilds/{gid}/members/{bob.id}", eve)
    assert status == 403
    status, _ = await harness.call(
        "PATCH", f"{API}/guilds/{gid}/roles/{roles['boss']}", eve, json={"name": "mine"}
    )
    assert status == 403
    status, _ = await harness.call(
        "POST", f"{API}/guilds/{gid}/transfer", eve, json={"owner_id": eve.id}
    )
    assert status == 403, "only the owner transfers the guild"
    status, members = await harness.call("GET", f"{API}/guilds/{gid}/members", ann)
    assert len(members) == 5
