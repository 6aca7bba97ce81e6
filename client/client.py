"""The hushroom client: account, devices, end-to-end encrypted DMs and channels.

A :class:`Client` owns one profile (an unlocked :class:`~client.store.Store`) and talks to
one control plane through :class:`~client.api.ControlApi`. Everything the server sees is
ciphertext built with :mod:`e2ee`:

* **DMs.** For each recipient device and each of the sender's other devices: a pairwise
  :class:`e2ee.Session` (PQXDH on first contact, from a claimed prekey bundle), one
  envelope per device. A 409 ``stale_devices`` answer carries the current lists: the client
  checks the new identity keys, opens sessions to new devices and retries.
* **Receipt.** Decrypt, persist (message and session state in one transaction), then ack.
  An envelope id already handled is acked again without being shown twice, so a crash
  between persist and ack, or an envelope seen both in READY and by REST, is delivered
  exactly once. An envelope that fails to authenticate is acked, dropped and reported.
* **Channels.** One :class:`e2ee.SenderKeySender` per (channel, this device), distributed
  inside pairwise sessions to every device of every member holding VIEW_CHANNEL (and this
  user's other devices). Before each send the audience is recomputed: a device that left
  it forces a new key (rotation), a device that joined receives the current key at its
  current iteration — so a new member or device cannot read what was sent before.
* **Identity.** Contacts' device keys are pinned on first sight. A known device whose key
  changes, or any device change of a contact whose safety number was verified, raises
  :class:`~client.errors.IdentityChanged` before anything is encrypted to the new keys;
  the user decides with :meth:`Client.accept_identity` or :meth:`Client.mark_verified`.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from math import ceil
from pathlib import Path
from typing import Any, TypeVar

import trio

from client import _prekeys
from client.api import ControlApi, retry_after_untrusted
from client.envelope import (
    Body,
    decode_body_untrusted,
    decode_envelope_untrusted,
    dm_conversation,
    encode_body,
    encode_envelope,
    self_conversation,
)
from client.errors import (
    ApiError,
    ClientError,
    IdentityChanged,
    LinkError,
    NotRegistered,
    ProtocolError,
    UndecryptableMessage,
    UsageError,
)
from client.gateway import Dispatch, GatewayClient
from client.linking import LinkExtra
from client.models import Channel, ChannelMessage, Device, Envelope
from client.permissions import readers
from client.store import Passphrase, Store, fingerprint
from e2ee import (
    DecryptedMessage,
    DuplicateMessage,
    E2EEError,
    IdentityKeyPair,
    LinkingSecret,
    MessageType,
    PreKeyStore,
    ProvisioningPayload,
    SenderKeyReceiver,
    SenderKeySender,
    Session,
    UnknownKey,
    accept_session,
    build_provisioning_message,
    format_safety_number,
    initiate_session,
    safety_number,
)
from e2ee.linking import parse_link_code

__all__ = ["Client", "Message", "Notice"]

#: One-time prekeys published at registration and topped up to when the server runs low.
OTK_BATCH = 100
OTK_LOW = 20
#: Pairwise session states kept per peer device (simultaneous initiations leave two).
MAX_SESSIONS_PER_DEVICE = 4
#: Signed and PQ prekeys are replaced this often (Signal rotates weekly to monthly).
PREKEY_ROTATION_S = 7 * 86400
#: Envelope ids handled are remembered a little longer than the relay's 30-day TTL.
ENVELOPE_MARK_TTL_S = 31 * 86400
#: While live, disappearing messages are looked after this often.
HOUSEKEEPING_S = 30.0
#: How long a fetched device list is trusted before it is fetched again.
DEVICE_LIST_TTL_S = 30.0
_STALE_RETRIES = 3
#: A link code's mailbox lives this long by default (the server's maximum).
LINK_CODE_TTL_S = 600
#: One long poll of the mailbox waits this long (the server allows 25 s, the HTTP client
#: gives up after 30 s).
MAILBOX_POLL_S = 25
#: How long a failed join-device spends taking its device off the account again.
WITHDRAW_S = 5

_T = TypeVar("_T")


def _now() -> float:
    return time.time()


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


async def _withdraw_device(api: ControlApi, device_id: str | None) -> bool:
    """Take a device that will never be used off its account, signed in as that device;
    failing that, at least end its session. Best effort, within :data:`WITHDRAW_S`.

    True when the device is gone from the account.
    """
    with trio.move_on_after(WITHDRAW_S):
        if device_id is not None:
            try:
                await api.remove_device(device_id)
                return True
            except ApiError as exc:
                if exc.status == 404:
                    return True
            except ClientError:
                pass
        with contextlib.suppress(ClientError):
            await api.logout()
    return False


@dataclass(frozen=True)
class Message:
    """A decrypted message as the store keeps it and the CLI shows it."""

    id: str
    conversation: str
    sender_id: str
    sender_handle: str
    body: str
    ts: float
    direction: str
    expires_at: float | None = None
    #: A channel message's position on the server (None for DMs).
    seq: int | None = None

    def to_record(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "id": self.id,
            "conversation": self.conversation,
            "sender_id": self.sender_id,
            "sender_handle": self.sender_handle,
            "body": self.body,
            "ts": self.ts,
            "direction": self.direction,
            "expires_at": self.expires_at,
            "seq": self.seq,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Message:
        """Rebuild from the stored form."""
        return cls(
            r["id"],
            r["conversation"],
            r["sender_id"],
            r["sender_handle"],
            r["body"],
            r["ts"],
            r["direction"],
            r.get("expires_at"),
            r.get("seq"),
        )


@dataclass(frozen=True)
class Notice:
    """Something the user must be told: a changed identity, a rejected message, ..."""

    kind: str
    text: str
    ts: float = field(default_factory=_now)


class Client:
    """One profile signed in to one server. Open with :meth:`open` or :meth:`register`."""

    def __init__(self, store: Store, api: ControlApi) -> None:
        self.store = store
        self.api = api
        account = store.get("account", "self")
        if account is None:
            raise NotRegistered("this profile has no account; run 'hushroom register' first")
        self.user_id: str = account["user_id"]
        self.handle: str = account["handle"]
        self.device_id: str = account["device_id"]
        self.identity = IdentityKeyPair(store.get("identity", "seed"))
        # An expired session token is renewed by signing a challenge, transparently.
        api.relogin = self.login
        self.prekeys = PreKeyStore.restore_untrusted(store.get("identity", "prekeys"))
        self._audience_cache: dict[str, list[str]] = {}
        self._device_cache: dict[str, tuple[float, list[Device]]] = {}
        self._pending_acks: list[str] = []
        # True while a gateway session runs: audience changes then arrive as dispatches, so
        # a channel's reader list may be cached until one of them says otherwise.
        self._live = False
        #: The gateway session while :meth:`live` runs (``gateway.reconnect()`` resumes).
        self.gateway: GatewayClient | None = None

    # --- opening, registration, login --------------------------------------------------

    @classmethod
    def open(cls, profile: Path, passphrase: Passphrase, server: str | None = None) -> Client:
        """Unlock an existing profile (``passphrase`` is only asked for by passphrase stores)."""
        store = Store.open(profile, passphrase)
        account = store.get("account", "self")
        if account is None:
            store.close()
            raise NotRegistered(f"the profile at {profile} has no account; register first")
        return cls(store, ControlApi(server or account["server"], account["token"]))

    @classmethod
    async def register(
        cls,
        profile: Path,
        passphrase: Passphrase,
        server: str,
        handle: str,
        *,
        use_keyring: bool = False,
    ) -> Client:
        """Create the account: a fresh device identity, prekeys, and a signed challenge.

        The local store is made first, so an account is never created on the server for a
        profile that then cannot be written (no passphrase, no keyring).
        """
        if Store.exists(profile):
            raise UsageError(f"a profile already exists at {profile}; use another --profile")
        store = Store.open(profile, passphrase, create=True, use_keyring=use_keyring)
        identity = IdentityKeyPair.generate()
        prekeys = PreKeyStore.generate(identity)
        otks = prekeys.generate_one_time_prekeys(OTK_BATCH)
        api = ControlApi(server)
        try:
            challenge = await api.challenge()
            body = {
                "handle": handle,
                "identity_key": identity.public,
                "challenge": challenge,
                "signature": identity.sign(
                    b"hushroom-v1 register\x00" + challenge + identity.public + handle.encode()
                ),
                **_prekeys.directory_prekeys(identity, prekeys, otks),
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
        with store.transaction():
            store.put("identity", "seed", identity.seed)
            store.put("identity", "prekeys", prekeys.serialize())
            store.put("identity", "prekeys_rotated_at", _now())
            store.put(
                "account",
                "self",
                {
                    "server": server,
                    "user_id": user["id"],
                    "handle": handle,
                    "device_id": device["id"],
                    "token": token,
                },
            )
        api.token = token
        client = cls(store, api)
        client._pin(client.user_id, handle, [Device(client.device_id, identity.public)])
        return client

    async def login(self) -> None:
        """Get a new session token for this device by signing a challenge."""
        challenge = await self.api.challenge()
        message = b"hushroom-v1 login\x00" + challenge + self.identity.public
        answer = await self.api.login(
            {
                "identity_key": self.identity.public,
                "challenge": challenge,
                "signature": self.identity.sign(message),
            }
        )
        token = answer.get("token")
        if not isinstance(token, str):
            raise ProtocolError("the server sent no session token")
        self.api.token = token
        account = self.store.get("account", "self")
        account["token"] = token
        account["server"] = self.api.server_url
        self.store.put("account", "self", account)

    async def aclose(self) -> None:
        """Close the connection and the store."""
        await self.api.aclose()
        self.store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- devices and linking -----------------------------------------------------------

    async def devices(self) -> list[Device]:
        """This account's devices."""
        return await self.api.devices(self.user_id)

    async def link_device(self, code: str) -> Device:
        """Make a new device of this account for the device showing ``code``.

        The other side runs :meth:`join_device`. This device draws the new device's
        identity key and prekeys, adds the device to the account (this session vouches,
        the new key signs the challenge), seals identity seed, prekeys and the account's
        device list under the code's secret and leaves them in the new device's mailbox.
        It keeps no copy of the new device's private keys.

        The new device pins the sealed list as vouched for by this device, so the list
        must be what this device knows — its pinned own devices plus the one just added
        (fewer is fine) — or :class:`IdentityChanged` is raised and nothing is sealed: a
        device only the server knows of would otherwise be trusted by both. On any
        failure, a refusing mailbox (wrong, expired or used code) included, the device is
        removed again, since nobody could ever use it.
        """
        try:
            parse_link_code(code)
        except E2EEError:
            raise LinkError(
                "that is not a link code: it is 32 letters and digits, as join-device shows it"
            ) from None
        identity = IdentityKeyPair.generate()
        prekeys = PreKeyStore.generate(identity)
        otks = prekeys.generate_one_time_prekeys(OTK_BATCH)
        challenge = await self.api.challenge()
        message = (
            b"hushroom-v1 add-device\x00" + challenge + identity.public + self.user_id.encode()
        )
        device = await self.api.add_device(
            {
                "identity_key": identity.public,
                "challenge": challenge,
                "signature": identity.sign(message),
                **_prekeys.directory_prekeys(identity, prekeys, otks),
            }
        )
        self._device_cache.pop(self.user_id, None)
        try:
            own = await self.devices()
            added = Device(device.id, identity.public)
            if added not in own:
                raise ProtocolError("the server's device list lacks the device just added")
            self._check_own_devices(own, added)
            extra = LinkExtra(self.handle, prekeys.serialize(), own)
            payload = ProvisioningPayload(self.user_id.encode(), identity.seed, extra.encode())
            mailbox_id, sealed = build_provisioning_message(code, payload)
            await self.api.deposit_provisioning(mailbox_id, sealed)
        except BaseException as exc:
            with trio.CancelScope(shield=True), contextlib.suppress(ClientError):
                with trio.move_on_after(5):
                    await self.api.remove_device(device.id)
            if isinstance(exc, ApiError) and exc.status in (404, 409):
                raise LinkError(
                    "no device is waiting for this link code: it is mistyped, expired or "
                    "already used — run join-device again for a new one"
                ) from None
            raise
        self._pin(self.user_id, self.handle, own, own_change_ok=True)
        return device

    def _check_own_devices(self, listed: list[Device], added: Device) -> None:
        """Refuse an own-device list from the server that holds a device (or a key) this
        device has not pinned, apart from ``added``; devices missing from it are fine.

        A profile without pinned own devices (restored from a backup) knows only itself.
        """
        contact = self._contact(self.user_id)
        known: dict[str, bytes] = dict(contact["devices"]) if contact is not None else {}
        known[self.device_id] = self.identity.public
        known[added.id] = added.identity_key
        unknown = sorted(d.id for d in listed if known.get(d.id) != d.identity_key)
        if not unknown:
            return
        ids = ", ".join(unknown)
        raise IdentityChanged(
            self.user_id,
            self.handle,
            f"the server lists {ids} as a device of your account that this device has not "
            f"seen, so nothing was sent to the new device — remove it with 'hushroom devices "
            f"remove {unknown[0]}' if it is not yours, or accept it with 'hushroom verify "
            f"{self.handle} --accept' if it is, then link again",
        )

    @classmethod
    async def join_device(
        cls,
        profile: Path,
        passphrase: Passphrase,
        server: str,
        show_code: Callable[[LinkingSecret, int], None],
        *,
        use_keyring: bool = False,
        expires_in: int = LINK_CODE_TTL_S,
    ) -> Client:
        """Become a new device of an existing account: the other side of :meth:`link_device`.

        Opens a provisioning mailbox under an id derived from a fresh one-time secret,
        hands the secret to ``show_code`` (with the mailbox's lifetime) to be shown, waits
        for the sealed message, opens it and signs in with the identity it carries. Only
        ciphertext passes through the server. The profile's store is created first, so a
        missing passphrase fails before anything is asked of the server. On any failure
        the mailbox is closed and the half-made profile removed; after signing in, the
        device also takes itself off the account again (or at least ends its session):
        nobody would hold its key, yet peers would keep encrypting to it.

        A rate-limited server (429; the mailbox routes share one bucket per route) is
        waited out for as long as the code lives.
        """
        if Store.exists(profile):
            raise UsageError(f"a profile already exists at {profile}; use another --profile")
        store = Store.open(profile, passphrase, create=True, use_keyring=use_keyring)
        secret = LinkingSecret()
        api = ControlApi(server)
        opened = False
        device_id: object = None
        try:
            granted = await _open_mailbox(api, secret.mailbox_id, expires_in)
            opened = True
            show_code(secret, granted)
            sealed = await _wait_for_provisioning(api, secret.mailbox_id, granted)
            opened = False  # the server deleted the mailbox as it handed the message out
            try:
                payload = secret.open(sealed)
            except E2EEError:
                raise LinkError(
                    "the provisioning message does not open with this link code"
                ) from None
            extra = LinkExtra.decode_untrusted(payload.extra)
            identity = IdentityKeyPair(payload.identity_seed)
            prekeys = PreKeyStore.restore_untrusted(extra.prekeys)
            if prekeys.identity.public != identity.public:
                raise ProtocolError("the provisioning message's prekeys belong to another key")
            challenge = await api.challenge()
            answer = await api.login(
                {
                    "identity_key": identity.public,
                    "challenge": challenge,
                    "signature": identity.sign(
                        b"hushroom-v1 login\x00" + challenge + identity.public
                    ),
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
            if Device(device_id, identity.public) not in extra.devices:
                raise ProtocolError("the linking device did not list this device")
            with store.transaction():
                store.put("identity", "seed", identity.seed)
                store.put("identity", "prekeys", prekeys.serialize())
                store.put("identity", "prekeys_rotated_at", _now())
                store.put(
                    "account",
                    "self",
                    {
                        "server": server,
                        "user_id": user_id,
                        "handle": extra.handle,
                        "device_id": device_id,
                        "token": token,
                    },
                )
            client = cls(store, api)
            client._pin(client.user_id, extra.handle, extra.devices, own_change_ok=True)
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
                        api, device_id if isinstance(device_id, str) else None
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
        return client

    async def remove_device(self, device_id: str) -> None:
        """Remove one of this account's devices (not this one)."""
        if device_id == self.device_id:
            raise UsageError("this device cannot remove itself; remove it from another device")
        await self.api.remove_device(device_id)
        self._pin(self.user_id, self.handle, await self.devices(), own_change_ok=True)
        self._device_cache.pop(self.user_id, None)

    async def maintain_prekeys(self) -> int:
        """Top up one-time prekeys below :data:`OTK_LOW` and rotate the signed and PQ
        prekeys every :data:`PREKEY_ROTATION_S`; returns the OTKs the server holds.

        The previous signed prekeys stay in the local store (``e2ee`` keeps three), so
        initial messages already in flight still open.
        """
        held = await self.api.key_count()
        rotated_at = self.store.get("identity", "prekeys_rotated_at", 0.0)
        rotate = _now() - rotated_at >= PREKEY_ROTATION_S
        if held >= OTK_LOW and not rotate:
            return held
        otks = []
        with self.store.transaction():
            self.prekeys = PreKeyStore.restore_untrusted(self.store.get("identity", "prekeys"))
            if held < OTK_LOW:
                otks = self.prekeys.generate_one_time_prekeys(min(OTK_BATCH, 500 - held))
            if rotate:
                self.prekeys.rotate_signed_prekey()
                self.prekeys.rotate_pq_prekey()
            self.store.put("identity", "prekeys", self.prekeys.serialize())
            if rotate:
                self.store.put("identity", "prekeys_rotated_at", _now())
        body = _prekeys.directory_prekeys(self.identity, self.prekeys, otks)
        if not rotate:
            del body["signed_prekey"], body["pq_prekey"]
        return await self.api.upload_keys(body)

    def prune_envelope_marks(self, now: float | None = None) -> int:
        """Forget "already handled" marks older than the relay keeps envelopes."""
        limit = (_now() if now is None else now) - ENVELOPE_MARK_TTL_S
        old = [name for name, at in self.store.names("envelope_done") if at < limit]
        with self.store.transaction():
            for name in old:
                self.store.delete("envelope_done", name)
        return len(old)

    # --- contacts, identity keys and safety numbers ------------------------------------

    def notices(self) -> list[Notice]:
        """Notices not yet shown (and forget them)."""
        raw = self.store.get("notices", "all", [])
        self.store.put("notices", "all", [])
        return [Notice(n["kind"], n["text"], n["ts"]) for n in raw]

    def _notify(self, kind: str, text: str) -> None:
        notice = Notice(kind, text)
        raw = self.store.get("notices", "all", [])
        raw.append({"kind": notice.kind, "text": notice.text, "ts": notice.ts})
        self.store.put("notices", "all", raw[-200:])

    def _contact(self, user_id: str) -> dict[str, Any] | None:
        value = self.store.get("contact", user_id)
        return value if isinstance(value, dict) else None

    def _pin(
        self, user_id: str, handle: str | None, devices: list[Device], own_change_ok: bool = False
    ) -> None:
        """Check ``devices`` against the pinned keys of ``user_id``; pin on first sight.

        Raises :class:`IdentityChanged` when a known device's key changed, or when the
        device set of a verified contact changed; otherwise records new devices with a
        notice.
        """
        current = {d.id: d.identity_key for d in devices}
        contact = self._contact(user_id)
        if contact is None:
            self.store.put(
                "contact", user_id, {"handle": handle, "devices": current, "verified": None}
            )
            return
        known: dict[str, bytes] = contact["devices"]
        name = contact.get("handle") or handle or user_id
        changed = [d for d, key in current.items() if d in known and known[d] != key]
        if changed:
            message = (
                f"the identity key of a device of {name} changed; nothing was sent to it — "
                f"compare safety numbers, then run 'hushroom verify {name} --accept'"
            )
            self._notify("identity_changed", message)
            raise IdentityChanged(user_id, handle, message)
        if set(current) == set(known):
            return
        added = sorted(set(current) - set(known))
        verified = contact.get("verified")
        if (
            verified is not None
            and verified == fingerprint(list(known.values()))
            and not (own_change_ok and user_id == self.user_id)
        ):
            message = (
                f"the safety number of {name}, whom you verified, changed (their devices "
                f"changed); nothing was sent — compare it again with 'hushroom verify {name}', "
                f"then mark it with --mark, or continue unverified with --accept"
            )
            self._notify("identity_changed", message)
            raise IdentityChanged(user_id, handle, message)
        if added and user_id != self.user_id:
            self._notify(
                "new_device", f"{name} has {len(added)} new device(s); safety number changed"
            )
        elif added and not own_change_ok:
            self._notify("new_device", f"your account has {len(added)} new device(s)")
        contact["devices"] = current
        contact["verified"] = None if added else verified
        if handle:
            contact["handle"] = handle
        self.store.put("contact", user_id, contact)

    async def _resolve(self, handle: str) -> tuple[str, str]:
        """(user id, handle) for a handle (the caller's own included); handles are fixed
        for an account's life, so a lookup is remembered."""
        name = handle.lower().lstrip("@")
        if name == self.handle:
            return self.user_id, self.handle
        known = self.store.get("handle", name)
        if isinstance(known, str):
            return known, name
        try:
            user = await self.api.user_by_handle(name)
        except ApiError as exc:
            if exc.status == 404:
                raise UsageError(f"no user has the handle {handle!r}") from None
            raise
        self.store.put("handle", user.handle, user.id)
        return user.id, user.handle

    async def _devices_of(self, user_id: str, handle: str | None) -> list[Device]:
        """A user's devices, checked against the pinned keys; fetched at most every
        :data:`DEVICE_LIST_TTL_S` (a stale list is caught by the relay's 409 anyway)."""
        cached = self._device_cache.get(user_id)
        if cached is not None and trio.current_time() - cached[0] < DEVICE_LIST_TTL_S:
            return cached[1]
        devices = await self.api.devices(user_id)
        self._pin(user_id, handle, devices)
        self._device_cache[user_id] = (trio.current_time(), devices)
        return devices

    async def safety_number(self, handle: str) -> tuple[str, bool]:
        """The formatted safety number with ``handle`` over their current keys, and whether
        exactly those keys are marked verified.

        A change from the pinned keys is recorded as a notice (and still blocks sending
        until :meth:`mark_verified` or :meth:`accept_identity`); the number shown is the
        new one, so the user can compare it.
        """
        user_id, name = await self._resolve(handle)
        theirs = await self.api.devices(user_id)
        mine = await self.devices()
        with contextlib.suppress(IdentityChanged):
            self._pin(user_id, name, theirs)
        number = safety_number(
            self.user_id.encode(),
            [d.identity_key for d in mine],
            user_id.encode(),
            [d.identity_key for d in theirs],
        )
        contact = self._contact(user_id) or {}
        verified = contact.get("verified") == fingerprint([d.identity_key for d in theirs])
        return format_safety_number(number), verified

    async def mark_verified(self, handle: str) -> None:
        """Mark the contact's current keys as verified (after comparing safety numbers)."""
        user_id, name = await self._resolve(handle)
        theirs = await self.api.devices(user_id)
        keys = {d.id: d.identity_key for d in theirs}
        self.store.put(
            "contact",
            user_id,
            {"handle": name, "devices": keys, "verified": fingerprint(list(keys.values()))},
        )

    async def accept_identity(self, handle: str) -> None:
        """Accept a contact's changed keys (unverified until compared again)."""
        user_id, name = await self._resolve(handle)
        theirs = await self.api.devices(user_id)
        self._device_cache.pop(user_id, None)
        self.store.put(
            "contact",
            user_id,
            {
                "handle": name,
                "devices": {d.id: d.identity_key for d in theirs},
                "verified": None,
            },
        )
        # Sessions with devices whose key changed are useless now; drop them.
        for device in theirs:
            sessions = self._load_sessions(user_id, device.id)
            kept = [s for s in sessions if s.remote_identity == device.identity_key]
            self._save_sessions(user_id, device.id, kept)

    # --- pairwise sessions ---------------------------------------------------------------

    def _load_sessions(self, user_id: str, device_id: str) -> list[Session]:
        raw = self.store.get("sessions", f"{user_id}/{device_id}", [])
        return [Session.restore_untrusted(blob) for blob in raw]

    def _save_sessions(self, user_id: str, device_id: str, sessions: list[Session]) -> None:
        self.store.put(
            "sessions",
            f"{user_id}/{device_id}",
            [s.serialize() for s in sessions[:MAX_SESSIONS_PER_DEVICE]],
        )

    def _usable_sessions(self, user_id: str, device: Device) -> list[Session]:
        return [
            s
            for s in self._load_sessions(user_id, device.id)
            if s.remote_identity == device.identity_key
        ]

    async def _ensure_sessions(self, user_id: str, devices: list[Device]) -> None:
        """Open a session (PQXDH, from a claimed bundle) with every device that has none."""
        keys = {d.id: d.identity_key for d in devices}
        lacking = {d.id for d in devices if not self._usable_sessions(user_id, d)}
        if not lacking:
            return
        for bundle in await self.api.claim_bundles(user_id):
            if bundle.device_id not in lacking:
                continue
            if bundle.identity_key != keys[bundle.device_id]:
                raise UndecryptableMessage(
                    "the server handed out a prekey bundle under another identity key"
                )
            try:
                session = initiate_session(self.identity, _prekeys.prekey_bundle_untrusted(bundle))
            except E2EEError as exc:
                raise ClientError(
                    f"a device of {self._name(user_id)} published prekeys that do not verify "
                    f"({type(exc).__name__}); nothing was sent"
                ) from None
            with self.store.transaction():
                # Another process on this profile may have opened one meanwhile: keep it.
                existing = self._load_sessions(user_id, bundle.device_id)
                self._save_sessions(user_id, bundle.device_id, [*existing, session])
            lacking.discard(bundle.device_id)
        if lacking:
            raise ClientError(
                f"a device of {self._name(user_id)} has no prekeys on the server; nothing was sent"
            )

    async def _fan_out(
        self,
        recipients: dict[str, list[Device]],
        conversation_for: Callable[[str], bytes],
        plaintext_for: Callable[[str], bytes],
        message_type: Callable[[str], MessageType],
    ) -> None:
        """Encrypt for every device of every recipient user and post the envelopes.

        ``recipients`` maps user id → devices (for this user: the other devices). A 409
        stale-device answer refreshes the named users' lists (pinning their keys) and
        retries. Each ratchet step is loaded, taken and saved inside one store
        transaction, so two processes on one profile never encrypt with the same
        message key.
        """
        for attempt in range(_STALE_RETRIES + 1):
            for user_id, devices in recipients.items():
                await self._ensure_sessions(user_id, devices)
            body: list[dict[str, Any]] = []
            with self.store.transaction():
                for user_id, devices in recipients.items():
                    conv = conversation_for(user_id)
                    entries = []
                    for device in devices:
                        states = self._usable_sessions(user_id, device)
                        ciphertext = states[0].encrypt(
                            plaintext_for(user_id),
                            message_type=message_type(user_id),
                            conversation_id=conv,
                        )
                        self._save_sessions(user_id, device.id, states)
                        entries.append(
                            {
                                "device_id": device.id,
                                "ciphertext": encode_envelope(conv, ciphertext),
                            }
                        )
                    body.append({"user_id": user_id, "devices": entries})
            try:
                await self.api.send_envelopes(body)
                return
            except ApiError as exc:
                if exc.code != "stale_devices" or attempt == _STALE_RETRIES:
                    raise
                current = exc.extra.get("devices")
                if not isinstance(current, dict):
                    raise ProtocolError("a stale-device answer without device lists") from None
                for user_id, raw in current.items():
                    if not isinstance(user_id, str):
                        raise ProtocolError("a stale-device answer with a bad user id") from None
                    devices = Device.list_untrusted(raw)
                    contact = self._contact(user_id) or {}
                    self._pin(user_id, contact.get("handle"), devices)
                    self._device_cache[user_id] = (trio.current_time(), devices)
                    if user_id == self.user_id:
                        devices = [d for d in devices if d.id != self.device_id]
                    recipients[user_id] = devices
                self._audience_cache.clear()

    async def _own_other_devices(self) -> list[Device]:
        own = await self._devices_of(self.user_id, self.handle)
        return [d for d in own if d.id != self.device_id]

    # --- direct messages -----------------------------------------------------------------

    async def send_dm(self, handle: str, text: str, expires_in: int | None = None) -> Message:
        """Send an end-to-end encrypted direct message to every device of ``handle``."""
        user_id, name = await self._resolve(handle)
        if user_id == self.user_id:
            raise UsageError("send a note to yourself in a channel; DMs go to someone else")
        theirs = await self._devices_of(user_id, name)
        mine = await self._own_other_devices()
        body = Body(secrets.token_hex(12), text, _now(), expires_in, self.handle)
        sync = Body(body.id, text, body.ts, expires_in, self.handle, to=user_id)
        recipients = {user_id: theirs}
        if mine:
            recipients[self.user_id] = mine
        conv_dm = dm_conversation(self.user_id, user_id)

        def conv(u: str) -> bytes:
            return self_conversation(self.user_id) if u == self.user_id else conv_dm

        def plain(u: str) -> bytes:
            return encode_body(sync if u == self.user_id else body)

        def kind(u: str) -> MessageType:
            return MessageType.DEVICE_SYNC if u == self.user_id else MessageType.TEXT

        await self._fan_out(recipients, conv, plain, kind)
        message = Message(
            f"{self.user_id}/{body.id}",
            f"dm:{user_id}",
            self.user_id,
            self.handle,
            text,
            body.ts,
            "out",
            body.ts + expires_in if expires_in else None,
        )
        self._remember(message)
        return message

    def _remember(self, message: Message) -> bool:
        stored = self.store.add_message(
            message.conversation,
            message.id,
            message.to_record(),
            message.expires_at,
            message.seq,
        )
        return stored

    def history(self, conversation: str, limit: int = 50) -> list[Message]:
        """The stored messages of ``conversation`` (``dm:<user id>`` or ``ch:<channel id>``).

        Channel messages are in the server's order; DMs in the order their senders wrote
        them (the relay hands out envelopes of one second in no particular order).
        """
        messages = [Message.from_record(r) for r in self.store.messages(conversation, limit)]
        if conversation.startswith("dm:"):
            messages.sort(key=lambda m: m.ts)
        return messages

    async def dm_history(self, handle: str, limit: int = 50) -> list[Message]:
        """Stored DMs with ``handle``."""
        user_id, _ = await self._resolve(handle)
        return self.history(f"dm:{user_id}", limit)

    # --- receiving envelopes -------------------------------------------------------------

    async def sync(self) -> list[Message]:
        """Fetch, decrypt, persist and ack every envelope queued for this device."""
        new: list[Message] = []
        while True:
            batch = await self.api.fetch_envelopes(100)
            if not batch:
                break
            new += await self.receive_envelopes(batch)
            if len(batch) < 100:
                break
        return new

    async def receive_envelopes(
        self, envelopes: list[Envelope], *, ack: bool = True
    ) -> list[Message]:
        """Handle envelopes (from REST, READY or ENVELOPE_CREATE) and ack them.

        With ``ack=False`` the ids are queued and acked by the next :meth:`flush_acks`
        (the gateway loop acks once its backlog is drained, not once per envelope); the
        "done" marks already make a repeat harmless.
        """
        new: list[Message] = []
        done = self._pending_acks
        for env in envelopes:
            if self.store.get("envelope_done", env.id) is not None:
                done.append(env.id)
                continue
            # Session state, the message and the "done" mark commit together: a crash
            # leaves either all of them (the envelope is then only acked again) or none.
            with self.store.transaction():
                try:
                    message = await self._open_envelope(env)
                except (UndecryptableMessage, E2EEError) as exc:
                    self._notify(
                        "rejected",
                        f"a message from a device of {self._name(env.sender_user_id)} failed "
                        f"authentication and was dropped ({type(exc).__name__})",
                    )
                    message = None
                except IdentityChanged:
                    message = None
                if message is not None and self._remember(message):
                    new.append(message)
                self.store.put("envelope_done", env.id, int(_now()))
            done.append(env.id)
        if ack:
            await self.flush_acks()
        return new

    async def flush_acks(self) -> None:
        """Ack every envelope handled so far."""
        done, self._pending_acks = self._pending_acks, []
        if done:
            await self.api.ack_envelopes(done)

    def _name(self, user_id: str) -> str:
        contact = self._contact(user_id)
        if contact and contact.get("handle"):
            return str(contact["handle"])
        return user_id

    async def _open_envelope(self, env: Envelope) -> Message | None:
        conv, payload = decode_envelope_untrusted(env.ciphertext)
        sender = env.sender_user_id
        if conv.startswith(b"dm:"):
            if conv != dm_conversation(self.user_id, sender) or sender == self.user_id:
                raise UndecryptableMessage("a DM envelope names the wrong conversation")
        elif conv.startswith(b"self:") and (
            sender != self.user_id or conv != self_conversation(self.user_id)
        ):
            raise UndecryptableMessage("a device-sync envelope from another user")
        decrypted = await self._decrypt_pairwise(sender, env.sender_device_id, conv, payload)
        kind = decrypted.message_type
        if kind is MessageType.SENDER_KEY_DISTRIBUTION:
            self._install_sender_key(conv.decode(errors="replace"), env.sender_device_id, decrypted)
            return None
        if kind is MessageType.TEXT and conv.startswith(b"dm:"):
            body = decode_body_untrusted(decrypted.plaintext)
            # Ids are chosen by senders: namespaced by author, one sender cannot shadow
            # another's message in the store.
            return Message(
                f"{sender}/{body.id}",
                f"dm:{sender}",
                sender,
                await self._handle_of(sender, body.sender_handle),
                body.body,
                body.ts,
                "in",
                _now() + body.exp if body.exp else None,
            )
        if kind is MessageType.DEVICE_SYNC and conv.startswith(b"self:"):
            body = decode_body_untrusted(decrypted.plaintext)
            if body.to is None:
                raise UndecryptableMessage("a device-sync copy without its recipient")
            return Message(
                f"{self.user_id}/{body.id}",
                f"dm:{body.to}",
                self.user_id,
                self.handle,
                body.body,
                body.ts,
                "out",
                body.ts + body.exp if body.exp else None,
            )
        raise UndecryptableMessage("a pairwise message of an unexpected type")

    async def _decrypt_pairwise(
        self, user_id: str, device_id: str, conv: bytes, payload: bytes
    ) -> DecryptedMessage:
        """Decrypt with an existing session, or accept a new one (checking the sender's key)."""
        sessions = self._load_sessions(user_id, device_id)
        now = _now()
        for index, session in enumerate(sessions):
            try:
                result = session.decrypt(payload, conversation_id=conv, now=now)
            except E2EEError:
                continue
            sessions.insert(0, sessions.pop(index))
            self._save_sessions(user_id, device_id, sessions)
            return result
        # Sessions restored from a backup only decrypt (see docs/client.md).
        label = f"{user_id}/{device_id}"
        for blob in self.store.get("sessions_restored", label, []):
            restored = Session.restore_untrusted(blob)
            try:
                result = restored.decrypt(payload, conversation_id=conv, now=now)
            except E2EEError:
                continue
            self.store.put("sessions_restored", label, [restored.serialize()])
            return result
        # No session opens it: it must be a new initial message from that device.
        key = await self._device_key(user_id, device_id)
        # The prekey store as committed (another process may have consumed an OTK since).
        self.prekeys = PreKeyStore.restore_untrusted(self.store.get("identity", "prekeys"))
        try:
            session, result = accept_session(self.prekeys, payload, conversation_id=conv, now=now)
        except E2EEError as exc:
            if sessions:
                raise UndecryptableMessage(
                    f"no session with that device opens it ({type(exc).__name__})"
                ) from None
            raise
        if session.remote_identity != key:
            raise UndecryptableMessage("an initial message under an identity key not the device's")
        self.store.put("identity", "prekeys", self.prekeys.serialize())
        self._save_sessions(user_id, device_id, [session, *sessions])
        return result

    async def _device_key(self, user_id: str, device_id: str) -> bytes:
        contact = self._contact(user_id)
        if contact is not None and device_id in contact["devices"]:
            key: bytes = contact["devices"][device_id]
            return key
        devices = await self.api.devices(user_id)
        self._pin(user_id, None, devices, own_change_ok=user_id == self.user_id)
        for device in devices:
            if device.id == device_id:
                return device.identity_key
        raise UndecryptableMessage("a message from a device the account does not list")

    # --- channels ------------------------------------------------------------------------

    def _install_sender_key(self, channel_id: str, device_id: str, msg: DecryptedMessage) -> None:
        receiver = self._receiver(channel_id, device_id)
        try:
            receiver.process_distribution(msg)
        except DuplicateMessage:
            # An authentic but older copy of a key this device already follows further
            # (its channel messages were read before the envelope was): nothing to do.
            return
        self.store.put("sender_in", f"{channel_id}/{device_id}", receiver.serialize())

    def _receiver(self, channel_id: str, device_id: str) -> SenderKeyReceiver:
        # Always from the store (never cached): another process on this profile may have
        # advanced it, and an older copy written back would re-open used iterations.
        raw = self.store.get("sender_in", f"{channel_id}/{device_id}")
        if raw is None:
            return SenderKeyReceiver(channel_id.encode())
        return SenderKeyReceiver.restore_untrusted(raw)

    def _load_sender(self, channel_id: str) -> tuple[SenderKeySender, set[str]]:
        raw = self.store.get("sender_out", channel_id)
        if raw is None:
            return SenderKeySender(channel_id.encode()), set()
        return SenderKeySender.restore_untrusted(raw[0]), set(raw[1])

    def _store_sender(self, channel_id: str, sender: SenderKeySender, given: set[str]) -> None:
        self.store.put("sender_out", channel_id, [sender.serialize(), sorted(given)])

    async def audience(self, channel_id: str) -> dict[str, list[Device]]:
        """user id → devices of everyone who may read ``channel_id`` (minus this device).

        Who may read is computed afresh for every send, unless a gateway session runs
        (membership, role and channel changes then arrive as dispatches that clear it).
        """
        reader_ids = self._audience_cache.get(channel_id)
        handles: dict[str, str | None] = {}
        if reader_ids is None:
            channel = await self.api.channel(channel_id)
            guild = await self.api.guild(channel.guild_id)
            members = await self.api.members(channel.guild_id)
            handles = {m.user_id: m.handle for m in members}
            reader_ids = readers(guild, members, channel)
            if self._live:
                self._audience_cache[channel_id] = reader_ids
        out: dict[str, list[Device]] = {}
        for user_id in reader_ids:
            devices = await self._devices_of(user_id, handles.get(user_id))
            if user_id == self.user_id:
                devices = [d for d in devices if d.id != self.device_id]
            if devices:
                out[user_id] = devices
        return out

    async def send_channel(
        self, channel_id: str, text: str, expires_in: int | None = None
    ) -> Message:
        """Encrypt with this device's sender key and post to the channel."""
        audience = await self.audience(channel_id)
        current = {f"{u}/{d.id}" for u, devices in audience.items() for d in devices}
        with self.store.transaction():
            sender, given = self._load_sender(channel_id)
            if given - current:
                # Someone lost access (left, kicked, device removed): sender keys have no
                # future secrecy, so the key is replaced, never ratcheted on.
                sender.rotate()
                given = set()
            missing = current - given
            distribution = sender.distribution().encode()
            key_id = sender.key_id
            self._store_sender(channel_id, sender, given)
        if missing:
            users = {entry.split("/", 1)[0] for entry in missing}
            if self.user_id in audience:
                users.add(self.user_id)
            recipients = {u: audience[u] for u in users if u in audience}
            await self._fan_out(
                recipients,
                lambda _u: channel_id.encode(),
                lambda _u: distribution,
                lambda _u: MessageType.SENDER_KEY_DISTRIBUTION,
            )
            with self.store.transaction():
                sender, given = self._load_sender(channel_id)
                if sender.key_id == key_id:
                    given |= {f"{u}/{d.id}" for u, devices in recipients.items() for d in devices}
                    self._store_sender(channel_id, sender, given)
        body = Body(secrets.token_hex(12), text, _now(), expires_in, self.handle)
        # Load, step and save in one transaction: two processes on one profile never use
        # the same iteration (a message key encrypts exactly one message).
        with self.store.transaction():
            sender, given = self._load_sender(channel_id)
            ciphertext = sender.encrypt(encode_body(body))
            self._store_sender(channel_id, sender, given)
        posted = await self.api.post_message(channel_id, ciphertext)
        message = Message(
            posted.id,
            f"ch:{channel_id}",
            self.user_id,
            self.handle,
            text,
            body.ts,
            "out",
            body.ts + expires_in if expires_in else None,
            posted.seq,
        )
        with self.store.transaction():
            self._remember(message)
            if message.expires_at is not None:
                # The server keeps channel ciphertext for the channel's retention; the
                # author removes a disappearing one when it is due (expire_sent_messages).
                self.store.put("expiring", posted.id, [channel_id, message.expires_at])
        return message

    async def expire_sent_messages(self, now: float | None = None) -> int:
        """Delete this device's disappearing channel messages that are due from the server."""
        moment = _now() if now is None else now
        due = [(mid, v[0]) for mid, v in self.store.names("expiring") if v[1] <= moment]
        for message_id, channel_id in due:
            try:
                await self.api.delete_message(channel_id, message_id)
            except ApiError as exc:
                if exc.status not in (403, 404):
                    raise
            self.store.delete("expiring", message_id)
        self.store.purge_expired(moment)
        return len(due)

    async def sync_channel(self, channel_id: str) -> list[Message]:
        """Fetch stored channel messages after the last one seen, decrypt and persist them."""
        cursor = self.store.get("cursor", channel_id, 0)
        pages: list[ChannelMessage] = []
        before: int | None = None
        while True:
            page = await self.api.history(channel_id, after=cursor, limit=100, before=before)
            pages += page
            if len(page) < 100:
                break
            before = min(m.seq for m in page)
        pages.sort(key=lambda m: m.seq)
        return await self.receive_channel_messages(pages)

    async def receive_channel_messages(self, messages: list[ChannelMessage]) -> list[Message]:
        """Decrypt channel messages (history or MESSAGE_CREATE) in order."""
        new: list[Message] = []
        synced = False
        for cm in messages:
            if self.store.has_message(cm.id) or cm.author_device_id == self.device_id:
                self._advance(cm)
                continue
            while True:
                missing_key = False
                # The advanced sender-key state, the message and the cursor commit together.
                with self.store.transaction():
                    message: Message | None = None
                    try:
                        message = await self._open_channel_message(cm)
                    except UnknownKey as exc:
                        missing_key = not synced
                        if synced:
                            self._undecryptable(cm, exc)
                    except (E2EEError, UndecryptableMessage) as exc:
                        self._undecryptable(cm, exc)
                    if not missing_key:
                        if message is not None and self._remember(message):
                            new.append(message)
                        self._advance(cm)
                if not missing_key:
                    break
                # No key yet: it may wait in an envelope not fetched yet (decryption failed
                # without touching any state, so the message is simply tried again).
                synced = True
                new += await self.sync()
        return new

    def _advance(self, cm: ChannelMessage) -> None:
        if cm.seq > self.store.get("cursor", cm.channel_id, 0):
            self.store.put("cursor", cm.channel_id, cm.seq)

    def _undecryptable(self, cm: ChannelMessage, exc: Exception) -> None:
        reason = (
            "no key for it: sent before this device could read the channel"
            if isinstance(exc, UnknownKey)
            else f"failed authentication ({type(exc).__name__})"
        )
        self._notify(
            "undecryptable",
            f"a message from {self._name(cm.author_id)} in a channel cannot be read: {reason}",
        )

    async def _handle_of(self, user_id: str, claimed: str) -> str:
        """The handle of ``user_id``: pinned, or the claimed one once the directory agrees."""
        contact = self._contact(user_id)
        if contact is not None and contact.get("handle"):
            return str(contact["handle"])
        try:
            found = await self.api.user_by_handle(claimed)
        except ApiError:
            return user_id
        if found.id != user_id:
            return user_id
        if contact is not None:
            contact["handle"] = found.handle
            self.store.put("contact", user_id, contact)
        return found.handle

    async def _open_channel_message(self, cm: ChannelMessage) -> Message:
        receiver = self._receiver(cm.channel_id, cm.author_device_id)
        padded = receiver.decrypt(cm.ciphertext)
        self.store.put("sender_in", f"{cm.channel_id}/{cm.author_device_id}", receiver.serialize())
        body = decode_body_untrusted(padded)
        handle = await self._handle_of(cm.author_id, body.sender_handle)
        return Message(
            cm.id,
            f"ch:{cm.channel_id}",
            cm.author_id,
            handle,
            body.body,
            body.ts,
            "in",
            _now() + body.exp if body.exp else None,
            cm.seq,
        )

    async def conversation_label(self, conversation: str) -> str:
        """``@handle`` for a DM, ``#channel`` for a channel (names remembered once seen)."""
        kind, _, ident = conversation.partition(":")
        if kind == "dm":
            return "@" + self._name(ident)
        name = self.store.get("channel_name", ident)
        if not isinstance(name, str):
            try:
                name = (await self.api.channel(ident)).name
            except ApiError:
                return "#" + ident
            self.store.put("channel_name", ident, name)
        return "#" + name

    async def sync_all(self) -> list[Message]:
        """Fetch everything new: envelopes, then every text channel of every guild."""
        new = await self.sync()
        for g in await self.api.my_guilds():
            for channel in await self.api.channels(str(g.get("id"))):
                if channel.type == "text":
                    self.store.put("channel_name", channel.id, channel.name)
                    new += await self.sync_channel(channel.id)
        return new

    async def find_channel(self, name: str, guild: str | None = None) -> Channel:
        """A channel by id, ``guild/channel`` or plain name across the caller's guilds."""
        if "/" in name and guild is None:
            guild, name = name.split("/", 1)
        for g in await self.api.my_guilds():
            if guild is not None and guild not in (g.get("id"), g.get("name")):
                continue
            for channel in await self.api.channels(str(g.get("id"))):
                if name in (channel.id, channel.name, f"#{channel.name}"):
                    return channel
        raise UsageError(f"no channel {name!r} in your guilds")

    # --- live ----------------------------------------------------------------------------

    @asynccontextmanager
    async def live(self) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
        """Follow the gateway: yields a channel of new messages (DMs and channels).

        The block is entered once the session is established and the backlog handled;
        messages found while catching up are the first ones in the channel.

        On every fresh IDENTIFY (READY) the client catches up by REST — envelopes beyond
        READY's first page, and channel history after the stored cursors — so nothing
        queued while offline is missed; RESUME replays the rest in order.
        """
        send, receive = trio.open_memory_channel[Message](1024)
        await self.api.me()  # renews an expired token before the gateway needs it
        gateway = GatewayClient(self.api.server_url, self.api.token or "")
        self.gateway = gateway
        caught_up = trio.Event()
        self._live = True
        try:
            async with gateway.events() as events, trio.open_nursery() as nursery:

                async def pump() -> None:
                    async with send:
                        async for event in events:
                            for message in await self._handle_dispatch(event):
                                await send.send(message)
                            if events.statistics().current_buffer_used == 0:
                                await self.flush_acks()
                            if event.type in ("READY", "RESUMED"):
                                caught_up.set()

                async def housekeeping() -> None:
                    while True:
                        await trio.sleep(HOUSEKEEPING_S)
                        await self.expire_sent_messages()

                nursery.start_soon(pump)
                nursery.start_soon(housekeeping)
                # Entered only once connected and caught up, so a caller knows that what
                # is sent from now on arrives live.
                await caught_up.wait()
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._live = False
            self.gateway = None
            self._audience_cache.clear()

    async def _handle_dispatch(self, event: Dispatch) -> list[Message]:
        d = event.data
        if event.type == "READY":
            envelopes = d.get("envelopes", []) if isinstance(d, dict) else []
            if not isinstance(envelopes, list):
                raise ProtocolError("READY with a malformed envelope list")
            new = await self.receive_envelopes([Envelope.from_wire_untrusted(e) for e in envelopes])
            new += await self.sync()
            for name, _ in list(self.store.names("cursor")):
                try:
                    new += await self.sync_channel(name)
                except ApiError:
                    continue
            return new
        if event.type == "ENVELOPE_CREATE":
            return await self.receive_envelopes([Envelope.from_wire_untrusted(d)], ack=False)
        if event.type == "MESSAGE_CREATE":
            cm = ChannelMessage.from_wire_untrusted(d)
            if self.store.get("cursor", cm.channel_id) is None:
                self.store.put("cursor", cm.channel_id, 0)
            return await self.receive_channel_messages([cm])
        if event.type in (
            "GUILD_MEMBER_ADD",
            "GUILD_MEMBER_REMOVE",
            "GUILD_DELETE",
            "GUILD_CREATE",
            "CHANNEL_CREATE",
            "CHANNEL_UPDATE",
            "CHANNEL_DELETE",
            "GUILD_ROLES_UPDATE",
            "GUILD_MEMBER_UPDATE",
            "DEVICE_ADD",
            "DEVICE_REMOVE",
        ):
            # Who may read a channel may have changed: recompute before the next send.
            self._audience_cache.clear()
        if event.type in ("DEVICE_ADD", "DEVICE_REMOVE") and isinstance(d, dict):
            self._device_cache.pop(str(d.get("user_id")), None)
        if event.type == "PREKEYS_LOW":
            await self.maintain_prekeys()
        return []

    # --- privacy -------------------------------------------------------------------------

    async def export_my_data(self) -> dict[str, Any]:
        """What the server holds about this account, and what this device holds locally."""
        server = await self.api.export()
        local = {
            "account": {
                "user_id": self.user_id,
                "handle": self.handle,
                "device_id": self.device_id,
            },
            "messages": [r for r in self.store.all_messages()],
            "contacts": {
                uid: {"handle": c.get("handle"), "devices": sorted(c["devices"])}
                for uid, c in self.store.names("contact")
            },
        }
        return {"server": server, "this_device": local}

    async def delete_account(self) -> None:
        """Erase the account on the server, then this profile's local store."""
        await self.api.delete_account()
        await self.api.aclose()
        self.store.destroy()
