"""Voice state in memory: who is in which voice channel, with which transports, producers
and consumers on the SFU — and the permission decisions about them. Sans-I/O: no RPC, no
store, no clock of its own; :mod:`control.voice.service` drives it.

Nothing here is ever written to the store or a log (docs/voice.md, "Privacy"). The state of
a channel belongs to the control process that placed its router; with several control
processes, a channel's participants must reach that process (the event bus then carries
its dispatches to the others' gateways).
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from typing import Any

from contract.permissions import Permission

from .turn_credentials import new_turn_id

__all__ = [
    "ConsumerEntry",
    "ConsumptionPlan",
    "ErrorCode",
    "Review",
    "VoiceChannel",
    "VoiceRefused",
    "VoiceRegistry",
    "VoiceSession",
    "join_decision",
    "review",
]

#: Audio producers a large channel's subscriber consumes at most (the most recently voiced):
#: an audio m-section of the SFU's offer is ≈ 650 bytes, so even with as many closed
#: m-sections not yet recycled the offer and the client's answer stay well inside
#: ``sfu.sdp.MAX_SDP_BYTES`` and ``client.voice.signalling.MAX_SDP`` (64 KiB) and the
#: gateway's ``MAX_CLIENT_FRAME`` (80 KiB), however many members the channel has.
MAX_AUDIBLE = 32
#: The largest SFrame sender index (``e2ee.media.MAX_SENDER_INDEX``).
MAX_SENDER_INDEX = (1 << 31) - 1
P = Permission


class ErrorCode(enum.StrEnum):
    """``code`` of a VOICE_ERROR dispatch (docs/voice.md)."""

    FORBIDDEN = "forbidden"
    CHANNEL_FULL = "channel_full"
    NOT_VOICE = "not_voice"
    NO_SFU = "no_sfu"
    BAD_SESSION = "bad_session"
    SFU_ERROR = "sfu_error"


class VoiceRefused(Exception):
    """A voice request is refused with a VOICE_ERROR ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def join_decision(channel_type: str, permissions: int, user_limit: int, other_users: int) -> bool:
    """Whether a member may join a channel; returns ``suppress`` (True without SPEAK).

    ``other_users`` counts the distinct users already in the channel besides the joiner;
    a ``user_limit`` of 0 means no limit, and MOVE_MEMBERS passes it (as in Discord).
    """
    if channel_type != "voice":
        raise VoiceRefused(ErrorCode.NOT_VOICE, "not a voice channel")
    if not permissions & P.VIEW_CHANNEL or not permissions & P.CONNECT:
        raise VoiceRefused(ErrorCode.FORBIDDEN, "missing permission CONNECT")
    if user_limit and other_users >= user_limit and not permissions & P.MOVE_MEMBERS:
        raise VoiceRefused(ErrorCode.CHANNEL_FULL, "the channel is full")
    return not permissions & P.SPEAK


class Review(enum.Enum):
    """What a permission change means for a live voice session."""

    KEEP = "keep"
    DISCONNECT = "disconnect"
    SUPPRESS = "suppress"
    UNSUPPRESS = "unsuppress"


def review(permissions: int, suppressed: bool) -> Review:
    """Re-decide a live session after a role, overwrite or membership change."""
    if not permissions & P.VIEW_CHANNEL or not permissions & P.CONNECT:
        return Review.DISCONNECT
    may_speak = bool(permissions & P.SPEAK)
    if suppressed and may_speak:
        return Review.UNSUPPRESS
    if not suppressed and not may_speak:
        return Review.SUPPRESS
    return Review.KEEP


@dataclass(frozen=True)
class ConsumerEntry:
    """One consumer on a participant's receive transport: which m-section carries whom."""

    consumer_id: str
    producer_id: str
    mid: str
    kind: str
    user_id: str
    device_id: str
    sender_index: int

    def wire(self) -> dict[str, Any]:
        """As VOICE_SUBSCRIBE_OFFER lists it."""
        return {
            "mid": self.mid,
            "kind": self.kind,
            "user_id": self.user_id,
            "device_id": self.device_id,
            "sender_index": self.sender_index,
        }


