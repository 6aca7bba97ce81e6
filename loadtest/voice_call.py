"""A voice deployment on loopback and real SDK participants in one call.

:class:`VoiceDeployment` starts what an operator runs — ``python -m turn`` (with the test-only
``--allow-loopback-peers``, everything here being on one host), ``python -m control`` with the
node secret, the TURN secret and URL, and SFU nodes (``python -m sfu``) dialling it — each on
loopback ports the OS picks. :class:`Participant` is a real :class:`client.Client` in the
call through its voice part (``client.voice_call``) publishing a tone of its own frequency;
:class:`Hearing` keeps, per participant heard, when each decoded frame arrived and what it
held, so a test or benchmark can say when audio flowed and at which frequency.

Used by ``tests/client/test_voice_deployment.py`` and ``bench/voice_failover_bench.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import trio

from client import Client
from control.process import ControlProcess
from hushroom import node_link

__all__ = [
    "Heard",
    "Hearing",
    "Participant",
    "VoiceDeployment",
    "deployment",
    "heard_frequency",
    "in_call",
    "node_of_call",
    "resume_times",
    "start_sfu_node",
    "until_all_hear",
]

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = "voice deployment passphrase"
#: RMS (of int16 full scale) above which a received frame holds sound, not silence.
SOUND_RMS = 1000.0


@dataclass
class SfuNode:
    """One ``python -m sfu`` process and the UDP ports of its workers."""

    node_id: str
    process: trio.Process
    ports: list[int]

    def kill(self) -> None:
        """SIGKILL the node and its workers at once, as when its machine dies."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for process in [psutil.Process(self.process.pid), *children]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)


@dataclass
class TurnRelay:
    """``python -m turn`` and where its log goes (its counters are logged at exit)."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def stop(self) -> dict[str, int]:
        """SIGTERM, wait, and return the counters it logged on the way out."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        counters: dict[str, int] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            _, found, rest = line.partition("turn counters ")
            if found:
                counters = {k: int(v) for k, v in (kv.split("=", 1) for kv in rest.split())}
        return counters


@dataclass
class VoiceDeployment:
    """Control, SFU nodes and (optionally) TURN on loopback, and a guild with a voice channel
    whose members are the registered clients."""

    root: Path
    control: ControlProcess
    nodes: dict[str, SfuNode]
    turn: TurnRelay | None
    clients: list[Client] = field(default_factory=list)
    guild_id: str = ""
    channel_id: str = ""

    def health(self) -> dict[str, Any]:
        """control's ``/healthz``."""
        with urllib.request.urlopen(self.control.url + "/healthz", timeout=5) as response:
            body: dict[str, Any] = json.load(response)
        return body

    async def until_nodes(self, count: int, within: float = 30.0) -> None:
        """Until control counts ``count`` healthy SFU nodes (polled: it is another process)."""
        with trio.fail_after(within):
            while True:
                if (await trio.to_thread.run_sync(self.health))["sfu_nodes"] == count:
                    return
                await trio.sleep(0.05)


async def start_sfu_node(
    nursery: trio.Nursery,
    control_url: str,
    secret_file: Path,
    node_id: str,
    log: Path | None = None,
    *,
    workers: int = 1,
) -> SfuNode:
    """``python -m sfu`` with ``workers`` worker processes on loopback, dialling control;
    returns once it is ready (its stderr appended to ``log``, or inherited)."""
    command = [
        sys.executable,
        "-m",
        "sfu",
        "--control-url",
        control_url.replace("http://", "ws://", 1) + node_link.PATH,
        "--node-secret-file",
        str(secret_file),
        "--workers",
        str(workers),
        "--listen-ip",
        "127.0.0.1",
        "--node-id",
        node_id,
    ]
    with log.open("ab") if log is not None else contextlib.nullcontext() as stderr:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                command,
                stdout=subprocess.PIPE,
                stderr=stderr,
                check=False,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        )
    assert process.stdout is not None
    seen = b""
    with trio.fail_after(60):
        while b"sfu ready" not in seen:
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"sfu {node_id} exited early: {seen!r}")
            seen += chunk
    ports = [
        int(line.rsplit(":", 1)[1])
        for line in seen.decode().splitlines()
        if line.startswith("sfu worker ")
    ]

    async def drain() -> None:
        assert process.stdout is not None
        while await process.stdout.receive_some(4096):
            pass

    nursery.start_soon(drain)
    return SfuNode(node_id, process, ports)


