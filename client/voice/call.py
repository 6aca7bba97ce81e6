"""A voice call: the signalling core driven by gateway dispatches, media keys, and the two
aiortc peer connections of docs/voice.md.

* :class:`CallMedia` (asyncio, aiortc) holds the **send** transport — an
  ``RTCPeerConnection`` that offers one protected sendonly Opus transceiver — and the
  **receive** transport, which answers the SFU's offers; every transceiver is hooked with
  :func:`~client.voice.media.protect_transceiver` before media flows, so frames leave and
  arrive SFrame-protected. Each m-section of the receive transport is mapped to the
  participant the offer's ``consumers`` name, and its track handed to ``on_track``.
* :class:`VoiceCall` (trio) feeds dispatches to :class:`~client.voice.signalling.
  CallSignalling`, keeps :class:`~client.media_keys.MediaKeys` in step with the voice
  states, sends ops 4/12/13 through the gateway, and runs :class:`CallMedia` on a
  trio-asyncio loop of its own.

**Relay only.** ``relay_only=True`` restricts ICE to TURN relay candidates, as a browser's
``iceTransportPolicy: "relay"`` does: aiortc's ``RTCConfiguration.iceTransportPolicy``
(``RTCIceTransportPolicy.RELAY``) makes aioice gather only relayed candidates and pair
only those, so neither the SFU nor anyone else learns this device's addresses. aiortc
releases without that setting cannot do it, and the call refuses to start
(:class:`~client.voice.errors.MediaError`) rather than leak host candidates.

Key changes and transports never wait on each other: frames sealed under a key a receiver
does not hold yet are dropped and counted by its jitter buffer, and the call goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiortc
import trio
import trio_asyncio
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)

from client.gateway import Dispatch
from client.media_keys import MediaKeys
from client.voice.errors import MediaError, VoiceRefused
from client.voice.media import FrameKeys, ProtectedTransceiver, protect_transceiver
from client.voice.signalling import (
    AnswerSubscribeOffer,
    ApplyPublishAnswer,
    CallFailed,
    CallSignalling,
    CallState,
    ConsumerInfo,
    IceServer,
    ParticipantsChanged,
    SignallingEvent,
    SpeakingChanged,
    StartTransports,
)
from contract.gateway import EventName, Op

__all__ = [
    "VOICE_EVENTS",
    "CallMedia",
    "Rejoin",
    "TrackHandler",
    "VoiceCall",
    "peer_configuration",
    "record_tracks",
]

#: Dispatches a call acts on.
VOICE_EVENTS = frozenset(
    {
        EventName.VOICE_STATE_UPDATE,
        EventName.VOICE_SERVER_UPDATE,
        EventName.VOICE_PUBLISH_ANSWER,
        EventName.VOICE_SUBSCRIBE_OFFER,
        EventName.VOICE_ERROR,
        EventName.SPEAKING,
    }
)

TrackHandler = Callable[[ConsumerInfo | None, MediaStreamTrack], None]

#: Seconds a replaced or final call's transports get to close before they are abandoned.
RETIRE_WITHIN = 2.0


def peer_configuration(
    ice_servers: tuple[IceServer, ...], *, relay_only: bool = False
) -> RTCConfiguration:
    """The ``RTCConfiguration`` of a call's transports: exactly the servers the dispatch
    named (none: no STUN at all — aiortc's default would ask Google's), relay only if asked."""
    servers = [
        RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in ice_servers
    ]
    if not relay_only:
        return RTCConfiguration(iceServers=servers)
    policy = getattr(aiortc, "RTCIceTransportPolicy", None)
    if policy is None:
        raise MediaError(
            f"aiortc {aiortc.__version__} cannot restrict ICE to relay candidates; "
            "upgrade aiortc to use relay-only calls"
        )
    if not any(u.startswith(("turn:", "turns:")) for s in ice_servers for u in s.urls):
        raise MediaError("relay-only was asked for, but the server named no TURN server")
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy.RELAY)


class CallMedia:
    """The send and receive transports of one voice session (asyncio side).

    ``source`` makes the track to publish (called once per send transport: a new voice
    session gets a new track). ``on_track`` is called, on the asyncio loop, for every new
    m-section of the receive transport with the participant it carries (None when the offer
    did not say) and its track.
    """

    def __init__(
        self,
        keys: FrameKeys,
        ice_servers: tuple[IceServer, ...],
        source: Callable[[], MediaStreamTrack],
        on_track: TrackHandler,
        *,
        relay_only: bool = False,
    ) -> None:
        self.keys = keys
        self._configuration = peer_configuration(ice_servers, relay_only=relay_only)
        self._source = source
        self._on_track = on_track
        self.send_pc: RTCPeerConnection | None = None
        self.receive_pc: RTCPeerConnection | None = None
        self.sending: ProtectedTransceiver | None = None
        #: mid → the protected transceiver of the receive transport.
        self.receiving: dict[str, ProtectedTransceiver] = {}
        #: mid → who it carries, from the latest offer.
        self.consumers: dict[str, ConsumerInfo] = {}

    async def offer(self) -> str:
        """A new send transport: one protected sendonly Opus transceiver; its offer."""
        pc = RTCPeerConnection(self._configuration)
        self.send_pc = pc
        transceiver = pc.addTransceiver(self._source(), direction="sendonly")
        self.sending = protect_transceiver(transceiver, self.keys)
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def apply_answer(self, sdp_answer: str) -> None:
        """The SFU's answer to the send transport's offer."""
        if self.send_pc is None:
            raise MediaError("an answer for a send transport that was never offered")
        await self.send_pc.setRemoteDescription(RTCSessionDescription(sdp_answer, "answer"))

    async def answer(self, sdp_offer: str, consumers: tuple[ConsumerInfo, ...]) -> str:
        """Answer the SFU's (re)offer for the receive transport, protecting every new
        transceiver before the answer lets media flow."""
        if self.receive_pc is not None and self.receive_pc.signalingState == "closed":
            # aiortc closes a peer connection by itself once all its DTLS transports have
            # closed (the SFU closed the transport: it never connected, or consent was
            # lost). The server restarts this session's media; until then an offer is
            # answered on a new connection rather than failing the call.
            self.receive_pc = None
            self.receiving.clear()
        if self.receive_pc is None:
            self.receive_pc = RTCPeerConnection(self._configuration)
        pc = self.receive_pc
        self.consumers = {c.mid: c for c in consumers}
        await pc.setRemoteDescription(RTCSessionDescription(sdp_offer, "offer"))
        new: list[RTCRtpTransceiver] = []
        for transceiver in pc.getTransceivers():
            mid = transceiver.mid
            if mid is None or mid in self.receiving:
                continue
            self.receiving[mid] = protect_transceiver(transceiver, self.keys)
            new.append(transceiver)
        await pc.setLocalDescription(await pc.createAnswer())
        for transceiver in new:
            if transceiver.currentDirection in ("recvonly", "sendrecv"):
                mid = str(transceiver.mid)
                self._on_track(self.consumers.get(mid), transceiver.receiver.track)
        return str(pc.localDescription.sdp)

    def sender_of(self, mid: str) -> int | None:
        """The sender index whose frames last opened on ``mid`` (authenticated by SFrame,
        whatever the SFU claims)."""
        receiving = self.receiving.get(mid)
        return receiving.jitter_buffer.sender_index if receiving is not None else None

    def stats(self) -> dict[str, Any]:
        """Frame counters: protected on the way out, opened/dropped/before key per received
        mid."""
        return {
            "protected": self.sending.encoder.frames_protected if self.sending else 0,
            "received": {
                mid: {
                    "opened": r.jitter_buffer.frames_opened,
                    "dropped": r.jitter_buffer.frames_dropped,
                    "before_key": r.jitter_buffer.frames_before_key,
                    "sender_index": r.jitter_buffer.sender_index,
                }
                for mid, r in self.receiving.items()
            },
        }

    async def close(self) -> None:
        """Close both transports."""
        for pc in (self.send_pc, self.receive_pc):
            if pc is not None:
                await pc.close()
        self.send_pc = self.receive_pc = None


@dataclass(frozen=True, slots=True)
class Rejoin:
    """The gateway session was replaced (a fresh READY): ask to join again."""


_MediaAction = StartTransports | ApplyPublishAnswer | AnswerSubscribeOffer | CallFailed | Rejoin


class VoiceCall:
    """This device in one voice channel (docs/voice.md), from join to leave.

    :meth:`dispatch` is called with every gateway dispatch, in the task that follows the
    gateway (``Sync``); it runs the signalling core and the media-key distribution there,
    so store writes never interleave with the inbox's, and queues media work for
    :meth:`run`, which owns the trio-asyncio loop aiortc runs on. ``updates`` receives
    what a user interface shows: :class:`ParticipantsChanged`, :class:`SpeakingChanged`,
    :class:`CallFailed`.
    """

    def __init__(
        self,
        signalling: CallSignalling,
        media_keys: MediaKeys,
        send: Callable[[Op, dict[str, Any]], Awaitable[None]],
        source: Callable[[], MediaStreamTrack],
        *,
        on_track: TrackHandler | None = None,
        relay_only: bool = False,
    ) -> None:
        self.signalling = signalling
        self.media_keys = media_keys
        self._send = send
        self._source = source
        self._on_track = on_track or (lambda _consumer, _track: None)
        self.relay_only = relay_only
        self.media: CallMedia | None = None
        self._actions_in, self._actions_out = trio.open_memory_channel[_MediaAction](64)
        self._updates_in, self.updates = trio.open_memory_channel[SignallingEvent](256)
        #: Set once the send transport's answer is applied (media flows from then on).
        self.published = trio.Event()
        #: Set when the server refused or ended the call (:attr:`failure` says why).
        self.failed = trio.Event()
        self.failure: CallFailed | None = None
        self._working = trio.CancelScope()
        #: Where replaced transports close (see :meth:`_retire_media`); open while running.
        self._retiring: trio.Nursery | None = None

    # --- the gateway side (Sync's task) ----------------------------------------------------

    async def dispatch(self, event: Dispatch) -> None:
        """Act on one gateway dispatch (every dispatch may be passed; others are ignored)."""
        core = self.signalling
        if event.type == EventName.READY:
            d = event.data if isinstance(event.data, dict) else {}
            events: list[SignallingEvent] = core.ready_untrusted(d.get("voice_states", []))
            if core.state is not CallState.IDLE:
                # A fresh session has no voice session: join again.
                self._actions_in.send_nowait(Rejoin())
        elif event.type in VOICE_EVENTS:
            events = core.receive_untrusted(event.type, event.data)
        else:
            return
        for item in events:
            await self._act(item)

    async def _act(self, item: SignallingEvent) -> None:
        keys = self.media_keys
        if isinstance(item, StartTransports):
            keys.begin(self.signalling.channel_id, item.sender_index, item.voice_session_id)
            await keys.update(self.signalling.participants)
            self._actions_in.send_nowait(item)
        elif isinstance(item, ParticipantsChanged):
            await keys.update(item.participants)
            self._updates_in.send_nowait(item)
        elif isinstance(item, SpeakingChanged):
            self._updates_in.send_nowait(item)
        elif isinstance(item, CallFailed):
            keys.end()
            self.failure = item
            self.failed.set()
            self._actions_in.send_nowait(item)
            self._updates_in.send_nowait(item)
        else:
            self._actions_in.send_nowait(item)

    # --- the media side (its own task) ------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join, then carry out media work until cancelled; leaves on the way out."""
        async with trio_asyncio.open_loop(), trio.open_nursery() as retiring:
            self._retiring = retiring
            try:
                await self._send(*self.signalling.join())
                task_status.started()
                with self._working:
                    async for action in self._actions_out:
                        await self._carry_out(action)
            finally:
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    self._retire_media()
                    if self.signalling.state is not CallState.IDLE:
                        await self._send(*self.signalling.leave())
                self.media_keys.end()

    def stop(self) -> None:
        """End :meth:`run`: it retires both transports and leaves while its asyncio loop
        still runs (cancelling :meth:`run` instead cancels that loop under aiortc's feet, and
        ``RTCRtpSender.stop`` could then wait forever)."""
        self._working.cancel()

    async def _carry_out(self, action: _MediaAction) -> None:
        if isinstance(action, Rejoin):
            self._retire_media()
            await self._send(*self.signalling.join())
        elif isinstance(action, StartTransports):
            self._retire_media()
            keys = self.media_keys.keys
            if keys is None:
                return
            if self.published.is_set():
                self.published = trio.Event()
            self.media = CallMedia(
                keys, action.ice_servers, self._source, self._on_track, relay_only=self.relay_only
            )
            offer = await trio_asyncio.aio_as_trio(self.media.offer)()
            await self._send(*self.signalling.publish(offer))
        elif isinstance(action, ApplyPublishAnswer):
            if self.media is not None:
                await trio_asyncio.aio_as_trio(self.media.apply_answer)(action.sdp_answer)
                self.published.set()
        elif isinstance(action, AnswerSubscribeOffer):
            if self.media is not None:
                answer = await trio_asyncio.aio_as_trio(self.media.answer)(
                    action.sdp_offer, action.consumers
                )
                await self._send(*self.signalling.subscribe_answer(answer))
        else:
            self._retire_media()

    def _retire_media(self) -> None:
        """Let go of the current transports; they close in the background, so new ones
        never wait on them. aiortc may take until ICE consent expires (about 30 s) to stop
        a sender whose SFU died, which would hold a failover that long: the close gets
        :data:`RETIRE_WITHIN` seconds and is then abandoned."""
        media, self.media = self.media, None
        if media is not None and self._retiring is not None:
            self._retiring.start_soon(self._close_media, media)

    @staticmethod
    async def _close_media(media: CallMedia) -> None:
        # Shielded (and bounded): the call's own end must still close them.
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(RETIRE_WITHIN),
            contextlib.suppress(Exception),
        ):
            await trio_asyncio.aio_as_trio(media.close)()

    async def wait_connected(self) -> None:
        """Return once this device publishes (its send transport's answer applied); raise
        :class:`~client.voice.errors.VoiceRefused` if the server refused or ended the call
        first."""
        async with trio.open_nursery() as nursery:

            async def until(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until, self.published)
            nursery.start_soon(until, self.failed)
        if self.failure is not None:
            raise VoiceRefused(self.failure.code, self.failure.message)

    async def set_self(self, *, mute: bool, deaf: bool) -> None:
        """Change self mute/deafen (op 4 in the same channel)."""
        await self._send(*self.signalling.set_self(mute=mute, deaf=deaf))


def record_tracks(
    recorders: Callable[[ConsumerInfo | None, MediaStreamTrack], Awaitable[None]],
) -> TrackHandler:
    """An ``on_track`` that runs ``recorders(consumer, track)`` as an asyncio task per track."""
    tasks: set[asyncio.Task[None]] = set()

    def on_track(consumer: ConsumerInfo | None, track: MediaStreamTrack) -> None:
        task = asyncio.ensure_future(recorders(consumer, track))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return on_track