@dataclass(eq=False)
class VoiceSession:
    """One device in one voice channel."""

    id: str
    user_id: str
    device_id: str
    guild_id: str
    channel_id: str
    sender_index: int
    turn_id: str = field(default_factory=new_turn_id)
    self_mute: bool = False
    self_deaf: bool = False
    mute: bool = False
    deaf: bool = False
    suppress: bool = False
    send_transport: str | None = None
    recv_transport: str | None = None
    #: producer id -> kind
    producers: dict[str, str] = field(default_factory=dict)
    #: consumer id -> entry, in creation order
    consumers: dict[str, ConsumerEntry] = field(default_factory=dict)
    #: When the device's gateway connection dropped (None while attached).
    detached_at: float | None = None

    @property
    def silenced(self) -> bool:
        """True when the SFU must not forward this session's producers."""
        return self.mute or self.suppress

    def state(self) -> dict[str, Any]:
        """The VOICE_STATE_UPDATE payload."""
        return {
            "guild_id": self.guild_id,
            "channel_id": self.channel_id,
            "user_id": self.user_id,
            "device_id": self.device_id,
            "sender_index": self.sender_index,
            "self_mute": self.self_mute,
            "self_deaf": self.self_deaf,
            "mute": self.mute,
            "deaf": self.deaf,
            "suppress": self.suppress,
        }

    def left(self) -> dict[str, Any]:
        """The VOICE_STATE_UPDATE payload announcing that the session left."""
        return {**self.state(), "channel_id": None}

    def forget_media(self) -> None:
        """Drop every transport, producer and consumer (they are gone on the SFU)."""
        self.send_transport = self.recv_transport = None
        self.producers.clear()
        self.consumers.clear()


@dataclass(frozen=True)
class ConsumptionPlan:
    """One renegotiation of a subscriber (:meth:`VoiceChannel.plan`)."""

    #: (publishing session, producer id, kind) to consume.
    consume: list[tuple[VoiceSession, str, str]]
    #: consumer ids to close.
    close: list[str]

    def __bool__(self) -> bool:
        return bool(self.consume or self.close)


@dataclass(eq=False)
class VoiceChannel:
    """A voice channel with a router on an SFU node and its participants (by device)."""

    guild_id: str
    channel_id: str
    node_id: str
    router_id: str
    sessions: dict[str, VoiceSession] = field(default_factory=dict)
    #: The device whose producer the SFU last named the active speaker.
    speaking: str | None = None
    #: Participants above which the channel is large (0: never), docs/voice.md.
    large_above: int = 0
    #: Audio producers subscribers of a large channel consume: those voiced lately, the
    #: most recently voiced last, at most :data:`MAX_AUDIBLE`.
    audible: dict[str, None] = field(default_factory=dict)
    #: Audible producers the SFU reports voiced right now (between onset and offset).
    talking: set[str] = field(default_factory=set)
    _next_index: int = field(default_factory=lambda: secrets.randbelow(1 << 16) + 1)

    def allocate_index(self) -> int:
        """A sender index no current participant holds (never reused while in use)."""
        taken = {s.sender_index for s in self.sessions.values()}
        while True:
            index = self._next_index
            self._next_index = index % MAX_SENDER_INDEX + 1
            if index not in taken:
                return index

    def other_users(self, user_id: str) -> int:
        """Distinct users in the channel besides ``user_id`` (what ``user_limit`` counts)."""
        return len({s.user_id for s in self.sessions.values()} - {user_id})

    def devices(self) -> frozenset[str]:
        """The participants' devices (the audience of SPEAKING)."""
        return frozenset(self.sessions)

    @property
    def large(self) -> bool:
        """Whether subscribers consume only audible audio (docs/voice.md, "Large
        channels")."""
        return 0 < self.large_above < len(self.sessions)

    def consumed(self, producer_id: str, kind: str) -> bool:
        """Whether subscribers consume this producer now."""
        return kind != "audio" or not self.large or producer_id in self.audible

    def voiced(self, producer_id: str) -> bool:
        """A producer began to speak: it is audible, as the most recent; returns whether
        it was not audible before. Beyond :data:`MAX_AUDIBLE` the one that fell silent
        longest ago goes (one still talking only if all are)."""
        new = producer_id not in self.audible
        self.audible.pop(producer_id, None)
        self.audible[producer_id] = None
        self.talking.add(producer_id)
        while len(self.audible) > MAX_AUDIBLE:
            oldest = next((p for p in self.audible if p not in self.talking), None)
            self.forget_audible(oldest if oldest is not None else next(iter(self.audible)))
        return new

    def unvoiced(self, producer_id: str) -> None:
        """The SFU reports the producer silent (it stays audible for now)."""
        self.talking.discard(producer_id)

    def forget_audible(self, producer_id: str) -> None:
        """The producer is no longer audible (silent too long, evicted or closed)."""
        self.audible.pop(producer_id, None)
        self.talking.discard(producer_id)

    def plan(self, session: VoiceSession) -> ConsumptionPlan:
        """What ``session``'s receive transport must change to consume the producers of the
        others in the channel it should (:meth:`consumed`): producers to consume, and
        consumers to close (of producers that are gone or no longer consumed)."""
        wanted = {
            producer_id: (other, kind)
            for other in self.sessions.values()
            if other is not session
            for producer_id, kind in other.producers.items()
            if self.consumed(producer_id, kind)
        }
        consumed = {entry.producer_id for entry in session.consumers.values()}
        return ConsumptionPlan(
            consume=[
                (other, producer_id, kind)
                for producer_id, (other, kind) in wanted.items()
                if producer_id not in consumed
            ],
            close=[
                consumer_id
                for consumer_id, entry in session.consumers.items()
                if entry.producer_id not in wanted
            ],
        )


