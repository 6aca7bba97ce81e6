"""One full aiortc participant of a load test, in a process of its own
(``python -m loadtest.aiortc_worker``, started by :mod:`loadtest.aiortc_peers`).

It is a client of the SDK doing what a person's client does: :meth:`client.Client.register`
(a fresh device identity, prekeys with one-time prekeys, a cross-signed device list, in a
profile under a temporary directory), the room's invite accepted, :meth:`client.Client.live`
following the gateway, and :meth:`client.Client.voice_call` joining the voice channel: the
SDK's signalling core, its two aiortc peer connections, a :class:`client.voice.ToneSource`
encoded to real Opus by aiortc and SFrame-sealed by the SDK's hook, received frames opened
by the SDK's jitter-buffer hook and decoded by aiortc's Opus decoder. Its media key goes out
pairwise (``MEDIA_KEY``) through the SDK to every participant device its account trusts;
other aiortc participants' keys arrive the same way.

What the harness bridges (docs/loadtest.md, "--aiortc"): the synthetic participants cannot
open pairwise sessions, so their keys arrive from the harness on stdin and are handed to
:meth:`client.media_keys.MediaKeys.received` — the SDK's own install path, which holds a key
until the device's voice state names it with the same sender index — and this participant's
own key, as the SDK holds it, is told to the harness, which gives it to the synthetic ones.

The protocol with the harness is one JSON object per line. Commands on stdin: the
configuration (first line), ``{"cmd": "join"}``, ``{"cmd": "key", ...}``,
``{"cmd": "window", "start_ns": ..., "end_ns": ...}`` (the measurement window, on the
machine's monotonic clock, which both processes read: the counters are taken at its start and
at its end and sent as ``mark`` events) and ``{"cmd": "stop"}``.
Events on stdout: ``registered``, ``key``, ``joined``, ``progress``, ``mark``, ``report``
and ``failed``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from client import Client
from client.media_keys import voice_conversation
from client.voice.call import VoiceCall, record_tracks
from client.voice.signalling import ConsumerInfo
from e2ee import DecryptedMessage, MessageType, pad
from e2ee.media import MediaKey

__all__ = ["main"]

#: The profile's store is encrypted under this; the profile is thrown away after the run.
PASSPHRASE = "loadtest aiortc participant"
#: How often own key changes and held keys are looked at, and progress is told.
POLL_S = 0.02
PROGRESS_S = 0.5


def emit(event: str, **fields: Any) -> None:
    """One event line to the harness."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class _Lines:
    """JSON lines from the harness on stdin."""

    def __init__(self) -> None:
        self._stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        self._buffer = b""

    async def next(self) -> dict[str, Any] | None:
        """The next command; None at the end of input (the harness is gone)."""
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        value = json.loads(line)
        if not isinstance(value, dict):
            raise ValueError("a command is a JSON object")
        return value


