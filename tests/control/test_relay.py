"""Prekey directory, envelope relay and channel messages."""

from __future__ import annotations

import base64
from typing import Any

import msgpack
import pytest
import sqlalchemy as sa
import trio
from control_harness import Harness, User, b64, make_guild

from contract import signing as sig
from contract.permissions import Permission as P
from contract.relay import (
    ENVELOPE_PAGE_BYTES,
    ENVELOPE_PAGE_LIMIT,
    MAX_CIPHERTEXT,
    MAX_ENVELOPE_PAGE_ANSWER,
)
from control.api import relay
from control.store import schema as t

API = "/api/v1"


async def test_claim_returns_a_bundle_per_device_and_consumes_one_otk(harness: Harness) -> None:
    ann, bob = await harness.register("ann", otks=3), await harness.register("bob")
    phone = await harness.add_device(ann, otks=2)
    status, claim = await harness.call("POST", f"{API}/users/{ann.id}/keys/claim", bob, json={})
    assert status == 200
    devices = {b["device_id"]: b for b in claim["devices"]}
    assert set(devices) == {ann.device_id, phone.device_id}
    assert devices[ann.device_id]["one_time_prekey"]["key_id"] == 1
    assert devices[ann.device_id]["signed_prekey"]["key_id"] == 1
    status, count = await harness.call("GET", f"{API}/users/@me/devices/@current/keys", ann)
    assert count == {"one_time_prekeys": 2, "pq_one_time_prekeys": 0}


async def test_concurrent_claims_never_share_a_one_time_prekey(harness: Harness) -> None:
    ann = await harness.register("ann", otks=40)
    # Sixteen claimers, three claims each: one claimer may take only a few of one device's
    # OTKs per day (ClaimLimiter), and 48 claims still race for 40 keys.
    claimers = [await harness.register(f"c{i}") for i in range(16)]
    got: list[int | None] = []

    async def claim(user: User) -> None:
        for _ in range(3):
            status, body = await harness.call(
                "POST", f"{API}/users/{ann.id}/keys/claim", user, json={}
            )
            assert status == 200
            otk = body["devices"][0]["one_time_prekey"]
            got.append(None if otk is None else otk["key_id"])

    async with trio.open_nursery() as nursery:
        for user in claimers:
            nursery.start_soon(claim, user)
    keys = [k for k in got if k is not None]
    assert len(keys) == 40 and len(set(keys)) == 40, "every OTK handed out exactly once"
    assert got.count(None) == 8, "then bundles come without an OTK"


async def test_prekey_upload_checks_signatures(harness: Harness) -> None:
    ann = await harness.register("ann")
    bundle = ann.keys.bundle(otks=2)
    bundle["pq_prekey"]["signature"] = b64(bytes(64))
    status, body = await harness.call(
        "PUT", f"{API}/users/@me/devices/@current/keys", ann, json=bundle
    )
    assert status == 400 and "pq_prekey" in body["error"]["message"]
    good = ann.keys.bundle(otks=3)
    status, body = await harness.call(
        "PUT", f"{API}/users/@me/devices/@current/keys", ann, json=good
    )
    assert status == 200 and body == {"one_time_prekeys": 8, "pq_one_time_prekeys": 0}


