"""This profile's account: who it is signed in as, registration, sign-in, privacy requests.

An :class:`Account` is the ``account``/``identity`` records of the local store read once:
user id, handle, device id and the device's identity key pair. Every other part of the
client is given it explicitly. Registration (:func:`register_account`) and sign-in
(:func:`sign_in`) sign a server challenge with the device key; the signed bytes start
with a ``hushroom-v1 …`` label so a signature for one purpose never serves another.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import _prekeys
from client.api import ControlApi
from client.errors import NotRegistered, ProtocolError, UsageError
from client.prekeys import first_prekeys
from client.store import Passphrase, Store
from contract.signing import login_message, register_message
from e2ee import IdentityKeyPair, PreKeyStore

__all__ = [
    "Account",
    "delete_account",
    "export_my_data",
    "register_account",
    "sign_in",
    "write_account",
]


@dataclass(frozen=True)
class Account:
    """Who this profile is: the account and this device, with the device's identity key."""

    user_id: str
    handle: str
    device_id: str
    identity: IdentityKeyPair

    @classmethod
    def load(cls, store: Store) -> Account:
        """Read the account from an unlocked store; :class:`NotRegistered` if it has none."""
        account = store.get("account", "self")
        if account is None:
            raise NotRegistered("this profile has no account; run 'hushroom register' first")
        return cls(
            account["user_id"],
            account["handle"],
            account["device_id"],
            IdentityKeyPair(store.get("identity", "seed")),
        )


def write_account(
    store: Store,
    server: str,
    identity: IdentityKeyPair,
    prekeys: PreKeyStore,
    *,
    user_id: str,
    handle: str,
    device_id: str,
    token: str,
) -> None:
    """Write a new profile's identity, prekeys and account records in one transaction."""
    with store.transaction():
        store.put("identity", "seed", identity.seed)
        store.put("identity", "prekeys", prekeys.serialize())
        store.put("identity", "prekeys_rotated_at", time.time())
        store.put(
            "account",
            "self",
            {
                "server": server,
                "user_id": user_id,
                "handle": handle,
                "device_id": device_id,
                "token": token,
            },
        )


async def register_account(
    profile: Path,
    passphrase: Passphrase,
    server: str,
    handle: str,
    *,
    use_keyring: bool = False,
) -> tuple[Store, ControlApi]:
    """Create the account: a fresh device identity, prekeys, and a signed challenge.

    The local store is made first, so an account is never created on the server for a
    profile that then cannot be written (no passphrase, no keyring). Returns the written
    store and a signed-in API; the caller pins this device as the account's only one.
    """
    if Store.exists(profile):
        raise UsageError(f"a profile already exists at {profile}; use another --profile")
    store = Store.open(profile, passphrase, create=True, use_keyring=use_keyring)
    identity = IdentityKeyPair.generate()
    prekeys, otks, pq_otks = first_prekeys(identity)
    api = ControlApi(server)
    try:
        challenge = await api.challenge()
        body = {
            "handle": handle,
            "identity_key": identity.public,
            "challenge": challenge,
            "signature": identity.sign(register_message(challenge, identity.public, handle)),
            **_prekeys.directory_prekeys(identity, prekeys, otks, pq_otks),
        }
        answer = await api.register(body)
        user, device, token = answer.get("user"), answer.get("device"), answer.get("token")
        if not isinstance(user, dict) or not isinstance(device, dict):
            raise ProtocolError("the server sent a malformed registration answer")
        if not isinstance(token, str):
            raise ProtocolError("the server sent no session token")
    except BaseException:
        await api.aclose()
        store.destroy()
        raise
    write_account(
        store,
        server,
        identity,
        prekeys,
        user_id=user["id"],
        handle=handle,
        device_id=device["id"],
        token=token,
    )
    api.token = token
    return store, api


async def sign_in(api: ControlApi, store: Store, identity: IdentityKeyPair) -> None:
    """Get a new session token for this device by signing a challenge, and keep it."""
    challenge = await api.challenge()
    message = login_message(challenge, identity.public)
    answer = await api.login(
        {
            "identity_key": identity.public,
            "challenge": challenge,
            "signature": identity.sign(message),
        }
    )
    token = answer.get("token")
    if not isinstance(token, str):
        raise ProtocolError("the server sent no session token")
    api.token = token
    account = store.get("account", "self")
    account["token"] = token
    account["server"] = api.server_url
    store.put("account", "self", account)


async def export_my_data(api: ControlApi, store: Store, account: Account) -> dict[str, Any]:
    """What the server holds about this account, and what this device holds locally."""
    server = await api.export()
    local = {
        "account": {
            "user_id": account.user_id,
            "handle": account.handle,
            "device_id": account.device_id,
        },
        "messages": [r for r in store.all_messages()],
        "contacts": {
            uid: {"handle": c.get("handle"), "devices": sorted(c["devices"])}
            for uid, c in store.names("contact")
        },
    }
    return {"server": server, "this_device": local}


async def delete_account(api: ControlApi, store: Store) -> None:
    """Erase the account on the server, then this profile's local store."""
    await api.delete_account()
    await api.aclose()
    store.destroy()
