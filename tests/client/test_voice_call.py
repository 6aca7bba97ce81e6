"""Voice end to end: SDK clients through a real deployment (``hushroom up``: control, TURN,
an SFU node) — tones heard at their frequency, ciphertext at the SFU, forward secrecy for a
leaver, moderation (server mute, move) and the voice permissions (CONNECT, SPEAK).

Every participant runs in this process, each with its own client, gateway connection and
trio-asyncio loop (``Client.voice_call``). What the SFU forwards is captured at each
receiving client's DTLS transport after SRTP is removed (a test-only tap): those are the
RTP payloads exactly as the SFU handled them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import trio
from aiortc import MediaStreamTrack
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket
from av import AudioFrame

from client import Client
from client.voice import FrameKeys, ToneSource, WavRecorder, band_energy_fraction
from client.voice import dominant_frequency as dominant
from client.voice.call import VoiceCall
from client.voice.errors import VoiceRefused
from client.voice.signalling import ConsumerInfo
from client.voice.sources import FRAME_SAMPLES, SAMPLE_RATE
from contract.permissions import Permission
from e2ee.errors import E2EEError
from e2ee.media import Codec

pytestmark = pytest.mark.slow

PASS = "voice end to end passphrase"
TONES = {"ann": 440.0, "bob": 660.0, "cyd": 880.0}
# An SFrame frame adds at least a 1-byte header, the KID, the CTR and a 16-byte tag.
MIN_SFRAME_OVERHEAD = 17


@dataclass
class Deployment:
    """``hushroom up`` in a temp dir: its control URL."""

    url: str
    root: Path


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, within: float) -> bytes:
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + within
    while marker not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {marker!r} within {within} s: {seen!r}")
        if select.select([proc.stdout], [], [], remaining)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"hushroom up exited: {seen!r}")
            seen += chunk
    return seen


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One real deployment for the module: every test makes its own users and guild."""
    root = tmp_path_factory.mktemp("voice-call")
    args = ["up", "--control-port", "0", "--turn-port", "0", "--workers", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hushroom", *args, "--data-dir", str(root / "data")],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=(root / "up.log").open("wb"),
        # Tests are bursty: generous rate limits, as the other client tests use.
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "HUSHROOM_CONTROL_RATE_PER_S": "10000",
            "HUSHROOM_CONTROL_RATE_BURST": "10000",
        },
    )
    try:
        shown = _read_until(proc, b"Press Ctrl-C to stop.", 120).decode()
        line = next(x for x in shown.splitlines() if x.startswith("  control  http "))
        yield Deployment("http://" + line.rsplit(" ", 1)[1], root)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- participants -----------------------------------------------------------------------


@dataclass
class Heard:
    """What one participant received from one other participant (by the consumer's user)."""

    recorder: WavRecorder
    frame_times: list[float] = field(default_factory=list)


