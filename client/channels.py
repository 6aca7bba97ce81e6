"""Channel messages under Sender Keys: sending, distributing keys, reading history.

Each device has one sender-key chain per channel (:class:`~client.sender_keys.SenderKeys`)
and remembers which devices hold its current key. Before every send the readers are
recomputed (:class:`~client.audience.Audience`):

* a device that holds the key but is no longer a reader → a **new key** (``rotate``),
  distributed to all readers: sender keys have no future secrecy, so the old chain is
  abandoned, never ratcheted on;
* a reader device that lacks the key → the distribution at the **current iteration**,
  inside its pairwise session (SENDER_KEY_DISTRIBUTION, conversation = channel id).

So a new member or device cannot read what was sent before it joined. Receiving is in
server sequence order after a stored cursor; a message under a key not yet known first
makes the inbox fetch envelopes (its distribution may be queued there), then is retried.
Sender-key state, message and cursor commit together.

The server labels each message with its author user and device; neither label is taken on
trust. A message is opened only with the chain bound to exactly that user and device (the
owner whose pairwise session delivered it, :mod:`client.sender_keys`), and the author it
names inside — signed with it — must be that owner too. A message that fails either check
is refused with a notice naming, when one of the followed chains opens it, who really
wrote it.
"""

from __future__ import annotations

import secrets
import time

from client.account import Account
from client.api import ControlApi
from client.audience import Audience
from client.envelope import Body, decode_body_untrusted, encode_body, require_sendable
from client.errors import ApiError, ForgedAuthor, UndecryptableMessage, UsageError
from client.history import History, Message
from client.inbox import Inbox
from client.models import Channel, ChannelMessage
from client.notices import Notices
from client.sender_keys import SenderKeys
from client.sessions import Sessions
from client.store import Store
from client.trust import Trust
from e2ee import E2EEError, MessageType, UnknownKey

__all__ = ["Channels"]

#: Channel messages fetched per history request.
_PAGE = 100


