"""Pairwise sessions: one Double Ratchet per (peer user, peer device), and fan-out over them.

A session is opened with PQXDH from a prekey bundle claimed from the directory (its
identity key must be the device's pinned key), or accepted from an initial message (the
sender's key must be the one the directory lists for that device). At most
:data:`MAX_SESSIONS_PER_DEVICE` states are kept per device, newest first: simultaneous
initiations leave two.

No state is cached in memory: every ratchet step is load → step → save inside one store
transaction, so two processes on one profile never encrypt with the same message key
(with a fixed AEAD nonce that would be fatal) nor write back an older state.

Everything sent pairwise — DMs, device-sync copies, sender-key distributions, media
keys — goes out through :meth:`Sessions.fan_out`; everything received comes in through
:meth:`Sessions.decrypt`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from client import _prekeys
from client.account import Account
from client.api import ControlApi
from client.envelope import encode_envelope
from client.errors import (
    ApiError,
    ClientError,
    ProtocolError,
    UndecryptableMessage,
    UntrustedDevice,
)
from client.models import Device
from client.prekeys import Prekeys
from client.store import Store
from client.trust import Trust
from contract.errors import ErrorCode
from contract.relay import MAX_ENVELOPE_RECIPIENTS
from e2ee import (
    DecryptedMessage,
    E2EEError,
    MessageType,
    ReplayedMessage,
    Session,
    accept_session,
    initiate_session,
)

__all__ = ["MAX_SESSIONS_PER_DEVICE", "Sessions"]

#: Pairwise session states kept per peer device (simultaneous initiations leave two).
MAX_SESSIONS_PER_DEVICE = 4
#: A 409 ``stale_devices`` answer is retried this often with the lists it carries.
_STALE_RETRIES = 3


def _nothing() -> None:
    return None


def _posted(_users: list[str]) -> None:
    return None


class Sessions:
    """The pairwise sessions of this device with every device it talks to."""

    def __init__(
        self,
        store: Store,
        api: ControlApi,
        account: Account,
        trust: Trust,
        prekeys: Prekeys,
        on_stale_devices: Callable[[], None] = _nothing,
    ) -> None:
        """``on_stale_devices`` is called once a 409 answer has refreshed device lists
        (the client forgets who it computed may read each channel)."""
        self._store = store
        self._api = api
        self._account = account
        self._trust = trust
        self._prekeys = prekeys
        self._on_stale_devices = on_stale_devices

    def load(self, user_id: str, device_id: str) -> list[Session]:
        """The stored session states with one device, newest first."""
        raw = self._store.get("sessions", f"{user_id}/{device_id}", [])
        return [Session.restore_untrusted(blob) for blob in raw]

    def save(self, user_id: str, device_id: str, sessions: list[Session]) -> None:
        """Keep the newest :data:`MAX_SESSIONS_PER_DEVICE` of ``sessions``."""
        self._store.put(
            "sessions",
            f"{user_id}/{device_id}",
            [s.serialize() for s in sessions[:MAX_SESSIONS_PER_DEVICE]],
        )

    def usable(self, user_id: str, device: Device) -> list[Session]:
        """The sessions with ``device`` under its current identity key."""
        sessions = self.load(user_id, device.id)
        return [s for s in sessions if s.remote_identity == device.identity_key]

    def keep_matching(self, user_id: str, devices: list[Device]) -> None:
        """Drop the sessions with these devices that are under another identity key (after
        a changed key was accepted they are useless)."""
        for device in devices:
            self.save(user_id, device.id, self.usable(user_id, device))

    async def ensure(self, user_id: str, devices: list[Device]) -> None:
        """Open a session (PQXDH, from a claimed bundle) with every device that has none."""
        keys = {d.id: d.identity_key for d in devices}
        lacking = {d.id for d in devices if not self.usable(user_id, d)}
        if not lacking:
            return
        for bundle in await self._api.claim_bundles(user_id):
            if bundle.device_id not in lacking:
                continue
            if bundle.identity_key != keys[bundle.device_id]:
                raise UndecryptableMessage(
                    "the server handed out a prekey bundle under another identity key"
                )
            try:
                session = initiate_session(
                    self._account.identity, _prekeys.prekey_bundle_untrusted(bundle)
                )
            except E2EEError as exc:
                raise ClientError(
                    f"a device of {self._trust.name(user_id)} published prekeys that do not "
                    f"verify ({type(exc).__name__}); nothing was sent"
                ) from None
            with self._store.transaction():
                # Another process on this profile may have opened one meanwhile: keep it.
                existing = self.load(user_id, bundle.device_id)
                self.save(user_id, bundle.device_id, [*existing, session])
            lacking.discard(bundle.device_id)
        if lacking:
            raise ClientError(
                f"a device of {self._trust.name(user_id)} has no prekeys on the server; "
                "nothing was sent"
            )

    async def fan_out(
        self,
        recipients: dict[str, list[Device]],
        conversation_for: Callable[[str], bytes],
        plaintext_for: Callable[[str], bytes],
        message_type: Callable[[str], MessageType],
        *,
        device_plaintext: Callable[[str, str], bytes] | None = None,
        on_posted: Callable[[list[str]], None] = _posted,
    ) -> None:
        """Encrypt for every device of every recipient user and post the envelopes.

        ``recipients`` maps user id → devices (for this user: the other devices). The
        relay takes at most :data:`~contract.relay.MAX_ENVELOPE_RECIPIENTS` users per post,
        so more go out in several posts, one after the other in ``recipients`` order; the
        relay wants this user's other devices named in every post, so they get the
        plaintext once per post (receivers take a repeat as nothing new).
        ``on_posted(user ids)`` is called after each post the relay accepted: when a later
        post fails, the exception propagates and the users of the posts before it have
        their envelopes.

        Each post is encrypted just before it is sent, each ratchet step loaded, taken and
        saved inside one store transaction, so two processes on one profile never encrypt
        with the same message key, and a failure leaves the later users' sessions
        untouched. A post that failed leaves its users' sessions one message ahead, which
        the Double Ratchet absorbs: the receiver skips that message key, and a session
        whose initial message was lost repeats it until the peer answers.

        A 409 stale-device answer refreshes the named users' lists (checked against their
        signed lists) and retries that post; a server that insists on a device no signed
        list names gets nothing (:class:`UntrustedDevice`). ``device_plaintext(user id,
        device id)``, when given, decides each device's plaintext instead of
        ``plaintext_for`` (media keys go only to the devices in a call, the relay wants
        every device named).
        """
        me = self._account.user_id
        others = [u for u in recipients if u != me]
        # One place kept for this user: a 409 may add it to a post that lacked it.
        per_post = MAX_ENVELOPE_RECIPIENTS - 1
        for start in range(0, max(len(others), 1), per_post):
            users = others[start : start + per_post]
            if me in recipients:
                users.append(me)
            part = {user_id: recipients[user_id] for user_id in users}
            await self._post(part, conversation_for, plaintext_for, message_type, device_plaintext)
            # A 409 may have changed the lists: later posts to this user send to the new ones.
            recipients.update(part)
            on_posted(users)

    async def _post(
        self,
        recipients: dict[str, list[Device]],
        conversation_for: Callable[[str], bytes],
        plaintext_for: Callable[[str], bytes],
        message_type: Callable[[str], MessageType],
        device_plaintext: Callable[[str, str], bytes] | None,
    ) -> None:
        """One ``POST /envelopes`` to at most the relay's limit of users, retried on 409."""
        for attempt in range(_STALE_RETRIES + 1):
            for user_id, devices in recipients.items():
                await self.ensure(user_id, devices)
            body: list[dict[str, Any]] = []
            with self._store.transaction():
                for user_id, devices in recipients.items():
                    conv = conversation_for(user_id)
                    entries = []
                    for device in devices:
                        states = self.usable(user_id, device)
                        plaintext = (
                            plaintext_for(user_id)
                            if device_plaintext is None
                            else device_plaintext(user_id, device.id)
                        )
                        ciphertext = states[0].encrypt(
                            plaintext,
                            message_type=message_type(user_id),
                            conversation_id=conv,
                        )
                        self.save(user_id, device.id, states)
                        entries.append(
                            {
                                "device_id": device.id,
                                "ciphertext": encode_envelope(conv, ciphertext),
                            }
                        )
                    body.append({"user_id": user_id, "devices": entries})
            try:
                await self._api.send_envelopes(body)
                return
            except ApiError as exc:
                if exc.code != ErrorCode.STALE_DEVICES or attempt == _STALE_RETRIES:
                    raise
                current = exc.extra.get("devices")
                if not isinstance(current, dict):
                    raise ProtocolError("a stale-device answer without device lists") from None
                for user_id, raw in current.items():
                    if not isinstance(user_id, str):
                        raise ProtocolError("a stale-device answer with a bad user id") from None
                    insisted = {d.id for d in Device.list_untrusted(raw)}
                    # The answer's list is the server's word: the signed list decides.
                    devices = await self._trust.refresh(user_id)
                    if user_id == self._account.user_id:
                        insisted.discard(self._account.device_id)
                        devices = [d for d in devices if d.id != self._account.device_id]
                    unsigned = sorted(insisted - {d.id for d in devices})
                    if unsigned:
                        raise UntrustedDevice(
                            user_id,
                            f"the server will not deliver without {', '.join(unsigned)}, a "
                            f"device of {self._trust.name(user_id)} that its account key did "
                            f"not sign; nothing was sent",
                        ) from None
                    recipients[user_id] = devices
                self._on_stale_devices()

    async def decrypt(
        self, user_id: str, device_id: str, conv: bytes, payload: bytes
    ) -> DecryptedMessage:
        """Decrypt with an existing session, or accept a new one (checking the sender's key).

        A first message accepted before (``e2ee.ReplayedMessage``, say one the server
        queued again under a new envelope id) is refused: it is not shown again and
        makes no session.

        Run inside the caller's store transaction: the advanced state is saved here and
        commits with whatever the caller stores of the message.
        """
        sessions = self.load(user_id, device_id)
        now = time.time()
        for index, session in enumerate(sessions):
            try:
                result = session.decrypt(payload, conversation_id=conv, now=now)
            except E2EEError:
                continue
            sessions.insert(0, sessions.pop(index))
            self.save(user_id, device_id, sessions)
            return result
        # Sessions restored from a backup only decrypt (see docs/client.md).
        label = f"{user_id}/{device_id}"
        for blob in self._store.get("sessions_restored", label, []):
            restored = Session.restore_untrusted(blob)
            try:
                result = restored.decrypt(payload, conversation_id=conv, now=now)
            except E2EEError:
                continue
            self._store.put("sessions_restored", label, [restored.serialize()])
            return result
        # No session opens it: it must be a new initial message from that device.
        key = await self._trust.device_key(user_id, device_id)
        prekeys = self._prekeys.load()
        try:
            session, result = accept_session(prekeys, payload, conversation_id=conv, now=now)
        except E2EEError as exc:
            # A replayed first message (the prekey store recorded its base key) is named
            # as such: no new session, and the ones kept stay as they are.
            if sessions and not isinstance(exc, ReplayedMessage):
                raise UndecryptableMessage(
                    f"no session with that device opens it ({type(exc).__name__})"
                ) from None
            raise
        if session.remote_identity != key:
            raise UndecryptableMessage("an initial message under an identity key not the device's")
        self._prekeys.save(prekeys)
        self.save(user_id, device_id, [session, *sessions])
        return result