class Participant:
    """One SDK client in a voice channel, publishing a tone (or silence) and recording
    what it receives per sender; the RTP it is forwarded is tapped as the SFU sent it."""

    def __init__(self, name: str, client: Client, tmp_path: Path, tone: float | None) -> None:
        self.name = name
        self.client = client
        self.tmp_path = tmp_path
        self.tone = tone
        self.call: VoiceCall | None = None
        self.heard: dict[str, Heard] = {}
        #: (arrival time, packet) of every RTP packet on the receive transport.
        self.captured: list[tuple[float, RtpPacket]] = []
        self._tapped: set[int] = set()
        self._listening: set[asyncio.Future[None]] = set()

    @property
    def user_id(self) -> str:
        return self.client.user_id

    def source(self) -> MediaStreamTrack:
        if self.tone is None:
            return ToneSource(440, amplitude=0.0)
        return ToneSource(self.tone)

    def on_track(self, consumer: ConsumerInfo | None, track: MediaStreamTrack) -> None:
        """Called on the call's asyncio loop for each new m-section of the receive side."""
        self._tap()
        who = consumer.user_id if consumer is not None else "?"
        heard = self.heard.get(who)
        if heard is None:
            path = self.tmp_path / f"{self.name}-hears-{who}.wav"
            heard = self.heard[who] = Heard(WavRecorder(path, keep_seconds=30))
        task = asyncio.ensure_future(self._listen(track, heard))
        self._listening.add(task)
        task.add_done_callback(self._listening.discard)

    async def _listen(self, track: MediaStreamTrack, heard: Heard) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            heard.recorder.write(frame)
            heard.frame_times.append(time.monotonic())

    def _tap(self) -> None:
        # Test-only: RTP after SRTP is removed, before the jitter buffer — what the SFU sent.
        media = self.call.media if self.call is not None else None
        if media is None or media.receive_pc is None:
            return
        for transceiver in media.receive_pc.getTransceivers():
            dtls = transceiver.receiver.transport
            if dtls is None or id(dtls) in self._tapped:
                continue
            self._tapped.add(id(dtls))
            handle = dtls._handle_rtp_data

            async def tap(data: bytes, arrival_time_ms: int, handle: Any = handle) -> None:
                self.captured.append((time.monotonic(), RtpPacket.parse(data)))
                await handle(data, arrival_time_ms)

            dtls._handle_rtp_data = tap

    def seconds_from(self, other: Participant) -> float:
        heard = self.heard.get(other.user_id)
        return heard.recorder.seconds if heard is not None else 0.0

    def tail_from(self, other: Participant, seconds: float = 1.0) -> np.ndarray:
        samples = self.heard[other.user_id].recorder.samples()
        return samples[-int(seconds * SAMPLE_RATE) :]

    def frames_from(self, other: Participant, since: float) -> int:
        heard = self.heard.get(other.user_id)
        return 0 if heard is None else sum(t > since for t in heard.frame_times)

    def close(self) -> None:
        for heard in self.heard.values():
            heard.recorder.close()


@asynccontextmanager
async def in_call(
    participant: Participant, guild_id: str, channel_id: str
) -> AsyncIterator[VoiceCall]:
    """``participant`` in the channel for the block, once its send transport is up."""
    client = participant.client
    async with (
        client.live(),
        client.voice_call(
            guild_id, channel_id, participant.source, on_track=participant.on_track
        ) as call,
    ):
        participant.call = call
        try:
            with trio.fail_after(30):
                await call.wait_connected()
            yield call
        finally:
            participant.call = None


