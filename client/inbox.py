"""The envelopes queued for this device: fetched, decrypted, persisted, then acked.

For each envelope (REST ``GET /envelopes``, READY, or ``ENVELOPE_CREATE``): check the
conversation it names against its sender, decrypt it pairwise, and in **one store
transaction** keep what it carried (a DM, a device-sync copy, a sender key), the advanced
session state and a "done" mark for its id; only then ack. An envelope id already done is
acked again without being shown, so a crash between commit and ack, or an envelope seen
both in READY and by REST, is delivered exactly once. Checking the mark and handling
the envelope happen under one lock, so two tasks handing the inbox the same envelope
(the gateway's ENVELOPE_CREATE and a page of the backlog) show it once and never decrypt
it twice. An envelope that fails to authenticate is dropped, acked (so it is not fetched
forever) and reported as a notice.

REST pages (``GET /envelopes``) are bounded by count and by bytes, so a page shorter than
asked for does not mean the queue is empty: paging goes on until a page is empty.

A sender-key distribution is bound to the user and device whose pairwise session
delivered it, and followed only when that user can read the channel by this client's own
reckoning of the guild (``can_read``, :meth:`client.audience.Audience.can_read`): someone
who cannot see a channel must not be able to plant a key there and have the server show
messages under it. One that fails the check is held, not followed, and reported; one for a
channel this account cannot see is dropped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable

import trio

from client.account import Account
from client.api import ControlApi
from client.dm import DirectMessages
from client.envelope import decode_envelope_untrusted, dm_conversation, self_conversation
from client.errors import IdentityChanged, UndecryptableMessage
from client.history import History, Message
from client.models import Envelope
from client.notices import Notices
from client.sender_keys import SenderKeys
from client.sessions import Sessions
from client.store import Store
from client.trust import Trust
from contract.relay import ENVELOPE_PAGE_LIMIT
from e2ee import DecryptedMessage, E2EEError, MessageType

__all__ = ["ENVELOPE_MARK_TTL_S", "Inbox"]

#: Envelope ids handled are remembered a little longer than the relay's 30-day TTL.
ENVELOPE_MARK_TTL_S = 31 * 86400
#: What a channel id looks like (it names a URL path and a store label: no ``/``).
_CHANNEL_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


class Inbox:
    """This device's envelope queue on the relay."""

    def __init__(
        self,
        store: Store,
        api: ControlApi,
        account: Account,
        trust: Trust,
        sessions: Sessions,
        dms: DirectMessages,
        sender_keys: SenderKeys,
        history: History,
        notices: Notices,
        can_read: Callable[[str, str], Awaitable[bool | None]],
    ) -> None:
        """``can_read(channel id, user id)`` says whether that user may read the channel
        (a distribution from anyone else is not followed), None if this account cannot
        see the channel (its distributions are dropped)."""
        self._store = store
        self._api = api
        self._account = account
        self._trust = trust
        self._sessions = sessions
        self._dms = dms
        self._sender_keys = sender_keys
        self._history = history
        self._notices = notices
        self._can_read = can_read
        self._pending_acks: list[str] = []
        self._lock = trio.Lock()
        #: Where MEDIA_KEY messages go (:meth:`client.media_keys.MediaKeys.received`).
        self.on_media_key: Callable[[bytes, str, str, DecryptedMessage], Awaitable[None]] | None = (
            None
        )

    async def sync(self) -> list[Message]:
        """Fetch, decrypt, persist and ack every envelope queued for this device."""
        new: list[Message] = []
        while page := await self.fetch_page():
            new += await self.receive(page)
        return new

    async def fetch_page(self) -> list[Envelope]:
        """The oldest envelopes queued (up to 500 and 1 MiB of them); empty when none are.
        Until acked, the same envelopes come back: handle and ack before the next page."""
        return await self._api.fetch_envelopes(ENVELOPE_PAGE_LIMIT)

    async def receive(self, envelopes: list[Envelope], *, ack: bool = True) -> list[Message]:
        """Handle envelopes (from REST, READY or ENVELOPE_CREATE) and ack them.

        With ``ack=False`` the ids are queued and acked by the next :meth:`flush_acks`
        (the gateway loop acks once its backlog is drained, not once per envelope); the
        "done" marks already make a repeat harmless.
        """
        new: list[Message] = []
        for env in envelopes:
            async with self._lock:
                message = await self._receive_one(env)
            if message is not None:
                new.append(message)
        if ack:
            await self.flush_acks()
        return new

    async def _receive_one(self, env: Envelope) -> Message | None:
        """Handle one envelope (under the lock): the message to show, if it brings one."""
        if self._store.get("envelope_done", env.id) is not None:
            self._pending_acks.append(env.id)
            return None
        shown = None
        # Session state, the message and the "done" mark commit together: a crash
        # leaves either all of them (the envelope is then only acked again) or none.
        with self._store.transaction():
            try:
                message = await self._open(env)
            except (UndecryptableMessage, E2EEError) as exc:
                self._notices.add(
                    "rejected",
                    f"a message from a device of {self._trust.name(env.sender_user_id)} "
                    f"failed authentication and was dropped ({type(exc).__name__})",
                )
                message = None
            except IdentityChanged:
                message = None
            if message is not None and self._history.remember(message):
                shown = message
            self._store.put("envelope_done", env.id, int(time.time()))
        self._pending_acks.append(env.id)
        return shown

    async def flush_acks(self) -> None:
        """Ack every envelope handled so far."""
        done = list(self._pending_acks)
        if not done:
            return
        await self._api.ack_envelopes(done)
        # Forgotten only once acked: a flush cancelled midway (or racing another) leaves
        # them for the next one, and acking an id twice is harmless.
        acked = set(done)
        self._pending_acks = [i for i in self._pending_acks if i not in acked]

    def prune_marks(self, now: float | None = None) -> int:
        """Forget "already handled" marks older than the relay keeps envelopes."""
        limit = (time.time() if now is None else now) - ENVELOPE_MARK_TTL_S
        old = [name for name, at in self._store.names("envelope_done") if at < limit]
        with self._store.transaction():
            for name in old:
                self._store.delete("envelope_done", name)
        return len(old)

    async def _open(self, env: Envelope) -> Message | None:
        me = self._account.user_id
        conv, payload = decode_envelope_untrusted(env.ciphertext)
        sender = env.sender_user_id
        if conv.startswith(b"dm:"):
            if conv != dm_conversation(me, sender) or sender == me:
                raise UndecryptableMessage("a DM envelope names the wrong conversation")
        elif conv.startswith(b"self:") and (sender != me or conv != self_conversation(me)):
            raise UndecryptableMessage("a device-sync envelope from another user")
        decrypted = await self._sessions.decrypt(sender, env.sender_device_id, conv, payload)
        kind = decrypted.message_type
        if kind is MessageType.SENDER_KEY_DISTRIBUTION:
            await self._sender_key(conv, sender, env.sender_device_id, decrypted)
            return None
        if kind is MessageType.MEDIA_KEY:
            await self._media_key(conv, sender, env.sender_device_id, decrypted)
            return None
        if kind is MessageType.TEXT and conv.startswith(b"dm:"):
            return await self._dms.received(sender, decrypted)
        if kind is MessageType.DEVICE_SYNC and conv.startswith(b"self:"):
            return self._dms.synced(decrypted)
        raise UndecryptableMessage("a pairwise message of an unexpected type")

    async def _sender_key(
        self, conv: bytes, user_id: str, device_id: str, decrypted: DecryptedMessage
    ) -> None:
        channel_id = conv.decode(errors="replace")
        if not _CHANNEL_ID.fullmatch(channel_id):
            raise UndecryptableMessage("a sender key for something that is not a channel")
        readable = await self._can_read(channel_id, user_id)
        if readable is None:
            # A channel this account cannot see (deleted, access lost, or made up): there
            # is nothing to read with the key, and nothing worth keeping it for.
            return
        if readable:
            self._sender_keys.install(channel_id, user_id, device_id, decrypted)
            return
        self._sender_keys.hold(channel_id, user_id, device_id, decrypted)
        name = self._store.get("channel_name", channel_id)
        where = f"#{name}" if isinstance(name, str) else f"channel {channel_id}"
        self._notices.add(
            "sender_key_refused",
            f"{self._trust.name(user_id)} sent a key for {where}, which they cannot read: "
            "their messages there are not shown",
        )

    async def _media_key(
        self, conv: bytes, user_id: str, device_id: str, decrypted: DecryptedMessage
    ) -> None:
        """A voice call's media key: to the call, bound to the device that delivered it;
        dropped when no call is running in this process (it is worthless afterwards)."""
        if not conv.startswith(b"voice:"):
            raise UndecryptableMessage("a media key outside a voice conversation")
        if self.on_media_key is not None:
            await self.on_media_key(conv, user_id, device_id, decrypted)