class Channels:
    """This device's side of every channel it reads or writes."""

    def __init__(
        self,
        store: Store,
        api: ControlApi,
        account: Account,
        trust: Trust,
        audience: Audience,
        sessions: Sessions,
        sender_keys: SenderKeys,
        inbox: Inbox,
        history: History,
        notices: Notices,
    ) -> None:
        self._store = store
        self._api = api
        self._account = account
        self._trust = trust
        self._audience = audience
        self._sessions = sessions
        self._sender_keys = sender_keys
        self._inbox = inbox
        self._history = history
        self._notices = notices

    # --- sending ---------------------------------------------------------------------

    async def send(self, channel_id: str, text: str, expires_in: int | None = None) -> Message:
        """Encrypt with this device's sender key and post to the channel."""
        require_sendable(text, expires_in)
        me = self._account
        keys = self._sender_keys
        audience = await self._audience.of(channel_id)
        current = {f"{u}/{d.id}" for u, devices in audience.items() for d in devices}
        with self._store.transaction():
            sender, given = keys.load_sender(channel_id)
            if given - current:
                # Someone lost access (left, kicked, device removed): sender keys have no
                # future secrecy, so the key is replaced, never ratcheted on.
                sender.rotate()
                given = set()
            missing = current - given
            distribution = sender.distribution().encode()
            key_id = sender.key_id
            keys.save_sender(channel_id, sender, given)
        if missing:
            users = {entry.split("/", 1)[0] for entry in missing}
            if me.user_id in audience:
                users.add(me.user_id)
            recipients = {u: audience[u] for u in users if u in audience}
            await self._sessions.fan_out(
                recipients,
                lambda _u: channel_id.encode(),
                lambda _u: distribution,
                lambda _u: MessageType.SENDER_KEY_DISTRIBUTION,
            )
            with self._store.transaction():
                sender, given = keys.load_sender(channel_id)
                if sender.key_id == key_id:
                    given |= {f"{u}/{d.id}" for u, devices in recipients.items() for d in devices}
                    keys.save_sender(channel_id, sender, given)
        body = Body(
            secrets.token_hex(12),
            text,
            time.time(),
            expires_in,
            me.handle,
            author=(me.user_id, me.device_id),
        )
        # Load, step and save in one transaction: two processes on one profile never use
        # the same iteration (a message key encrypts exactly one message).
        with self._store.transaction():
            sender, given = keys.load_sender(channel_id)
            ciphertext = sender.encrypt(encode_body(body))
            keys.save_sender(channel_id, sender, given)
        posted = await self._api.post_message(channel_id, ciphertext)
        message = Message(
            posted.id,
            f"ch:{channel_id}",
            me.user_id,
            me.handle,
            text,
            body.ts,
            "out",
            body.ts + expires_in if expires_in else None,
            posted.seq,
        )
        with self._store.transaction():
            self._history.remember(message)
            if message.expires_at is not None:
                # The server keeps channel ciphertext for the channel's retention; the
                # author removes a disappearing one when it is due (expire_sent).
                self._store.put("expiring", posted.id, [channel_id, message.expires_at])
        return message

    async def expire_sent(self, now: float | None = None) -> int:
        """Delete this device's disappearing channel messages that are due from the server."""
        moment = time.time() if now is None else now
        due = [(mid, v[0]) for mid, v in self._store.names("expiring") if v[1] <= moment]
        for message_id, channel_id in due:
            try:
                await self._api.delete_message(channel_id, message_id)
            except ApiError as exc:
                if exc.status not in (403, 404):
                    raise
            self._store.delete("expiring", message_id)
        self._store.purge_expired(moment)
        return len(due)

    # --- receiving -------------------------------------------------------------------

    def followed(self) -> list[str]:
        """The channels this device has a read cursor in."""
        return [name for name, _ in self._store.names("cursor")]

    async def sync(self, channel_id: str) -> list[Message]:
        """Fetch stored channel messages after the last one seen, decrypt and persist them."""
        cursor = self._store.get("cursor", channel_id, 0)
        pages: list[ChannelMessage] = []
        before: int | None = None
        while True:
            page = await self._api.history(channel_id, after=cursor, limit=_PAGE, before=before)
            pages += page
            if len(page) < _PAGE:
                break
            before = min(m.seq for m in page)
        pages.sort(key=lambda m: m.seq)
        return await self.receive(pages)

    async def receive_created(self, cm: ChannelMessage) -> list[Message]:
        """A MESSAGE_CREATE: decrypt it, and follow its channel from now on."""
        if self._store.get("cursor", cm.channel_id) is None:
            self._store.put("cursor", cm.channel_id, 0)
        return await self.receive([cm])

    async def receive(self, messages: list[ChannelMessage]) -> list[Message]:
        """Decrypt channel messages (history or MESSAGE_CREATE) in order.

        Also returns the messages the inbox delivered while looking for a missing key.
        """
        new: list[Message] = []
        synced = False
        for cm in messages:
            if self._history.has(cm.id) or cm.author_device_id == self._account.device_id:
                self._advance(cm)
                continue
            while True:
                missing_key = False
                # The advanced sender-key state, the message and the cursor commit together.
                with self._store.transaction():
                    message: Message | None = None
                    try:
                        message = await self._open(cm)
                    except UnknownKey as exc:
                        missing_key = not synced
                        if synced:
                            self._undecryptable(cm, exc)
                    except (E2EEError, UndecryptableMessage) as exc:
                        self._undecryptable(cm, exc)
                    if not missing_key:
                        if message is not None and self._history.remember(message):
                            new.append(message)
                        self._advance(cm)
                if not missing_key:
                    break
                # No key yet: it may wait in an envelope not fetched yet (decryption failed
                # without touching any state, so the message is simply tried again).
                synced = True
                new += await self._inbox.sync()
        return new

    def _advance(self, cm: ChannelMessage) -> None:
        if cm.seq > self._store.get("cursor", cm.channel_id, 0):
            self._store.put("cursor", cm.channel_id, cm.seq)

    def _undecryptable(self, cm: ChannelMessage, exc: Exception) -> None:
        labelled = self._trust.name(cm.author_id)
        where = self._channel_name(cm.channel_id)
        if isinstance(exc, E2EEError):
            # The labelled author's chain does not open it: does another one?
            author = self._sender_keys.author_of(cm.channel_id, cm.ciphertext)
            if author is not None and author != (cm.author_id, cm.author_device_id):
                exc = ForgedAuthor("the key it is under is not theirs", author)
        if isinstance(exc, ForgedAuthor):
            wrote = (
                f" (it was written by a device of {self._trust.name(exc.author[0])})"
                if exc.author is not None
                else ""
            )
            self._notices.add(
                "forged_author",
                f"a message in {where} the server says is from {labelled} was refused: "
                f"{exc}{wrote}",
            )
            return
        reason = (
            "no key for it: sent before this device could read the channel"
            if isinstance(exc, UnknownKey)
            else f"failed authentication ({type(exc).__name__})"
        )
        self._notices.add(
            "undecryptable",
            f"a message from {labelled} in {where} cannot be read: {reason}",
        )

    def _channel_name(self, channel_id: str) -> str:
        name = self._store.get("channel_name", channel_id)
        return f"#{name}" if isinstance(name, str) else "a channel"

    async def _open(self, cm: ChannelMessage) -> Message:
        channel_id, user_id, device_id = cm.channel_id, cm.author_id, cm.author_device_id
        keys = self._sender_keys
        receiver = keys.receiver(channel_id, user_id, device_id)
        try:
            padded = receiver.decrypt(cm.ciphertext)
        except UnknownKey:
            # Its key may be held: it came when its owner could not read the channel by
            # this client's reckoning. Followed only if the owner can now.
            if not keys.has_held(channel_id, user_id, device_id):
                raise
            if not await self._audience.can_read(channel_id, user_id):
                raise
            keys.release_held(channel_id, user_id, device_id)
            receiver = keys.receiver(channel_id, user_id, device_id)
            padded = receiver.decrypt(cm.ciphertext)
        keys.save_receiver(channel_id, user_id, device_id, receiver)
        body = decode_body_untrusted(padded)
        if body.author != (user_id, device_id):
            # The chain's owner passed on a key of someone else's (received as a reader),
            # or wrote another author into the message.
            raise ForgedAuthor("it names another author than the one whose key it is under")
        handle = await self._trust.handle_of(user_id, body.sender_handle)
        return Message(
            cm.id,
            f"ch:{channel_id}",
            user_id,
            handle,
            body.body,
            body.ts,
            "in",
            time.time() + body.exp if body.exp else None,
            cm.seq,
        )

    # --- finding channels ------------------------------------------------------------

    async def sync_text_channels(self) -> list[Message]:
        """:meth:`sync` every text channel of every guild this account is in (and remember
        their names)."""
        new: list[Message] = []
        for g in await self._api.my_guilds():
            for channel in await self._api.channels(str(g.get("id"))):
                if channel.type == "text":
                    self._store.put("channel_name", channel.id, channel.name)
                    new += await self.sync(channel.id)
        return new

    async def label(self, channel_id: str) -> str:
        """``#name`` of a channel (remembered once seen), or ``#id`` if it cannot be seen."""
        name = self._store.get("channel_name", channel_id)
        if not isinstance(name, str):
            try:
                name = (await self._api.channel(channel_id)).name
            except ApiError:
                return "#" + channel_id
            self._store.put("channel_name", channel_id, name)
        return "#" + name

    async def find(self, name: str, guild: str | None = None) -> Channel:
        """A channel by id, ``guild/channel`` or plain name across the caller's guilds."""
        if "/" in name and guild is None:
            guild, name = name.split("/", 1)
        for g in await self._api.my_guilds():
            if guild is not None and guild not in (g.get("id"), g.get("name")):
                continue
            for channel in await self._api.channels(str(g.get("id"))):
                if name in (channel.id, channel.name, f"#{channel.name}"):
                    return channel
        raise UsageError(f"no channel {name!r} in your guilds")
