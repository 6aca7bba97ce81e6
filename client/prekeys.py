"""This device's prekeys: the private halves in the local store, the public ones on the server.

:class:`Prekeys` keeps the directory stocked — one-time prekeys topped up below
:data:`OTK_LOW`, signed and PQ prekeys replaced every :data:`PREKEY_ROTATION_S` — and
hands the pairwise-session part the prekey store as committed, so a one-time prekey
consumed by another process on this profile is never used twice. The wire bodies for the
directory are built by :mod:`client._prekeys`.
"""

from __future__ import annotations

import time

from client import _prekeys
from client.api import ControlApi
from client.store import Store
from e2ee import IdentityKeyPair, PreKeyStore

__all__ = ["OTK_BATCH", "OTK_LOW", "PREKEY_ROTATION_S", "Prekeys"]

#: One-time prekeys published at registration and topped up to when the server runs low.
OTK_BATCH = 100
OTK_LOW = 20
#: The most one-time prekeys the server holds for a device.
_OTK_MAX = 500
#: Signed and PQ prekeys are replaced this often (Signal rotates weekly to monthly).
PREKEY_ROTATION_S = 7 * 86400


class Prekeys:
    """The prekey store of this device, kept in the profile and published to the server."""

    def __init__(self, store: Store, api: ControlApi, identity: IdentityKeyPair) -> None:
        self._store = store
        self._api = api
        self._identity = identity
        #: The prekey store as last loaded or saved by this process.
        self.current = PreKeyStore.restore_untrusted(store.get("identity", "prekeys"))

    def load(self) -> PreKeyStore:
        """The prekey store as committed (another process may have consumed an OTK since)."""
        self.current = PreKeyStore.restore_untrusted(self._store.get("identity", "prekeys"))
        return self.current

    def save(self, prekeys: PreKeyStore) -> None:
        """Keep ``prekeys`` (after a one-time prekey was consumed or keys were added)."""
        self._store.put("identity", "prekeys", prekeys.serialize())
        self.current = prekeys

    async def maintain(self) -> int:
        """Top up one-time prekeys below :data:`OTK_LOW` and rotate the signed and PQ
        prekeys every :data:`PREKEY_ROTATION_S`; returns the OTKs the server holds.

        The previous signed prekeys stay in the local store (``e2ee`` keeps three), so
        initial messages already in flight still open.
        """
        held = await self._api.key_count()
        rotated_at = self._store.get("identity", "prekeys_rotated_at", 0.0)
        rotate = time.time() - rotated_at >= PREKEY_ROTATION_S
        if held >= OTK_LOW and not rotate:
            return held
        otks = []
        with self._store.transaction():
            prekeys = self.load()
            if held < OTK_LOW:
                otks = prekeys.generate_one_time_prekeys(min(OTK_BATCH, _OTK_MAX - held))
            if rotate:
                prekeys.rotate_signed_prekey()
                prekeys.rotate_pq_prekey()
            self.save(prekeys)
            if rotate:
                self._store.put("identity", "prekeys_rotated_at", time.time())
        body = _prekeys.directory_prekeys(self._identity, prekeys, otks)
        if not rotate:
            del body["signed_prekey"], body["pq_prekey"]
        return await self._api.upload_keys(body)
