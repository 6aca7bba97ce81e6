"""Accounts, devices, sessions and the prekey directory.

A user is a random id and a chosen handle; each device is an Ed25519 identity key. Every
key is proven by signing a server challenge (see ``control.signatures`` for the exact bytes);
sessions are random bearer tokens of which only the SHA-256 is stored.

Cross-signing: an account may have an account signing key (Ed25519, held only by the
account's devices) that signs the account's device list. Once it is set (``PUT
/users/@me/device-list``, right after registration), adding and removing a device carry
the new signed list, which is checked (signature, a version
above the stored one, only keys of the account's devices) and stored; every device-list
answer hands it out. Clients verify it themselves: this check only keeps an honest
server's lists consistent.
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
from ..wire import MAX_SAFE_INT, Field, Schema
from ._routing import Call, Reply, Router, int_field

__all__ = [
    "CHALLENGE_TTL_S",
    "LOW_OTK",
    "MAX_PQ_OTKS",
    "current_devices",
    "device_list_view",
    "device_view",
    "router",
    "store_device_list",
]

#: A challenge must be answered within this many seconds.
CHALLENGE_TTL_S = 300
#: Fewer one-time prekeys (of either kind) than this left on a device triggers PREKEYS_LOW.
LOW_OTK = 10
#: At most this many one-time prekeys are stored per device.
MAX_OTKS = 500
#: At most this many one-time PQ prekeys are stored per device (1.6 KB each; the client
#: keeps as many private halves, ``e2ee.MAX_PQ_ONE_TIME_PREKEYS_HELD``).
MAX_PQ_OTKS = 200
#: One-time prekeys of either kind in one upload body (``e2ee`` draws batches of 100): 100
#: of each plus the signed prekeys is ~170 KB in msgpack, ~235 KB in JSON's base64, under
#: the 256 KiB body limit.
MAX_OTKS_PER_UPLOAD = 100
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
PQ_ONE_TIME_PREKEY = Schema(
    "PqOneTimePrekey",
    {
        "key_id": KEY_ID,
        "public_key": Field(
            "bytes", "ML-KEM-1024 public key", min=sig.PQ_PUBLIC_KEY_LEN, max=sig.PQ_PUBLIC_KEY_LEN
        ),
        "signature": Field("bytes", "Ed25519 signature (pq-one-time-prekey bytes)", min=64, max=64),
    },
)
_OTKS = Field(
    "list",
    "one-time prekeys",
    required=False,
    items=Field("object", schema=ONE_TIME_PREKEY),
    max=MAX_OTKS_PER_UPLOAD,
)
_PQ_OTKS = Field(
    "list",
    "one-time PQ prekeys, each signed",
    required=False,
    items=Field("object", schema=PQ_ONE_TIME_PREKEY),
    max=MAX_OTKS_PER_UPLOAD,
)

PREKEY_BUNDLE = {
    "signed_prekey": Field("object", schema=SIGNED_PREKEY),
    "pq_prekey": Field("object", schema=PQ_PREKEY),
    "one_time_prekeys": _OTKS,
    "pq_one_time_prekeys": _PQ_OTKS,
}
IDENTITY = Field("bytes", "Ed25519 identity public key", min=32, max=32)
CHALLENGE = Field("bytes", "challenge from POST /auth/challenge", min=32, max=32)
SIGNATURE = Field("bytes", "Ed25519 signature", min=64, max=64)
DEVICE_LIST = Schema(
    "DeviceList",
    {
        "version": int_field("list version, above every earlier list's", 1, MAX_SAFE_INT),
        "identity_keys": Field(
            "list", "identity keys of the listed devices", items=IDENTITY, min=1, max=64
        ),
        "signature": Field(
            "bytes", "Ed25519 signature of the device-list bytes by the account key", min=64, max=64
        ),
    },
)
SIGNED_LIST = Field("object", "the account's new device list", required=False, schema=DEVICE_LIST)
ACCOUNT_KEY = Field("bytes", "Ed25519 account signing public key", required=False, min=32, max=32)

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
    {
        "identity_key": IDENTITY,
        "challenge": CHALLENGE,
        "signature": SIGNATURE,
        "device_list": SIGNED_LIST,
        **PREKEY_BUNDLE,
    },
)
REMOVE_DEVICE = Schema("RemoveDevice", {"device_list": SIGNED_LIST})
PUT_DEVICE_LIST = Schema(
    "PutDeviceList",
    {"account_key": ACCOUNT_KEY, "device_list": Field("object", schema=DEVICE_LIST)},
)
UPLOAD_KEYS = Schema(
    "UploadKeys",
    {
        "signed_prekey": Field("object", required=False, schema=SIGNED_PREKEY),
        "pq_prekey": Field("object", required=False, schema=PQ_PREKEY),
        "one_time_prekeys": _OTKS,
        "pq_one_time_prekeys": _PQ_OTKS,
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
    pq_otks = body.get("pq_one_time_prekeys") or []
    if len({k["key_id"] for k in pq_otks}) != len(pq_otks):
        raise InvalidBody("pq_one_time_prekeys repeat a key_id")
    for index, key in enumerate(pq_otks):
        message = sig.pq_one_time_prekey_message(key["key_id"], key["public_key"])
        if not verify_signature(identity_key, message, key["signature"]):
            raise InvalidBody(
                f"pq_one_time_prekeys[{index}].signature does not verify under the identity key"
            )


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
    _store_one_time(conn, t.one_time_prekeys, device_id, body, "one_time_prekeys", MAX_OTKS)
    _store_one_time(
        conn, t.pq_one_time_prekeys, device_id, body, "pq_one_time_prekeys", MAX_PQ_OTKS
    )


def _store_one_time(
    conn: Connection,
    table: sa.Table,
    device_id: str,
    body: dict[str, Any],
    name: str,
    limit: int,
) -> None:
    """Add the body's one-time prekeys of one kind (``name``), at most ``limit`` held."""
    keys = body.get(name) or []
    if not keys:
        return
    if _count(conn, table, device_id) + len(keys) > limit:
        raise Conflict(f"a device holds at most {limit} {name.replace('_', ' ')}")
    existing = conn.execute(
        sa.select(table.c.key_id).where(
            table.c.device_id == device_id, table.c.key_id.in_([k["key_id"] for k in keys])
        )
    ).first()
    if existing is not None:
        raise Conflict(f"{name} reuse a key_id already uploaded")
    conn.execute(sa.insert(table), [{"device_id": device_id, **k} for k in keys])


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


