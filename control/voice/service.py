"""The voice service: the trio shell that carries out joins, leaves, publishing,
subscribing, moderation and failures with RPCs to the SFU nodes (docs/voice.md).

Two kinds of lock, so that joins do not queue behind each other's SFU round trips:

* a channel's lock covers who is in it and where its router lives (join, leave, failover):
  short sections, a node round trip or two at most;
* a session's lock covers its own media (send transport and producers, receive transport
  and consumers): its publishing, its moderation, and each renegotiation of its receive
  transport. A renegotiation is one ``transport.consume`` round trip that closes and
  creates the consumers :meth:`VoiceChannel.plan` asks for and returns the new offer, which
  is dispatched before the lock is let go — so a subscriber's offers leave in the order
  the SFU made them, and a renegotiation that waited for the lock picks up every change
  made meanwhile (several joins cost a waiting subscriber one offer, not one each).

A change of the channel's producers (a publish, a leave, a dead transport) marks the other
participants due and returns at once; a few renegotiators per channel in the service's
nursery work through them (:data:`RENEGOTIATIONS_IN_FLIGHT`). An op 13 answer needs no lock
at all (the SFU only learns from it which closed m-sections may be recycled, which an answer
to an older offer cannot get wrong). The channel's lock is always taken before a session's,
never the other way. After each round trip a sequence checks that its session and router
are still current (a leave or a failover may have overtaken it) before recording anything.

Operations run shielded from the caller's cancellation: a gateway connection that drops
mid-join must not leave a router or transport half made; each RPC is bounded by
``--sfu-request-timeout-s`` instead.

Decisions (who may join, what a permission change means) are :mod:`.states`'s; node choice
is :mod:`.placement`'s; this module only sequences RPCs, store reads and dispatches. It logs
nothing about who is in which channel (docs/voice.md, "Privacy").
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import trio
from sqlalchemy.engine import Connection

from contract.gateway import EventName
from contract.permissions import Permission

from ..bus import Event, EventBus
from ..community import GuildSnapshot
from ..config import ControlConfig
from ..errors import NotFound
from ..node_rpc import NodeGone, NodeLink, NodeRefused, NodeRpcError
from ..nodes import NodeRegistry
from ..sessions import SESSIONS_REVOKED
from ..store import Database
from ..store import schema as t
from .placement import choose_node, node_load
from .states import (
    ConsumerEntry,
    ConsumptionPlan,
    ErrorCode,
    Review,
    VoiceChannel,
    VoiceRefused,
    VoiceRegistry,
    VoiceSession,
    join_decision,
    review,
)
from .turn_credentials import ice_servers

__all__ = ["ChannelFacts", "VoiceService", "channel_facts"]

log = logging.getLogger("control.voice")

#: Renegotiations of one channel's subscribers in flight at once. Each costs the SFU worker
#: an offer of every m-section the subscriber has (and the subscriber's answer a parse of
#: as many), so a join into a channel of N is O(N²) worker work if every subscriber is
#: renegotiated for every join: a few at a time keep the worker's request queue short (a
#: joiner's own round trips do not wait behind a fan-out) and let a subscriber whose turn
#: comes late take several joins into one offer.
RENEGOTIATIONS_IN_FLIGHT = 2

#: Bus events after which the voice permissions of a guild's participants are re-decided.
PERMISSION_EVENTS = frozenset(
    {
        EventName.GUILD_UPDATE,
        EventName.GUILD_DELETE,
        EventName.GUILD_MEMBER_UPDATE,
        EventName.GUILD_MEMBER_REMOVE,
        EventName.GUILD_ROLE_UPDATE,
        EventName.GUILD_ROLE_DELETE,
        EventName.GUILD_ROLES_UPDATE,
        EventName.CHANNEL_CREATE,
        EventName.CHANNEL_UPDATE,
        EventName.CHANNEL_DELETE,
    }
)


@dataclass(frozen=True)
class ChannelFacts:
    """What a join needs from the store: the channel's type and limit, the member's
    permissions in it."""

    channel_type: str
    user_limit: int
    permissions: int


def channel_facts(conn: Connection, guild_id: str, channel_id: str, user_id: str) -> ChannelFacts:
    """The facts of ``channel_id`` for ``user_id``; a channel of another guild, or one the
    member cannot see, is refused as ``forbidden`` without saying whether it exists."""
    row = conn.execute(sa.select(t.channels).where(t.channels.c.id == channel_id)).first()
    if row is None or row.guild_id != guild_id:
        raise VoiceRefused(ErrorCode.FORBIDDEN, "no such channel")
    try:
        snapshot = GuildSnapshot(conn, guild_id)
    except NotFound:
        raise VoiceRefused(ErrorCode.FORBIDDEN, "no such channel") from None
    permissions = snapshot.channel_permissions(user_id, channel_id)
    if not permissions & Permission.VIEW_CHANNEL:
        raise VoiceRefused(ErrorCode.FORBIDDEN, "no such channel")
    return ChannelFacts(row.type, row.user_limit, permissions)


def _audience(conn: Connection, guild_id: str, channel_id: str) -> frozenset[str]:
    try:
        return GuildSnapshot(conn, guild_id).holders(channel_id)
    except NotFound:
        return frozenset()


def _snapshot(conn: Connection, guild_id: str) -> GuildSnapshot | None:
    try:
        return GuildSnapshot(conn, guild_id)
    except NotFound:
        return None


def _transport_params(router_id: str, near: str | None) -> dict[str, Any]:
    """``transport.create``'s params: a session's second transport goes ``near`` its
    first, so that a node which spreads a channel over its workers keeps one participant's
    media on one worker (docs/sfu.md, "One channel across cores")."""
    return {"router_id": router_id} if near is None else {"router_id": router_id, "near": near}


class VoiceService:
    """Voice channels of this control process (see module docstring)."""

    def __init__(
        self,
        config: ControlConfig,
        db: Database,
        bus: EventBus,
        nodes: NodeRegistry,
        turn_secret: bytes | None,
    ) -> None:
        self.config = config
        self.db = db
        self.bus = bus
        self.nodes = nodes
        self.registry = VoiceRegistry()
        self._turn_secret = turn_secret
        self._locks: dict[str, trio.Lock] = {}
        #: voice session id -> the lock of its media (see module docstring)
        self._session_locks: dict[str, trio.Lock] = {}
        #: channel id -> subscribers due a renegotiation, in the order they became due
        self._due: dict[str, dict[VoiceSession, None]] = {}
        #: channel id -> renegotiators running for it
        self._renegotiators: dict[str, int] = {}
        #: audible producer id -> the token of its pending drop (it fell silent)
        self._quiet: dict[str, object] = {}
        self._nursery: trio.Nursery | None = None
        self._sweep_wake = trio.Event()
        self._recheck_pending: set[str] = set()
        bus.subscribe(self._on_bus_event)

    # -- life ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the service's background work (grace sweeps, node events, re-checks)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._sweep)
            task_status.started()

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> bool:
        """Run ``fn`` in the service's nursery; False before :meth:`run` has started."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(self._guarded, fn, *args)
        return True

    async def _guarded(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        with contextlib.suppress(NodeRpcError, VoiceRefused):
            await fn(*args)

    def _lock(self, channel_id: str) -> trio.Lock:
        lock = self._locks.get(channel_id)
        if lock is None:
            lock = self._locks[channel_id] = trio.Lock()
        return lock

    def _session_lock(self, session: VoiceSession) -> trio.Lock:
        lock = self._session_locks.get(session.id)
        if lock is None:
            lock = self._session_locks[session.id] = trio.Lock()
        return lock

    def _current(self, session: VoiceSession, router_id: str) -> bool:
        """Whether ``session`` is still its device's and its channel's router still
        ``router_id``: false once a leave or a failover overtook a round trip."""
        channel = self.registry.channels.get(session.channel_id)
        return (
            self.registry.of_device(session.device_id) is session
            and channel is not None
            and channel.router_id == router_id
        )

    # -- dispatch helpers ----------------------------------------------------------------

    async def _dispatch(
        self,
        event: EventName,
        data: dict[str, Any],
        *,
        users: Iterable[str] = (),
        devices: Iterable[str] = (),
    ) -> None:
        await self.bus.publish(Event(event, data, frozenset(users), frozenset(devices)))

    async def _error(
        self, device_id: str, guild_id: Any, channel_id: Any, refused: VoiceRefused
    ) -> None:
        await self._dispatch(
            EventName.VOICE_ERROR,
            {
                "guild_id": guild_id,
                "channel_id": channel_id,
                "code": str(refused.code),
                "message": refused.message,
            },
            devices=[device_id],
        )

    async def _device_error(self, device_id: str, refused: VoiceRefused) -> None:
        """VOICE_ERROR naming the device's current channel (if any)."""
        session = self.registry.of_device(device_id)
        guild_id = session.guild_id if session is not None else None
        channel_id = session.channel_id if session is not None else None
        await self._error(device_id, guild_id, channel_id, refused)

    async def _announce(self, session: VoiceSession, data: dict[str, Any]) -> None:
        """VOICE_STATE_UPDATE to the members who can see the channel, and the device."""
        guild_id, channel_id = session.guild_id, session.channel_id
        audience = await self.db.read(lambda conn: _audience(conn, guild_id, channel_id))
        await self._dispatch(
            EventName.VOICE_STATE_UPDATE, data, users=audience, devices=[session.device_id]
        )

    async def _server_update(self, session: VoiceSession) -> None:
        """VOICE_SERVER_UPDATE with fresh TURN credentials: the device (re)starts media."""
        servers = ice_servers(
            self.config.turn_url,
            self._turn_secret,
            session.turn_id,
            time.time(),
            self.config.turn_credential_ttl_s,
        )
        await self._dispatch(
            EventName.VOICE_SERVER_UPDATE,
            {
                "guild_id": session.guild_id,
                "channel_id": session.channel_id,
                "voice_session_id": session.id,
                "sender_index": session.sender_index,
                "ice_servers": servers,
            },
            devices=[session.device_id],
        )

    def _link(self, channel: VoiceChannel) -> NodeLink:
        node = self.nodes.get(channel.node_id)
        if node is None or node.link is None:
            raise NodeGone(f"node {channel.node_id} is gone")
        return node.link

    def _maybe_link(self, channel: VoiceChannel | None) -> NodeLink | None:
        node = self.nodes.get(channel.node_id) if channel is not None else None
        return node.link if node is not None else None

    # -- gateway ops ----------------------------------------------------------------------

    async def voice_state_update(
        self,
        user_id: str,
        device_id: str,
        guild_id: str,
        channel_id: str | None,
        self_mute: bool,
        self_deaf: bool,
    ) -> None:
        """Op 4: join, move, change self mute/deaf, or leave (``channel_id`` None)."""
        with trio.CancelScope(shield=True):
            try:
                await self._state_update(
                    user_id, device_id, guild_id, channel_id, self_mute, self_deaf
                )
            except VoiceRefused as refused:
                await self._error(device_id, guild_id, channel_id, refused)
            except NodeRpcError as exc:
                await self._error(
                    device_id, guild_id, channel_id, VoiceRefused(ErrorCode.SFU_ERROR, str(exc))
                )

    async def _state_update(
        self,
        user_id: str,
        device_id: str,
        guild_id: str,
        channel_id: str | None,
        self_mute: bool,
        self_deaf: bool,
    ) -> None:
        current = self.registry.of_device(device_id)
        if channel_id is None:
            if current is not None and current.guild_id == guild_id:
                await self.leave(current)
            return
        if current is not None and current.channel_id == channel_id:
            async with self._lock(channel_id):
                if self.registry.of_device(device_id) is not current:
                    return
                current.self_mute, current.self_deaf = self_mute, self_deaf
            await self._announce(current, current.state())
            return
        facts = await self.db.read(lambda conn: channel_facts(conn, guild_id, channel_id, user_id))
        # Decided before leaving the old channel, so a refused move leaves the member where
        # they were (the limit is checked again under the lock).
        join_decision(facts.channel_type, facts.permissions, 0, 0)
        if current is not None:
            await self.leave(current, announce=False)
        try:
            await self.join(
                user_id,
                device_id,
                guild_id,
                channel_id,
                facts,
                self_mute=self_mute,
                self_deaf=self_deaf,
            )
        except VoiceRefused:
            if current is not None:
                await self._announce(current, current.left())
            raise
        if current is not None:
            await self._moved(current, channel_id)

    async def join(
        self,
        user_id: str,
        device_id: str,
        guild_id: str,
        channel_id: str,
        facts: ChannelFacts,
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
        moved: bool = False,
    ) -> VoiceSession:
        """Put a device into a channel (placing the router if the channel is empty); a
        ``moved`` member passes the user limit."""
        permissions = facts.permissions | (Permission.MOVE_MEMBERS if moved else 0)
        async with self._lock(channel_id):
            if self.registry.of_device(device_id) is not None:
                raise VoiceRefused(ErrorCode.BAD_SESSION, "another voice update is in progress")
            channel = self.registry.channels.get(channel_id)
            others = channel.other_users(user_id) if channel is not None else 0
            suppress = join_decision(facts.channel_type, permissions, facts.user_limit, others)
            if channel is None:
                node_id, router_id = await self._place()
                channel = self.registry.open_channel(
                    guild_id, channel_id, node_id, router_id, self.config.voice_large_channel
                )
            session = self.registry.add(channel, user_id, device_id, suppress=suppress)
            session.self_mute, session.self_deaf = self_mute, self_deaf
            # Held from before anyone can see the session until its first offer is out, so
            # no renegotiation of it overtakes its VOICE_SERVER_UPDATE.
            media = self._session_lock(session)
            await media.acquire()
        try:
            await self._server_update(session)
            # The announcement (a store read) and the first offer (node round trips) do not
            # wait for each other: the device may see them in either order.
            failure: NodeRpcError | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._announce, session, session.state())
                nursery.start_soon(self._tell_speaker, channel, session)
                try:
                    await self._renegotiate_locked(session)
                except NodeRpcError as exc:
                    failure = exc  # raised as itself, not in the nursery's exception group
            if failure is not None:
                raise failure
        finally:
            media.release()
        return session

    async def _tell_speaker(self, channel: VoiceChannel, session: VoiceSession) -> None:
        """SPEAKING for the channel's current speaker, to a device that just joined:
        SPEAKING is sent on changes only, so without it a newcomer would not know who is
        speaking until the speaker changes."""
        speaker = channel.sessions.get(channel.speaking) if channel.speaking is not None else None
        if speaker is None or speaker is session:
            return
        await self._dispatch(
            EventName.SPEAKING,
            {
                "guild_id": speaker.guild_id,
                "channel_id": speaker.channel_id,
                "user_id": speaker.user_id,
                "device_id": speaker.device_id,
                "speaking": True,
            },
            devices=[session.device_id],
        )

    async def _place(self, exclude: frozenset[str] = frozenset()) -> tuple[str, str]:
        """Create a router on the least-loaded healthy node; ``no_sfu`` when none answers."""
        tried = set(exclude)
        while True:
            candidates = [
                node_load(n.node_id, n.workers, n.stats, self.registry.participants_on(n.node_id))
                for n in self.nodes.healthy()
            ]
            node_id = choose_node(candidates, frozenset(tried))
            node = self.nodes.get(node_id) if node_id is not None else None
            if node_id is None or node is None or node.link is None:
                raise VoiceRefused(ErrorCode.NO_SFU, "no healthy SFU node")
            try:
                created = await node.link.request("router.create")
            except NodeRpcError:
                log.warning("SFU node %s did not create a router", node_id)
                tried.add(node_id)
                continue
            return node_id, str(created["router_id"])

    async def _renegotiate(self, session: VoiceSession) -> None:
        """Bring the session's consumers in line with the channel's producers and send it
        the new offer (see module docstring)."""
        async with self._session_lock(session):
            await self._renegotiate_locked(session)

    async def _renegotiate_locked(self, session: VoiceSession) -> None:
        channel = self.registry.channels.get(session.channel_id)
        if channel is None or self.registry.of_device(session.device_id) is not session:
            return
        plan = channel.plan(session)
        if not plan or (session.recv_transport is None and not plan.consume):
            return
        router_id = channel.router_id
        link = self._link(channel)
        if session.recv_transport is None:
            created = await link.request(
                "transport.create", _transport_params(router_id, session.send_transport)
            )
            if not self._current(session, router_id):
                return
            self.registry.set_transport(session, str(created["transport_id"]), send=False)
        assert session.recv_transport is not None
        result = await link.request(
            "transport.consume",
            {
                "transport_id": session.recv_transport,
                "close": plan.close,
                "consume": [
                    {"producer_id": producer_id, "paused": session.deaf}
                    for _, producer_id, _ in plan.consume
                ],
            },
        )
        if not self._current(session, router_id):
            return
        self._record(session, plan, result["consumers"])
        if "sdp_offer" in result:
            await self._dispatch(
                EventName.VOICE_SUBSCRIBE_OFFER,
                {
                    "voice_session_id": session.id,
                    "sdp_offer": result["sdp_offer"],
                    "consumers": [entry.wire() for entry in session.consumers.values()],
                },
                devices=[session.device_id],
            )

    @staticmethod
    def _record(
        session: VoiceSession, plan: ConsumptionPlan, created: list[dict[str, Any]]
    ) -> None:
        """Note what a ``transport.consume`` closed and created (in the plan's order)."""
        for consumer_id in plan.close:
            session.consumers.pop(consumer_id, None)
        owners = {producer_id: (other, kind) for other, producer_id, kind in plan.consume}
        for consumer in created:
            producer_id = str(consumer["producer_id"])
            other, kind = owners[producer_id]
            entry = ConsumerEntry(
                str(consumer["consumer_id"]),
                producer_id,
                str(consumer["mid"]),
                kind,
                other.user_id,
                other.device_id,
                other.sender_index,
            )
            session.consumers[entry.consumer_id] = entry

    def _renegotiate_others(self, channel: VoiceChannel, session: VoiceSession) -> None:
        """Producers of ``session`` that others consume came or went (see :meth:`_heard`):
        everyone else is due a renegotiation. They wait in the channel's queue for one of
        at most
        :data:`RENEGOTIATIONS_IN_FLIGHT` renegotiators; a subscriber already waiting keeps
        its place, and its plan is made when its turn comes, so it then takes in every
        change made while it waited."""
        due = self._due.setdefault(channel.channel_id, {})
        for other in channel.sessions.values():
            if other is not session:
                due[other] = None
        running = self._renegotiators.get(channel.channel_id, 0)
        while running < min(RENEGOTIATIONS_IN_FLIGHT, len(due)) and self._spawn(
            self._renegotiator, channel.channel_id
        ):
            running += 1
        self._renegotiators[channel.channel_id] = running

    @staticmethod
    def _heard(channel: VoiceChannel, producers: dict[str, str]) -> bool:
        """Whether any of these producers (id -> kind) is consumed: in a large channel a
        silent member's coming and going then costs the others no renegotiation."""
        return any(channel.consumed(p, kind) for p, kind in producers.items())

    async def _renegotiator(self, channel_id: str) -> None:
        """Renegotiate the channel's due subscribers one after another until none is left."""
        try:
            while due := self._due.get(channel_id):
                session = next(iter(due))
                del due[session]
                with contextlib.suppress(NodeRpcError, VoiceRefused):
                    await self._renegotiate(session)
        finally:
            running = self._renegotiators.pop(channel_id, 1) - 1
            if running:
                self._renegotiators[channel_id] = running
            elif not self._due.get(channel_id):
                self._due.pop(channel_id, None)

    async def publish(self, device_id: str, voice_session_id: str, sdp_offer: str) -> None:
        """Op 12: the send transport's offer; producers are made and others subscribed."""
        with trio.CancelScope(shield=True):
            try:
                await self._publish(device_id, voice_session_id, sdp_offer)
            except VoiceRefused as refused:
                await self._device_error(device_id, refused)
            except NodeRpcError as exc:
                await self._device_error(device_id, VoiceRefused(ErrorCode.SFU_ERROR, str(exc)))

    async def _publish(self, device_id: str, voice_session_id: str, sdp_offer: str) -> None:
        session = self.registry.require(device_id, voice_session_id)
        async with self._session_lock(session):
            session = self.registry.require(device_id, voice_session_id)
            channel = self.registry.channels[session.channel_id]
            router_id = channel.router_id
            link = self._link(channel)
            heard = self._heard(channel, session.producers)
            changed = False
            if session.send_transport is None:
                created = await link.request(
                    "transport.create", _transport_params(router_id, session.recv_transport)
                )
                if not self._current(session, router_id):
                    return
                self.registry.set_transport(session, str(created["transport_id"]), send=True)
            else:
                # A new offer describes every track again: the old producers go first.
                changed = await self._close_producers(link, session)
            try:
                result = await link.request(
                    "transport.connect",
                    {"transport_id": session.send_transport, "sdp_offer": sdp_offer},
                )
            except NodeRefused as exc:
                if changed and heard:
                    self._renegotiate_others(channel, session)
                raise VoiceRefused(ErrorCode.SFU_ERROR, exc.message) from None
            if not self._current(session, router_id):
                return
            for producer in result.get("producers", []):
                producer_id = str(producer["producer_id"])
                self.registry.add_producer(session, producer_id, str(producer["kind"]))
                if session.silenced:
                    # Before the answer goes out: not one packet is forwarded unmuted.
                    await link.request("producer.mute", {"producer_id": producer_id, "muted": True})
            await self._dispatch(
                EventName.VOICE_PUBLISH_ANSWER,
                {"voice_session_id": session.id, "sdp_answer": result["sdp_answer"]},
                devices=[device_id],
            )
        if heard or self._heard(channel, session.producers):
            self._renegotiate_others(channel, session)

    async def _close_producers(self, link: NodeLink, session: VoiceSession) -> bool:
        """Close the session's producers (the SFU closes their consumers with them and
        turns those m-sections inactive); returns whether there were any, i.e. whether the
        others need renegotiating."""
        producers = list(session.producers)
        self.registry.forget_producers(session)
        for producer_id in producers:
            with contextlib.suppress(NodeRefused):
                await link.request("producer.close", {"producer_id": producer_id})
        return bool(producers)

    async def subscribe_answer(
        self, device_id: str, voice_session_id: str, sdp_answer: str
    ) -> None:
        """Op 13: the answer to the latest VOICE_SUBSCRIBE_OFFER."""
        with trio.CancelScope(shield=True):
            try:
                await self._subscribe_answer(device_id, voice_session_id, sdp_answer)
            except VoiceRefused as refused:
                await self._device_error(device_id, refused)
            except NodeRpcError as exc:
                await self._device_error(device_id, VoiceRefused(ErrorCode.SFU_ERROR, str(exc)))

    async def _subscribe_answer(
        self, device_id: str, voice_session_id: str, sdp_answer: str
    ) -> None:
        # No lock (module docstring): the answer goes to the receive transport as it is now.
        session = self.registry.require(device_id, voice_session_id)
        if session.recv_transport is None:
            raise VoiceRefused(ErrorCode.BAD_SESSION, "no subscribe offer is outstanding")
        link = self._link(self.registry.channels[session.channel_id])
        try:
            await link.request(
                "transport.answer",
                {"transport_id": session.recv_transport, "sdp_answer": sdp_answer},
            )
        except NodeRefused as exc:
            raise VoiceRefused(ErrorCode.SFU_ERROR, exc.message) from None

    # -- leaving --------------------------------------------------------------------------

    async def leave(self, session: VoiceSession, *, announce: bool = True) -> None:
        """Take a session out of its channel: close its consumers elsewhere and its
        transports, renegotiate the rest, close the router after the last one. A move
        announces nothing here (:meth:`_moved`)."""
        with trio.CancelScope(shield=True):
            async with self._lock(session.channel_id):
                if self.registry.of_device(session.device_id) is not session:
                    return
                channel = self.registry.channels.get(session.channel_id)
                link = self._maybe_link(channel)
                async with self._session_lock(session):
                    heard = self._heard(channel, session.producers) if channel else False
                    self.registry.forget_producers(session)
                    if link is not None and not link.closed:
                        # Closing the send transport closes its producers, and those their
                        # consumers: the others' m-sections of them turn inactive.
                        for transport_id in (session.send_transport, session.recv_transport):
                            if transport_id is not None:
                                with contextlib.suppress(NodeRpcError):
                                    await link.request(
                                        "transport.close", {"transport_id": transport_id}
                                    )
                    self.registry.remove(session)
                self._session_locks.pop(session.id, None)
                if channel is not None and not channel.sessions:
                    self.registry.close_channel(channel)
                    self._locks.pop(channel.channel_id, None)
                    if link is not None:
                        with contextlib.suppress(NodeRpcError):
                            await link.request("router.close", {"router_id": channel.router_id})
                elif channel is not None and heard and link is not None:
                    self._renegotiate_others(channel, session)
            if announce:
                await self._announce(session, session.left())

    async def _moved(self, session: VoiceSession, channel_id: str) -> None:
        """After a move: the join announced the new channel to those who see it, the device
        included (a ``channel_id: null`` in between would end the device's call); those who
        saw only the old channel learn that the session left it."""
        guild_id, old = session.guild_id, session.channel_id
        before = await self.db.read(lambda conn: _audience(conn, guild_id, old))
        after = await self.db.read(lambda conn: _audience(conn, guild_id, channel_id))
        if before - after:
            await self._dispatch(EventName.VOICE_STATE_UPDATE, session.left(), users=before - after)

    # -- moderation -----------------------------------------------------------------------

    async def set_server_mute(
        self, guild_id: str, user_id: str, mute: bool | None, deaf: bool | None
    ) -> None:
        """Server mute/deafen a member: the SFU stops forwarding their producers
        (``producer.mute``) or pauses their consumers."""
        self.registry.set_server_mute(guild_id, user_id, mute, deaf)
        with trio.CancelScope(shield=True):
            for session in self.registry.of_user(guild_id, user_id):
                await self._apply_silence(session)

    async def _apply_silence(self, session: VoiceSession) -> None:
        """Bring the SFU in line with the session's mute, suppress and deaf, and announce."""
        async with self._session_lock(session):
            if self.registry.of_device(session.device_id) is not session:
                return
            link = self._link(self.registry.channels[session.channel_id])
            for producer_id in session.producers:
                await link.request(
                    "producer.mute", {"producer_id": producer_id, "muted": session.silenced}
                )
            method = "consumer.pause" if session.deaf else "consumer.resume"
            for consumer_id in session.consumers:
                with contextlib.suppress(NodeRefused):
                    await link.request(method, {"consumer_id": consumer_id})
        await self._announce(session, session.state())

    async def move(self, session: VoiceSession, channel_id: str, facts: ChannelFacts) -> None:
        """Move a session to another channel of its guild (a moderator's MOVE_MEMBERS)."""
        with trio.CancelScope(shield=True):
            self_mute, self_deaf = session.self_mute, session.self_deaf
            await self.leave(session, announce=False)
            try:
                await self.join(
                    session.user_id,
                    session.device_id,
                    session.guild_id,
                    channel_id,
                    facts,
                    self_mute=self_mute,
                    self_deaf=self_deaf,
                    moved=True,
                )
            except VoiceRefused as refused:
                await self._announce(session, session.left())
                await self._error(session.device_id, session.guild_id, channel_id, refused)
                return
            await self._moved(session, channel_id)

    # -- permission changes ---------------------------------------------------------------

    def _on_bus_event(self, event: Event) -> None:
        if event.type == SESSIONS_REVOKED:
            for key in ("device_id", "user_id"):
                value = event.data.get(key)
                if isinstance(value, str):
                    for session in self.registry.sessions():
                        if getattr(session, key) == value:
                            self._spawn(self.leave, session)
            return
        if event.type not in PERMISSION_EVENTS:
            return
        guild_id = event.data.get("guild_id")
        if guild_id is None and event.type in (EventName.GUILD_UPDATE, EventName.GUILD_DELETE):
            guild_id = event.data.get("id")
        if (
            isinstance(guild_id, str)
            and guild_id not in self._recheck_pending
            and self.registry.guild_has_sessions(guild_id)
        ):
            self._recheck_pending.add(guild_id)
            self._spawn(self.recheck_guild, guild_id)

    async def recheck_guild(self, guild_id: str) -> None:
        """Re-decide every voice session of the guild against the permissions now stored:
        without CONNECT (or the channel, or membership) it ends; SPEAK lost or regained
        suppresses or releases it at the SFU."""
        self._recheck_pending.discard(guild_id)
        snapshot = await self.db.read(lambda conn: _snapshot(conn, guild_id))
        for session in self.registry.of_guild(guild_id):
            if snapshot is None or session.channel_id not in snapshot.channels:
                decision = Review.DISCONNECT
            else:
                permissions = snapshot.channel_permissions(session.user_id, session.channel_id)
                decision = review(permissions, session.suppress)
            if decision is Review.DISCONNECT:
                await self.leave(session)
            elif decision is not Review.KEEP:
                session.suppress = decision is Review.SUPPRESS
                with contextlib.suppress(NodeRpcError):
                    await self._apply_silence(session)

    # -- gateway connections --------------------------------------------------------------

    def gateway_attached(self, device_id: str) -> None:
        """The device has a gateway connection again: its voice session stays."""
        session = self.registry.of_device(device_id)
        if session is not None:
            session.detached_at = None

    def gateway_detached(self, device_id: str, now: float) -> None:
        """The device's last gateway connection dropped: its voice session is removed
        unless it comes back within ``--voice-grace-s``."""
        session = self.registry.of_device(device_id)
        if session is not None and session.detached_at is None:
            session.detached_at = now
            self._sweep_wake.set()

    async def _sweep(self) -> None:
        grace = self.config.voice_grace_s
        while True:
            earliest = self.registry.earliest_detach()
            deadline = math.inf if earliest is None else earliest + grace
            with trio.move_on_at(deadline):
                await self._sweep_wake.wait()
            self._sweep_wake = trio.Event()
            for session in self.registry.detached_before(trio.current_time() - grace):
                session.detached_at = None
                self._spawn(self.leave, session)

    # -- SFU node events ------------------------------------------------------------------

    def on_node_event(self, node_id: str, event: str, data: dict[str, Any]) -> None:
        """An event from an SFU node (``speaker``, ``transport.closed``)."""
        if event == "speaker":
            router_id, producer_id = data.get("router_id"), data.get("producer_id")
            if isinstance(router_id, str) and isinstance(producer_id, str):
                self._spawn(self._speaker, router_id, producer_id)
        elif event == "voice":
            router_id, producer_id = data.get("router_id"), data.get("producer_id")
            active = data.get("active")
            if isinstance(router_id, str) and isinstance(producer_id, str):
                self._voice(router_id, producer_id, active is True)
        elif event == "transport.closed":
            transport_id = data.get("transport_id")
            if isinstance(transport_id, str):
                self._spawn(self._transport_closed, transport_id)

    async def _speaker(self, router_id: str, producer_id: str) -> None:
        channel = self.registry.by_router(router_id)
        session = self.registry.by_producer(producer_id)
        if channel is None or session is None or session.channel_id != channel.channel_id:
            return
        previous, channel.speaking = channel.speaking, session.device_id
        if previous == session.device_id:
            return
        audience = channel.devices()
        before = channel.sessions.get(previous) if previous is not None else None
        for speaker, speaking in ((before, False), (session, True)):
            if speaker is not None:
                await self._dispatch(
                    EventName.SPEAKING,
                    {
                        "guild_id": speaker.guild_id,
                        "channel_id": speaker.channel_id,
                        "user_id": speaker.user_id,
                        "device_id": speaker.device_id,
                        "speaking": speaking,
                    },
                    devices=audience,
                )

    def _voice(self, router_id: str, producer_id: str, active: bool) -> None:
        """Voice activity of a producer (the SFU's ``voice`` event): it becomes audible at
        once; it stops being audible after ``--voice-silent-drop-s`` of silence (a large
        channel's subscribers then stop consuming it)."""
        channel = self.registry.by_router(router_id)
        session = self.registry.by_producer(producer_id)
        if channel is None or session is None or session.channel_id != channel.channel_id:
            return
        if active:
            self._quiet.pop(producer_id, None)
            if channel.voiced(producer_id) and channel.large:
                self._renegotiate_others(channel, session)
        elif producer_id in channel.audible:
            channel.unvoiced(producer_id)
            token = self._quiet[producer_id] = object()
            self._spawn(self._drop_when_silent, channel, producer_id, token)

    async def _drop_when_silent(
        self, channel: VoiceChannel, producer_id: str, token: object
    ) -> None:
        await trio.sleep(self.config.voice_silent_drop_s)
        if self._quiet.get(producer_id) is not token:
            return  # it spoke again meanwhile
        del self._quiet[producer_id]
        session = self.registry.by_producer(producer_id)
        if producer_id in channel.audible and session is not None:
            channel.forget_audible(producer_id)
            if channel.large:
                self._renegotiate_others(channel, session)

    async def _transport_closed(self, transport_id: str) -> None:
        """A transport died on the SFU (ICE consent lost, never connected): the session's
        media starts over — its other transport closes, its consumers elsewhere go, and the
        device gets a new VOICE_SERVER_UPDATE."""
        session = self.registry.by_transport(transport_id)
        if session is None:
            return
        async with self._session_lock(session):
            if self.registry.by_transport(transport_id) is not session:
                return
            channel = self.registry.channels[session.channel_id]
            link = self._link(channel)
            heard = self._heard(channel, session.producers)
            await self._close_producers(link, session)
            for other_id in (session.send_transport, session.recv_transport):
                if other_id is not None and other_id != transport_id:
                    with contextlib.suppress(NodeRefused):
                        await link.request("transport.close", {"transport_id": other_id})
            self.registry.forget_media(session)
            await self._server_update(session)
        if heard:
            self._renegotiate_others(channel, session)

    def node_lost(self, node_id: str) -> None:
        """A node's link closed: its channels are placed elsewhere."""
        for channel in self.registry.on_node(node_id):
            self._spawn(self._replace, channel, node_id)

    async def _replace(self, channel: VoiceChannel, node_id: str) -> None:
        """Re-create the router of a channel whose node failed on another node and tell its
        participants to reconnect; with no node left, they are disconnected (``no_sfu``)."""
        stranded: list[VoiceSession] = []
        async with self._lock(channel.channel_id):
            if channel.node_id != node_id or not channel.sessions:
                return
            try:
                new_node, router_id = await self._place(exclude=frozenset({node_id}))
            except VoiceRefused as refused:
                stranded = list(channel.sessions.values())
                for session in stranded:
                    await self._error(
                        session.device_id, session.guild_id, channel.channel_id, refused
                    )
            else:
                self.registry.move_channel(channel, new_node, router_id)
                for session in channel.sessions.values():
                    await self._server_update(session)
        for session in stranded:
            await self.leave(session)

    # -- READY -------------------------------------------------------------------------------

    def states(self, channel_ids: set[str]) -> list[dict[str, Any]]:
        """Voice states of the channels a READY lists."""
        return self.registry.states(channel_ids)
