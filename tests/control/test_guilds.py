"""Guilds, channels, roles, overwrites, invites, membership: every path through permissions."""

from __future__ import annotations

import sqlalchemy as sa
from control_harness import Harness, give, make_guild, new_role

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