def device_list_view(conn: Connection, user_id: str) -> dict[str, Any]:
    """The account key and the latest device list it signed (both None before the
    account has one): what clients verify a device list against."""
    row = conn.execute(sa.select(t.device_lists).where(t.device_lists.c.user_id == user_id)).first()
    if row is None:
        return {"account_key": None, "device_list": None}
    keys = row.device_keys
    return {
        "account_key": row.account_key,
        "device_list": {
            "version": row.version,
            "identity_keys": [keys[i : i + 32] for i in range(0, len(keys), 32)],
            "signature": row.signature,
        },
    }


def store_device_list(
    conn: Connection,
    user_id: str,
    signed: dict[str, Any] | None,
    *,
    account_key: bytes | None = None,
    must_name: bytes | None = None,
) -> None:
    """Check and keep the account's new signed device list, within the transaction that
    changes its devices (so the devices it may name are the ones after the change).

    ``account_key`` sets the account key, once: a new account's first device sets it
    right after registering (the signed bytes name the user id, which registration
    assigns), an older account's first device to run a cross-signing client when it
    starts. An account without one changes its devices unsigned. Otherwise the list is
    required; it must verify under the account key, carry a higher version than the
    stored one, name only keys of the account's devices and (``must_name``) the device
    just added.
    """
    table = t.device_lists
    row = conn.execute(sa.select(table).where(table.c.user_id == user_id)).first()
    if row is None and account_key is None:
        if signed is None:
            return
        raise InvalidBody("this account has no account key yet: device_list cannot verify")
    if row is not None and account_key is not None and account_key != row.account_key:
        raise Conflict("this account already has another account key; it is set once")
    if signed is None:
        raise InvalidBody("device_list is required: this account's devices are cross-signed")
    key = row.account_key if row is not None else account_key
    assert key is not None
    keys: list[bytes] = signed["identity_keys"]
    try:
        message = sig.device_list_message(user_id, signed["version"], keys)
    except ValueError as exc:
        raise InvalidBody(f"device_list: {exc}") from None
    if not verify_signature(key, message, signed["signature"]):
        raise InvalidBody("device_list.signature does not verify under the account key")
    if row is not None and signed["version"] <= row.version:
        raise Conflict(f"device_list.version must be above the stored list's ({row.version})")
    held = set(
        conn.execute(
            sa.select(t.devices.c.identity_key).where(t.devices.c.user_id == user_id)
        ).scalars()
    )
    if not set(keys) <= held:
        raise InvalidBody("device_list names a key that is not a device of this account")
    if must_name is not None and must_name not in keys:
        raise InvalidBody("device_list must name the device being added")
    values = {
        "account_key": key,
        "version": signed["version"],
        "device_keys": b"".join(sorted(keys)),
        "signature": signed["signature"],
    }
    if row is None:
        conn.execute(sa.insert(table).values(user_id=user_id, **values))
    else:
        conn.execute(sa.update(table).where(table.c.user_id == user_id).values(**values))


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
    summary="A user's current devices (ids and identity keys), with the account key and "
    "the device list it signed, for envelope fan-out",
    errors=(404,),
)
async def user_devices(call: Call, user_id: str) -> dict[str, Any]:
    if user_id == "@me":
        user_id = call.me.user_id
    return await call.state.db.read(lambda conn: user_devices_tx(conn, user_id))


