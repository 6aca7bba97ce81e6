"""Whom this device trusts: contacts' pinned device keys, verification, safety numbers.

Contacts' device keys are pinned on first sight (trust on first use). Then a known device
whose key changed, or any device change of a contact whose safety number was verified,
raises :class:`~client.errors.IdentityChanged` before anything is encrypted to the new
keys; the user decides with :meth:`Trust.accept_identity` or :meth:`Trust.mark_verified`.
An unverified contact's new device is recorded with a notice. The same rules guard this
account's own devices, except where this device itself added or removed one.

:class:`Trust` is also the client's directory: handles resolved to user ids, and device
lists fetched from the server and checked against the pins before any other part uses
them.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from client.account import Account
from client.api import ControlApi
from client.errors import ApiError, IdentityChanged, UndecryptableMessage, UsageError
from client.models import Device
from client.notices import Notices
from client.store import Store, fingerprint
from e2ee import format_safety_number, safety_number

__all__ = ["DEVICE_LIST_TTL_S", "Trust"]

#: How long a fetched device list is trusted before it is fetched again.
DEVICE_LIST_TTL_S = 30.0


class Trust:
    """Pinned contacts and the device lists checked against them."""

    def __init__(self, store: Store, api: ControlApi, account: Account, notices: Notices) -> None:
        self._store = store
        self._api = api
        self._account = account
        self._notices = notices
        self._device_cache: dict[str, tuple[float, list[Device]]] = {}

    # --- contacts --------------------------------------------------------------------

    def contact(self, user_id: str) -> dict[str, Any] | None:
        """The pinned record of ``user_id`` (handle, device keys, verified fingerprint)."""
        value = self._store.get("contact", user_id)
        return value if isinstance(value, dict) else None

    def name(self, user_id: str) -> str:
        """The pinned handle of ``user_id``, or the id itself."""
        contact = self.contact(user_id)
        if contact and contact.get("handle"):
            return str(contact["handle"])
        return user_id

    def pin(
        self, user_id: str, handle: str | None, devices: list[Device], own_change_ok: bool = False
    ) -> None:
        """Check ``devices`` against the pinned keys of ``user_id``; pin on first sight.

        Raises :class:`IdentityChanged` when a known device's key changed, or when the
        device set of a verified contact changed; otherwise records new devices with a
        notice. ``own_change_ok``: this device itself changed its account's devices.
        """
        me = self._account.user_id
        current = {d.id: d.identity_key for d in devices}
        contact = self.contact(user_id)
        if contact is None:
            self._store.put(
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
            self._notices.add("identity_changed", message)
            raise IdentityChanged(user_id, handle, message)
        if set(current) == set(known):
            return
        added = sorted(set(current) - set(known))
        verified = contact.get("verified")
        if (
            verified is not None
            and verified == fingerprint(list(known.values()))
            and not (own_change_ok and user_id == me)
        ):
            message = (
                f"the safety number of {name}, whom you verified, changed (their devices "
                f"changed); nothing was sent — compare it again with 'hushroom verify {name}', "
                f"then mark it with --mark, or continue unverified with --accept"
            )
            self._notices.add("identity_changed", message)
            raise IdentityChanged(user_id, handle, message)
        if added and user_id != me:
            self._notices.add(
                "new_device", f"{name} has {len(added)} new device(s); safety number changed"
            )
        elif added and not own_change_ok:
            self._notices.add("new_device", f"your account has {len(added)} new device(s)")
        contact["devices"] = current
        contact["verified"] = None if added else verified
        if handle:
            contact["handle"] = handle
        self._store.put("contact", user_id, contact)

    def check_own_devices(self, listed: list[Device], added: Device) -> None:
        """Refuse an own-device list from the server that holds a device (or a key) this
        device has not pinned, apart from ``added``; devices missing from it are fine.

        A profile without pinned own devices (restored from a backup) knows only itself.
        """
        me = self._account
        contact = self.contact(me.user_id)
        known: dict[str, bytes] = dict(contact["devices"]) if contact is not None else {}
        known[me.device_id] = me.identity.public
        known[added.id] = added.identity_key
        unknown = sorted(d.id for d in listed if known.get(d.id) != d.identity_key)
        if not unknown:
            return
        ids = ", ".join(unknown)
        raise IdentityChanged(
            me.user_id,
            me.handle,
            f"the server lists {ids} as a device of your account that this device has not "
            f"seen, so nothing was sent to the new device — remove it with 'hushroom devices "
            f"remove {unknown[0]}' if it is not yours, or accept it with 'hushroom verify "
            f"{me.handle} --accept' if it is, then link again",
        )

    # --- the directory ---------------------------------------------------------------

    async def resolve(self, handle: str) -> tuple[str, str]:
        """(user id, handle) for a handle (the caller's own included); handles are fixed
        for an account's life, so a lookup is remembered."""
        name = handle.lower().lstrip("@")
        if name == self._account.handle:
            return self._account.user_id, self._account.handle
        known = self._store.get("handle", name)
        if isinstance(known, str):
            return known, name
        try:
            user = await self._api.user_by_handle(name)
        except ApiError as exc:
            if exc.status == 404:
                raise UsageError(f"no user has the handle {handle!r}") from None
            raise
        self._store.put("handle", user.handle, user.id)
        return user.id, user.handle

    async def handle_of(self, user_id: str, claimed: str) -> str:
        """The handle of ``user_id``: pinned, or the claimed one once the directory agrees."""
        contact = self.contact(user_id)
        if contact is not None and contact.get("handle"):
            return str(contact["handle"])
        try:
            found = await self._api.user_by_handle(claimed)
        except ApiError:
            return user_id
        if found.id != user_id:
            return user_id
        if contact is not None:
            contact["handle"] = found.handle
            self._store.put("contact", user_id, contact)
        return found.handle

    async def devices_of(self, user_id: str, handle: str | None) -> list[Device]:
        """A user's devices, checked against the pinned keys; fetched at most every
        :data:`DEVICE_LIST_TTL_S` (a stale list is caught by the relay's 409 anyway)."""
        cached = self._device_cache.get(user_id)
        if cached is not None and trio.current_time() - cached[0] < DEVICE_LIST_TTL_S:
            return cached[1]
        devices = await self._api.devices(user_id)
        self.pin(user_id, handle, devices)
        self._device_cache[user_id] = (trio.current_time(), devices)
        return devices

    async def own_other_devices(self) -> list[Device]:
        """This account's devices other than this one."""
        own = await self.devices_of(self._account.user_id, self._account.handle)
        return [d for d in own if d.id != self._account.device_id]

    def learn_devices(self, user_id: str, devices: list[Device]) -> None:
        """Take a device list the server sent unasked (a 409 answer): pin it, cache it."""
        contact = self.contact(user_id) or {}
        self.pin(user_id, contact.get("handle"), devices)
        self._device_cache[user_id] = (trio.current_time(), devices)

    def forget_devices(self, user_id: str) -> None:
        """Fetch ``user_id``'s device list afresh next time (it changed)."""
        self._device_cache.pop(user_id, None)

    async def device_key(self, user_id: str, device_id: str) -> bytes:
        """The identity key of one device: pinned, or from the directory (then pinned)."""
        contact = self.contact(user_id)
        if contact is not None and device_id in contact["devices"]:
            key: bytes = contact["devices"][device_id]
            return key
        devices = await self._api.devices(user_id)
        self.pin(user_id, None, devices, own_change_ok=user_id == self._account.user_id)
        for device in devices:
            if device.id == device_id:
                return device.identity_key
        raise UndecryptableMessage("a message from a device the account does not list")

    # --- verification ----------------------------------------------------------------

    async def safety_number(self, handle: str) -> tuple[str, bool]:
        """The formatted safety number with ``handle`` over their current keys, and whether
        exactly those keys are marked verified.

        A change from the pinned keys is recorded as a notice (and still blocks sending
        until :meth:`mark_verified` or :meth:`accept_identity`); the number shown is the
        new one, so the user can compare it.
        """
        user_id, name = await self.resolve(handle)
        theirs = await self._api.devices(user_id)
        mine = await self._api.devices(self._account.user_id)
        with contextlib.suppress(IdentityChanged):
            self.pin(user_id, name, theirs)
        number = safety_number(
            self._account.user_id.encode(),
            [d.identity_key for d in mine],
            user_id.encode(),
            [d.identity_key for d in theirs],
        )
        contact = self.contact(user_id) or {}
        verified = contact.get("verified") == fingerprint([d.identity_key for d in theirs])
        return format_safety_number(number), verified

    async def mark_verified(self, handle: str) -> None:
        """Mark the contact's current keys as verified (after comparing safety numbers)."""
        user_id, name = await self.resolve(handle)
        theirs = await self._api.devices(user_id)
        keys = {d.id: d.identity_key for d in theirs}
        self._store.put(
            "contact",
            user_id,
            {"handle": name, "devices": keys, "verified": fingerprint(list(keys.values()))},
        )

    async def accept_identity(self, handle: str) -> tuple[str, list[Device]]:
        """Accept a contact's changed keys (unverified until compared again); returns the
        user id and the devices now pinned, so sessions under other keys can be dropped."""
        user_id, name = await self.resolve(handle)
        theirs = await self._api.devices(user_id)
        self.forget_devices(user_id)
        self._store.put(
            "contact",
            user_id,
            {
                "handle": name,
                "devices": {d.id: d.identity_key for d in theirs},
                "verified": None,
            },
        )
        return user_id, theirs
