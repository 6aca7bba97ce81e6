"""Accounts, devices, sessions and the prekey directory.

A user is a random id and a chosen handle; each device is an Ed25519 identity key. Every
key is proven by signing a server challenge (see ``control.signatures`` for the exact bytes);
sessions are random bearer tokens of which only the SHA-256 is stored.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from contract import signing as sig
from contract.gateway import EventName
from contract.proof_of_work import Purpose

from ..bus import Event
from ..errors import Conflict, Gone, InvalidBody, NotFound, Unauthorized
from ..ids import day_now, hash_token, new_id, new_token, now
from ..sessions import revoked
from ..signatures import verify_signature
from ..store import schema as t
from ..wire import Field, Schema
from ._routing import Call, Reply, Router, int_field

__all__ = ["CHALLENGE_TTL_S", "LOW_OTK", "current_devices", "device_view", "router"]

#: A challenge must be answered within this many seconds.
CHALLENGE_TTL_S = 300
#: Fewer one-time prekeys than this left on a device triggers PREKEYS_LOW.
LOW_OTK = 10
#: At most this many one-time prekeys are stored per device.
MAX_OTKS = 500
HANDLE_PATTERN = r"[a-z0-9_.]{2,32}"

KEY_ID = int_field("key id (u32)", 0, 2**32 - 1)

SIGNED_PREKEY = Schema(
    "SignedPrekey",
    {
        "key_id": KEY_ID,
        "public_key": Field("bytes", "X25519 public key", min=32, max=32),
        "signature": Field("bytes", "Ed25519 signature (signed-prekey bytes)", min=64, max=64),
    },
)
PQ_PREKEY = Schema(
    "PqPrekey",
    {
        "key_id": KEY_ID,
        "public_key": Field(
            "bytes", "ML-KEM-1024 public key", min=sig.PQ_PUBLIC_KEY_LEN, max=sig.PQ_PUBLIC_KEY_LEN
        ),
        "signature": Field("bytes", "Ed25519 signature (pq-prekey bytes)", min=64, max=64),
    },
)
ONE_TIME_PREKEY = Schema(
    "OneTimePrekey",
    {"key_id": KEY_ID, "public_key": Field("bytes", "X25519 public key", min=32, max=32)},
)
_OTKS = Field("list", "one-time prekeys", items=Field("object", schema=ONE_TIME_PREKEY), max=100)

PREKEY_BUNDLE = {
    "signed_prekey": Field("object", schema=SIGNED_PREKEY),
    "pq_prekey": Field("object", schema=PQ_PREKEY),
    "one_time_prekeys": Field(
        "list", "one-time prekeys", required=False, items=_OTKS.items, max=100
    ),
}
IDENTITY = Field("bytes", "Ed25519 identity public key", min=32, max=32)
CHALLENGE = Field("bytes", "challenge from POST /auth/challenge", min=32, max=32)
SIGNATURE = Field("bytes", "Ed25519 signature", min=64, max=64)

REGISTER = Schema(
    "Register",
    {
        "handle": Field("str", "lower-case handle", pattern=HANDLE_PATTERN),
        "identity_key": IDENTITY,
        "challenge": CHALLENGE,
        "signature": Field("bytes", "signature of the register bytes", min=64, max=64),
        **PREKEY_BUNDLE,
    },
)
LOGIN = Schema("Login", {"identity_key": IDENTITY, "challenge": CHALLENGE, "signature": SIGNATURE})
ADD_DEVICE = Schema(
    "AddDevice",
    {"identity_key": IDENTITY, "challenge": CHALLENGE, "signature": SIGNATURE, **PREKEY_BUNDLE},
)
UPLOAD_KEYS = Schema(
    "UploadKeys",
    {
        "signed_prekey": Field("object", required=False, schema=SIGNED_PREKEY),
        "pq_prekey": Field("object", required=False, schema=PQ_PREKEY),
        "one_time_prekeys": Field(
            "list", "one-time prekeys", required=False, items=_OTKS.items, max=100
        ),
    },
)
EMPTY = Schema("Empty", {})


def _issue_challenge(conn: Connection, challenge: bytes, expires_at: int) -> None:
    conn.execute(sa.insert(t.challenges).values(challenge=challenge, expires_at=expires_at))


def _consume_challenge(conn: Connection, challenge: bytes) -> None:
    """Delete the challenge (single use); raise when unknown or expired."""
    row = conn.execute(
        sa.select(t.challenges.c.expires_at).where(t.challenges.c.challenge == challenge)
    ).first()
    if row is None:
        raise Unauthorized("unknown or already used challenge")
    conn.execute(sa.delete(t.challenges).where(t.challenges.c.challenge == challenge))
    if row.expires_at <= now():
        raise Gone("the challenge expired; request a new one")


def _check_bundle(identity_key: bytes, body: dict[str, Any]) -> None:
    """Verify the prekey signatures of an uploaded bundle against the identity key."""
    spk = body.get("signed_prekey")
    if spk is not None and not verify_signature(
        identity_key, sig.signed_prekey_message(spk["key_id"], spk["public_key"]), spk["signature"]
    ):
        raise InvalidBody("signed_prekey.signature does not verify under the identity key")
    pq = body.get("pq_prekey")
    if pq is not None and not verify_signature(
        identity_key, sig.pq_prekey_message(pq["key_id"], pq["public_key"]), pq["signature"]
    ):
        raise InvalidBody("pq_prekey.signature does not verify under the identity key")
    otks = body.get("one_time_prekeys") or []
    if len({o["key_id"] for o in otks}) != len(otks):
        raise InvalidBody("one_time_prekeys repeat a key_id")


def _insert_device(
    conn: Connection, device_id: str, user_id: str, identity_key: bytes, day: int
) -> None:
    """Add a device row (first seen and last seen today, at day grain)."""
    conn.execute(
        sa.insert(t.devices).values(
            id=device_id,
            user_id=user_id,
            identity_key=identity_key,
            created_day=day,
            last_seen_day=day,
        )
    )


def _store_bundle(conn: Connection, device_id: str, body: dict[str, Any]) -> None:
    for table, name in ((t.signed_prekeys, "signed_prekey"), (t.pq_prekeys, "pq_prekey")):
        key = body.get(name)
        if key is not None:
            conn.execute(sa.delete(table).where(table.c.device_id == device_id))
            conn.execute(
                sa.insert(table).values(
                    device_id=device_id,
                    key_id=key["key_id"],
                    public_key=key["public_key"],
                    signature=key["signature"],
                )
            )
    otks = body.get("one_time_prekeys") or []
    if otks:
        otk = t.one_time_prekeys
        held = conn.execute(
            sa.select(sa.func.count()).select_from(otk).where(otk.c.device_id == device_id)
        ).scalar_one()
        if held + len(otks) > MAX_OTKS:
            raise Conflict(f"a device holds at most {MAX_OTKS} one-time prekeys")
        existing = set(
            conn.execute(
                sa.select(otk.c.key_id).where(
                    otk.c.device_id == device_id, otk.c.key_id.in_([o["key_id"] for o in otks])
                )
            ).scalars()
        )
        if existing:
            raise Conflict("one_time_prekeys reuse a key_id already uploaded")
        conn.execute(
            sa.insert(otk),
            [{"device_id": device_id, **o} for o in otks],
        )


def _new_session(conn: Connection, user_id: str, device_id: str, ttl: int) -> tuple[str, int]:
    token = new_token()
    expires_at = now() + ttl
    conn.execute(
        sa.insert(t.sessions).values(
            token_hash=hash_token(token),
            user_id=user_id,
            device_id=device_id,
            expires_at=expires_at,
        )
    )
    return token, expires_at


def device_view(row: Any) -> dict[str, Any]:
    """The public form of a device: id and identity key."""
    return {"id": row.id, "identity_key": row.identity_key}


def current_devices(conn: Connection, user_id: str) -> list[dict[str, Any]]:
    """The devices of ``user_id`` in a stable order."""
    rows = conn.execute(
        sa.select(t.devices.c.id, t.devices.c.identity_key)
        .where(t.devices.c.user_id == user_id)
        .order_by(t.devices.c.id)
    ).all()
    return [device_view(r) for r in rows]


router = Router(tag="accounts")


@router.route(
    "POST",
    "/auth/challenge",
    summary="Issue a single-use 32-byte challenge to sign (valid 5 minutes)",
    tag="auth",
    body=EMPTY,
    auth=False,
    proof_of_work=Purpose.CHALLENGE,
)
async def issue_challenge(call: Call) -> dict[str, Any]:
    challenge = secrets.token_bytes(sig.CHALLENGE_LEN)
    expires = now() + CHALLENGE_TTL_S
    await call.state.db.write(lambda conn: _issue_challenge(conn, challenge, expires))
    return {"challenge": challenge, "expires_in": CHALLENGE_TTL_S}


@router.route(
    "POST",
    "/users",
    summary="Register: handle + first device identity key + prekey bundle + signed challenge",
    body=REGISTER,
    auth=False,
    status=201,
    errors=(401, 409, 410),
    proof_of_work=Purpose.REGISTER,
)
async def register(call: Call) -> dict[str, Any]:
    body = call.body
    handle, identity_key = body["handle"], body["identity_key"]
    message = sig.register_message(body["challenge"], identity_key, handle)
    if not verify_signature(identity_key, message, body["signature"]):
        raise Unauthorized("signature does not prove possession of the identity key")
    _check_bundle(identity_key, body)
    ttl = call.state.config.session_ttl_s
    return await call.state.db.write(lambda conn: register_tx(conn, body, ttl))


def register_tx(conn: Connection, body: dict[str, Any], session_ttl: int) -> dict[str, Any]:
    """Spend the challenge, create the user with their first device and its prekeys, and
    sign that device in. The Register body's signatures must already have been checked."""
    handle, identity_key = body["handle"], body["identity_key"]
    _consume_challenge(conn, body["challenge"])
    user_id, device_id, day = new_id(), new_id(), day_now()
    try:
        with conn.begin_nested():
            conn.execute(sa.insert(t.users).values(id=user_id, handle=handle, created_day=day))
            _insert_device(conn, device_id, user_id, identity_key, day)
    except IntegrityError:
        raise Conflict("the handle or identity key is already registered") from None
    _store_bundle(conn, device_id, body)
    token, expires_at = _new_session(conn, user_id, device_id, session_ttl)
    return {
        "user": {"id": user_id, "handle": handle},
        "device": {"id": device_id, "identity_key": identity_key},
        "token": token,
        "expires_at": expires_at,
    }


