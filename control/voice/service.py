"""The voice service: the trio shell that carries out joins, leaves, publishing,
subscribing, moderation and failures with RPCs to the SFU nodes (docs/voice.md).

Every change to a channel runs under that channel's lock, so the renegotiations of one
channel never interleave (an offer is always built from a settled set of consumers).
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

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._guarded, fn, *args)

    async def _guarded(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        with contextlib.suppress(NodeRpcError, VoiceRefused):
            await fn(*args)

    def _lock(self, channel_id: str) -> trio.Lock:
        lock = self._locks.get(channel_id)
        if lock is None:
            lock = self._locks[channel_id] = trio.Lock()
        return lock

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
                channel = self.registry.open_channel(guild_id, channel_id, node_id, router_id)
            session = self.registry.add(channel, user_id, device_id, suppress=suppress)
            session.self_mute, session.self_deaf = self_mute, self_deaf
            await self._server_update(session)
            await self._announce(session, session.state())
            await self._tell_speaker(channel, session)
            await self._subscribe(channel, session)
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

    async def _subscribe(self, channel: VoiceChannel, session: VoiceSession) -> None:
        """Consume every producer of the channel the session does not consume yet, and send
        it a fresh offer when anything was added. Runs under the channel's lock."""
        consumed = {entry.producer_id for entry in session.consumers.values()}
        wanted = [
            (other, producer_id, kind)
            for other in channel.sessions.values()
            if other is not session
            for producer_id, kind in other.producers.items()
            if producer_id not in consumed
        ]
        if not wanted:
            return
        link = self._link(channel)
        if session.recv_transport is None:
            created = await link.request("transport.create", {"router_id": channel.router_id})
            self.registry.set_transport(session, str(created["transport_id"]), send=False)
        assert session.recv_transport is not None
        for other, producer_id, kind in wanted:
            consumer = await link.request(
                "consumer.create",
                {
                    "transport_id": session.recv_transport,
                    "producer_id": producer_id,
                    "paused": session.deaf,
                },
            )
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
        await self._offer(link, session)

    async def _offer(self, link: NodeLink, session: VoiceSession) -> None:
        """VOICE_SUBSCRIBE_OFFER for the session's receive transport as it stands."""
        if session.recv_transport is None:
            return
        try:
            offer = await link.request("transport.offer", {"transport_id": session.recv_transport})
        except NodeRefused:
            return  # nothing to offer (never consumed anything)
        await self._dispatch(
            EventName.VOICE_SUBSCRIBE_OFFER,
            {
                "voice_session_id": session.id,
                "sdp_offer": offer["sdp_offer"],
                "consumers": [entry.wire() for entry in session.consumers.values()],
            },
            devices=[session.device_id],
        )

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
        channel_id = self.registry.require(device_id, voice_session_id).channel_id
        async with self._lock(channel_id):
            session = self.registry.require(device_id, voice_session_id)
            channel = self.registry.channels[channel_id]
            link = self._link(channel)
            affected: set[VoiceSession] = set()
            if session.send_transport is None:
                created = await link.request("transport.create", {"router_id": channel.router_id})
                self.registry.set_transport(session, str(created["transport_id"]), send=True)
            else:
                # A new offer describes every track again: the old producers go first.
                affected = await self._close_producers(link, session)
            try:
                result = await link.request(
                    "transport.connect",
                    {"transport_id": session.send_transport, "sdp_offer": sdp_offer},
                )
            except NodeRefused as exc:
                for other in affected:
                    await self._offer(link, other)
                raise VoiceRefused(ErrorCode.SFU_ERROR, exc.message) from None
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
            for other in list(channel.sessions.values()):
                if other is not session:
                    await self._subscribe(channel, other)
                    affected.discard(other)
            for other in affected:
                await self._offer(link, other)

    async def _close_producers(self, link: NodeLink, session: VoiceSession) -> set[VoiceSession]:
        """Close the session's producers and their consumers (each consumer closed by name,
        so its m-section turns inactive in the subscriber's next offer); returns the
        subscribers to renegotiate."""
        producers = list(session.producers)
        closed = self.registry.drop_producers(session)
        for _, consumer_id in closed:
            with contextlib.suppress(NodeRefused):
                await link.request("consumer.close", {"consumer_id": consumer_id})
        for producer_id in producers:
            with contextlib.suppress(NodeRefused):
                await link.request("producer.close", {"producer_id": producer_id})
        return {other for other, _ in closed}

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
        channel_id = self.registry.require(device_id, voice_session_id).channel_id
        async with self._lock(channel_id):
            session = self.registry.require(device_id, voice_session_id)
            if session.recv_transport is None:
                raise VoiceRefused(ErrorCode.BAD_SESSION, "no subscribe offer is outstanding")
            link = self._link(self.registry.channels[channel_id])
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
                affected: set[VoiceSession] = set()
                if link is not None and not link.closed:
                    with contextlib.suppress(NodeRpcError):
                        affected = await self._close_producers(link, session)
                        for transport_id in (session.send_transport, session.recv_transport):
                            if transport_id is not None:
                                with contextlib.suppress(NodeRefused):
                                    await link.request(
                                        "transport.close", {"transport_id": transport_id}
                                    )
                else:
                    affected = {other for other, _ in self.registry.drop_producers(session)}
                self.registry.remove(session)
                if link is not None:
                    for other in affected:
                        with contextlib.suppress(NodeRpcError):
                            await self._offer(link, other)
                if channel is not None and not channel.sessions:
                    self.registry.close_channel(channel)
                    self._locks.pop(channel.channel_id, None)
                    if link is not None:
                        with contextlib.suppress(NodeRpcError):
                            await link.request("router.close", {"router_id": channel.router_id})
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
        async with self._lock(session.channel_id):
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

    async def _transport_closed(self, transport_id: str) -> None:
        """A transport died on the SFU (ICE consent lost, never connected): the session's
        media starts over — its other transport closes, its consumers elsewhere go, and the
        device gets a new VOICE_SERVER_UPDATE."""
        session = self.registry.by_transport(transport_id)
        if session is None:
            return
        async with self._lock(session.channel_id):
            if self.registry.by_transport(transport_id) is not session:
                return
            channel = self.registry.channels[session.channel_id]
            link = self._link(channel)
            affected = await self._close_producers(link, session)
            for other_id in (session.send_transport, session.recv_transport):
                if other_id is not None and other_id != transport_id:
                    with contextlib.suppress(NodeRefused):
                        await link.request("transport.close", {"transport_id": other_id})
            self.registry.forget_media(session)
            for other in affected:
                await self._offer(link, other)
            await self._server_update(session)

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