async def wait_until(condition: Callable[[], bool], what: str, within: float = 30) -> None:
    """Poll until ``condition`` (media counters give no event to wait on)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await trio.sleep(0.05)


@dataclass
class World:
    """Users, one guild with two voice channels, and a participant per user."""

    guild_id: str
    voice_id: str
    other_voice_id: str
    people: dict[str, Participant]

    def __getitem__(self, name: str) -> Participant:
        return self.people[name]


@asynccontextmanager
async def world(
    deployment: Deployment,
    tmp_path: Path,
    tones: dict[str, float | None],
    denied: dict[str, dict[str, Permission]] | None = None,
) -> AsyncIterator[World]:
    """Register the users ``tones`` names (the first owns the guild), make two voice
    channels ("lounge", "stage"), invite all; ``denied`` takes permissions away per user
    and channel name."""
    names = list(tones)
    denied = denied or {}
    clients: list[Client] = []
    try:
        for name in names:
            # Handles are unique per test: every test of the module shares the deployment.
            handle = f"{name}{secrets.token_hex(4)}"
            clients.append(await Client.register(tmp_path / name, PASS, deployment.url, handle))
        owner = clients[0]
        guild = await owner.api.create_guild("voice hall")
        voice = await owner.api.create_channel(guild.id, "lounge", type="voice")
        other = await owner.api.create_channel(guild.id, "stage", type="voice")
        by_name = {"lounge": voice.id, "stage": other.id}
        denied = {n: {by_name[c]: p for c, p in d.items()} for n, d in denied.items()}
        code = await owner.api.create_invite(voice.id)
        for client in clients[1:]:
            await client.api.accept_invite(code)
        for name, client in zip(names, clients, strict=True):
            for channel_id, deny in denied.get(name, {}).items():
                await overwrite(owner, channel_id, client.user_id, deny)
        people = {
            name: Participant(name, client, tmp_path, tones.get(name))
            for name, client in zip(names, clients, strict=True)
        }
        yield World(guild.id, voice.id, other.id, people)
    finally:
        for client in clients:
            await client.aclose()


async def overwrite(owner: Client, channel_id: str, user_id: str, deny: Permission) -> None:
    """A member overwrite on ``channel_id`` that denies ``deny`` to ``user_id``."""
    body = {"type": "member", "allow": 0, "deny": int(deny)}
    await owner.api.call("PUT", f"/channels/{channel_id}/permissions/{user_id}", body)


def leaves(group: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in leaves(inner)]
    return [group]


def opus_decode(payloads: list[bytes]) -> np.ndarray:
    """Decode Opus packets with a fresh decoder (refused packets are skipped)."""
    decoder = OpusDecoder()
    pcm: list[np.ndarray] = []
    for i, payload in enumerate(payloads):
        try:
            frames = decoder.decode(JitterFrame(payload, i * FRAME_SAMPLES))
        except av.FFmpegError:
            continue
        for frame in frames:
            assert isinstance(frame, AudioFrame)
            pcm.append(frame.to_ndarray().reshape(-1, 2)[:, 0])
    return np.concatenate(pcm) if pcm else np.zeros(0)


def assert_tone(samples: np.ndarray, frequency: float) -> None:
    assert len(samples) >= SAMPLE_RATE // 2, len(samples)
    assert abs(dominant(samples) - frequency) < 5, dominant(samples)
    assert band_energy_fraction(samples, frequency) > 0.8


# --- the tests --------------------------------------------------------------------------


async def test_three_participants_hear_each_others_tones_and_the_sfu_sees_ciphertext(
    deployment: Deployment, tmp_path: Path
) -> None:
    async with world(deployment, tmp_path, dict(TONES)) as w:
        ann, bob, cyd = w["ann"], w["bob"], w["cyd"]
        async with (
            in_call(ann, w.guild_id, w.voice_id),
            in_call(bob, w.guild_id, w.voice_id),
            in_call(cyd, w.guild_id, w.voice_id),
        ):
            pairs = [(a, b) for a in (ann, bob, cyd) for b in (ann, bob, cyd) if a is not b]
            await wait_until(
                lambda: all(a.seconds_from(b) >= 1.5 for a, b in pairs),
                "everyone hears the other two for 1.5 s",
                within=60,
            )
            for listener, speaker in pairs:
                assert speaker.tone is not None
                assert_tone(listener.tail_from(speaker), speaker.tone)
            assert all(p.user_id not in p.heard for p in (ann, bob, cyd))
            # The speakers' current keys, as ann holds them, in a receiver of its own: ann's
            # has already opened these frames once and would refuse them as replays.
            offline = FrameKeys.create(0)
            for speaker in (bob, cyd):
                own = speaker.client.media_keys.keys
                assert own is not None
                offline.install(
                    own.current_key(), user_id=speaker.user_id, device_id=speaker.client.device_id
                )
            states = ann.client.voice_states(w.voice_id)
            speaker_of = {s.sender_index: s.user_id for s in states.values()}
            captured = [packet for _, packet in ann.captured if packet.payload]
        for p in (ann, bob, cyd):
            p.close()

    assert len(captured) > 100

    # What the SFU forwarded to ann: SFrame-sealed Opus with only the TOC byte in clear;
    # opened with ann's keys it is the speaker's tone, as the SFU has it it is not.
    sealed: dict[str, list[bytes]] = {bob.user_id: [], cyd.user_id: []}
    opened: dict[str, list[bytes]] = {bob.user_id: [], cyd.user_id: []}
    for packet in captured:
        try:
            index, frame = offline.open_untrusted(Codec.OPUS, packet.payload)
        except E2EEError:
            continue  # sealed under an earlier generation (each join ratchets)
        assert packet.payload[0] == frame[0]
        assert len(packet.payload) >= len(frame) + MIN_SFRAME_OVERHEAD
        assert packet.payload[1:] != frame[1:]
        sealed[speaker_of[index]].append(packet.payload)
        opened[speaker_of[index]].append(frame)

    for speaker in (bob, cyd):
        assert speaker.tone is not None
        assert len(opened[speaker.user_id]) > 50
        assert_tone(opus_decode(opened[speaker.user_id])[-SAMPLE_RATE:], speaker.tone)
        as_forwarded = opus_decode(sealed[speaker.user_id])
        assert len(as_forwarded) == 0 or band_energy_fraction(as_forwarded, speaker.tone) < 0.5


async def test_a_participant_who_left_cannot_open_what_is_sent_after(
    deployment: Deployment, tmp_path: Path
) -> None:
    async with world(deployment, tmp_path, dict(TONES)) as w:
        ann, bob, cyd = w["ann"], w["bob"], w["cyd"]
        async with in_call(ann, w.guild_id, w.voice_id), in_call(bob, w.guild_id, w.voice_id):
            async with in_call(cyd, w.guild_id, w.voice_id):
                await wait_until(lambda: cyd.seconds_from(bob) >= 1, "cyd hears bob")
                kept = cyd.client.media_keys.keys  # the leaver's receiver, with bob's key
                bob_keys = bob.client.media_keys.keys
                assert kept is not None and bob_keys is not None
                before = bob_keys.current_key()
            # bob draws a fresh key once cyd's leave reaches it, and ann goes on hearing it.
            await wait_until(lambda: bob_keys.current_key() != before, "bob re-keys")
            fresh = bob_keys.current_key()
            left_at = time.monotonic()
            await wait_until(lambda: ann.frames_from(bob, left_at) >= 50, "ann hears bob")
            assert_tone(ann.tail_from(bob, 0.5), TONES["bob"])
            captured = [p for t, p in ann.captured if t > left_at and p.payload]
        for p in (ann, bob, cyd):
            p.close()

    # Frames sealed under bob's fresh key (those still under the old one were in flight
    # when bob re-keyed): ann's side opens them, the leaver's keys refuse every one.
    current = FrameKeys.create(0)
    current.install(fresh, user_id=bob.user_id, device_id=bob.client.device_id)
    after_leave = []
    for packet in captured:
        try:
            current.open_untrusted(Codec.OPUS, packet.payload)
        except E2EEError:
            continue
        after_leave.append(packet.payload)
    assert len(after_leave) >= 40
    for payload in after_leave:
        with pytest.raises(E2EEError):
            kept.open_untrusted(Codec.OPUS, payload)


async def test_server_mute_silences_a_participant_for_the_others_within_a_second(
    deployment: Deployment, tmp_path: Path
) -> None:
    tones: dict[str, float | None] = {"ann": 440.0, "bob": 660.0}
    async with world(deployment, tmp_path, tones) as w:
        ann, bob = w["ann"], w["bob"]
        async with in_call(ann, w.guild_id, w.voice_id), in_call(bob, w.guild_id, w.voice_id):
            await wait_until(lambda: ann.seconds_from(bob) >= 1, "ann hears bob")
            await ann.client.moderate_voice(w.guild_id, bob.user_id, mute=True)
            muted_at = time.monotonic()  # the moderation call's 2xx
            # Silence is the absence of frames: watch long enough to see it last.
            await wait_until(
                lambda: (
                    ann.frames_from(bob, time.monotonic() - 1.5) == 0
                    and time.monotonic() > muted_at + 1.5
                ),
                "bob silenced",
                within=10,
            )
            last = ann.heard[bob.user_id].frame_times[-1]
            assert last - muted_at < 1.0, last - muted_at
            # bob still hears ann: mute is not deafen.
            heard_at = time.monotonic()
            await wait_until(lambda: bob.frames_from(ann, heard_at) >= 25, "bob hears ann")
        for p in (ann, bob):
            p.close()


async def test_a_member_without_speak_hears_but_is_not_heard(
    deployment: Deployment, tmp_path: Path
) -> None:
    tones: dict[str, float | None] = {"ann": 440.0, "bob": 660.0}
    async with world(deployment, tmp_path, tones, {"bob": {"lounge": Permission.SPEAK}}) as w:
        ann, bob = w["ann"], w["bob"]
        async with in_call(ann, w.guild_id, w.voice_id), in_call(bob, w.guild_id, w.voice_id):
            state = ann.client.voice_states(w.voice_id)[(bob.user_id, bob.client.device_id)]
            assert state.suppress
            await wait_until(lambda: bob.seconds_from(ann) >= 1.5, "bob hears ann")
            assert_tone(bob.tail_from(ann), TONES["ann"])
            # bob publishes (its encoder seals frames), the SFU forwards none of them.
            assert bob.call is not None and bob.call.media is not None
            assert bob.call.media.stats()["protected"] > 50
            assert ann.seconds_from(bob) == 0
            assert not [p for _, p in ann.captured if p.payload]
        for p in (ann, bob):
            p.close()


async def test_a_member_without_connect_is_refused_with_a_typed_error(
    deployment: Deployment, tmp_path: Path
) -> None:
    tones: dict[str, float | None] = {"ann": None, "bob": 660.0}
    async with world(deployment, tmp_path, tones, {"bob": {"lounge": Permission.CONNECT}}) as w:
        with pytest.raises(BaseException) as refused:
            async with in_call(w["bob"], w.guild_id, w.voice_id):
                pass
        [error] = leaves(refused.value)
        assert isinstance(error, VoiceRefused) and error.code == "forbidden"
        assert w["bob"].client.voice_states(w.voice_id) == {}
        w["bob"].close()


async def test_a_moved_member_hears_and_is_heard_in_the_other_channel(
    deployment: Deployment, tmp_path: Path
) -> None:
    async with world(deployment, tmp_path, dict(TONES)) as w:
        ann, bob, cyd = w["ann"], w["bob"], w["cyd"]
        async with (
            in_call(ann, w.guild_id, w.voice_id),
            in_call(bob, w.guild_id, w.voice_id),
            in_call(cyd, w.guild_id, w.other_voice_id),
        ):
            await wait_until(lambda: ann.seconds_from(bob) >= 0.5, "ann hears bob")
            assert cyd.seconds_from(bob) == 0
            await ann.client.moderate_voice(w.guild_id, bob.user_id, move_to=w.other_voice_id)
            moved_at = time.monotonic()
            await wait_until(
                lambda: (
                    cyd.frames_from(bob, moved_at) >= 50 and bob.frames_from(cyd, moved_at) >= 50
                ),
                "bob and cyd hear each other in the stage",
            )
            assert_tone(cyd.tail_from(bob, 0.5), TONES["bob"])
            assert_tone(bob.tail_from(cyd, 0.5), TONES["cyd"])
            assert bob.call is not None and bob.call.signalling.channel_id == w.other_voice_id
            # ann, left behind, no longer hears bob.
            since = time.monotonic() + 1.0
            await wait_until(lambda: time.monotonic() > since + 1.0, "a second passes")
            assert ann.frames_from(bob, since) == 0
        for p in (ann, bob, cyd):
            p.close()