@router.route(
    "POST",
    "/auth/login",
    summary="Sign in a device by signing a challenge with its identity key",
    tag="auth",
    body=LOGIN,
    auth=False,
    # A login spends a challenge, which was paid with a proof of work; a shared bucket
    # here would only let a flood of bad logins lock everyone out.
    public_bucket=False,
    errors=(401, 410),
)
async def login(call: Call) -> dict[str, Any]:
    body = call.body
    message = sig.login_message(body["challenge"], body["identity_key"])
    if not verify_signature(body["identity_key"], message, body["signature"]):
        raise Unauthorized("signature does not prove possession of the identity key")
    ttl = call.state.config.session_ttl_s
    return await call.state.db.write(
        lambda conn: login_tx(conn, body["challenge"], body["identity_key"], ttl)
    )


def login_tx(
    conn: Connection, challenge: bytes, identity_key: bytes, session_ttl: int
) -> dict[str, Any]:
    """Spend the challenge and open a session for the device with ``identity_key``. The
    signature over the challenge must already have been checked."""
    _consume_challenge(conn, challenge)
    row = conn.execute(
        sa.select(t.devices.c.id, t.devices.c.user_id).where(
            t.devices.c.identity_key == identity_key
        )
    ).first()
    if row is None:
        raise Unauthorized("no device has this identity key")
    conn.execute(
        sa.update(t.devices).where(t.devices.c.id == row.id).values(last_seen_day=day_now())
    )
    token, expires_at = _new_session(conn, row.user_id, row.id, session_ttl)
    return {
        "user_id": row.user_id,
        "device_id": row.id,
        "token": token,
        "expires_at": expires_at,
    }


