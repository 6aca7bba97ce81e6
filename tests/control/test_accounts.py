"""Accounts, devices and sessions: key possession proven by signed challenges."""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
import trio
from control_harness import DeviceKeys, Harness, b64

from contract import signing as sig
from control.store import schema as t


async def test_register_returns_a_working_session(harness: Harness) -> None:
    ann = await harness.register("ann")
    status, body = await harness.call("GET", "/api/v1/users/@me", ann)
    assert status == 200
    assert body["id"] == ann.id and body["handle"] == "ann"


async def test_register_with_a_signature_over_other_bytes_is_refused(harness: Harness) -> None:
    keys = DeviceKeys()
    challenge = await harness.challenge()
    wrong = keys.sign(sig.register_message(challenge, keys.identity_key, "mallory"))
    status, body = await harness.call(
        "POST",
        "/api/v1/users",
        headers=await harness.proof("register"),
        json={
            "handle": "ann",
            "identity_key": b64(keys.identity_key),
            "challenge": b64(challenge),
            "signature": b64(wrong),
            **keys.bundle(),
        },
    )
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_a_challenge_is_single_use(harness: Harness) -> None:
    keys = DeviceKeys()
    await harness.register("ann")
    challenge = await harness.challenge()
    body = {
        "identity_key": b64(keys.identity_key),
        "challenge": b64(challenge),
        "signature": b64(keys.sign(sig.register_message(challenge, keys.identity_key, "bob"))),
        "handle": "bob",
        **keys.bundle(),
    }
    first, _ = await harness.call(
        "POST", "/api/v1/users", json=body, headers=await harness.proof("register")
    )
    body["handle"] = "bob"
    again, err = await harness.call(
        "POST", "/api/v1/users", json=body, headers=await harness.proof("register")
    )
    assert first == 201
    assert again == 401 and "challenge" in err["error"]["message"]


async def test_a_taken_handle_is_a_conflict(harness: Harness) -> None:
    await harness.register("ann")
    keys = DeviceKeys()
    challenge = await harness.challenge()
    status, body = await harness.call(
        "POST",
        "/api/v1/users",
        headers=await harness.proof("register"),
        json={
            "handle": "ann",
            "identity_key": b64(keys.identity_key),
            "challenge": b64(challenge),
            "signature": b64(keys.sign(sig.register_message(challenge, keys.identity_key, "ann"))),
            **keys.bundle(),
        },
    )
    assert status == 409 and body["error"]["code"] == "conflict"


async def test_bad_prekey_signature_is_refused(harness: Harness) -> None:
    keys = DeviceKeys()
    challenge = await harness.challenge()
    bundle = keys.bundle()
    bundle["signed_prekey"]["signature"] = b64(bytes(64))
    status, body = await harness.call(
        "POST",
        "/api/v1/users",
        headers=await harness.proof("register"),
        json={
            "handle": "ann",
            "identity_key": b64(keys.identity_key),
            "challenge": b64(challenge),
            "signature": b64(keys.sign(sig.register_message(challenge, keys.identity_key, "ann"))),
            **bundle,
        },
    )
    assert status == 400 and "signed_prekey" in body["error"]["message"]


async def test_login_by_challenge_response_and_logout_revokes(harness: Harness) -> None:
    ann = await harness.register("ann")
    again = await harness.login(ann.keys, "ann")
    assert again.id == ann.id and again.device_id == ann.device_id
    assert again.token != ann.token
    status, _ = await harness.call("POST", "/api/v1/auth/logout", again, json={})
    assert status == 204
    status, body = await harness.call("GET", "/api/v1/users/@me", again)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _ = await harness.call("GET", "/api/v1/users/@me", ann)
    assert status == 200


async def test_login_with_an_unknown_key_is_refused(harness: Harness) -> None:
    keys = DeviceKeys()
    challenge = await harness.challenge()
    status, _ = await harness.call(
        "POST",
        "/api/v1/auth/login",
        json={
            "identity_key": b64(keys.identity_key),
            "challenge": b64(challenge),
            "signature": b64(keys.sign(sig.login_message(challenge, keys.identity_key))),
        },
    )
    assert status == 401


async def test_tokens_are_stored_only_as_sha256(harness: Harness) -> None:
    ann = await harness.register("ann")
    state = harness.app.extensions["hushroom.control"]
    hashes = await state.db.read(
        lambda conn: list(conn.execute(sa.select(t.sessions.c.token_hash)).scalars())
    )
    assert hashes == [hashlib.sha256(ann.token.encode()).digest()]
    path = state.config.data_dir / "control.sqlite3"
    assert ann.token.encode() not in path.read_bytes()


async def test_expired_session_is_refused(harness: Harness) -> None:
    ann = await harness.register("ann")
    state = harness.app.extensions["hushroom.control"]
    await state.db.write(lambda conn: conn.execute(sa.update(t.sessions).values(expires_at=0)))
    status, _ = await harness.call("GET", "/api/v1/users/@me", ann)
    assert status == 401


async def test_add_list_and_remove_devices(harness: Harness) -> None:
    ann = await harness.register("ann")
    phone = await harness.add_device(ann)
    status, devices = await harness.call("GET", f"/api/v1/users/{ann.id}/devices", ann)
    assert status == 200
    assert {d["id"] for d in devices["devices"]} == {ann.device_id, phone.device_id}
    # An account registered without an account key has no signed list (yet).
    assert devices["account_key"] is None and devices["device_list"] is None
    status, _ = await harness.call("DELETE", f"/api/v1/users/@me/devices/{phone.device_id}", ann)
    assert status == 204
    status, _ = await harness.call("GET", "/api/v1/users/@me", phone)
    assert status == 401, "a removed device's sessions are revoked"
    status, body = await harness.call("DELETE", f"/api/v1/users/@me/devices/{ann.device_id}", ann)
    assert status == 409 and "last device" in body["error"]["message"]


async def test_lookup_by_handle(harness: Harness) -> None:
    ann = await harness.register("ann")
    bob = await harness.register("bob")
    status, body = await harness.call("GET", "/api/v1/users/by-handle/ann", bob)
    assert status == 200 and body == {"id": ann.id, "handle": "ann"}
    status, body = await harness.call("GET", "/api/v1/users/by-handle/nobody", bob)
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_lookup_requires_a_session(harness: Harness) -> None:
    await harness.register("ann")
    status, body = await harness.call("GET", "/api/v1/users/by-handle/ann")
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_concurrent_registrations_of_one_handle_yield_one_account(
    harness: Harness,
) -> None:
    results: list[int] = []

    async def attempt() -> None:
        keys = DeviceKeys()
        challenge = await harness.challenge()
        status, _ = await harness.call(
            "POST",
            "/api/v1/users",
            headers=await harness.proof("register"),
            json={
                "handle": "ann",
                "identity_key": b64(keys.identity_key),
                "challenge": b64(challenge),
                "signature": b64(
                    keys.sign(sig.register_message(challenge, keys.identity_key, "ann"))
                ),
                **keys.bundle(),
            },
        )
        results.append(status)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(attempt)
    assert sorted(results) == [201, 409, 409, 409, 409]
