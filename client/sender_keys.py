"""Sender-key state: this device's sending chain per channel, and the chains it follows.

One :class:`e2ee.SenderKeySender` per (channel, this device), stored with the set of
devices (``user/device``) that hold its current key; one :class:`e2ee.SenderKeyReceiver`
per (channel, author device), installed from a distribution that arrived inside a
pairwise session. Nothing is cached in memory: another process on this profile may have
advanced a chain, and an older copy written back would re-open used iterations. Callers
load, step and save inside one store transaction.
"""

from __future__ import annotations

from client.store import Store
from e2ee import DecryptedMessage, DuplicateMessage, SenderKeyReceiver, SenderKeySender

__all__ = ["SenderKeys"]


class SenderKeys:
    """The sender-key chains of this profile, kept in its store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def load_sender(self, channel_id: str) -> tuple[SenderKeySender, set[str]]:
        """This device's chain for ``channel_id`` and the devices holding its current key
        (a new chain, held by nobody, the first time)."""
        raw = self._store.get("sender_out", channel_id)
        if raw is None:
            return SenderKeySender(channel_id.encode()), set()
        return SenderKeySender.restore_untrusted(raw[0]), set(raw[1])

    def save_sender(self, channel_id: str, sender: SenderKeySender, given: set[str]) -> None:
        """Keep this device's chain for ``channel_id`` and who holds its current key."""
        self._store.put("sender_out", channel_id, [sender.serialize(), sorted(given)])

    def receiver(self, channel_id: str, device_id: str) -> SenderKeyReceiver:
        """The chain of ``device_id`` in ``channel_id`` this device follows (empty if none)."""
        raw = self._store.get("sender_in", f"{channel_id}/{device_id}")
        if raw is None:
            return SenderKeyReceiver(channel_id.encode())
        return SenderKeyReceiver.restore_untrusted(raw)

    def save_receiver(self, channel_id: str, device_id: str, receiver: SenderKeyReceiver) -> None:
        """Keep the advanced chain of ``device_id`` in ``channel_id``."""
        self._store.put("sender_in", f"{channel_id}/{device_id}", receiver.serialize())

    def install(self, channel_id: str, device_id: str, msg: DecryptedMessage) -> None:
        """Follow the chain a SENDER_KEY_DISTRIBUTION from ``device_id`` carries."""
        receiver = self.receiver(channel_id, device_id)
        try:
            receiver.process_distribution(msg)
        except DuplicateMessage:
            # An authentic but older copy of a key this device already follows further
            # (its channel messages were read before the envelope was): nothing to do.
            return
        self.save_receiver(channel_id, device_id, receiver)
