"""A profile's encrypted key backup (``hushroom backup export|import``): what goes into
:class:`e2ee.BackupContents` and the profile a backup restores.

What goes in (:func:`backup_contents`): this device's identity, prekeys, pairwise
sessions and sender keys, and — when this device holds it — the account signing key
(cross-signing, docs/e2ee.md) with the newest own device list this device pinned, in
:meth:`client.device_list.SignedDeviceList.encode`'s form.

What comes out (:func:`restore_backup`): a new profile of the same device, signed in with
the backup's identity key. The account key is kept and the list pinned as linking does it
(:meth:`client.trust.Trust.keep_account_key`), once the list verifies under that key for
the account the server signed the device in to; so the restored device adds and removes
devices as the original did, and takes only lists of the same key with a version at
least the one it pinned. A backup without the key (made before cross-signing, or on a
device still waiting for it) restores a device that sends and receives but cannot add or
remove devices; when the account has an account key, a ``no_account_key`` notice says so
(an account without one is set up by the restored device itself, as any device of such
an account does).

Restored pairwise sessions only decrypt, and this device's own sending sender keys are
not reused: sending on state the old copy may also have used could repeat a key/nonce
pair (docs/e2ee.md); new sessions and keys are made for sending.
"""

from __future__ import annotations

from pathlib import Path

import trio

from client.account import Account
from client.api import ControlApi
from client.device_list import SignedDeviceList
from client.errors import ProtocolError, UsageError
from client.notices import Notices
from client.store import Passphrase, Store
from client.trust import Trust
from contract.signing import login_message
from e2ee import BackupContents, PreKeyStore, SenderKeyReceiver, SenderKeySender, Session

__all__ = ["NO_ACCOUNT_KEY", "backup_contents", "restore_backup"]

#: What a profile restored from a backup without the account key is told.
NO_ACCOUNT_KEY = (
    "this backup holds no account key (it predates cross-signing), so this device sends "
    "and receives but cannot add or remove devices — that needs the account key, which "
    "your other devices hold: manage devices from one of them"
)


def backup_contents(store: Store, prekeys: PreKeyStore, trust: Trust) -> BackupContents:
    """Everything a backup of this profile carries (``prekeys``: the current store)."""
    sessions = {
        label: Session.restore_untrusted(blobs[0])
        for label, blobs in store.names("sessions")
        if blobs
    }
    senders = {
        label: SenderKeySender.restore_untrusted(raw[0]) for label, raw in store.names("sender_out")
    }
    receivers = {
        label: SenderKeyReceiver.restore_untrusted(raw) for label, raw in store.names("sender_in")
    }
    signed = trust.own_signed_list()
    return BackupContents(
        prekeys.identity,
        prekeys,
        sessions,
        senders,
        receivers,
        None if signed is None else trust.account_key(),
        None if signed is None else signed.encode(),
    )


async def restore_backup(
    profile: Path,
    passphrase: Passphrase,
    server: str,
    contents: BackupContents,
    *,
    use_keyring: bool = False,
) -> tuple[Store, ControlApi]:
    """Make a new profile at ``profile`` from ``contents`` and sign it in; returns the
    written store and the signed-in API.

    The store is made first, so a missing passphrase fails before anything is asked of
    the server; on any failure it is removed again. A backup whose device list does not
    verify under its account key for the account the server signs the device in to is
    refused (:class:`ProtocolError`).
    """
    if Store.exists(profile):
        raise UsageError(f"a profile already exists at {profile}; import into a new one")
    prekeys = contents.prekeys
    if prekeys is None:
        raise UsageError("the backup holds no prekeys")
    identity = contents.identity
    store = Store.open(profile, passphrase, create=True, use_keyring=use_keyring)
    api = ControlApi(server)
    try:
        challenge = await api.challenge()
        answer = await api.login(
            {
                "identity_key": identity.public,
                "challenge": challenge,
                "signature": identity.sign(login_message(challenge, identity.public)),
            }
        )
        token, device_id = answer.get("token"), answer.get("device_id")
        if not isinstance(token, str) or not isinstance(device_id, str):
            raise ProtocolError("the server sent a malformed login answer")
        api.token = token
        me = await api.me()
        signed = _backed_up_list(contents, me.id)
        # Only an account with a key needs one to manage devices: an account older than
        # cross-signing is set up by this device on its first start (client.trust).
        told = signed is None and (await api.device_directory(me.id)).account_key is not None
        with store.transaction():
            store.put("identity", "seed", identity.seed)
            store.put("identity", "prekeys", prekeys.serialize())
            store.put(
                "account",
                "self",
                {
                    "server": server,
                    "user_id": me.id,
                    "handle": me.handle,
                    "device_id": device_id,
                    "token": token,
                },
            )
            for label, session in contents.sessions.items():
                store.put("sessions_restored", label, [session.serialize()])
            # Received sender keys keep old channel messages readable.
            for label, receiver in contents.sender_key_receivers.items():
                store.put("sender_in", label, receiver.serialize())
        notices = Notices(store)
        trust = Trust(store, api, Account.load(store), notices)
        if signed is not None:
            assert contents.account_key is not None
            trust.keep_account_key(contents.account_key, signed)
        elif told:
            notices.add("no_account_key", NO_ACCOUNT_KEY)
    except BaseException:
        with trio.CancelScope(shield=True):
            await api.aclose()
        store.destroy()
        raise
    return store, api


def _backed_up_list(contents: BackupContents, user_id: str) -> SignedDeviceList | None:
    """The backup's own device list, checked under its account key for ``user_id``."""
    if contents.account_key is None or contents.device_list is None:
        return None
    try:
        signed = SignedDeviceList.decode_untrusted(contents.device_list)
    except ProtocolError:
        raise ProtocolError("the backup's device list is malformed") from None
    if not signed.verifies(contents.account_key.public, user_id):
        raise ProtocolError(
            "the backup's device list does not verify under its account key for the "
            "account the server signed this device in to"
        )
    return signed