class Participant:
    """The SDK client in the call, and what it sees."""

    def __init__(self, client: Client, config: dict[str, Any]) -> None:
        self.client = client
        self.guild_id = str(config["guild_id"])
        self.channel_id = str(config["channel_id"])
        self.tone_hz = float(config["tone_hz"])
        self.call: VoiceCall | None = None
        self.stopping = trio.Event()
        #: Set once the call is over (left, or failed).
        self.done = trio.Event()
        #: Synthetic participants' keys from the harness, (user, device) → key, not yet
        #: handed to the SDK (it drops keys that arrive before its call began).
        self.pending: dict[tuple[str, str], MediaKey] = {}
        self.delivered: set[tuple[str, str, int]] = set()
        self.own_key: tuple[int, int] | None = None
        #: The SDK's keys of the current voice session, and how many sessions there were
        #: (more than one: the call started over, e.g. after a gateway reconnection).
        self.frame_keys: object | None = None
        self.voice_sessions = 0
        self.join_started_ns = 0
        #: Audio frames aiortc decoded, per sending device.
        self.decoded: dict[str, int] = {}
        self.first_decoded_ns: dict[str, int] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- asyncio side: one task per received track (aiortc runs on asyncio) -----------

    async def count(self, consumer: ConsumerInfo | None, track: Any) -> None:
        """Count what aiortc decodes on one received track (run by the SDK's
        :func:`~client.voice.call.record_tracks` for each)."""
        from aiortc.mediastreams import MediaStreamError

        # The call's asyncio loop, which RTP statistics are read on (it belongs to the
        # call's task, not to the one that asks for counters).
        self.loop = asyncio.get_running_loop()
        if consumer is None:
            return
        device_id = consumer.device_id
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            self.decoded[device_id] = self.decoded.get(device_id, 0) + 1
            self.first_decoded_ns.setdefault(device_id, time.monotonic_ns())

    # --- trio side --------------------------------------------------------------------

    def take_key(self, command: dict[str, Any]) -> None:
        """A synthetic participant's key, held until the call can take it."""
        key = MediaKey.decode_untrusted(bytes.fromhex(command["key"]))
        self.pending[(str(command["user_id"]), str(command["device_id"]))] = key

    async def keys(self) -> None:
        """Hand held keys to the SDK once its call began; tell the harness own key changes."""
        media_keys = self.client.media_keys
        conversation = voice_conversation(self.channel_id)
        while True:
            await trio.sleep(POLL_S)
            own = media_keys.keys
            if own is None or media_keys.channel_id != self.channel_id:
                continue
            if own is not self.frame_keys:
                # A new voice session starts with no one's keys: give them all again.
                self.frame_keys = own
                self.voice_sessions += 1
                self.delivered.clear()
            for (user_id, device_id), key in list(self.pending.items()):
                mark = (user_id, device_id, key.generation)
                if mark in self.delivered:
                    continue
                self.delivered.add(mark)
                message = DecryptedMessage(MessageType.MEDIA_KEY, conversation, pad(key.encode()))
                await media_keys.received(conversation, user_id, device_id, message)
            key = own.current_key()
            if (key.sender_index, key.generation) != self.own_key:
                self.own_key = (key.sender_index, key.generation)
                emit("key", key=key.encode().hex())

    async def counters(self) -> dict[str, Any]:
        """Frames sealed and, per sending device, frames opened by SFrame, dropped, come
        before their key, decoded by Opus, and RTP packets received and lost (aiortc's
        inbound RTP statistics)."""
        call = self.call
        media = call.media if call is not None else None
        senders: dict[str, dict[str, int]] = {}
        protected = 0
        if media is not None:
            stats = media.stats()
            protected = int(stats["protected"])
            for mid, row in stats["received"].items():
                consumer = media.consumers.get(mid)
                if consumer is None:
                    continue
                entry = senders.setdefault(
                    consumer.device_id,
                    {"opened": 0, "dropped": 0, "before_key": 0, "rtp_received": 0, "rtp_lost": 0},
                )
                entry["opened"] += int(row["opened"])
                entry["dropped"] += int(row["dropped"])
                entry["before_key"] += int(row["before_key"])
                if self.loop is None:
                    continue
                receiver = media.receiving[mid].transceiver.receiver
                report = await trio_asyncio.aio_as_trio(receiver.getStats, loop=self.loop)()
                for value in report.values():
                    if getattr(value, "type", "") == "inbound-rtp":
                        entry["rtp_received"] += int(value.packetsReceived)
                        entry["rtp_lost"] += int(value.packetsLost)
        for device_id, count in self.decoded.items():
            senders.setdefault(device_id, {})["decoded"] = count
        return {
            "at_ns": time.monotonic_ns(),
            "protected": protected,
            "voice_sessions": self.voice_sessions,
            "senders": senders,
        }

    async def measure(self, start_ns: int, end_ns: int) -> None:
        """The counters at the window's start and at its end, each as a ``mark`` event."""
        for name, at_ns in (("open", start_ns), ("end", end_ns)):
            await trio.sleep(max(0.0, (at_ns - time.monotonic_ns()) / 1e9))
            emit("mark", name=name, counters=await self.counters())

    async def progress(self) -> None:
        """Who this participant has heard (frames opened) so far, for the harness's start."""
        while True:
            await trio.sleep(PROGRESS_S)
            media = self.call.media if self.call is not None else None
            heard: list[str] = []
            if media is not None:
                for mid, row in media.stats()["received"].items():
                    consumer = media.consumers.get(mid)
                    if consumer is not None and row["opened"]:
                        heard.append(consumer.device_id)
            emit("progress", heard=sorted(set(heard)), decoded=sorted(self.decoded))

    async def run_call(self) -> None:
        """Be in the call until told to stop; report what was seen."""
        try:
            await self._call()
        finally:
            self.done.set()

    async def _call(self) -> None:
        from client.voice import ToneSource

        client = self.client
        self.join_started_ns = time.monotonic_ns()
        async with (
            client.voice_call(
                self.guild_id,
                self.channel_id,
                lambda: ToneSource(self.tone_hz, amplitude=0.3),
                on_track=record_tracks(self.count),
            ) as call,
            trio.open_nursery() as nursery,
        ):
            self.call = call
            nursery.start_soon(self.keys)
            nursery.start_soon(self.progress)
            await call.wait_connected()
            emit("joined", join_started_ns=self.join_started_ns, published_ns=time.monotonic_ns())
            await self.stopping.wait()
            final = await self.counters()
            emit(
                "report",
                counters=final,
                join_started_ns=self.join_started_ns,
                first_decoded_ns=self.first_decoded_ns,
                notices=[n.kind for n in client.notices()],
            )
            nursery.cancel_scope.cancel()


