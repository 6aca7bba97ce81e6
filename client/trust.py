"""Whom this device trusts: accounts' pinned account keys, their signed device lists,
verification and safety numbers.

Cross-signing, as Matrix does it (docs/e2ee.md, "Cross-signing"): every account has an
account signing key, held only by its devices, that signs the account's device list
(:mod:`client.device_list`). An account key is pinned on first sight (trust on first use);
after that a device is trusted — encrypted to, accepted as a sender — only when a list
that verifies under the pinned key names it, with a version at least the highest seen.
So the server can neither add a device (it cannot sign) nor bring back a removed one (it
cannot roll the version back). A device the server lists outside the signed list is
never encrypted to, and the user is told (an ``untrusted_device`` notice). A contact's
changed account key raises :class:`~client.errors.IdentityChanged` before anything is
encrypted; the user decides with :meth:`Trust.accept_identity` or
:meth:`Trust.mark_verified`. Safety numbers cover the two account keys, so a new device
a contact adds through cross-signing changes nothing to verify.

This account's own devices follow the same rules under its own account key, which this
device holds (or, for an account older than cross-signing, either sets up —
:meth:`Trust.own_directory` — or waits to receive from another device of the account).

:class:`Trust` is also the client's directory: handles resolved to user ids, and device
lists fetched from the server and checked before any other part uses them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from client.account import Account
from client.api import ControlApi
from client.device_list import DeviceDirectory, SignedDeviceList
from client.errors import (
    ApiError,
    IdentityChanged,
    UndecryptableMessage,
    UntrustedDevice,
    UsageError,
)
from client.models import Device
from client.notices import Notices
from client.store import Store, fingerprint
from e2ee import IdentityKeyPair, format_safety_number, safety_number

__all__ = ["Trust"]

# Who waits for the account key: a device of an account older than cross-signing gets it
# once a sibling starts; a profile restored from a backup without it never does.
_HAND_OVER_HINT = (
    " (if your account predates cross-signing, starting hushroom there hands the key to this one)"
)

#: Called with the devices to hand the account key to, after this device set it up for
#: an account older than cross-signing (the façade wires it to a DEVICE_SYNC fan-out).
HandOver = Callable[[list[Device]], Awaitable[None]]


async def _no_hand_over(devices: list[Device]) -> None:
    return None


class Trust:
    """Pinned account keys and the device lists checked against them."""

    def __init__(self, store: Store, api: ControlApi, account: Account, notices: Notices) -> None:
        self._store = store
        self._api = api
        self._account = account
        self._notices = notices
        # Devices checked against each user's signed list, kept until something says the
        # list changed (see devices_of).
        self._device_cache: dict[str, list[Device]] = {}
        # Notices already given in this process, so a refetch does not repeat them.
        self._told: set[str] = set()
        #: Hands the account key to the account's other devices (set by the façade).
        self.hand_over: HandOver = _no_hand_over

    # --- pinned records ----------------------------------------------------------------

    def contact(self, user_id: str) -> dict[str, Any] | None:
        """The pinned record of ``user_id``: handle, account key, the highest signed
        device list seen (``list``: version and keys), the devices trusted under it and
        the verified fingerprint."""
        value = self._store.get("contact", user_id)
        return value if isinstance(value, dict) else None

    def name(self, user_id: str) -> str:
        """The pinned handle of ``user_id``, or the id itself."""
        contact = self.contact(user_id)
        if contact and contact.get("handle"):
            return str(contact["handle"])
        return user_id

    def account_key(self) -> IdentityKeyPair | None:
        """This account's signing key, when this device holds it."""
        seed = self._store.get("identity", "account_key")
        return IdentityKeyPair(seed) if isinstance(seed, bytes) else None

    def keep_account_key(self, key: IdentityKeyPair, signed: SignedDeviceList) -> None:
        """Hold the account key and pin it with ``signed``, the own list it vouches for."""
        me = self._account
        with self._store.transaction():
            self._store.put("identity", "account_key", key.seed)
            self._store.delete("identity", "account_key_offered")
            contact = self.contact(me.user_id) or {"handle": me.handle, "verified": None}
            contact["account_key"] = key.public
            contact["list"] = {"version": signed.version, "keys": list(signed.identity_keys)}
            contact.setdefault("devices", {})
            self._store.put("contact", me.user_id, contact)
        self.forget_devices(me.user_id)

    async def set_up_new_account(self) -> None:
        """Draw a just-registered account's signing key, pin it with the one-device list
        it signs, and upload both (the signed bytes name the user id, which registration
        assigns, so this follows it; should the upload fail, :meth:`own_directory`
        uploads them again)."""
        me = self._account
        key = IdentityKeyPair.generate()
        signed = SignedDeviceList.sign(key, me.user_id, 1, [me.identity.public])
        self.keep_account_key(key, signed)
        await self._api.put_device_list(signed, key.public)

    def offer_account_key(self, seed: bytes) -> None:
        """Keep an account key another device of this account handed over (DEVICE_SYNC);
        it is taken once the server's account key and signed list match it."""
        if self.account_key() is None:
            self._store.put("identity", "account_key_offered", seed)
            self.forget_devices(self._account.user_id)

    def require_account_key(self) -> IdentityKeyPair:
        """This account's signing key; :class:`UsageError` while this device waits for
        it from another device of the account."""
        key = self.account_key()
        if key is None:
            raise UsageError(
                "this device does not hold your account key, so it cannot add or remove "
                f"devices — do that on another device of your account{_HAND_OVER_HINT}"
            )
        return key

    def account_key_offered(self) -> bool:
        """True while an account key handed over by another device waits to be taken."""
        return self._store.get("identity", "account_key_offered") is not None

    def sign_own_list(self, keys: list[bytes]) -> SignedDeviceList:
        """A new version of this account's device list naming ``keys``, signed by the
        account key (which this device must hold)."""
        me = self._account
        key = self.require_account_key()
        pinned = (self.contact(me.user_id) or {}).get("list") or {}
        return SignedDeviceList.sign(key, me.user_id, int(pinned.get("version", 0)) + 1, keys)

    def own_signed_list(self) -> SignedDeviceList | None:
        """The newest own list this device pinned, signed by the account key it holds
        (None without the key). Ed25519 signatures are deterministic, so these are the
        very bytes the server took; a key backup carries them."""
        key = self.account_key()
        pinned = (self.contact(self._account.user_id) or {}).get("list")
        if key is None or pinned is None:
            return None
        return SignedDeviceList.sign(
            key, self._account.user_id, int(pinned["version"]), list(pinned["keys"])
        )

    def own_listed_keys(self) -> list[bytes]:
        """The identity keys of this account's newest signed list this device knows."""
        pinned = (self.contact(self._account.user_id) or {}).get("list") or {}
        return list(pinned.get("keys", []))

    def record_own_list(self, signed: SignedDeviceList) -> None:
        """Pin the own list this device just signed and the server took."""
        me = self._account
        contact = self.contact(me.user_id) or {"handle": me.handle, "verified": None}
        contact["list"] = {"version": signed.version, "keys": list(signed.identity_keys)}
        self._store.put("contact", me.user_id, contact)
        self.forget_devices(me.user_id)

    # --- checking a device list ----------------------------------------------------------

    def _tell(self, kind: str, text: str) -> None:
        if text not in self._told:
            self._told.add(text)
            self._notices.add(kind, text)

    def accept(self, user_id: str, handle: str | None, served: DeviceDirectory) -> list[Device]:
        """The devices of ``served`` this device trusts: those its signed list names,
        under the account key pinned for ``user_id`` (pinned now on first sight).

        Raises :class:`IdentityChanged` when the account key differs from the pinned
        one (or, first seen, when a verified contact's devices changed meanwhile), and
        :class:`UntrustedDevice` when no list verifies and none was pinned before.
        A list older than the newest seen, or not verifying, is set aside with a
        notice and the newest pinned list used instead; devices outside the list are
        left out, with a notice.
        """
        me = self._account
        own = user_id == me.user_id
        contact = self.contact(user_id)
        name = (contact or {}).get("handle") or handle or user_id
        whose = "your account" if own else name
        if own and self.account_key() is None and (contact or {}).get("account_key") is None:
            return self._accept_legacy_own(served)
        pinned_key: bytes | None = (contact or {}).get("account_key")
        pinned_list: dict[str, Any] | None = (contact or {}).get("list")
        key, signed = served.account_key, served.device_list
        valid = key is not None and signed is not None and signed.verifies(key, user_id)
        if pinned_key is not None and key is not None and key != pinned_key and valid:
            message = (
                f"the account key of {whose} changed; nothing was sent to its devices — "
                f"compare safety numbers, then run 'hushroom verify {name} --accept'"
            )
            self._notices.add("identity_changed", message)
            raise IdentityChanged(user_id, handle, message)
        if pinned_key is None:
            if not valid:
                raise UntrustedDevice(
                    user_id,
                    f"the server serves no device list signed by the account key of {whose} "
                    f"(their client may predate cross-signing); nothing was sent",
                )
            assert key is not None and signed is not None
            contact = self._first_sight(user_id, handle, contact, key, signed)
            keys = set(signed.identity_keys)
        else:
            assert pinned_list is not None
            keys = set(pinned_list["keys"])
            if not valid:
                self._tell(
                    "untrusted_device",
                    f"the server sent a device list of {whose} that its account key did not "
                    f"sign; it was ignored",
                )
            else:
                assert signed is not None and contact is not None
                keys = self._newer_list(user_id, name, contact, signed)
        trusted = [d for d in served.devices if d.identity_key in keys]
        outside = sorted(d.id for d in served.devices if d.identity_key not in keys)
        if outside:
            self._tell(
                "untrusted_device",
                f"the server lists {len(outside)} device(s) of {whose} that its account key "
                f"did not sign ({', '.join(outside)}); nothing is sent to them",
            )
        assert contact is not None
        contact["devices"] = {d.id: d.identity_key for d in trusted}
        if handle:
            contact["handle"] = handle
        self._store.put("contact", user_id, contact)
        if not trusted and not own:
            raise UntrustedDevice(
                user_id, f"no device of {name} is signed by their account key; nothing was sent"
            )
        return trusted

    def _first_sight(
        self,
        user_id: str,
        handle: str | None,
        contact: dict[str, Any] | None,
        key: bytes,
        signed: SignedDeviceList,
    ) -> dict[str, Any]:
        """Pin an account key seen for the first time. A contact pinned before
        cross-signing (device keys only) keeps what was verified: a verified contact's
        list must name no device beyond the verified ones, or :class:`IdentityChanged`."""
        listed = set(signed.identity_keys)
        if contact is None:
            return {
                "handle": handle,
                "account_key": key,
                "list": {"version": signed.version, "keys": sorted(listed)},
                "devices": {},
                "verified": None,
            }
        name = contact.get("handle") or handle or user_id
        known = set(contact.get("devices", {}).values())
        added = listed - known
        verified = contact.get("verified")
        was_verified = verified is not None and verified == fingerprint(sorted(known))
        if was_verified and added:
            message = (
                f"the safety number of {name}, whom you verified, changed (their devices "
                f"changed); nothing was sent — compare it again with 'hushroom verify {name}', "
                f"then mark it with --mark, or continue unverified with --accept"
            )
            self._notices.add("identity_changed", message)
            raise IdentityChanged(user_id, handle, message)
        if added and user_id != self._account.user_id:
            self._notices.add(
                "new_device", f"{name} has {len(added)} new device(s); safety number changed"
            )
        contact["account_key"] = key
        contact["list"] = {"version": signed.version, "keys": sorted(listed)}
        contact["verified"] = fingerprint([key]) if was_verified else None
        return contact

    def _newer_list(
        self, user_id: str, name: str, contact: dict[str, Any], signed: SignedDeviceList
    ) -> set[bytes]:
        """The keys to trust given a verified list: a newer one is pinned; an older one
        (a rollback) or another list of the same version is set aside with a notice."""
        own = user_id == self._account.user_id
        whose = "your account" if own else name
        pinned = contact["list"]
        keys = set(pinned["keys"])
        listed = set(signed.identity_keys)
        if signed.version < pinned["version"] or (
            signed.version == pinned["version"] and listed != keys
        ):
            self._tell(
                "untrusted_device",
                f"the server sent an older device list of {whose} (version {signed.version}, "
                f"newest seen {pinned['version']}); it was ignored",
            )
            return keys
        if signed.version > pinned["version"]:
            added = len(listed - keys)
            if added and own:
                self._notices.add("new_device", f"your account has {added} new device(s)")
            elif added:
                self._notices.add(
                    "new_device",
                    f"{name} has {added} new device(s), signed by their account key",
                )
            contact["list"] = {"version": signed.version, "keys": sorted(listed)}
        return listed

    def _accept_legacy_own(self, served: DeviceDirectory) -> list[Device]:
        """Own devices while this device waits for the account key from another one:
        only those it pinned before cross-signing are trusted, none added."""
        me = self._account
        contact = self.contact(me.user_id) or {"handle": me.handle, "devices": {}}
        known = dict(contact.get("devices", {}))
        known[me.device_id] = me.identity.public
        trusted = [d for d in served.devices if known.get(d.id) == d.identity_key]
        outside = sorted(d.id for d in served.devices if known.get(d.id) != d.identity_key)
        if outside:
            self._tell(
                "untrusted_device",
                f"the server lists {len(outside)} device(s) of your account that this device "
                f"has not seen and cannot check until it holds your account key "
                f"({', '.join(outside)}); nothing is sent to them",
            )
        return trusted

    # --- this account's own list -----------------------------------------------------------

    async def own_directory(self) -> DeviceDirectory:
        """This account's devices as the server serves them, once this device has done
        what cross-signing needs of it.

        * It holds the account key but the server has none (registration's upload, or a
          server that lost it): the key and the pinned list are uploaded again.
        * It holds no account key and the server has none (an account older than
          cross-signing): it draws one, signs the devices it pinned, uploads, and hands
          the key to those devices (:attr:`hand_over`). Of two devices doing so at once
          the server takes one; the other then waits.
        * It holds no account key and the server has one: it takes a key another own
          device handed over when the server's key and list match it, else waits
          (trusting only the own devices it pinned before).
        """
        me = self._account
        served = await self._api.device_directory(me.user_id)
        held = self.account_key()
        if held is not None and served.account_key is None:
            keys = [k for k in self.own_listed_keys() if k in _keys(served)] or [me.identity.public]
            signed = self.sign_own_list(keys)
            await self._api.put_device_list(signed, held.public)
            self.record_own_list(signed)
            return await self._api.device_directory(me.user_id)
        if held is not None:
            return served
        offered = self._store.get("identity", "account_key_offered")
        if isinstance(offered, bytes) and served.account_key is not None:
            key = IdentityKeyPair(offered)
            current = served.device_list
            if (
                key.public == served.account_key
                and current is not None
                and current.verifies(key.public, me.user_id)
            ):
                self.keep_account_key(key, current)
                if me.identity.public not in current.identity_keys:
                    # The device that set the key up had not seen this one: add it.
                    signed = self.sign_own_list([*current.identity_keys, me.identity.public])
                    await self._api.put_device_list(signed)
                    self.record_own_list(signed)
                    return await self._api.device_directory(me.user_id)
                return served
        if served.account_key is not None:
            return served
        return await self._set_up_account_key(served)

    async def _set_up_account_key(self, served: DeviceDirectory) -> DeviceDirectory:
        me = self._account
        contact = self.contact(me.user_id) or {}
        pinned = dict(contact.get("devices", {}))
        pinned[me.device_id] = me.identity.public
        devices = [d for d in served.devices if pinned.get(d.id) == d.identity_key]
        key = IdentityKeyPair.generate()
        signed = SignedDeviceList.sign(key, me.user_id, 1, [d.identity_key for d in devices])
        try:
            await self._api.put_device_list(signed, key.public)
        except ApiError as exc:
            if exc.status != 409:
                raise
            # Another device of this account set its key first: wait for it.
            return await self._api.device_directory(me.user_id)
        self.keep_account_key(key, signed)
        others = [d for d in devices if d.id != me.device_id]
        if others:
            await self.hand_over(others)
        return await self._api.device_directory(me.user_id)

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

    async def directory(self, user_id: str) -> DeviceDirectory:
        """What the server serves for ``user_id``'s devices (this account: after
        :meth:`own_directory`'s set-up)."""
        if user_id == self._account.user_id:
            return await self.own_directory()
        return await self._api.device_directory(user_id)

    async def devices_of(self, user_id: str, handle: str | None) -> list[Device]:
        """A user's trusted devices (:meth:`accept`), fetched once and then kept until
        something says the list changed: the relay's 409 ``stale_devices``
        (:meth:`refresh`), a DEVICE_ADD or DEVICE_REMOVE dispatch, or this device's own
        device changes (:meth:`forget_devices`).

        No clock is needed for that: the relay refuses every fan-out that does not name
        exactly a recipient's current devices, so a kept list never makes anything go to
        a device that is gone or skip one that came — the 409 then fetches the list anew
        and checks it against the signed list, as the first fetch did. Fetching lists
        again on a timer would only repeat the same check, and in a large call it costs
        dearly: a leave makes every remaining participant send to every other one, so each
        list fetched again is one request per participant pair (40,000 at 200)."""
        cached = self._device_cache.get(user_id)
        if cached is not None:
            return cached
        devices = self.accept(user_id, handle, await self.directory(user_id))
        self._device_cache[user_id] = devices
        return devices

    async def own_other_devices(self) -> list[Device]:
        """This account's trusted devices other than this one."""
        own = await self.devices_of(self._account.user_id, self._account.handle)
        return [d for d in own if d.id != self._account.device_id]

    async def refresh(self, user_id: str) -> list[Device]:
        """Fetch ``user_id``'s trusted devices afresh (a 409 said the list changed)."""
        self.forget_devices(user_id)
        return await self.devices_of(user_id, None)

    def forget_devices(self, user_id: str) -> None:
        """Fetch ``user_id``'s device list afresh next time (it changed)."""
        self._device_cache.pop(user_id, None)

    async def device_key(self, user_id: str, device_id: str) -> bytes:
        """The identity key of one trusted device: pinned, or from a fresh list."""
        contact = self.contact(user_id)
        if contact is not None and device_id in contact.get("devices", {}):
            key: bytes = contact["devices"][device_id]
            return key
        for device in await self.refresh(user_id):
            if device.id == device_id:
                return device.identity_key
        raise UndecryptableMessage("a message from a device its account's signed list lacks")

    # --- verification ----------------------------------------------------------------

    def _own_account_key(self) -> bytes:
        held = self.account_key()
        if held is not None:
            return held.public
        raise UsageError(
            "this device does not hold your account key, so it has no safety number — "
            f"compare it on another device of your account{_HAND_OVER_HINT}"
        )

    async def safety_number(self, handle: str) -> tuple[str, bool]:
        """The formatted safety number with ``handle`` over both account keys, and
        whether that key of theirs is marked verified.

        A changed account key is recorded as a notice (and still blocks sending until
        :meth:`mark_verified` or :meth:`accept_identity`); the number shown is over the
        key the server serves now, so the user can compare it.
        """
        user_id, name = await self.resolve(handle)
        mine = self._own_account_key()
        served = await self.directory(user_id)
        with contextlib.suppress(IdentityChanged, UntrustedDevice):
            self.accept(user_id, name, served)
        theirs = served.account_key
        if theirs is None:
            raise UntrustedDevice(
                user_id, f"{name} has no account key yet (their client predates cross-signing)"
            )
        number = safety_number(self._account.user_id.encode(), [mine], user_id.encode(), [theirs])
        contact = self.contact(user_id) or {}
        verified = contact.get("verified") == fingerprint([theirs])
        return format_safety_number(number), verified

    async def mark_verified(self, handle: str) -> None:
        """Mark the contact's account key, as the server serves it now, verified (after
        comparing safety numbers) — its signed list pinned with it."""
        user_id, name = await self.resolve(handle)
        await self._pin_served(user_id, name, verified=True)

    async def accept_identity(self, handle: str) -> tuple[str, list[Device]]:
        """Accept a contact's changed account key (unverified until compared again);
        returns the user id and the devices now trusted, so sessions under other keys
        can be dropped."""
        user_id, name = await self.resolve(handle)
        return user_id, await self._pin_served(user_id, name, verified=False)

    async def _pin_served(self, user_id: str, name: str, *, verified: bool) -> list[Device]:
        served = await self.directory(user_id)
        key, signed = served.account_key, served.device_list
        if key is None or signed is None or not signed.verifies(key, user_id):
            raise UntrustedDevice(
                user_id,
                f"the server serves no device list signed by the account key of {name}; "
                "there is nothing to verify",
            )
        if user_id == self._account.user_id and key != self._own_account_key():
            raise UntrustedDevice(
                user_id, "the server serves an account key for your account that is not yours"
            )
        self.forget_devices(user_id)
        contact = self.contact(user_id) or {}
        contact.update(
            {
                "handle": name,
                "account_key": key,
                "list": {"version": signed.version, "keys": sorted(signed.identity_keys)},
                "verified": fingerprint([key]) if verified else None,
            }
        )
        contact.setdefault("devices", {})
        self._store.put("contact", user_id, contact)
        return self.accept(user_id, name, served)


def _keys(served: DeviceDirectory) -> set[bytes]:
    return {d.identity_key for d in served.devices}