@router.route(
    "POST",
    "/auth/logout",
    summary="Revoke the session token used for this request",
    tag="auth",
    body=EMPTY,
    status=204,
)
async def logout(call: Call) -> None:
    digest = call.me.token_hash
    await call.state.db.write(
        lambda conn: conn.execute(sa.delete(t.sessions).where(t.sessions.c.token_hash == digest))
    )
    await call.state.bus.publish(revoked(token_hash=digest))


@router.route("GET", "/users/@me", summary="The caller's account")
async def me(call: Call) -> dict[str, Any]:
    user_id = call.me.user_id
    row = await call.state.db.read(
        lambda conn: conn.execute(sa.select(t.users).where(t.users.c.id == user_id)).first()
    )
    if row is None:
        raise NotFound("no such user")
    return {"id": row.id, "handle": row.handle, "created_day": row.created_day}


@router.route(
    "GET",
    "/users/by-handle/{handle}",
    summary="Look a user up by handle",
    errors=(404,),
)
async def by_handle(call: Call, handle: str) -> dict[str, Any]:
    row = await call.state.db.read(
        lambda conn: conn.execute(
            sa.select(t.users.c.id, t.users.c.handle).where(t.users.c.handle == handle.lower())
        ).first()
    )
    if row is None:
        raise NotFound("no user has this handle")
    return {"id": row.id, "handle": row.handle}


