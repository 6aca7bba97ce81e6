"""The client's voice part: every voice state seen, and the call (at most one) running.

Kept apart from :mod:`client.voice.call` so that following voice states does not load
aiortc: the media stack is imported when a call starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from client.gateway import Dispatch
from client.media_keys import MediaKeys
from client.voice.errors import MediaError
from client.voice.signalling import CallSignalling, VoiceStates, decode_voice_state_untrusted
from contract.gateway import EventName, Op

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack

    from client.voice.call import TrackHandler, VoiceCall

__all__ = ["Voice"]


class Voice:
    """Voice for one client: every voice state seen, and the call (at most one) running.

    Given every gateway dispatch (:meth:`dispatch`, wired to ``Sync.on_voice``), it keeps
    :class:`VoiceStates` current and forwards to the running call, which starts with the
    channel's participants as known at join time.
    """

    def __init__(self, user_id: str, device_id: str, media_keys: MediaKeys) -> None:
        self._user_id = user_id
        self._device_id = device_id
        self._media_keys = media_keys
        self.states = VoiceStates()
        self.call: VoiceCall | None = None

    async def dispatch(self, event: Dispatch) -> None:
        """Follow voice states; pass the dispatch to the running call."""
        if event.type == EventName.READY and isinstance(event.data, dict):
            self.states.ready_untrusted(event.data.get("voice_states", []))
        elif event.type == EventName.VOICE_STATE_UPDATE:
            self.states.update(decode_voice_state_untrusted(event.data))
        if self.call is not None:
            await self.call.dispatch(event)

    @asynccontextmanager
    async def join(
        self,
        send: Callable[[Op, dict[str, Any]], Awaitable[None]],
        guild_id: str,
        channel_id: str,
        source: Callable[[], MediaStreamTrack],
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
        relay_only: bool = False,
        on_track: TrackHandler | None = None,
    ) -> AsyncIterator[VoiceCall]:
        """Be in ``channel_id`` for the ``async with`` block: join (op 4), publish, answer
        offers, distribute and receive media keys; leave (op 4, no channel) at the end."""
        if self.call is not None:
            raise MediaError("this client is already in a voice call")
        signalling = CallSignalling(
            guild_id,
            channel_id,
            self._user_id,
            self._device_id,
            self_mute=self_mute,
            self_deaf=self_deaf,
            roster=self.states,
        )
        signalling.participants = {
            k: s for k, s in self.states.in_channel(channel_id).items() if k[1] != self._device_id
        }
        # Loaded here, not at import: aiortc is heavy and only calls need it.
        from client.voice.call import VoiceCall

        call = VoiceCall(
            signalling, self._media_keys, send, source, on_track=on_track, relay_only=relay_only
        )
        self.call = call
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(call.run)
                try:
                    yield call
                finally:
                    call.stop()
        finally:
            self.call = None