async def serve(config: dict[str, Any], lines: _Lines) -> None:
    """Register, accept the invite, follow the gateway, then obey the harness."""
    with tempfile.TemporaryDirectory(prefix="hushroom-aiortc-") as root:
        client = await Client.register(
            Path(root) / "profile", PASSPHRASE, str(config["server_url"]), str(config["handle"])
        )
        async with client:
            await client.api.accept_invite(str(config["invite"]))
            async with client.live() as messages, trio.open_nursery() as nursery:
                nursery.start_soon(_drain, messages)
                emit("registered", user_id=client.user_id, device_id=client.device_id)
                participant = Participant(client, config)
                while True:
                    command = await lines.next()
                    if command is None or command.get("cmd") == "stop":
                        break
                    kind = command.get("cmd")
                    if kind == "join":
                        nursery.start_soon(participant.run_call)
                    elif kind == "key":
                        participant.take_key(command)
                    elif kind == "window":
                        nursery.start_soon(
                            participant.measure, int(command["start_ns"]), int(command["end_ns"])
                        )
                if participant.call is not None:
                    participant.stopping.set()
                    with trio.move_on_after(15):
                        await participant.done.wait()
                nursery.cancel_scope.cancel()


async def _drain(messages: trio.MemoryReceiveChannel[Any]) -> None:
    async for _ in messages:
        pass


async def _main() -> None:
    lines = _Lines()
    config = await lines.next()
    if config is None:
        return
    try:
        await serve(config, lines)
    except Exception as exc:
        emit("failed", error="; ".join(_leaves(exc)))
        raise


def _leaves(exc: BaseException) -> list[str]:
    """What went wrong, with the nurseries' exception groups unwrapped."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [f"{type(exc).__name__}: {exc}"]


def main() -> None:
    """Entry point (the harness starts it; it reads its configuration from stdin)."""
    # aiortc logs every Opus packet it cannot decode (the synthetic participants' frames
    # are not Opus): the counters say how many.
    logging.basicConfig(level=logging.ERROR)
    trio.run(_main)


if __name__ == "__main__":
    main()