@router.route(
    "GET",
    "/users/{user_id}/devices",
    summary="A user's current devices (ids and identity keys), for envelope fan-out",
    errors=(404,),
)
async def user_devices(call: Call, user_id: str) -> list[dict[str, Any]]:
    if user_id == "@me":
        user_id = call.me.user_id
    return await call.state.db.read(lambda conn: user_devices_tx(conn, user_id))


def user_devices_tx(conn: Connection, user_id: str) -> list[dict[str, Any]]:
    """The user's current devices; 404 when there is no such user."""
    found = conn.execute(sa.select(t.users.c.id).where(t.users.c.id == user_id)).first()
    if found is None:
        raise NotFound("no such user")
    return current_devices(conn, user_id)


@router.route(
    "POST",
    "/users/@me/devices",
    summary="Add a device: its identity key signs a challenge; the caller's session vouches",
    body=ADD_DEVICE,
    status=201,
    errors=(401, 409, 410),
)
async def add_device(call: Call) -> dict[str, Any]:
    body, user_id = call.body, call.me.user_id
    identity_key = body["identity_key"]
    message = sig.add_device_message(body["challenge"], identity_key, user_id)
    if not verify_signature(identity_key, message, body["signature"]):
        raise Unauthorized("signature does not prove possession of the new identity key")
    _check_bundle(identity_key, body)
    device = await call.state.db.write(lambda conn: add_device_tx(conn, user_id, body))
    await call.state.bus.publish(
        Event(EventName.DEVICE_ADD, {"user_id": user_id, "device": device}, frozenset({user_id}))
    )
    return device