class VoiceRegistry:
    """Every voice session and channel this process holds, with the SFU ids indexed."""

    def __init__(self) -> None:
        self.channels: dict[str, VoiceChannel] = {}
        self._by_device: dict[str, VoiceSession] = {}
        self._by_transport: dict[str, VoiceSession] = {}
        self._by_producer: dict[str, VoiceSession] = {}
        self._by_router: dict[str, VoiceChannel] = {}
        #: (guild id, user id) -> (mute, deaf) set by moderators; memory only, so a member
        #: cannot shed a server mute by leaving and joining again while this process runs.
        self.server_mutes: dict[tuple[str, str], tuple[bool, bool]] = {}

    # -- lookups ------------------------------------------------------------------------

    def sessions(self) -> list[VoiceSession]:
        """Every voice session."""
        return list(self._by_device.values())

    def of_device(self, device_id: str) -> VoiceSession | None:
        """The device's current voice session."""
        return self._by_device.get(device_id)

    def require(self, device_id: str, voice_session_id: object) -> VoiceSession:
        """The device's session named ``voice_session_id``, or ``bad_session``."""
        session = self._by_device.get(device_id)
        if session is None or session.id != voice_session_id:
            raise VoiceRefused(ErrorCode.BAD_SESSION, "not this device's voice session")
        return session

    def by_transport(self, transport_id: str) -> VoiceSession | None:
        """The session owning an SFU transport."""
        return self._by_transport.get(transport_id)

    def by_producer(self, producer_id: str) -> VoiceSession | None:
        """The session owning an SFU producer."""
        return self._by_producer.get(producer_id)

    def by_router(self, router_id: str) -> VoiceChannel | None:
        """The channel of an SFU router."""
        return self._by_router.get(router_id)

    def of_user(self, guild_id: str, user_id: str) -> list[VoiceSession]:
        """The user's sessions (one per device) in the guild."""
        return [
            s for s in self._by_device.values() if s.guild_id == guild_id and s.user_id == user_id
        ]

    def of_guild(self, guild_id: str) -> list[VoiceSession]:
        """Every session in the guild."""
        return [s for s in self._by_device.values() if s.guild_id == guild_id]

    def guild_has_sessions(self, guild_id: str) -> bool:
        """True when anyone is in a voice channel of the guild."""
        return any(c.guild_id == guild_id for c in self.channels.values())

    def on_node(self, node_id: str) -> list[VoiceChannel]:
        """Channels whose router lives on ``node_id``."""
        return [c for c in self.channels.values() if c.node_id == node_id]

    def participants_on(self, node_id: str) -> int:
        """Participants of the channels placed on ``node_id``."""
        return sum(len(c.sessions) for c in self.on_node(node_id))

    def detached_before(self, deadline: float) -> list[VoiceSession]:
        """Sessions whose gateway connection dropped before ``deadline``."""
        return [
            s
            for s in self._by_device.values()
            if s.detached_at is not None and s.detached_at <= deadline
        ]

    def earliest_detach(self) -> float | None:
        """When the longest-detached session dropped, if any did."""
        times = [s.detached_at for s in self._by_device.values() if s.detached_at is not None]
        return min(times, default=None)

    # -- changes ------------------------------------------------------------------------

    def open_channel(
        self, guild_id: str, channel_id: str, node_id: str, router_id: str, large_above: int = 0
    ) -> VoiceChannel:
        """Record a channel whose router was just created."""
        channel = VoiceChannel(guild_id, channel_id, node_id, router_id, large_above=large_above)
        self.channels[channel_id] = channel
        self._by_router[router_id] = channel
        return channel

    def move_channel(self, channel: VoiceChannel, node_id: str, router_id: str) -> None:
        """The channel's router was re-created on ``node_id`` (its old node failed)."""
        self._by_router.pop(channel.router_id, None)
        channel.node_id, channel.router_id, channel.speaking = node_id, router_id, None
        channel.audible.clear()
        channel.talking.clear()
        self._by_router[router_id] = channel
        for session in channel.sessions.values():
            self.forget_media(session)

    def close_channel(self, channel: VoiceChannel) -> None:
        """Forget an empty channel (its router is closed)."""
        self.channels.pop(channel.channel_id, None)
        self._by_router.pop(channel.router_id, None)

    def add(
        self, channel: VoiceChannel, user_id: str, device_id: str, *, suppress: bool
    ) -> VoiceSession:
        """Put a device into ``channel`` with a fresh voice session id and sender index."""
        mute, deaf = self.server_mutes.get((channel.guild_id, user_id), (False, False))
        session = VoiceSession(
            id=secrets.token_hex(12),
            user_id=user_id,
            device_id=device_id,
            guild_id=channel.guild_id,
            channel_id=channel.channel_id,
            sender_index=channel.allocate_index(),
            mute=mute,
            deaf=deaf,
            suppress=suppress,
        )
        channel.sessions[device_id] = session
        self._by_device[device_id] = session
        return session

    def remove(self, session: VoiceSession) -> VoiceChannel | None:
        """Take a session out of its channel; returns the channel (still registered)."""
        if self._by_device.get(session.device_id) is session:
            del self._by_device[session.device_id]
        self.forget_media(session)
        channel = self.channels.get(session.channel_id)
        if channel is not None and channel.sessions.get(session.device_id) is session:
            del channel.sessions[session.device_id]
            if channel.speaking == session.device_id:
                channel.speaking = None
        return channel

    def set_transport(self, session: VoiceSession, transport_id: str, *, send: bool) -> None:
        """Record a transport created for a session."""
        if send:
            session.send_transport = transport_id
        else:
            session.recv_transport = transport_id
        self._by_transport[transport_id] = session

    def add_producer(self, session: VoiceSession, producer_id: str, kind: str) -> None:
        """Record a producer the session published."""
        session.producers[producer_id] = kind
        self._by_producer[producer_id] = session

    def forget_producers(self, session: VoiceSession) -> None:
        """Forget the session's producers (closed on the SFU, which closes their consumers
        with them). Other sessions' entries of those consumers stay until their next
        :meth:`VoiceChannel.plan` names them for closing and a new offer goes out."""
        channel = self.channels.get(session.channel_id)
        for producer_id in session.producers:
            self._by_producer.pop(producer_id, None)
            if channel is not None:
                channel.forget_audible(producer_id)
        session.producers.clear()

    def forget_media(self, session: VoiceSession) -> None:
        """Drop the session's SFU objects from the indexes and the session."""
        for transport_id in (session.send_transport, session.recv_transport):
            if transport_id is not None and self._by_transport.get(transport_id) is session:
                del self._by_transport[transport_id]
        self.forget_producers(session)
        session.forget_media()

    def set_server_mute(
        self, guild_id: str, user_id: str, mute: bool | None, deaf: bool | None
    ) -> tuple[bool, bool]:
        """Set a member's server mute and/or deafen; returns the new ``(mute, deaf)``."""
        old = self.server_mutes.get((guild_id, user_id), (False, False))
        new = (old[0] if mute is None else mute, old[1] if deaf is None else deaf)
        if new == (False, False):
            self.server_mutes.pop((guild_id, user_id), None)
        else:
            self.server_mutes[(guild_id, user_id)] = new
        for session in self.of_user(guild_id, user_id):
            session.mute, session.deaf = new
        return new

    def states(self, channel_ids: set[str]) -> list[dict[str, Any]]:
        """The voice states of the sessions in ``channel_ids`` (READY's ``voice_states``)."""
        return [
            s.state()
            for c in self.channels.values()
            if c.channel_id in channel_ids
            for s in c.sessions.values()
        ]
