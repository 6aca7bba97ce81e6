"""This account's devices: listing, removing, and linking a new one through the server.

Linking works like Signal's provisioning, between two machines. The new device
(:func:`join_device`) opens a mailbox under an id derived from a one-time secret and shows
the secret as a link code; a signed-in device (:meth:`Devices.link`) draws the new
device's keys, adds it to the account with a new device list signed by the account key
(cross-signing: only a device holding that key can add or remove one), and seals
identity seed, prekeys, the account key and the signed list
(:class:`~client.linking.LinkExtra`) under the code's secret into that mailbox. Only
ciphertext passes through the server. Whatever fails on either side leaves no device
nobody holds the key of on the account.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from functools import partial
from math import ceil
from pathlib import Path
from typing import TypeVar

import trio

from client import _prekeys
from client.account import Account, write_account
from client.api import ControlApi, retry_after_untrusted
from client.device_list import SignedDeviceList
from client.errors import ApiError, ClientError, LinkError, ProtocolError, UsageError
from client.linking import LinkExtra
from client.models import Device
from client.notices import Notices
from client.prekeys import first_prekeys
from client.store import Passphrase, Store
from client.trust import Trust
from contract.signing import add_device_message, login_message
from e2ee import (
    E2EEError,
    IdentityKeyPair,
    LinkingSecret,
    PreKeyStore,
    ProvisioningPayload,
    build_provisioning_message,
)
from e2ee.linking import parse_link_code

__all__ = ["LINK_CODE_TTL_S", "Devices", "join_device"]

#: A link code's mailbox lives this long by default (the server's maximum).
LINK_CODE_TTL_S = 600
#: One long poll of the mailbox waits this long (the server allows 25 s, the HTTP client
#: gives up after 30 s).
MAILBOX_POLL_S = 25
#: How long a failed join-device spends taking its device off the account again.
WITHDRAW_S = 5

_T = TypeVar("_T")


class Devices:
    """The devices of this account, as this (signed-in) device manages them."""

    def __init__(self, api: ControlApi, account: Account, trust: Trust) -> None:
        self._api = api
        self._account = account
        self._trust = trust

    async def current(self) -> list[Device]:
        """This account's devices."""
        return await self._api.devices(self._account.user_id)

    async def remove(self, device_id: str) -> None:
        """Remove one of this account's devices (not this one), with a new device list
        signed by the account key that no longer names it. A device the server lists
        but the signed list never named (planted) is removed the same way."""
        me = self._account
        if device_id == me.device_id:
            raise UsageError("this device cannot remove itself; remove it from another device")
        await self._trust.refresh(me.user_id)
        listed = await self.current()
        gone = {d.identity_key for d in listed if d.id == device_id}
        remaining = {d.identity_key for d in listed if d.id != device_id}
        keys = [k for k in self._trust.own_listed_keys() if k in remaining and k not in gone]
        signed = self._trust.sign_own_list(keys)
        await self._api.remove_device(device_id, signed)
        self._trust.record_own_list(signed)

    async def link(self, code: str) -> Device:
        """Make a new device of this account for the device showing ``code``.

        The other side runs :func:`join_device`. This device draws the new device's
        identity key and prekeys, adds the device to the account (this session vouches,
        the new key signs the challenge), seals identity seed, prekeys and the account's
        device list under the code's secret and leaves them in the new device's mailbox.
        It keeps no copy of the new device's private keys.

        The list it signs names this account's devices it trusts (those of its pinned
        signed list the server still has) plus the new one, so a device only the server
        knows of is never vouched for. This device must hold the account key. On any
        failure, a refusing mailbox (wrong, expired or used code) included, the device is
        removed again (with a list that no longer names it), since nobody could use it.
        """
        me = self._account
        try:
            parse_link_code(code)
        except E2EEError:
            raise LinkError(
                "that is not a link code: it is 32 letters and digits, as join-device shows it"
            ) from None
        trusted = await self._trust.refresh(me.user_id)
        account_key = self._trust.require_account_key()
        identity = IdentityKeyPair.generate()
        prekeys, otks, pq_otks = first_prekeys(identity)
        signed = self._trust.sign_own_list([d.identity_key for d in trusted] + [identity.public])
        challenge = await self._api.challenge()
        message = add_device_message(challenge, identity.public, me.user_id)
        device = await self._api.add_device(
            {
                "identity_key": identity.public,
                "challenge": challenge,
                "signature": identity.sign(message),
                "device_list": signed.to_wire(),
                **_prekeys.directory_prekeys(identity, prekeys, otks, pq_otks),
            }
        )
        self._trust.record_own_list(signed)
        try:
            if device.identity_key != identity.public:
                raise ProtocolError("the server added a device under another key")
            extra = LinkExtra(me.handle, prekeys.serialize(), account_key.seed, signed)
            payload = ProvisioningPayload(me.user_id.encode(), identity.seed, extra.encode())
            mailbox_id, sealed = build_provisioning_message(code, payload)
            await self._api.deposit_provisioning(mailbox_id, sealed)
        except BaseException as exc:
            with trio.CancelScope(shield=True), contextlib.suppress(ClientError):
                with trio.move_on_after(5):
                    without = self._trust.sign_own_list(
                        [k for k in signed.identity_keys if k != identity.public]
                    )
                    await self._api.remove_device(device.id, without)
                    self._trust.record_own_list(without)
            if isinstance(exc, ApiError) and exc.status in (404, 409):
                raise LinkError(
                    "no device is waiting for this link code: it is mistyped, expired or "
                    "already used — run join-device again for a new one"
                ) from None
            raise
        return device


