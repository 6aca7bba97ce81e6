"""Cross-signing on the server: the account key and the signed device list it keeps.

An honest server refuses a list that does not verify, does not advance the version, or
names a key that is no device of the account; clients check the lists themselves
(tests/client/test_client_cross_signing.py), so this only keeps honest servers consistent.
"""

from __future__ import annotations

import base64
from typing import Any

from control_harness import API, DeviceKeys, Harness, User, b64

from contract import signing as sig


def signed(account: DeviceKeys, user_id: str, version: int, keys: list[bytes]) -> dict[str, Any]:
    """A device list as a device holding the account key signs it (JSON form)."""
    return {
        "version": version,
        "identity_keys": [b64(k) for k in keys],
        "signature": b64(account.sign(sig.device_list_message(user_id, version, keys))),
    }


async def register_cross_signed(h: Harness, handle: str) -> tuple[User, DeviceKeys]:
    """Register, then set the account key with the first signed list (the signed bytes
    name the user id, which registration assigns)."""
    user = await h.register(handle)
    account = DeviceKeys()
    status, body = await h.call(
        "PUT",
        f"{API}/users/@me/device-list",
        user,
        json={
            "account_key": b64(account.identity_key),
            "device_list": signed(account, user.id, 1, [user.keys.identity_key]),
        },
    )
    assert status == 200, body
    return user, account


async def add_device(
    h: Harness, user: User, device_list: dict[str, Any] | None, keys: DeviceKeys | None = None
) -> tuple[int, Any, DeviceKeys]:
    keys = keys or DeviceKeys()
    challenge = await h.challenge()
    signature = keys.sign(sig.add_device_message(challenge, keys.identity_key, user.id))
    body: dict[str, Any] = {
        "identity_key": b64(keys.identity_key),
        "challenge": b64(challenge),
        "signature": b64(signature),
        **keys.bundle(1),
    }
    if device_list is not None:
        body["device_list"] = device_list
    status, answer = await h.call("POST", f"{API}/users/@me/devices", user, json=body)
    return status, answer, keys


async def listed(h: Harness, user: User) -> dict[str, Any]:
    status, body = await h.call("GET", f"{API}/users/{user.id}/devices", user)
    assert status == 200, body
    return dict(body)


async def test_every_device_list_answer_carries_the_account_key_and_its_signed_list(
    harness: Harness,
) -> None:
    ann, account = await register_cross_signed(harness, "ann")
    view = await listed(harness, ann)
    assert base64.b64decode(view["account_key"]) == account.identity_key
    assert view["device_list"]["version"] == 1
    keys = [base64.b64decode(k) for k in view["device_list"]["identity_keys"]]
    message = sig.device_list_message(ann.id, 1, keys)
    signature = base64.b64decode(view["device_list"]["signature"])
    account.signing.verify_key.verify(message, signature)
    assert [d["id"] for d in view["devices"]] == [ann.device_id]


async def test_a_cross_signed_account_adds_a_device_only_with_a_newer_signed_list(
    harness: Harness,
) -> None:
    ann, account = await register_cross_signed(harness, "ann")
    own = ann.keys.identity_key
    new = DeviceKeys()

    status, body, _ = await add_device(harness, ann, None, new)
    assert status == 400 and "device_list is required" in body["error"]["message"]
    # Signed by another key (a session alone, or the server, cannot sign).
    forged = signed(DeviceKeys(), ann.id, 2, [own, new.identity_key])
    status, body, _ = await add_device(harness, ann, forged, new)
    assert status == 400 and "does not verify" in body["error"]["message"]
    # Not newer than the stored list: a replay of an old list is refused.
    status, body, _ = await add_device(
        harness, ann, signed(account, ann.id, 1, [own, new.identity_key]), new
    )
    assert status == 409 and "above the stored" in body["error"]["message"]
    # A list that leaves the new device out, or names a key of no device of the account.
    status, body, _ = await add_device(harness, ann, signed(account, ann.id, 2, [own]), new)
    assert status == 400 and "must name the device" in body["error"]["message"]
    stranger = DeviceKeys().identity_key
    status, body, _ = await add_device(
        harness, ann, signed(account, ann.id, 2, [own, new.identity_key, stranger]), new
    )
    assert status == 400 and "not a device of this account" in body["error"]["message"]
    assert len((await listed(harness, ann))["devices"]) == 1  # nothing was added

    status, body, _ = await add_device(
        harness, ann, signed(account, ann.id, 2, [own, new.identity_key]), new
    )
    assert status == 201, body
    view = await listed(harness, ann)
    assert len(view["devices"]) == 2 and view["device_list"]["version"] == 2

    # Removal carries the list without the removed device.
    phone = body["id"]
    status, body = await harness.call("DELETE", f"{API}/users/@me/devices/{phone}", ann)
    assert status == 400 and "device_list is required" in body["error"]["message"]
    status, body = await harness.call(
        "DELETE",
        f"{API}/users/@me/devices/{phone}",
        ann,
        json={"device_list": signed(account, ann.id, 3, [own])},
    )
    assert status == 204, body
    view = await listed(harness, ann)
    assert len(view["devices"]) == 1 and view["device_list"]["version"] == 3


async def test_the_account_key_is_set_once(harness: Harness) -> None:
    ann, account = await register_cross_signed(harness, "ann")
    other = DeviceKeys()
    status, body = await harness.call(
        "PUT",
        f"{API}/users/@me/device-list",
        ann,
        json={
            "account_key": b64(other.identity_key),
            "device_list": signed(other, ann.id, 5, [ann.keys.identity_key]),
        },
    )
    assert status == 409 and "set once" in body["error"]["message"]
    # The holder of the account key replaces the list (no key in the body).
    status, body = await harness.call(
        "PUT",
        f"{API}/users/@me/device-list",
        ann,
        json={"device_list": signed(account, ann.id, 2, [ann.keys.identity_key])},
    )
    assert status == 200 and body["device_list"]["version"] == 2


async def test_export_holds_the_account_key_and_list_and_erasure_removes_them(
    harness: Harness,
) -> None:
    ann, account = await register_cross_signed(harness, "ann")
    status, export = await harness.call("GET", f"{API}/users/@me/export", ann)
    assert status == 200
    (row,) = export["device_list"]
    assert base64.b64decode(row["account_key"]) == account.identity_key
    status, _ = await harness.call("DELETE", f"{API}/users/@me", ann)
    assert status == 204
    state = harness.app.extensions["hushroom.control"]
    count = await state.db.read(
        lambda conn: conn.exec_driver_sql("SELECT count(*) FROM device_lists").scalar()
    )
    assert count == 0