def _start_turn(root: Path, secret_file: Path) -> TurnRelay:
    log_path = root / "turn.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "turn",
                "--listen",
                "127.0.0.1:0",
                "--realm",
                "hushroom",
                "--secret-file",
                str(secret_file),
                "--allow-loopback-peers",
                "--bandwidth",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "HUSHROOM_CONFIG"},
        )
    assert process.stdout is not None
    port = 0
    for raw in process.stdout:
        line = raw.decode().strip()
        if line == "turn ready":
            return TurnRelay(process, port, log_path)
        parts = line.split()
        if parts[:3] == ["turn", "listening", "udp"]:
            port = int(parts[3].rsplit(":", 1)[1])
    process.wait(5)
    raise RuntimeError("turn exited before it was ready")


def _write_secrets(root: Path, node_secret: Path, turn_secret: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    node_secret.write_text("voice-deployment-node-secret\n")
    turn_secret.write_text("voice-deployment-turn-secret\n")


@asynccontextmanager
async def deployment(
    root: Path, *, nodes: int = 2, members: int = 3, turn: bool = False
) -> AsyncIterator[VoiceDeployment]:
    """Start everything under ``root``, register ``members`` clients (the first owns the
    guild; the others join by invite) and create a voice channel; stop it all at the end."""
    node_secret, turn_secret = root / "node-secret", root / "turn-secret"
    await trio.to_thread.run_sync(_write_secrets, root, node_secret, turn_secret)
    relay = await trio.to_thread.run_sync(_start_turn, root, turn_secret) if turn else None
    extra = ["--node-secret-file", str(node_secret), "--log-level", "debug"]
    extra += ["--rate-per-s", "10000", "--rate-burst", "10000"]
    if relay is not None:
        extra += ["--turn-secret-file", str(turn_secret)]
        extra += ["--turn-url", f"turn:127.0.0.1:{relay.port}?transport=udp"]
    control_log = (root / "control.log").open("ab")
    try:
        control = await trio.to_thread.run_sync(
            lambda: ControlProcess(root / "control-data", *extra, log=control_log)
        )
        try:
            async with trio.open_nursery() as nursery:
                started = {}
                for n in range(nodes):
                    node_id = f"node-{chr(ord('a') + n)}"
                    started[node_id] = await start_sfu_node(
                        nursery, control.url, node_secret, node_id, root / f"{node_id}.log"
                    )
                world = VoiceDeployment(root, control, started, relay)
                await world.until_nodes(nodes)
                for n in range(members):
                    world.clients.append(
                        await Client.register(
                            root / f"member{n}", PASSPHRASE, control.url, f"member{n}"
                        )
                    )
                owner = world.clients[0]
                guild = await owner.api.create_guild("voice-deployment")
                world.guild_id = guild.id
                channel = await owner.api.create_channel(guild.id, "lounge", type="voice")
                world.channel_id = channel.id
                invite = await owner.api.create_invite(guild.channels[0].id)
                for member in world.clients[1:]:
                    await member.api.accept_invite(invite)
                try:
                    yield world
                finally:
                    for client in world.clients:
                        with trio.CancelScope(shield=True):
                            await client.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            await trio.to_thread.run_sync(control.stop)
    finally:
        control_log.close()
        if relay is not None and relay.process.poll() is None:
            relay.process.kill()
            relay.process.wait()


@dataclass
class Heard:
    """One remote track: when it appeared, and each decoded frame's arrival and samples."""

    user_id: str
    created: float
    arrivals: list[float] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)

    def sound_after(self, moment: float) -> float | None:
        """Arrival time of the first frame holding sound after ``moment`` (monotonic)."""
        for arrived, frame in zip(self.arrivals, self.frames, strict=True):
            if arrived > moment and _rms(frame) > SOUND_RMS:
                return arrived
        return None

    def samples_after(self, moment: float) -> np.ndarray:
        """The mono 48 kHz samples of the frames that arrived after ``moment``."""
        chosen = [f for a, f in zip(self.arrivals, self.frames, strict=True) if a > moment]
        return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int16)


def _rms(frame: np.ndarray) -> float:
    return float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) if len(frame) else 0.0