async def test_one_time_pq_prekeys_are_checked_handed_out_once_then_the_last_resort(
    harness: Harness,
) -> None:
    ann, bob = await harness.register("ann", otks=1, pq_otks=2), await harness.register("bob")
    status, count = await harness.call("GET", f"{API}/users/@me/devices/@current/keys", ann)
    assert count == {"one_time_prekeys": 1, "pq_one_time_prekeys": 2}
    # A one-time PQ key signed as the last-resort kind (or not at all) is refused.
    bundle = ann.keys.bundle(otks=0, pq_otks=1)
    key = bundle["pq_one_time_prekeys"][0]
    key["signature"] = b64(
        ann.keys.sign(sig.pq_prekey_message(key["key_id"], base64.b64decode(key["public_key"])))
    )
    status, body = await harness.call(
        "PUT", f"{API}/users/@me/devices/@current/keys", ann, json=bundle
    )
    assert status == 400 and "pq_one_time_prekeys[0]" in body["error"]["message"]
    status, count = await harness.call("GET", f"{API}/users/@me/devices/@current/keys", ann)
    assert count == {"one_time_prekeys": 1, "pq_one_time_prekeys": 2}, "nothing was stored"

    # Claims take the lowest id first, each key once; then the signed last-resort key.
    last_resort = ann.keys.bundle(otks=0)["pq_prekey"]  # key_id 1, like every harness upload
    seen: list[tuple[int, bool]] = []
    for _ in range(3):
        status, claim = await harness.call("POST", f"{API}/users/{ann.id}/keys/claim", bob, json={})
        assert status == 200
        (device,) = claim["devices"]
        seen.append((device["pq_prekey"]["key_id"], device["pq_prekey_one_time"]))
    assert seen == [(2, True), (3, True), (last_resort["key_id"], False)]
    status, count = await harness.call("GET", f"{API}/users/@me/devices/@current/keys", ann)
    assert count == {"one_time_prekeys": 0, "pq_one_time_prekeys": 0}


async def test_a_device_holds_at_most_200_one_time_pq_prekeys(harness: Harness) -> None:
    ann = await harness.register("ann", otks=0, pq_otks=100)
    status, body = await harness.call(
        "PUT", f"{API}/users/@me/devices/@current/keys", ann, json=ann.keys.bundle(0, 100)
    )
    assert status == 200 and body["pq_one_time_prekeys"] == 200
    status, body = await harness.call(
        "PUT", f"{API}/users/@me/devices/@current/keys", ann, json=ann.keys.bundle(0, 1)
    )
    assert status == 409 and "200" in body["error"]["message"]
    # Nor may a key id be uploaded twice.
    bob = await harness.register("bob", otks=0, pq_otks=1)
    bob.keys.next_otk = 1
    status, body = await harness.call(
        "PUT", f"{API}/users/@me/devices/@current/keys", bob, json=bob.keys.bundle(0, 1)
    )
    assert status == 409 and "reuse" in body["error"]["message"]


async def test_a_register_body_with_full_batches_of_both_kinds_fits_as_json(
    harness: Harness,
) -> None:
    # 100 X25519 and 100 ML-KEM-1024 one-time keys, base64 in JSON: the largest body a
    # client sends, under the 256 KiB limit.
    ann = await harness.register("ann", otks=100, pq_otks=100)
    status, count = await harness.call("GET", f"{API}/users/@me/devices/@current/keys", ann)
    assert status == 200 and count == {"one_time_prekeys": 100, "pq_one_time_prekeys": 100}


async def test_concurrent_claims_never_share_a_one_time_pq_prekey(harness: Harness) -> None:
    ann = await harness.register("ann", otks=0, pq_otks=40)
    claimers = [await harness.register(f"c{i}") for i in range(16)]
    got: list[int | None] = []

    async def claim(user: User) -> None:
        for _ in range(3):
            status, body = await harness.call(
                "POST", f"{API}/users/{ann.id}/keys/claim", user, json={}
            )
            assert status == 200
            (device,) = body["devices"]
            got.append(device["pq_prekey"]["key_id"] if device["pq_prekey_one_time"] else None)

    async with trio.open_nursery() as nursery:
        for user in claimers:
            nursery.start_soon(claim, user)
    keys = [k for k in got if k is not None]
    assert len(keys) == 40 and len(set(keys)) == 40, "every PQ key handed out exactly once"
    assert got.count(None) == 8, "then bundles carry the last-resort key"