def add_device_tx(conn: Connection, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Spend the challenge and add a device with its prekeys to ``user_id``. The AddDevice
    body's signatures must already have been checked."""
    identity_key = body["identity_key"]
    _consume_challenge(conn, body["challenge"])
    device_id, day = new_id(), day_now()
    try:
        with conn.begin_nested():
            _insert_device(conn, device_id, user_id, identity_key, day)
    except IntegrityError:
        raise Conflict("this identity key is already registered") from None
    _store_bundle(conn, device_id, body)
    return {"id": device_id, "identity_key": identity_key}


@router.route(
    "DELETE",
    "/users/@me/devices/{device_id}",
    summary="Remove a device: its sessions, prekeys and queued envelopes go with it",
    status=204,
    errors=(404, 409),
)
async def remove_device(call: Call, device_id: str) -> None:
    user_id = call.me.user_id
    await call.state.db.write(lambda conn: remove_device_tx(conn, user_id, device_id))
    await call.state.bus.publish(revoked(device_id=device_id))
    await call.state.bus.publish(
        Event(
            EventName.DEVICE_REMOVE,
            {"user_id": user_id, "device_id": device_id},
            frozenset({user_id}),
        )
    )


def remove_device_tx(conn: Connection, user_id: str, device_id: str) -> None:
    """Delete one of the user's devices (never the last); the rest goes by cascade."""
    devices = [d["id"] for d in current_devices(conn, user_id)]
    if device_id not in devices:
        raise NotFound("no such device")
    if len(devices) == 1:
        raise Conflict("cannot remove the last device; delete the account instead")
    conn.execute(sa.delete(t.devices).where(t.devices.c.id == device_id))


@router.route(
    "GET",
    "/users/@me/devices/@current/keys",
    summary="How many one-time prekeys this device still has on the server",
    tag="prekeys",
)
async def key_count(call: Call) -> dict[str, Any]:
    device_id = call.me.device_id
    return {"one_time_prekeys": await call.state.db.read(lambda conn: _otk_count(conn, device_id))}


def _otk_count(conn: Connection, device_id: str) -> int:
    otk = t.one_time_prekeys
    stmt = sa.select(sa.func.count()).select_from(otk).where(otk.c.device_id == device_id)
    return int(conn.execute(stmt).scalar_one())


@router.route(
    "PUT",
    "/users/@me/devices/@current/keys",
    summary="Upload signed, PQ and/or one-time prekeys (signatures checked)",
    tag="prekeys",
    body=UPLOAD_KEYS,
    errors=(409,),
)
async def upload_keys(call: Call) -> dict[str, Any]:
    device_id, body = call.me.device_id, call.body
    return {
        "one_time_prekeys": await call.state.db.write(
            lambda conn: upload_keys_tx(conn, device_id, body)
        )
    }


def upload_keys_tx(conn: Connection, device_id: str, body: dict[str, Any]) -> int:
    """Check an UploadKeys body against the device's identity key and store it; return
    how many one-time prekeys the device now has."""
    identity_key = conn.execute(
        sa.select(t.devices.c.identity_key).where(t.devices.c.id == device_id)
    ).scalar_one()
    _check_bundle(identity_key, body)
    _store_bundle(conn, device_id, body)
    return _otk_count(conn, device_id)


@router.route(
    "POST",
    "/users/{user_id}/keys/claim",
    summary="Fetch prekey bundles for all of a user's devices, consuming one OTK each",
    tag="prekeys",
    body=EMPTY,
    errors=(404,),
)
async def claim_keys(call: Call, user_id: str) -> Reply:
    may_take = call.state.prekey_claims.admit(call.me.user_id)
    bundles, low = await call.state.db.write(lambda conn: claim_bundles(conn, user_id, may_take))
    for device_id, remaining in low:
        await call.state.bus.publish(
            Event(
                EventName.PREKEYS_LOW,
                {"device_id": device_id, "one_time_prekeys": remaining},
                device_ids=frozenset({device_id}),
            )
        )
    return Reply({"user_id": user_id, "devices": bundles}, 200)


def claim_bundles(
    conn: Connection, user_id: str, may_take: Callable[[str], bool]
) -> tuple[list[dict[str, Any]], list[tuple[str, int]]]:
    """Build every device's bundle, deleting one OTK per device inside this transaction.

    ``may_take(device_id)`` says whether this claimer may have one of the device's OTKs now
    (:meth:`control.ratelimit.ClaimLimiter.take_one_time_prekey`, asked only when one is
    left); if not, the bundle carries the signed prekeys alone, as when none are left.

    The OTK is deleted by primary key and the delete's row count checked, so even under
    PostgreSQL's concurrent transactions two claims can never both receive the same key:
    the loser sees zero rows deleted and takes the next one.
    """
    if conn.execute(sa.select(t.users.c.id).where(t.users.c.id == user_id)).first() is None:
        raise NotFound("no such user")
    otk, spk, pq = t.one_time_prekeys, t.signed_prekeys, t.pq_prekeys
    bundles: list[dict[str, Any]] = []
    low: list[tuple[str, int]] = []
    for device in current_devices(conn, user_id):
        device_id = device["id"]
        signed = conn.execute(sa.select(spk).where(spk.c.device_id == device_id)).first()
        pq_key = conn.execute(sa.select(pq).where(pq.c.device_id == device_id)).first()
        one_time: dict[str, Any] | None = None
        admitted = False
        while True:
            row = conn.execute(
                sa.select(otk.c.key_id, otk.c.public_key)
                .where(otk.c.device_id == device_id)
                .order_by(otk.c.key_id)
                .limit(1)
            ).first()
            if row is None or not (admitted or may_take(device_id)):
                break
            admitted = True
            deleted = conn.execute(
                sa.delete(otk).where(otk.c.device_id == device_id, otk.c.key_id == row.key_id)
            ).rowcount
            if deleted == 1:
                one_time = {"key_id": row.key_id, "public_key": row.public_key}
                break
        remaining = conn.execute(
            sa.select(sa.func.count()).select_from(otk).where(otk.c.device_id == device_id)
        ).scalar_one()
        if remaining < LOW_OTK:
            low.append((device_id, int(remaining)))
        bundles.append(
            {
                "device_id": device_id,
                "identity_key": device["identity_key"],
                "signed_prekey": _key_view(signed),
                "pq_prekey": _key_view(pq_key),
                "one_time_prekey": one_time,
            }
        )
    return bundles, low


def _key_view(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"key_id": row.key_id, "public_key": row.public_key, "signature": row.signature}
