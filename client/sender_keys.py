"""Sender-key state: this device's sending chain per channel, and the chains it follows.

One :class:`e2ee.SenderKeySender` per (channel, this device), stored with the set of
devices (``user/device``) that hold its current key; one :class:`e2ee.SenderKeyReceiver`
per (channel, author user, author device), installed from a distribution that arrived
inside the pairwise session with that user's device. The chain is **bound to that owner**:
a channel message is opened only with the chain of the user and device the server labels
it with, so a server that relabels Mallory's message as Alice's finds no chain of Alice's
that opens it (:meth:`SenderKeys.author_of` then names who really wrote it).

A distribution from someone the client's own reckoning says cannot read the channel is
not followed but *held* (:meth:`SenderKeys.hold`): permissions may have changed between
sending and receiving it, and the sender will not send it again. It is installed only if
its owner can read the channel when a message under it arrives.

Nothing is cached in memory: another process on this profile may have advanced a chain,
and an older copy written back would re-open used iterations. Callers load, step and save
inside one store transaction.
"""

from __future__ import annotations

from client.store import Store
from e2ee import (
    DecryptedMessage,
    DuplicateMessage,
    E2EEError,
    MessageType,
    SenderKeyReceiver,
    SenderKeySender,
)

__all__ = ["MAX_HELD_DISTRIBUTIONS", "SenderKeys"]

#: Distributions held per (channel, owner) until the owner can read the channel (the
#: receiver keeps as many sender keys per author).
MAX_HELD_DISTRIBUTIONS = 5


def _label(channel_id: str, user_id: str, device_id: str) -> str:
    return f"{channel_id}/{user_id}/{device_id}"


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

    def receiver(self, channel_id: str, user_id: str, device_id: str) -> SenderKeyReceiver:
        """The chain of ``user_id``'s device ``device_id`` in ``channel_id`` that this
        device follows (empty if none)."""
        raw = self._store.get("sender_in", _label(channel_id, user_id, device_id))
        if raw is None:
            raw = self._adopt_legacy(channel_id, user_id, device_id)
        if raw is None:
            return SenderKeyReceiver(channel_id.encode())
        return SenderKeyReceiver.restore_untrusted(raw)

    def _adopt_legacy(self, channel_id: str, user_id: str, device_id: str) -> bytes | None:
        """A chain stored before chains were bound to users (as ``channel/device``, also
        in older backups), bound now to the user this profile has pairwise sessions with
        on that device: the session that delivered it."""
        legacy = f"{channel_id}/{device_id}"
        raw: bytes | None = self._store.get("sender_in", legacy)
        if raw is None:
            return None
        peer = f"{user_id}/{device_id}"
        if not (self._store.get("sessions", peer) or self._store.get("sessions_restored", peer)):
            return None
        self._store.delete("sender_in", legacy)
        self._store.put("sender_in", _label(channel_id, user_id, device_id), raw)
        return raw

    def save_receiver(
        self, channel_id: str, user_id: str, device_id: str, receiver: SenderKeyReceiver
    ) -> None:
        """Keep the advanced chain of ``user_id``'s device ``device_id`` in ``channel_id``."""
        self._store.put("sender_in", _label(channel_id, user_id, device_id), receiver.serialize())

    def install(self, channel_id: str, user_id: str, device_id: str, msg: DecryptedMessage) -> None:
        """Follow the chain a SENDER_KEY_DISTRIBUTION carries, bound to the user and device
        whose pairwise session delivered it."""
        receiver = self.receiver(channel_id, user_id, device_id)
        try:
            receiver.process_distribution(msg)
        except DuplicateMessage:
            # An authentic but older copy of a key this device already follows further
            # (its channel messages were read before the envelope was): nothing to do.
            return
        self.save_receiver(channel_id, user_id, device_id, receiver)

    def hold(self, channel_id: str, user_id: str, device_id: str, msg: DecryptedMessage) -> None:
        """Keep a distribution from someone who cannot read ``channel_id`` (now), unused."""
        label = _label(channel_id, user_id, device_id)
        held: list[bytes] = self._store.get("sender_held", label, [])
        held = [*held, msg.plaintext][-MAX_HELD_DISTRIBUTIONS:]
        self._store.put("sender_held", label, held)

    def has_held(self, channel_id: str, user_id: str, device_id: str) -> bool:
        """Whether distributions of this owner for ``channel_id`` are held."""
        return bool(self._store.get("sender_held", _label(channel_id, user_id, device_id)))

    def release_held(self, channel_id: str, user_id: str, device_id: str) -> None:
        """Follow the held distributions of an owner who can now read ``channel_id``."""
        label = _label(channel_id, user_id, device_id)
        held: list[bytes] = self._store.get("sender_held", label, [])
        self._store.delete("sender_held", label)
        for plaintext in held:
            # Each came out of the pairwise session with this owner (see :meth:`hold`);
            # the sealed store is trusted with sender-key state itself.
            msg = DecryptedMessage(
                MessageType.SENDER_KEY_DISTRIBUTION, channel_id.encode(), plaintext
            )
            try:
                self.install(channel_id, user_id, device_id, msg)
            except E2EEError:
                continue

    def author_of(self, channel_id: str, ciphertext: bytes) -> tuple[str, str] | None:
        """(user id, device id) of the followed chain in ``channel_id`` that opens
        ``ciphertext``, if any — who really wrote a message its labels do not match.

        Each chain is tried on a copy that is never saved, so nothing advances.
        """
        prefix = f"{channel_id}/"
        for label, raw in self._store.names("sender_in"):
            if not label.startswith(prefix) or label.count("/") != 2:
                continue
            try:
                SenderKeyReceiver.restore_untrusted(raw).decrypt(ciphertext)
            except E2EEError:
                continue
            _, user_id, device_id = label.split("/")
            return user_id, device_id
        return None