async def join_device(
    profile: Path,
    passphrase: Passphrase,
    server: str,
    show_code: Callable[[LinkingSecret, int], None],
    *,
    use_keyring: bool = False,
    expires_in: int = LINK_CODE_TTL_S,
) -> tuple[Store, ControlApi]:
    """Become a new device of an existing account: the other side of :meth:`Devices.link`.

    Opens a provisioning mailbox under an id derived from a fresh one-time secret, hands
    the secret to ``show_code`` (with the mailbox's lifetime) to be shown, waits for the
    sealed message, opens it and signs in with the identity it carries; returns the new
    profile's store (the account's devices pinned as the linking device listed them) and
    the signed-in API. The profile's store is created first, so a missing passphrase
    fails before anything is asked of the server. On any failure the mailbox is closed
    and the half-made profile removed; after signing in, the device also takes itself off
    the account again (or at least ends its session): nobody would hold its key, yet
    peers would keep encrypting to it.

    A rate-limited server (429; the mailbox routes share one bucket per route) is waited
    out for as long as the code lives.
    """
    if Store.exists(profile):
        raise UsageError(f"a profile already exists at {profile}; use another --profile")
    store = Store.open(profile, passphrase, create=True, use_keyring=use_keyring)
    secret = LinkingSecret()
    api = ControlApi(server)
    opened = False
    device_id: object = None
    withdrawal: SignedDeviceList | None = None
    try:
        granted = await _open_mailbox(api, secret.mailbox_id, expires_in)
        opened = True
        show_code(secret, granted)
        sealed = await _wait_for_provisioning(api, secret.mailbox_id, granted)
        opened = False  # the server deleted the mailbox as it handed the message out
        try:
            payload = secret.open(sealed)
        except E2EEError:
            raise LinkError("the provisioning message does not open with this link code") from None
        extra = LinkExtra.decode_untrusted(payload.extra)
        account_key = IdentityKeyPair(extra.account_key)
        identity = IdentityKeyPair(payload.identity_seed)
        prekeys = PreKeyStore.restore_untrusted(extra.prekeys)
        if prekeys.identity.public != identity.public:
            raise ProtocolError("the provisioning message's prekeys belong to another key")
        challenge = await api.challenge()
        answer = await api.login(
            {
                "identity_key": identity.public,
                "challenge": challenge,
                "signature": identity.sign(login_message(challenge, identity.public)),
            }
        )
        user_id, device_id, token = (
            answer.get("user_id"),
            answer.get("device_id"),
            answer.get("token"),
        )
        if isinstance(token, str):
            # From here on the device exists with a session: the cleanup needs it.
            api.token = token
        if not isinstance(device_id, str) or not isinstance(token, str):
            raise ProtocolError("the server sent a malformed login answer")
        if user_id != payload.user_id.decode("ascii", "replace"):
            raise ProtocolError("the server signed this device in to another account")
        if not extra.device_list.verifies(account_key.public, user_id):
            raise ProtocolError("the linking device's list does not verify under the account key")
        # Signed without this device, should it have to take itself off the account.
        withdrawal = SignedDeviceList.sign(
            account_key,
            user_id,
            extra.device_list.version + 1,
            [k for k in extra.device_list.identity_keys if k != identity.public],
        )
        if not extra.device_list.names(Device(device_id, identity.public)):
            raise ProtocolError("the linking device did not list this device")
        write_account(
            store,
            server,
            identity,
            prekeys,
            user_id=user_id,
            handle=extra.handle,
            device_id=device_id,
            token=token,
        )
        account = Account.load(store)
        Trust(store, api, account, Notices(store)).keep_account_key(account_key, extra.device_list)
    except BaseException as exc:
        withdrawn = True
        with trio.CancelScope(shield=True):
            if opened:
                with trio.move_on_after(5), contextlib.suppress(ClientError):
                    await _rate_limited(
                        partial(api.close_mailbox, secret.mailbox_id),
                        trio.current_time() + 5,
                    )
            if api.token is not None:
                withdrawn = await _withdraw_device(
                    api, device_id if isinstance(device_id, str) else None, withdrawal
                )
            await api.aclose()
        store.destroy()
        if not withdrawn:
            stranded = (
                f"this device could not take itself off the account again — check "
                f"'hushroom devices' on your other device and remove "
                f"{device_id or 'the newest device'} there"
            )
            if isinstance(exc, ClientError):
                raise LinkError(f"{str(exc).rstrip('. ')}, and {stranded}") from exc
            # Ctrl-C stays Ctrl-C; the CLI prints the note.
            exc.add_note(stranded)
        raise
    return store, api


