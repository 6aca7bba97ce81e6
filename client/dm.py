"""Direct messages: one pairwise-encrypted envelope per device of the recipient and of the
sender's other devices.

The recipient's devices get the message as TEXT in conversation ``dm:<a>|<b>``; this
account's other devices get a DEVICE_SYNC copy (with the recipient named inside) in
``self:<user id>``, so every device of the sender shows what was sent. The pairwise part
(:class:`~client.sessions.Sessions`) opens sessions, encrypts and handles the relay's 409;
this part builds and reads the bodies.

A DEVICE_SYNC may instead hand over the account signing key (an account older than
cross-signing: the device that set the key up sends it to the others, see
:mod:`client.trust`); it is given to :meth:`Trust.offer_account_key`, not shown.
"""

from __future__ import annotations

import secrets
import time

from client.account import Account
from client.device_list import (
    decode_account_key_handover_untrusted,
    encode_account_key_handover,
)
from client.envelope import (
    Body,
    decode_body_untrusted,
    dm_conversation,
    encode_body,
    require_sendable,
    self_conversation,
)
from client.errors import UndecryptableMessage, UsageError
from client.history import History, Message
from client.models import Device
from client.sessions import Sessions
from client.trust import Trust
from e2ee import DecryptedMessage, MessageType

__all__ = ["DirectMessages"]


class DirectMessages:
    """Sending and reading DMs."""

    def __init__(
        self, account: Account, trust: Trust, sessions: Sessions, history: History
    ) -> None:
        self._account = account
        self._trust = trust
        self._sessions = sessions
        self._history = history

    async def send(self, handle: str, text: str, expires_in: int | None = None) -> Message:
        """Send an end-to-end encrypted direct message to every device of ``handle``."""
        require_sendable(text, expires_in)
        me = self._account
        user_id, name = await self._trust.resolve(handle)
        if user_id == me.user_id:
            raise UsageError("send a note to yourself in a channel; DMs go to someone else")
        theirs = await self._trust.devices_of(user_id, name)
        mine = await self._trust.own_other_devices()
        body = Body(secrets.token_hex(12), text, time.time(), expires_in, me.handle)
        sync = Body(body.id, text, body.ts, expires_in, me.handle, to=user_id)
        recipients = {user_id: theirs}
        if mine:
            recipients[me.user_id] = mine
        conv_dm = dm_conversation(me.user_id, user_id)

        def conv(u: str) -> bytes:
            return self_conversation(me.user_id) if u == me.user_id else conv_dm

        def plain(u: str) -> bytes:
            return encode_body(sync if u == me.user_id else body)

        def kind(u: str) -> MessageType:
            return MessageType.DEVICE_SYNC if u == me.user_id else MessageType.TEXT

        await self._sessions.fan_out(recipients, conv, plain, kind)
        message = Message(
            f"{me.user_id}/{body.id}",
            f"dm:{user_id}",
            me.user_id,
            me.handle,
            text,
            body.ts,
            "out",
            body.ts + expires_in if expires_in else None,
        )
        self._history.remember(message)
        return message

    async def history(self, handle: str, limit: int = 50) -> list[Message]:
        """Stored DMs with ``handle``."""
        user_id, _ = await self._trust.resolve(handle)
        return self._history.conversation(f"dm:{user_id}", limit)

    async def received(self, sender: str, decrypted: DecryptedMessage) -> Message:
        """The DM a TEXT message from ``sender`` carries."""
        body = decode_body_untrusted(decrypted.plaintext)
        # Ids are chosen by senders: namespaced by author, one sender cannot shadow
        # another's message in the store.
        return Message(
            f"{sender}/{body.id}",
            f"dm:{sender}",
            sender,
            await self._trust.handle_of(sender, body.sender_handle),
            body.body,
            body.ts,
            "in",
            time.time() + body.exp if body.exp else None,
        )

    async def hand_over_account_key(self, devices: list[Device]) -> None:
        """Send the account signing key to these other devices of this account, each
        inside its pairwise session (DEVICE_SYNC)."""
        me = self._account
        seed = self._trust.require_account_key().seed
        await self._sessions.fan_out(
            {me.user_id: devices},
            lambda _u: self_conversation(me.user_id),
            lambda _u: encode_account_key_handover(seed),
            lambda _u: MessageType.DEVICE_SYNC,
        )

    def synced(self, decrypted: DecryptedMessage) -> Message | None:
        """The DM another device of this account sent, from its DEVICE_SYNC copy (None
        when the copy handed over the account key instead)."""
        me = self._account
        seed = decode_account_key_handover_untrusted(decrypted.plaintext)
        if seed is not None:
            self._trust.offer_account_key(seed)
            return None
        body = decode_body_untrusted(decrypted.plaintext)
        if body.to is None:
            raise UndecryptableMessage("a device-sync copy without its recipient")
        return Message(
            f"{me.user_id}/{body.id}",
            f"dm:{body.to}",
            me.user_id,
            me.handle,
            body.body,
            body.ts,
            "out",
            body.ts + body.exp if body.exp else None,
        )