def user_devices_tx(conn: Connection, user_id: str) -> dict[str, Any]:
    """The user's current devices and signed device list; 404 when there is no such user."""
    found = conn.execute(sa.select(t.users.c.id).where(t.users.c.id == user_id)).first()
    if found is None:
        raise NotFound("no such user")
    return {"devices": current_devices(conn, user_id), **device_list_view(conn, user_id)}


@router.route(
    "POST",
    "/users/@me/devices",
    summary="Add a device: its identity key signs a challenge; the caller's session vouches "
    "and, once the account has an account key, the new device list it signed",
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
    store_device_list(conn, user_id, body.get("device_list"), must_name=identity_key)
    return {"id": device_id, "identity_key": identity_key}


@router.route(
    "DELETE",
    "/users/@me/devices/{device_id}",
    summary="Remove a device: its sessions, prekeys and queued envelopes go with it (with "
    "the new signed device list once the account has an account key)",
    body=REMOVE_DEVICE,
    status=204,
    errors=(404, 409),
)
async def remove_device(call: Call, device_id: str) -> None:
    user_id, signed = call.me.user_id, call.body.get("device_list")
    await call.state.db.write(lambda conn: remove_device_tx(conn, user_id, device_id, signed))
    await call.state.bus.publish(revoked(device_id=device_id))
    await call.state.bus.publish(
        Event(
            EventName.DEVICE_REMOVE,
            {"user_id": user_id, "device_id": device_id},
            frozenset({user_id}),
        )
    )


def remove_device_tx(
    conn: Connection, user_id: str, device_id: str, signed: dict[str, Any] | None = None
) -> None:
    """Delete one of the user's devices (never the last), keeping the new signed device
    list when the account is cross-signed; the rest goes by cascade."""
    devices = [d["id"] for d in current_devices(conn, user_id)]
    if device_id not in devices:
        raise NotFound("no such device")
    if len(devices) == 1:
        raise Conflict("cannot remove the last device; delete the account instead")
    conn.execute(sa.delete(t.devices).where(t.devices.c.id == device_id))
    store_device_list(conn, user_id, signed)


@router.route(
    "PUT",
    "/users/@me/device-list",
    summary="Replace the account's signed device list; the first one also sets the account "
    "key (an account registered before cross-signing)",
    body=PUT_DEVICE_LIST,
    errors=(409,),
)
async def put_device_list(call: Call) -> dict[str, Any]:
    user_id, body = call.me.user_id, call.body

    def tx(conn: Connection) -> dict[str, Any]:
        store_device_list(conn, user_id, body["device_list"], account_key=body.get("account_key"))
        return device_list_view(conn, user_id)

    return await call.state.db.write(tx)


@router.route(
    "GET",
    "/users/@me/devices/@current/keys",
    summary="How many one-time prekeys (X25519 and PQ) this device still has on the server",
    tag="prekeys",
)
async def key_count(call: Call) -> dict[str, int]:
    device_id = call.me.device_id
    return await call.state.db.read(lambda conn: key_counts(conn, device_id))


def _count(conn: Connection, table: sa.Table, device_id: str) -> int:
    stmt = sa.select(sa.func.count()).select_from(table).where(table.c.device_id == device_id)
    return int(conn.execute(stmt).scalar_one())


def key_counts(conn: Connection, device_id: str) -> dict[str, int]:
    """How many one-time prekeys of each kind the device has left: the key-count answer
    and the PREKEYS_LOW payload."""
    return {
        "one_time_prekeys": _count(conn, t.one_time_prekeys, device_id),
        "pq_one_time_prekeys": _count(conn, t.pq_one_time_prekeys, device_id),
    }


@router.route(
    "PUT",
    "/users/@me/devices/@current/keys",
    summary="Upload signed, PQ and/or one-time prekeys of both kinds (signatures checked)",
    tag="prekeys",
    body=UPLOAD_KEYS,
    errors=(409,),
)
async def upload_keys(call: Call) -> dict[str, int]:
    device_id, body = call.me.device_id, call.body
    return await call.state.db.write(lambda conn: upload_keys_tx(conn, device_id, body))


def upload_keys_tx(conn: Connection, device_id: str, body: dict[str, Any]) -> dict[str, int]:
    """Check an UploadKeys body against the device's identity key and store it; return
    how many one-time prekeys of each kind the device now has."""
    identity_key = conn.execute(
        sa.select(t.devices.c.identity_key).where(t.devices.c.id == device_id)
    ).scalar_one()
    _check_bundle(identity_key, body)
    _store_bundle(conn, device_id, body)
    return key_counts(conn, device_id)


@router.route(
    "POST",
    "/users/{user_id}/keys/claim",
    summary="Fetch prekey bundles for all of a user's devices, consuming one one-time prekey "
    "of each kind per device",
    tag="prekeys",
    body=EMPTY,
    errors=(404,),
)
async def claim_keys(call: Call, user_id: str) -> Reply:
    may_take = call.state.prekey_claims.admit(call.me.user_id)
    bundles, low = await call.state.db.write(lambda conn: claim_bundles(conn, user_id, may_take))
    for device_id, counts in low:
        await call.state.bus.publish(
            Event(
                EventName.PREKEYS_LOW,
                {"device_id": device_id, **counts},
                device_ids=frozenset({device_id}),
            )
        )
    return Reply({"user_id": user_id, "devices": bundles}, 200)


def claim_bundles(
    conn: Connection, user_id: str, may_take: Callable[[str], bool]
) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, int]]]]:
    """Build every device's bundle, deleting one one-time prekey of each kind (X25519 and
    PQ) per device inside this transaction.

    ``may_take(device_id)`` says whether this claimer may have the device's one-time
    prekeys now (:meth:`control.ratelimit.ClaimLimiter.take_one_time_prekey`, asked once
    per device and only when a key of either kind is left: the pair counts as one); if
    not, the bundle carries the signed prekey and the last-resort PQ prekey alone, as when
    none are left. ``pq_prekey_one_time`` says which kind of PQ key the bundle carries
    (the client checks it under that kind's signature label).

    Also returns the devices left with fewer than :data:`LOW_OTK` of either kind, with
    their counts (for PREKEYS_LOW).
    """
    if conn.execute(sa.select(t.users.c.id).where(t.users.c.id == user_id)).first() is None:
        raise NotFound("no such user")
    otk, pq_otk, spk, pq = t.one_time_prekeys, t.pq_one_time_prekeys, t.signed_prekeys, t.pq_prekeys
    bundles: list[dict[str, Any]] = []
    low: list[tuple[str, dict[str, int]]] = []
    for device in current_devices(conn, user_id):
        device_id = device["id"]
        signed = conn.execute(sa.select(spk).where(spk.c.device_id == device_id)).first()
        last_resort = conn.execute(sa.select(pq).where(pq.c.device_id == device_id)).first()
        one_time: Any = None
        pq_one_time: Any = None
        left = key_counts(conn, device_id)
        if any(left.values()) and may_take(device_id):
            one_time = _take_one_time(conn, otk, device_id)
            pq_one_time = _take_one_time(conn, pq_otk, device_id)
            left = key_counts(conn, device_id)
        if min(left.values()) < LOW_OTK:
            low.append((device_id, left))
        bundles.append(
            {
                "device_id": device_id,
                "identity_key": device["identity_key"],
                "signed_prekey": _key_view(signed),
                "pq_prekey": _key_view(pq_one_time or last_resort),
                "pq_prekey_one_time": pq_one_time is not None,
                "one_time_prekey": None
                if one_time is None
                else {"key_id": one_time.key_id, "public_key": one_time.public_key},
            }
        )
    return bundles, low


def _take_one_time(conn: Connection, table: sa.Table, device_id: str) -> Any:
    """Delete and return the device's lowest-id key of ``table``; None when none is left.

    The key is deleted by primary key and the delete's row count checked, so even under
    PostgreSQL's concurrent transactions two claims can never both receive the same key:
    the loser sees zero rows deleted and takes the next one.
    """
    while True:
        row = conn.execute(
            sa.select(table).where(table.c.device_id == device_id).order_by(table.c.key_id).limit(1)
        ).first()
        if row is None:
            return None
        deleted = conn.execute(
            sa.delete(table).where(table.c.device_id == device_id, table.c.key_id == row.key_id)
        ).rowcount
        if deleted == 1:
            return row


def _key_view(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"key_id": row.key_id, "public_key": row.public_key, "signature": row.signature}
