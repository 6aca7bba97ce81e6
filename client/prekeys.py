"""This device's prekeys: the private halves in the local store, the public ones on the server.

:class:`Prekeys` keeps the directory stocked — one-time prekeys of both kinds (X25519 and
ML-KEM-1024) topped up below :data:`OTK_LOW` and :data:`PQ_OTK_LOW`, signed and PQ prekeys
replaced every :data:`PREKEY_ROTATION_S`, the signed prekey sooner once its replay record
(``e2ee.PreKeyStore.replay_record_nearly_full``) is nearly full — and hands the
pairwise-session part the prekey store as committed, so a one-time prekey consumed by
another process on this profile is never used twice. The wire bodies for the directory
are built by :mod:`client._prekeys`.
"""

from __future__ import annotations

import time

from client import _prekeys
from client.api import ControlApi
from client.models import PrekeyCounts
from client.store import Store
from e2ee import IdentityKeyPair, OneTimePreKey, PQOneTimePreKey, PreKeyStore

__all__ = [
    "OTK_BATCH",
    "OTK_LOW",
    "PQ_OTK_BATCH",
    "PQ_OTK_LOW",
    "PREKEY_ROTATION_S",
    "Prekeys",
    "first_prekeys",
]

#: One-time prekeys published at registration and topped up to when the server runs low.
OTK_BATCH = 100
OTK_LOW = 20
#: The most one-time prekeys the server holds for a device.
_OTK_MAX = 500
#: One-time PQ prekeys (1.6 KB each on the wire) published at registration and linking,
#: and topped up when the server holds fewer than :data:`PQ_OTK_LOW`: so the common first
#: message has a one-time KEM key too, and the last-resort PQ prekey is the exception.
PQ_OTK_BATCH = 100
PQ_OTK_LOW = 20
#: The most one-time PQ prekeys the server holds for a device (as e2ee keeps).
_PQ_OTK_MAX = 200
#: Signed and PQ prekeys are replaced this often (Signal rotates weekly to monthly).
PREKEY_ROTATION_S = 7 * 86400


def first_prekeys(
    identity: IdentityKeyPair,
) -> tuple[PreKeyStore, list[OneTimePreKey], list[PQOneTimePreKey]]:
    """A new device's prekey store and the batches of one-time prekeys of both kinds its
    register or add-device body publishes."""
    prekeys = PreKeyStore.generate(identity)
    otks = prekeys.generate_one_time_prekeys(OTK_BATCH)
    pq_otks = prekeys.generate_pq_one_time_prekeys(PQ_OTK_BATCH)
    return prekeys, otks, pq_otks


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

    async def maintain(self) -> PrekeyCounts:
        """Top up one-time prekeys of either kind that run low, rotate the signed and PQ
        prekeys every :data:`PREKEY_ROTATION_S`, and the signed prekey early once its
        replay record is nearly full; returns the one-time prekeys the server holds.

        The previous signed prekeys stay in the local store (``e2ee`` keeps three), so
        initial messages already in flight still open. A store whose replay record fills
        up refuses new sessions (``e2ee.TooManySessions``) until the signed prekey turns
        over, which is why it turns over at three quarters.
        """
        held = await self._api.key_count()
        rotated_at = self._store.get("identity", "prekeys_rotated_at", 0.0)
        rotate = time.time() - rotated_at >= PREKEY_ROTATION_S
        otk_low, pq_low = held.one_time < OTK_LOW, held.pq_one_time < PQ_OTK_LOW
        if not (otk_low or pq_low or rotate or self.load().replay_record_nearly_full):
            return held
        otks: list[OneTimePreKey] = []
        pq_otks: list[PQOneTimePreKey] = []
        with self._store.transaction():
            prekeys = self.load()
            if otk_low:
                otks = prekeys.generate_one_time_prekeys(min(OTK_BATCH, _OTK_MAX - held.one_time))
            if pq_low:
                pq_otks = prekeys.generate_pq_one_time_prekeys(
                    min(PQ_OTK_BATCH, _PQ_OTK_MAX - held.pq_one_time)
                )
            new_signed = rotate or prekeys.replay_record_nearly_full
            if new_signed:
                prekeys.rotate_signed_prekey()
            if rotate:
                prekeys.rotate_pq_prekey()
            self.save(prekeys)
            if rotate:
                self._store.put("identity", "prekeys_rotated_at", time.time())
        body = _prekeys.directory_prekeys(self._identity, prekeys, otks, pq_otks)
        if not new_signed:
            del body["signed_prekey"]
        if not rotate:
            del body["pq_prekey"]
        return await self._api.upload_keys(body)
