"""Export, account erasure and the retention purger."""

from __future__ import annotations

import os

import sqlalchemy as sa
from control_harness import Harness, b64, make_guild

from control.config import ControlConfig
from control.ids import now
from control.purger import purge_once
from control.store import schema as t

API = "/api/v1"


async def _count(harness: Harness, table: sa.Table) -> int:
    state = harness.app.extensions["hushroom.control"]
    return int(
        await state.db.read(
            lambda conn: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
        )
    )


async def test_export_holds_everything_about_the_caller(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob", pq_otks=2)
    guild = await make_guild(harness, ann, bob)
    general = guild["channels"][0]["id"]
    await harness.call(
        "POST", f"{API}/channels/{general}/messages", bob, json={"ciphertext": b64(b"m")}
    )
    body = {
        "recipients": [
            {"user_id": bob.id, "devices": [{"device_id": bob.device_id, "ciphertext": b64(b"e")}]}
        ]
    }
    await harness.call("POST", f"{API}/envelopes", ann, json=body)
    status, export = await harness.call("GET", f"{API}/users/@me/export", bob)
    assert status == 200
    assert export["user"]["handle"] == "bob"
    assert [d["id"] for d in export["devices"]] == [bob.device_id]
    assert [m["guild_id"] for m in export["memberships"]] == [guild["id"]]
    assert len(export["messages"]) == 1 and len(export["envelopes_queued_for_you"]) == 1
    assert len(export["one_time_prekeys"]) == 5
    assert len(export["pq_one_time_prekeys"]) == 2
    assert all("token_hash" not in s for s in export["sessions"])


async def test_delete_is_refused_while_owning_a_guild_with_members(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    status, body = await harness.call("DELETE", f"{API}/users/@me", ann)
    assert status == 409 and "transfer" in body["error"]["message"]
    assert body["error"]["guild_id"] == guild["id"]


async def test_delete_erases_the_account_and_what_hangs_off_it(harness: Harness) -> None:
    ann = await harness.register("ann", pq_otks=2)
    bob = await harness.register("bob", pq_otks=3)
    await make_guild(harness, bob)  # bob owns a guild alone: it goes with him
    guild = await make_guild(harness, ann, bob)
    general = guild["channels"][0]["id"]
    await harness.call(
        "POST", f"{API}/channels/{general}/messages", bob, json={"ciphertext": b64(b"m")}
    )
    body = {
        "recipients": [
            {"user_id": ann.id, "devices": [{"device_id": ann.device_id, "ciphertext": b64(b"e")}]}
        ]
    }
    await harness.call("POST", f"{API}/envelopes", bob, json=body)
    await harness.call(
        "POST",
        f"{API}/envelopes",
        ann,
        json={
            "recipients": [
                {
                    "user_id": bob.id,
                    "devices": [{"device_id": bob.device_id, "ciphertext": b64(b"f")}],
                }
            ]
        },
    )
    status, _ = await harness.call("DELETE", f"{API}/users/@me", bob)
    assert status == 204
    assert (await harness.call("GET", f"{API}/users/@me", bob))[0] == 401
    assert await _count(harness, t.users) == 1
    assert await _count(harness, t.devices) == 1
    assert await _count(harness, t.messages) == 0
    assert await _count(harness, t.envelopes) == 0
    assert await _count(harness, t.guilds) == 1
    assert await _count(harness, t.members) == 1
    assert await _count(harness, t.one_time_prekeys) == 5, "only ann's keys are left"
    assert await _count(harness, t.pq_one_time_prekeys) == 2, "only ann's keys are left"


async def test_purger_enforces_every_time_based_rule(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    general = guild["channels"][0]["id"]
    await harness.call("PATCH", f"{API}/channels/{general}", ann, json={"retention_days": 1})
    await harness.call(
        "POST", f"{API}/channels/{general}/messages", bob, json={"ciphertext": b64(b"m")}
    )
    body = {
        "recipients": [
            {"user_id": bob.id, "devices": [{"device_id": bob.device_id, "ciphertext": b64(b"e")}]}
        ]
    }
    await harness.call("POST", f"{API}/envelopes", ann, json=body)
    await harness.challenge()
    state = harness.app.extensions["hushroom.control"]
    ttl = state.config.envelope_ttl_s
    soon = await state.db.write(lambda conn: purge_once(conn, now() + 60, ttl))
    assert soon["messages"] == soon["envelopes"] == soon["challenges"] == 0
    later = await state.db.write(lambda conn: purge_once(conn, now() + 86400 + 60, ttl))
    assert later["messages"] == 1 and later["challenges"] == 1
    assert later["invites"] == 1, "the 24 h invite expired"
    last = await state.db.write(lambda conn: purge_once(conn, now() + ttl + 60, ttl))
    assert last["envelopes"] == 1 and last["sessions"] == 2
    assert await _count(harness, t.challenges) == 0


async def test_erasure_leaves_nothing_in_the_database_wal_or_shm_files(
    harness: Harness, config: ControlConfig
) -> None:
    ann = await harness.register("ann")
    victim = await harness.register("qx_erased_7k")
    otk = os.urandom(32)
    status, _ = await harness.call(
        "PUT",
        f"{API}/users/@me/devices/@current/keys",
        victim,
        json={"one_time_prekeys": [{"key_id": 900, "public_key": b64(otk)}]},
    )
    assert status == 200
    guild = await make_guild(harness, victim)  # owned alone: erased with the account
    status, _ = await harness.call(
        "PATCH", f"{API}/guilds/{guild['id']}", victim, json={"name": "qx guild marker"}
    )
    assert status == 200
    general = guild["channels"][0]["id"]
    said, queued, received = os.urandom(48), os.urandom(48), os.urandom(48)
    await harness.call(
        "POST", f"{API}/channels/{general}/messages", victim, json={"ciphertext": b64(said)}
    )
    for sender, recipient, ciphertext in ((victim, ann, queued), (ann, victim, received)):
        devices = [{"device_id": recipient.device_id, "ciphertext": b64(ciphertext)}]
        body = {"recipients": [{"user_id": recipient.id, "devices": devices}]}
        status, _ = await harness.call("POST", f"{API}/envelopes", sender, json=body)
        assert status == 201
    markers = {
        "handle": b"qx_erased_7k",
        "user id": victim.id.encode(),
        "device id": victim.device_id.encode(),
        "identity key": victim.keys.identity_key,
        "one-time prekey": otk,
        "guild name": b"qx guild marker",
        "channel message": said,
        "envelope sent": queued,
        "envelope received": received,
    }
    files = sorted(config.data_dir.glob("control.sqlite3*"))
    assert {f.name for f in files} >= {"control.sqlite3", "control.sqlite3-wal"}
    content = b"".join(f.read_bytes() for f in files)
    assert all(marker in content for marker in markers.values()), "markers are stored first"

    status, _ = await harness.call("DELETE", f"{API}/users/@me", victim)
    assert status == 204
    for path in sorted(config.data_dir.glob("control.sqlite3*")):
        data = path.read_bytes()
        left = [name for name, marker in markers.items() if marker in data]
        assert not left, f"{path.name} still holds the erased account's {', '.join(left)}"
    assert await _count(harness, t.users) == 1, "ann is untouched"
