"""Keeping this device up to date: catching up by REST, and following the gateway live.

:meth:`Sync.everything` fetches what is new: envelopes, then every text channel.
:meth:`Sync.live` runs a :class:`~client.gateway.GatewayClient` (HELLO → IDENTIFY or
RESUME → READY, heartbeats, reconnects) and turns its dispatches into messages: on every
READY it handles the envelopes READY lists and syncs the followed channels' history, so
nothing queued while offline is missed; RESUME replays the rest in order.

READY lists only the oldest queued envelopes (at most 1 MiB of them). When it says
``envelopes_more``, a task of its own pages through the rest by REST
(:meth:`Inbox.fetch_page`) while dispatches keep arriving: the dispatch loop and the
backlog take turns envelope by envelope (one of them at a time works on the store), so a
new DM is shown within moments however large the backlog is, and the inbox's "done" marks
show each envelope once whichever way it came. The gateway's expired token is renewed by
signing in again (:attr:`ControlApi.relogin`); a session the server revoked ends
:meth:`Sync.live` with :class:`~client.errors.SessionRevoked`.

While live, who may read a channel is cached and forgotten on GUILD_*/CHANNEL_*/
DEVICE_* dispatches, and disappearing messages this device sent are removed when due.

Catching up starts with cross-signing's start-up (:meth:`Sync.set_up`): a profile older
than cross-signing sets up its account key on its first start, or takes the one another
device of the account handed over, as soon as it has arrived.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from client.api import ControlApi
from client.audience import Audience
from client.channels import Channels
from client.errors import ApiError, ProtocolError, TokenRefused, TransportError
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
#: Paging the backlog waits this long after the server could not be reached (and a
#: reconnection's READY asks again anyway).
_BACKLOG_RETRY_S = 2.0
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
        #: One task at a time works on the store while live: store transactions span
        #: awaits, and two tasks' writes must not share one.
        self._turn = trio.Lock()
        #: Set by a READY that says more envelopes are queued than it lists.
        self._backlog = trio.Event()

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

        The block is entered once the session is established and READY handled; messages
        found then are the first ones in the channel. A backlog beyond what READY lists
        follows in pages, between live messages. The block ends with
        :class:`~client.errors.SessionRevoked` if the server ends the session (sign-out,
        device removal, account deletion) and with
        :class:`~client.errors.TokenRefused` if this device cannot sign in again.
        """
        send, receive = trio.open_memory_channel[Message](1024)
        await self._api.me()  # renews an expired token before the gateway needs it
        await self.set_up()
        relogin = self._api.relogin

        async def renew(refused: str) -> str:
            return await self._renew_token(refused, relogin)

        gateway = GatewayClient(
            self._api.server_url, self._api.token or "", renew if relogin else None
        )
        self.gateway = gateway
        self._backlog = trio.Event()
        caught_up = trio.Event()
        self._audience.cache_readers = True
        try:
            async with gateway.events() as events, trio.open_nursery() as nursery:

                async def pump(send: trio.MemorySendChannel[Message]) -> None:
                    async with send:
                        async for event in events:
                            async with self._turn:
                                new = await self.handle_dispatch(event)
                            for message in new:
                                await send.send(message)
                            if events.statistics().current_buffer_used == 0:
                                await self._inbox.flush_acks()
                            if event.type in (EventName.READY, EventName.RESUMED):
                                caught_up.set()

                async def backlog(send: trio.MemorySendChannel[Message]) -> None:
                    async with send:
                        while True:
                            await self._backlog.wait()
                            self._backlog = trio.Event()
                            try:
                                await self._page_backlog(send)
                            except TransportError:
                                await trio.sleep(_BACKLOG_RETRY_S)
                                self._backlog.set()

                async def housekeeping() -> None:
                    while True:
                        await trio.sleep(HOUSEKEEPING_S)
                        async with self._turn:
                            await self._channels.expire_sent()

                nursery.start_soon(pump, send.clone())
                nursery.start_soon(backlog, send)
                nursery.start_soon(housekeeping)
                # Entered only once connected and caught up, so a caller knows that what
                # is sent from now on arrives live.
                await caught_up.wait()
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()
            # Left normally: ack what was shown now, not on the next start (the "done"
            # marks make that harmless, but the relay would hold them meanwhile).
            with contextlib.suppress(TransportError, ApiError):
                await self._inbox.flush_acks()
        finally:
            self._audience.cache_readers = False
            self.gateway = None
            self._audience.forget()

    async def _page_backlog(self, send: trio.MemorySendChannel[Message]) -> None:
        """Fetch, handle and ack queued envelopes page by page until none are left,
        taking turns with the dispatch loop envelope by envelope."""
        while page := await self._inbox.fetch_page():
            for envelope in page:
                async with self._turn:
                    new = await self._inbox.receive([envelope], ack=False)
                for message in new:
                    await send.send(message)
            await self._inbox.flush_acks()
            async with self._turn:
                await self.set_up()  # an account key handed over among them

    async def _renew_token(
        self, refused: str, relogin: Callable[[], Awaitable[None]] | None
    ) -> str:
        """A session token for the gateway in place of ``refused`` (expired, or refused
        at IDENTIFY/RESUME): the one REST already renewed, or a new sign-in."""
        if self._api.token is not None and self._api.token != refused:
            return self._api.token
        if relogin is None:
            raise TokenRefused("this device's session expired and cannot be renewed")
        try:
            await relogin()
        except ApiError as exc:
            if exc.status in (401, 403, 404):
                raise TokenRefused(
                    f"this device could not sign in again ({exc.message.rstrip('.')})"
                ) from None
            raise
        if self._api.token is None:
            raise TokenRefused("signing in again gave no session token")
        return self._api.token

    async def handle_dispatch(self, event: Dispatch) -> list[Message]:
        """The new messages one gateway dispatch brings (after acting on it).

        A READY saying more envelopes are queued than it lists hands them to
        :meth:`live`'s backlog task (outside :meth:`live`, :meth:`envelopes` fetches them).
        """
        await self._voice(event)
        d = event.data
        if event.type == EventName.READY:
            envelopes = d.get("envelopes", []) if isinstance(d, dict) else []
            # A server that does not say lists only a first page.
            more = d.get("envelopes_more", True) if isinstance(d, dict) else True
            if not isinstance(envelopes, list) or not isinstance(more, bool):
                raise ProtocolError("READY with a malformed envelope list")
            new = await self._inbox.receive([Envelope.from_wire_untrusted(e) for e in envelopes])
            if more:
                # Paged by live()'s backlog task, so live dispatches are not held up.
                self._backlog.set()
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