async def _rate_limited(call: Callable[[], Awaitable[_T]], deadline: float) -> _T:
    """``call()``, made again after each 429 once the server's retry-after has passed, for
    as long as that ends before ``deadline`` (trio's clock); then the 429 is raised.

    The provisioning routes need no account, so their rate limit is one bucket per route
    shared by everybody: anyone can empty it, and a waiting device must outlast that.
    """
    while True:
        try:
            return await call()
        except ApiError as exc:
            wait = retry_after_untrusted(exc)
            if wait is None or trio.current_time() + wait >= deadline:
                raise
            await trio.sleep(wait)


async def _open_mailbox(api: ControlApi, mailbox_id: bytes, expires_in: int) -> int:
    """Open the provisioning mailbox; a rate-limited server is waited out for as long as
    the code was to live."""
    try:
        return await _rate_limited(
            partial(api.open_mailbox, mailbox_id, expires_in), trio.current_time() + expires_in
        )
    except ApiError as exc:
        if exc.status != 429:
            raise
        raise LinkError(
            f"the server kept refusing to open a link mailbox for {expires_in} s (too many "
            "requests); run join-device again later"
        ) from None


async def _wait_for_provisioning(api: ControlApi, mailbox_id: bytes, within_s: int) -> bytes:
    """Long-poll the mailbox until its message arrives or its lifetime runs out; a 429 is
    waited out within that lifetime."""
    deadline = trio.current_time() + within_s
    while (left := deadline - trio.current_time()) > 0:
        poll = partial(api.fetch_provisioning, mailbox_id, min(MAILBOX_POLL_S, ceil(left)))
        try:
            message = await _rate_limited(poll, deadline)
        except ApiError as exc:
            if exc.status not in (404, 429):
                raise
            # 404: expired on the server (its clock ran first), or the server restarted;
            # 429: still rate-limited when the code runs out.
            break
        if message is not None:
            return message
    raise LinkError("the link code expired before another device used it; run join-device again")


async def _withdraw_device(
    api: ControlApi, device_id: str | None, device_list: SignedDeviceList | None
) -> bool:
    """Take a device that will never be used off its account, signed in as that device;
    failing that, at least end its session. Best effort, within :data:`WITHDRAW_S`.

    True when the device is gone from the account.
    """
    with trio.move_on_after(WITHDRAW_S):
        if device_id is not None:
            try:
                await api.remove_device(device_id, device_list)
                return True
            except ApiError as exc:
                if exc.status == 404:
                    return True
            except ClientError:
                pass
        with contextlib.suppress(ClientError):
            await api.logout()
    return False