class Hearing:
    """What one participant heard, per remote track (an ``on_track`` for ``voice_call``).

    Frames are read on the asyncio loop; :meth:`wait` lets trio code wait for a condition
    on them (each frame wakes it through the trio token, which is safe from any loop).
    """

    def __init__(self) -> None:
        self.tracks: list[Heard] = []
        self._token = trio.lowlevel.current_trio_token()
        self._changed = trio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def on_track(self, consumer: Any, track: Any) -> None:
        """Start reading ``track`` (called by the SDK on its asyncio loop)."""
        heard = Heard(consumer.user_id if consumer is not None else "?", time.monotonic())
        self.tracks.append(heard)
        task = asyncio.ensure_future(self._read(track, heard))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, track: Any, heard: Heard) -> None:
        from aiortc.mediastreams import MediaStreamError
        from av import AudioResampler

        resampler = AudioResampler(format="s16", layout="mono", rate=48000)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            arrived = time.monotonic()
            for converted in resampler.resample(frame):
                heard.arrivals.append(arrived)
                heard.frames.append(converted.to_ndarray().reshape(-1).astype(np.int16))
            self._token.run_sync_soon(self._wake)

    def _wake(self) -> None:
        self._changed.set()

    def from_user(self, user_id: str, *, created_after: float = 0.0) -> list[Heard]:
        """The tracks carrying ``user_id`` that appeared after ``created_after``."""
        return [h for h in self.tracks if h.user_id == user_id and h.created > created_after]

    def first_sound(self, user_id: str, after: float) -> float | None:
        """When sound from ``user_id`` first arrived after ``after`` on a track that
        appeared after it (a track of transports made since)."""
        times = [
            t
            for h in self.from_user(user_id, created_after=after)
            if (t := h.sound_after(after)) is not None
        ]
        return min(times) if times else None

    async def wait(self, condition: Callable[[], bool], within: float) -> None:
        """Until ``condition()`` holds, re-checked on every frame heard."""
        with trio.fail_after(within):
            while not condition():
                self._changed = trio.Event()
                await self._changed.wait()


@dataclass
class Participant:
    """A client in the call, its tone, what it heard and its :class:`VoiceCall`."""

    client: Client
    frequency: float
    hearing: Hearing
    call: Any = None


async def in_call(
    world: VoiceDeployment,
    participant: Participant,
    *,
    relay_only: bool = False,
    task_status: trio.TaskStatus[Participant] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Be in the deployment's voice channel until cancelled, publishing the participant's
    tone through the SDK (``client.live()`` + ``client.voice_call``)."""
    from client.voice import ToneSource

    client = participant.client
    async with (
        client.live(),
        client.voice_call(
            world.guild_id,
            world.channel_id,
            lambda: ToneSource(participant.frequency),
            relay_only=relay_only,
            on_track=participant.hearing.on_track,
        ) as call,
    ):
        participant.call = call
        task_status.started(participant)
        await trio.sleep_forever()


def node_of_call(world: VoiceDeployment, participant: Participant) -> SfuNode:
    """The node whose worker the participant's send transport is connected to (the port of
    the SFU's candidate in its answer)."""
    media = participant.call.media
    if media is None or media.send_pc is None or media.send_pc.remoteDescription is None:
        raise RuntimeError("the participant has no connected send transport")
    sdp = str(media.send_pc.remoteDescription.sdp)
    ports = {int(line.split()[5]) for line in sdp.splitlines() if line.startswith("a=candidate:")}
    for node in world.nodes.values():
        if ports & set(node.ports):
            return node
    raise RuntimeError(f"no node listens on {sorted(ports)}")


def _sound(listener: Participant, speaker: Participant, after: float) -> np.ndarray:
    """What ``listener`` heard from ``speaker`` on tracks made after ``after``, from the
    first frame holding sound on."""
    start = listener.hearing.first_sound(speaker.client.user_id, after)
    if start is None:
        return np.zeros(0, dtype=np.int16)
    tracks = listener.hearing.from_user(speaker.client.user_id, created_after=after)
    return np.concatenate([h.samples_after(start - 1e-9) for h in tracks])


async def until_all_hear(
    participants: list[Participant], after: float, *, seconds: float = 0.0
) -> None:
    """Until every participant has heard ``seconds`` (at least one frame) of sound from
    every other on tracks made after ``after`` (bound the wait with a cancel scope)."""
    need = max(1, int(seconds * 48000))
    for listener in participants:
        others = [p for p in participants if p is not listener]
        await listener.hearing.wait(
            lambda listener=listener, others=others: all(  # type: ignore[misc]
                len(_sound(listener, s, after)) >= need for s in others
            ),
            math.inf,
        )


def resume_times(participants: list[Participant], after: float) -> dict[str, float]:
    """Seconds from ``after`` to the first sound, per ``"listener<-speaker"`` handle pair."""
    times: dict[str, float] = {}
    for listener in participants:
        for speaker in participants:
            if speaker is not listener:
                first = listener.hearing.first_sound(speaker.client.user_id, after)
                if first is not None:
                    key = f"{listener.client.handle}<-{speaker.client.handle}"
                    times[key] = first - after
    return times


def heard_frequency(listener: Participant, speaker: Participant, after: float) -> float:
    """The dominant frequency of the last second ``listener`` heard from ``speaker`` on
    tracks made after ``after`` (0.0 when nothing was heard)."""
    from client.voice import dominant_frequency

    samples = _sound(listener, speaker, after)[-48000:]
    return dominant_frequency(samples) if len(samples) > 1 else 0.0
