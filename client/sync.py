"""Keeping this device up to date: catching up by REST, and following the gateway live.

:meth:`Sync.everything` fetches what is new: envelopes, then every text channel.
:meth:`Sync.live` runs a :class:`~client.gateway.GatewayClient` (HELLO → IDENTIFY or
RESUME → READY, heartbeats, reconnects) and turns its dispatches into messages: on every
READY it catches up by REST — envelopes beyond READY's first page, channel history after
each stored cursor — so nothing queued while offline is missed; RESUME replays the rest in
order. While live, who may read a channel is cached and forgotten on GUILD_*/CHANNEL_*/
DEVICE_* dispatches, and disappearing messages this device sent are removed when due.

Catching up starts with cross-signing's start-up (:meth:`Sync.set_up`): a profile older
than cross-signing sets up its account key on its first start, or takes the one another
device of the account handed over, as soon as it has arrived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from client.api import ControlApi
from client.audience import Audience
from client.channels import Channels
from client.errors import ApiError, ProtocolError
from client.gateway import Dispatch, GatewayClient
from client.history import Message
from client.inbox import Inbox
from client.models import ChannelMessage, Envelope
from client.prekeys import Prekeys
from client.trust import Trust
from contract.gateway import EventName

__all__ = ["HOUSEKEEPING_S", "Sync"]

#: While live, disappearing messages are looked after this often.
HOUSEKEEPING_S = 30.0
#: Dispatches after which a channel's readers may differ.
_AUDIENCE_EVENTS = frozenset(
    {
        EventName.GUILD_MEMBER_ADD,
        EventName.GUILD_MEMBER_REMOVE,
        EventName.GUILD_DELETE,
        EventName.GUILD_CREATE,
        EventName.CHANNEL_CREATE,
        EventName.CHANNEL_UPDATE,
        EventName.CHANNEL_DELETE,
        EventName.GUILD_ROLES_UPDATE,
        EventName.GUILD_MEMBER_UPDATE,
        EventName.DEVICE_ADD,
        EventName.DEVICE_REMOVE,
    }
)


class Sync:
    """Brings the inbox and the channels up to date, once or continuously."""

    def __init__(
        self,
        api: ControlApi,
        trust: Trust,
        prekeys: Prekeys,
        audience: Audience,
        inbox: Inbox,
        channels: Channels,
    ) -> None:
        self._api = api
        self._trust = trust
        self._prekeys = prekeys
        self._audience = audience
        self._inbox = inbox
        self._channels = channels
        #: The gateway session while :meth:`live` runs (``gateway.reconnect()`` resumes).
        self.gateway: GatewayClient | None = None
        self._set_up = False
        #: The running voice call's dispatch handler (:meth:`client.voice.call.VoiceCall.dispatch`).
        self.on_voice: Callable[[Dispatch], Awaitable[None]] | None = None

    async def set_up(self) -> None:
        """Once per process, and whenever another device handed the account key over:
        let :meth:`Trust.own_directory` do what cross-signing needs of this device."""
        if not self._set_up or self._trust.account_key_offered():
            await self._trust.own_directory()
            self._set_up = True

    async def envelopes(self) -> list[Message]:
        """Fetch, decrypt, persist and ack every envelope queued for this device (after
        the start-up, and taking an account key handed over among them)."""
        await self.set_up()
        new = await self._inbox.sync()
        await self.set_up()
        return new

    async def everything(self) -> list[Message]:
        """Fetch everything new: envelopes, then every text channel of every guild."""
        new = await self.envelopes()
        new += await self._channels.sync_text_channels()
        return new

    @asynccontextmanager
    async def live(self) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
        """Follow the gateway: yields a channel of new messages (DMs and channels).

        The block is entered once the session is established and the backlog handled;
        messages found while catching up are the first ones in the channel.
        """
        send, receive = trio.open_memory_channel[Message](1024)
        await self._api.me()  # renews an expired token before the gateway needs it
        await self.set_up()
        gateway = GatewayClient(self._api.server_url, self._api.token or "")
        self.gateway = gateway
        caught_up = trio.Event()
        self._audience.cache_readers = True
        try:
            async with gateway.events() as events, trio.open_nursery() as nursery:

                async def pump() -> None:
                    async with send:
                        async for event in events:
                            for message in await self.handle_dispatch(event):
                                await send.send(message)
                            if events.statistics().current_buffer_used == 0:
                                await self._inbox.flush_acks()
                            if event.type in (EventName.READY, EventName.RESUMED):
                                caught_up.set()

                async def housekeeping() -> None:
                    while True:
                        await trio.sleep(HOUSEKEEPING_S)
                        await self._channels.expire_sent()

                nursery.start_soon(pump)
                nursery.start_soon(housekeeping)
                # Entered only once connected and caught up, so a caller knows that what
                # is sent from now on arrives live.
                await caught_up.wait()
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._audience.cache_readers = False
            self.gateway = None
            self._audience.forget()

    async def handle_dispatch(self, event: Dispatch) -> list[Message]:
        """The new messages one gateway dispatch brings (after acting on it)."""
        await self._voice(event)
        d = event.data
        if event.type == EventName.READY:
            envelopes = d.get("envelopes", []) if isinstance(d, dict) else []
            if not isinstance(envelopes, list):
                raise ProtocolError("READY with a malformed envelope list")
            new = await self._inbox.receive([Envelope.from_wire_untrusted(e) for e in envelopes])
            new += await self._inbox.sync()
            for channel_id in self._channels.followed():
                try:
                    new += await self._channels.sync(channel_id)
                except ApiError:
                    continue
            return new
        if event.type == EventName.ENVELOPE_CREATE:
            new = await self._inbox.receive([Envelope.from_wire_untrusted(d)], ack=False)
            await self.set_up()
            return new
        if event.type == EventName.MESSAGE_CREATE:
            return await self._channels.receive_created(ChannelMessage.from_wire_untrusted(d))
        if event.type in _AUDIENCE_EVENTS:
            # Who may read a channel may have changed: recompute before the next send.
            self._audience.forget()
        if event.type in (EventName.DEVICE_ADD, EventName.DEVICE_REMOVE) and isinstance(d, dict):
            self._trust.forget_devices(str(d.get("user_id")))
        if event.type == EventName.PREKEYS_LOW:
            await self._prekeys.maintain()
        return []

    async def _voice(self, event: Dispatch) -> None:
        """Hand a dispatch to the running voice call, if any (voice states, voice server
        updates, SDP answers and offers, speaking; READY's voice states)."""
        if self.on_voice is not None:
            await self.on_voice(event)