def fan_out(recipients: dict[str, list[str]], marker: bytes) -> dict[str, Any]:
    return {
        "recipients": [
            {
                "user_id": user_id,
                "devices": [{"device_id": d, "ciphertext": b64(marker + d.encode())} for d in devs],
            }
            for user_id, devs in recipients.items()
        ]
    }


async def test_a_stale_device_list_is_refused_with_the_current_list(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    bob_phone = await harness.add_device(bob)
    status, body = await harness.call(
        "POST", f"{API}/envelopes", ann, json=fan_out({bob.id: [bob.device_id]}, b"x")
    )
    assert status == 409 and body["error"]["code"] == "stale_devices"
    current = {d["id"] for d in body["error"]["devices"][bob.id]}
    assert current == {bob.device_id, bob_phone.device_id}
    state = harness.app.extensions["hushroom.control"]
    count = await state.db.read(
        lambda conn: conn.execute(sa.select(sa.func.count()).select_from(t.envelopes)).scalar()
    )
    assert count == 0, "nothing is queued from a refused fan-out"


async def test_own_other_devices_must_be_included(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    ann_phone = await harness.add_device(ann)
    status, body = await harness.call(
        "POST", f"{API}/envelopes", ann, json=fan_out({bob.id: [bob.device_id]}, b"x")
    )
    assert status == 409 and ann.id in body["error"]["devices"]
    status, _ = await harness.call(
        "POST",
        f"{API}/envelopes",
        ann,
        json=fan_out({bob.id: [bob.device_id], ann.id: [ann_phone.device_id]}, b"x"),
    )
    assert status == 201


async def test_envelopes_are_fetched_in_the_order_they_were_sent(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    for i in range(8):
        status, _ = await harness.call(
            "POST", f"{API}/envelopes", ann, json=fan_out({bob.id: [bob.device_id]}, b"%d-" % i)
        )
        assert status == 201
    _, queued = await harness.call("GET", f"{API}/envelopes", bob)
    assert [base64.b64decode(q["ciphertext"])[:2] for q in queued] == [b"%d-" % i for i in range(8)]
    assert [q["seq"] for q in queued] == list(range(1, 9))


async def test_envelopes_are_fetched_acked_and_deleted(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    for i in range(3):
        status, _ = await harness.call(
            "POST", f"{API}/envelopes", ann, json=fan_out({bob.id: [bob.device_id]}, b"m%d" % i)
        )
        assert status == 201
    status, queued = await harness.call("GET", f"{API}/envelopes", bob)
    assert status == 200 and len(queued) == 3
    assert {q["sender_device_id"] for q in queued} == {ann.device_id}
    assert base64.b64decode(queued[0]["ciphertext"]).startswith(b"m")
    _, none = await harness.call("GET", f"{API}/envelopes", ann)
    assert none == []
    ids = [q["id"] for q in queued]
    status, body = await harness.call("POST", f"{API}/envelopes/ack", ann, json={"ids": ids})
    assert body == {"deleted": 0}, "only the recipient device may ack"
    status, body = await harness.call("POST", f"{API}/envelopes/ack", bob, json={"ids": ids[:2]})
    assert body == {"deleted": 2}
    assert (await harness.call("DELETE", f"{API}/envelopes/{ids[2]}", bob))[0] == 204
    assert (await harness.call("DELETE", f"{API}/envelopes/{ids[2]}", bob))[0] == 404
    _, left = await harness.call("GET", f"{API}/envelopes", bob)
    assert left == []


async def queue_bodies(
    harness: Harness, sender: User, recipient: User, bodies: list[bytes]
) -> None:
    """One envelope per body for ``recipient``'s device, two per request (the body limit
    holds two 64 KiB ciphertexts in base64)."""
    for start in range(0, len(bodies), 2):
        sends = [
            {
                "recipients": [
                    {
                        "user_id": recipient.id,
                        "devices": [{"device_id": recipient.device_id, "ciphertext": b64(body)}],
                    }
                ]
            }
            for body in bodies[start : start + 2]
        ]
        status, answer = await harness.call(
            "POST", f"{API}/envelopes/batch", sender, json={"sends": sends}
        )
        assert status == 201, answer


async def fetch_page(harness: Harness, user: User, accept: str) -> tuple[int, list[Any]]:
    """One page of ``GET /envelopes?limit=500``: its encoded size and its envelopes."""
    response = await harness.client.open(
        f"{API}/envelopes",
        method="GET",
        headers={**user.auth, "Accept": accept},
        query_string={"limit": ENVELOPE_PAGE_LIMIT},
    )
    assert response.status_code == 200
    raw = await response.get_data()
    page = (
        msgpack.unpackb(raw) if accept == "application/msgpack" else __import__("json").loads(raw)
    )
    assert isinstance(page, list)
    return len(raw), page


async def test_a_page_of_a_stuffed_queue_is_bounded_in_bytes(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    bodies = [bytes([i]) * MAX_CIPHERTEXT for i in range(40)]  # 2.5 MiB of ciphertext
    await queue_bodies(harness, ann, bob, bodies)
    # However it is encoded, the first page is the oldest 1 MiB, within what a client
    # must accept in one answer, although 500 were asked for.
    for accept in ("application/json", "application/msgpack"):
        size, page = await fetch_page(harness, bob, accept)
        assert len(page) == ENVELOPE_PAGE_BYTES // MAX_CIPHERTEXT
        assert size <= MAX_ENVELOPE_PAGE_ANSWER
    # Paging and acking until a page comes back empty gets each envelope once, in order.
    seen: list[bytes] = []
    while True:
        _, page = await fetch_page(harness, bob, "application/msgpack")
        if not page:
            break
        assert sum(len(e["ciphertext"]) for e in page) <= ENVELOPE_PAGE_BYTES
        seen += [e["ciphertext"] for e in page]
        status, _ = await harness.call(
            "POST", f"{API}/envelopes/ack", bob, json={"ids": [e["id"] for e in page]}
        )
        assert status == 200
    assert seen == bodies


async def test_a_page_always_holds_the_oldest_envelope(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were one envelope above the byte bound, the queue must still drain.
    monkeypatch.setattr(relay, "ENVELOPE_PAGE_BYTES", 100)
    ann, bob = await harness.register("ann"), await harness.register("bob")
    await queue_bodies(harness, ann, bob, [b"a" * 300, b"b" * 40, b"c" * 40])
    _, page = await fetch_page(harness, bob, "application/msgpack")
    assert [e["ciphertext"] for e in page] == [b"a" * 300]
    await harness.call("POST", f"{API}/envelopes/ack", bob, json={"ids": [page[0]["id"]]})
    _, page = await fetch_page(harness, bob, "application/msgpack")
    assert [e["ciphertext"] for e in page] == [b"b" * 40, b"c" * 40]


async def test_channel_messages_page_edit_and_delete(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    general = guild["channels"][0]["id"]
    posted = []
    for i in range(5):
        status, message = await harness.call(
            "POST", f"{API}/channels/{general}/messages", bob, json={"ciphertext": b64(b"c%d" % i)}
        )
        assert status == 201
        posted.append(message)
    status, page = await harness.call(
        "GET", f"{API}/channels/{general}/messages", ann, query={"limit": 2}
    )
    assert [m["seq"] for m in page] == [5, 4]
    status, page = await harness.call(
        "GET", f"{API}/channels/{general}/messages", ann, query={"limit": 10, "before": 4}
    )
    assert [m["seq"] for m in page] == [3, 2, 1]
    first = posted[0]["id"]
    status, _ = await harness.call(
        "PATCH", f"{API}/channels/{general}/messages/{first}", ann, json={"ciphertext": b64(b"z")}
    )
    assert status == 403, "only the author edits"
    status, edited = await harness.call(
        "PATCH", f"{API}/channels/{general}/messages/{first}", bob, json={"ciphertext": b64(b"z")}
    )
    assert status == 200 and edited["edited_at"] is not None
    # ann owns the guild (MANAGE_MESSAGES); cat without it cannot delete bob's message.
    cat = await harness.register("cat")
    _, invite = await harness.call("POST", f"{API}/channels/{general}/invites", ann, json={})
    await harness.call("POST", f"{API}/invites/{invite['code']}", cat, json={})
    status, _ = await harness.call("DELETE", f"{API}/channels/{general}/messages/{first}", cat)
    assert status == 403
    status, _ = await harness.call("DELETE", f"{API}/channels/{general}/messages/{first}", ann)
    assert status == 204
    _, page = await harness.call("GET", f"{API}/channels/{general}/messages", ann)
    assert [m["seq"] for m in page] == [5, 4, 3, 2]


async def test_zero_retention_channels_relay_but_never_store(harness: Harness) -> None:
    ann = await harness.register("ann")
    guild = await make_guild(harness, ann)
    status, channel = await harness.call(
        "POST",
        f"{API}/guilds/{guild['id']}/channels",
        ann,
        json={"name": "ephemeral", "retention_days": 0},
    )
    status, _ = await harness.call(
        "POST", f"{API}/channels/{channel['id']}/messages", ann, json={"ciphertext": b64(b"x")}
    )
    assert status == 201
    _, page = await harness.call("GET", f"{API}/channels/{channel['id']}/messages", ann)
    assert page == []


async def test_sending_needs_send_messages(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    guild = await make_guild(harness, ann, bob)
    general = guild["channels"][0]["id"]
    await harness.call(
        "PUT",
        f"{API}/channels/{general}/permissions/{bob.id}",
        ann,
        json={"type": "member", "allow": 0, "deny": int(P.SEND_MESSAGES)},
    )
    status, body = await harness.call(
        "POST", f"{API}/channels/{general}/messages", bob, json={"ciphertext": b64(b"x")}
    )
    assert status == 403 and "SEND_MESSAGES" in body["error"]["message"]


async def test_an_envelope_batch_is_queued_in_the_order_of_its_sends(harness: Harness) -> None:
    ann, bob = await harness.register("ann"), await harness.register("bob")
    sends = [fan_out({bob.id: [bob.device_id]}, b"%d-" % i) for i in range(3)]
    status, body = await harness.call("POST", f"{API}/envelopes/batch", ann, json={"sends": sends})
    assert status == 201
    ids = [send["envelopes"][0]["id"] for send in body["sends"]]
    assert [send["envelopes"][0]["device_id"] for send in body["sends"]] == [bob.device_id] * 3
    _, queued = await harness.call("GET", f"{API}/envelopes", bob)
    assert [e["id"] for e in queued] == ids
    assert [e["seq"] for e in queued] == [1, 2, 3]
    assert [base64.b64decode(e["ciphertext"])[:2] for e in queued] == [b"0-", b"1-", b"2-"]


async def test_one_stale_send_refuses_the_whole_batch(harness: Harness) -> None:
    ann, bob, cat = [await harness.register(h) for h in ("ann", "bob", "cat")]
    bob_phone = await harness.add_device(bob)
    sends = [
        fan_out({cat.id: [cat.device_id]}, b"ok"),
        fan_out({bob.id: [bob.device_id]}, b"stale"),
    ]
    status, body = await harness.call("POST", f"{API}/envelopes/batch", ann, json={"sends": sends})
    assert status == 409 and body["error"]["code"] == "stale_devices"
    assert set(body["error"]["devices"]) == {bob.id}
    assert {d["id"] for d in body["error"]["devices"][bob.id]} == {
        bob.device_id,
        bob_phone.device_id,
    }
    _, none = await harness.call("GET", f"{API}/envelopes", cat)
    assert none == [], "the valid send of a refused batch is not queued either"
