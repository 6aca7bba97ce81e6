"""client.voice: SFrame-protected media inside real aiortc peers, sources and sinks.

The end-to-end tests connect two aiortc ``RTCPeerConnection`` objects over loopback in this
process, on a trio-asyncio loop as the SDK will. What an SFU would see is captured at the
receiving peer's DTLS transport, after SRTP is removed: the RTP packets as they travel.
"""

from __future__ import annotations

import asyncio
import fractions
import time
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np
import pytest
import trio
import trio_asyncio
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.codecs.opus import OpusDecoder
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, VpxPayloadDescriptor
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket
from av import AudioFrame, VideoFrame

from client.voice import (
    FrameKeys,
    MediaFileError,
    MediaHookUnavailable,
    OpeningJitterBuffer,
    ProtectedOpusEncoder,
    ProtectedTransceiver,
    ProtectedVp8Encoder,
    ToneSource,
    WavFileSource,
    WavRecorder,
    band_energy_fraction,
    dominant_frequency,
    protect_transceiver,
    record_track,
)
from client.voice.sources import FRAME_SAMPLES, SAMPLE_RATE
from e2ee.errors import E2EEError
from e2ee.media import Codec, MediaKey

#: The authenticated sender of every key the tests install: participant A's one device.
FROM_A = {"user_id": "alice", "device_id": "device-a"}

T = TypeVar("T")

# An SFrame frame adds at least a 1-byte header, the KID, the CTR and a 16-byte tag.
MIN_SFRAME_OVERHEAD = 17


async def run_on_asyncio(scenario: Callable[[], Awaitable[T]], within: float = 120) -> T:
    """Run an asyncio scenario (aiortc) on a trio-asyncio loop, bounded in time."""
    with trio.fail_after(within):
        async with trio_asyncio.open_loop():
            return await trio_asyncio.aio_as_trio(scenario)()  # type: ignore[no-any-return]


async def wait_until(
    condition: Callable[[], bool], within: float = 20, state: Callable[[], object] = str
) -> None:
    """Poll an asyncio-side condition (aiortc gives no event for counters)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not reached: {state()}")
        await asyncio.sleep(0.01)


class Pattern(MediaStreamTrack):
    """Synthetic video, 320x240 at 15 frames/s: a moving red gradient on green 128."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.start: float | None = None

    async def recv(self) -> VideoFrame:
        if self.start is None:
            self.start = time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.count / 15 - time.monotonic()))
        frame = VideoFrame.from_ndarray(pattern_image(self.count), format="rgb24")
        frame.pts = self.count * 6000
        frame.time_base = fractions.Fraction(1, 90000)
        self.count += 1
        return frame


def pattern_image(count: int) -> np.ndarray:
    image = np.zeros((240, 320, 3), dtype=np.uint8)
    image[:, :, 0] = (np.arange(320) + 4 * count) % 256
    image[:, :, 1] = 128
    return image


def local_peer() -> RTCPeerConnection:
    """A peer connection with no ICE servers: aiortc's default would query Google's STUN."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class Call:
    """Peer A publishes one protected track to peer B; B's received RTP is captured."""

    def __init__(self, track: MediaStreamTrack, keys_a: FrameKeys, keys_b: FrameKeys) -> None:
        self.a = local_peer()
        self.b = local_peer()
        self.track = track
        self.keys_a = keys_a
        self.keys_b = keys_b
        self.captured: list[RtpPacket] = []
        self.remote: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    async def connect(self) -> tuple[ProtectedTransceiver, ProtectedTransceiver]:
        sending = protect_transceiver(
            self.a.addTransceiver(self.track, direction="sendonly"), self.keys_a
        )
        # B adds (and protects) its transceiver before applying the offer, as an answerer
        # that wants its codec preferences to shape the answer.
        receiving = protect_transceiver(
            self.b.addTransceiver(self.track.kind, direction="recvonly"), self.keys_b
        )

        @self.b.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if not self.remote.done():
                self.remote.set_result(track)

        await self.a.setLocalDescription(await self.a.createOffer())
        await self.b.setRemoteDescription(self.a.localDescription)
        await self.b.setLocalDescription(await self.b.createAnswer())
        await self.a.setRemoteDescription(self.b.localDescription)
        self._capture(receiving.transceiver.receiver.transport)
        return sending, receiving

    def _capture(self, dtls: Any) -> None:
        # Test-only tap on this one transport: the RTP packets after SRTP is removed, which
        # is exactly what an SFU forwards.
        handle = dtls._handle_rtp_data

        async def tap(data: bytes, arrival_time_ms: int) -> None:
            self.captured.append(RtpPacket.parse(data))
            await handle(data, arrival_time_ms)

        dtls._handle_rtp_data = tap

    async def close(self) -> None:
        await self.a.close()
        await self.b.close()


def audio(frame: object) -> AudioFrame:
    assert isinstance(frame, AudioFrame)
    return frame


def video(frame: object) -> VideoFrame:
    assert isinstance(frame, VideoFrame)
    return frame


def opus_decode(payloads: list[bytes]) -> tuple[np.ndarray, int]:
    """Decode Opus packets with a fresh decoder: (left channel samples, packets refused)."""
    decoder = OpusDecoder()
    pcm: list[np.ndarray] = []
    refused = 0
    for i, payload in enumerate(payloads):
        try:
            frames = decoder.decode(JitterFrame(payload, i * FRAME_SAMPLES))
        except av.FFmpegError:
            refused += 1
            continue
        pcm += [audio(f).to_ndarray().reshape(-1, 2)[:, 0] for f in frames]
    return (np.concatenate(pcm) if pcm else np.zeros(0)), refused


# --- end to end, real aiortc peers ------------------------------------------------------


async def test_protected_tone_is_heard_at_its_frequency_and_is_ciphertext_on_the_wire(
    tmp_path: Path,
) -> None:
    keys_a, keys_b = FrameKeys.create(1), FrameKeys.create(2)
    keys_b.install(keys_a.current_key(), **FROM_A)

    async def scenario() -> dict[str, Any]:
        call = Call(ToneSource(440), keys_a, keys_b)
        sending, receiving = await asyncio.wait_for(call.connect(), 20)
        remote = await asyncio.wait_for(call.remote, 20)
        with WavRecorder(tmp_path / "a.wav") as recorder:
            await asyncio.wait_for(record_track(remote, recorder, seconds=1.5), 30)
            heard = recorder.samples()[-SAMPLE_RATE:]
        await call.close()
        return {
            "heard": heard,
            "captured": call.captured,
            "protected": sending.encoder.frames_protected,
            "opened": receiving.jitter_buffer.frames_opened,
            "dropped": receiving.jitter_buffer.frames_dropped,
            "sender_index": receiving.jitter_buffer.sender_index,
        }

    result = await run_on_asyncio(scenario)
    assert abs(dominant_frequency(result["heard"]) - 440) < 3
    assert band_energy_fraction(result["heard"], 440) > 0.9
    assert result["dropped"] == 0 and result["opened"] > 50
    assert result["sender_index"] == keys_a.sender_index
    assert result["protected"] >= result["opened"]

    # What the SFU saw: Opus payloads whose TOC byte is clear and whose rest is SFrame.
    payloads = [p.payload for p in result["captured"] if p.payload]
    assert len(payloads) > 50
    offline = FrameKeys.create(3)
    offline.install(keys_a.current_key(), **FROM_A)
    opened = [offline.open_untrusted(Codec.OPUS, p)[1] for p in payloads]
    for wire, clear in zip(payloads, opened, strict=True):
        assert wire[0] == clear[0]  # the TOC byte, in clear
        assert len(wire) >= len(clear) + MIN_SFRAME_OVERHEAD
        assert wire[1:] != clear[1:]
    # The TOC says what aiortc's encoder makes: 20 ms frames (RFC 6716 §3.1 config), stereo.
    toc = opened[0][0]
    assert (toc >> 3) in {1, 5, 9, 13, 15, 19, 23, 27, 31} and toc & 0x04
    # The opened frames are the 440 Hz tone; the frames as the SFU sees them are not.
    clear_audio, _ = opus_decode(opened)
    assert abs(dominant_frequency(clear_audio[-SAMPLE_RATE:]) - 440) < 3
    assert band_energy_fraction(clear_audio[-SAMPLE_RATE:], 440) > 0.9
    # Random bits behind a real TOC decode to noise shaped by CELT's band energies; the
    # band holding 440 Hz is 200 Hz wide, so noise puts at most about a fifth of its
    # energy within 20 Hz of 440 (seen: 0.4 % typically, 11 % at worst), the tone > 90 %.
    wire_audio, refused = opus_decode(payloads)
    assert refused == len(payloads) or band_energy_fraction(wire_audio, 440) < 0.5


@pytest.mark.parametrize("key", ["missing", "wrong"])
async def test_receiver_without_the_right_key_drops_frames_and_recovers_when_it_arrives(
    tmp_path: Path, key: str
) -> None:
    keys_a, keys_b = FrameKeys.create(1), FrameKeys.create(2)
    right = keys_a.current_key()
    if key == "wrong":
        keys_b.install(
            MediaKey(right.suite, right.sender_index, right.generation, bytes(len(right.base_key))),
            **FROM_A,
        )

    async def scenario() -> dict[str, Any]:
        call = Call(ToneSource(660), keys_a, keys_b)
        _, receiving = await asyncio.wait_for(call.connect(), 20)
        buffer = receiving.jitter_buffer
        remote = await asyncio.wait_for(call.remote, 20)
        with WavRecorder(tmp_path / "b.wav") as recorder:
            listening = asyncio.ensure_future(record_track(remote, recorder))
            # No key at all is media before its key; a wrong one is a frame refused.
            await wait_until(
                lambda: (
                    (buffer.frames_before_key if key == "missing" else buffer.frames_dropped) >= 50
                )
            )
            decoded_without_key = recorder.frames
            state = call.b.connectionState
            if key == "missing":
                # The key arrives late (as over a slow pairwise session): audio starts.
                keys_b.install(right, **FROM_A)
                await wait_until(lambda: recorder.seconds >= 1.2)
            listening.cancel()
            heard = recorder.samples()[-SAMPLE_RATE:]
        await call.close()
        return {
            "decoded_without_key": decoded_without_key,
            "state": state,
            "heard": heard,
            "opened": buffer.frames_opened,
            "dropped": buffer.frames_dropped,
            "before_key": buffer.frames_before_key,
        }

    result = await run_on_asyncio(scenario)
    assert result["decoded_without_key"] == 0
    assert result["state"] == "connected"
    if key == "missing":
        assert abs(dominant_frequency(result["heard"]) - 660) < 3
        assert result["dropped"] == 0
    else:
        assert result["opened"] == 0 and result["before_key"] == 0


async def test_key_changes_mid_call_keep_the_audio_flowing(tmp_path: Path) -> None:
    keys_a, keys_b = FrameKeys.create(7), FrameKeys.create(8)
    keys_b.install(keys_a.current_key(), **FROM_A)

    async def scenario() -> dict[str, Any]:
        call = Call(ToneSource(300), keys_a, keys_b)
        _, receiving = await asyncio.wait_for(call.connect(), 20)
        buffer = receiving.jitter_buffer
        remote = await asyncio.wait_for(call.remote, 20)
        with WavRecorder(tmp_path / "c.wav") as recorder:
            listening = asyncio.ensure_future(record_track(remote, recorder))

            def state() -> object:
                return (vars(buffer), len(call.captured), call.a.connectionState, recorder.frames)

            await wait_until(lambda: buffer.frames_opened >= 20, state=state)
            # Someone joins: A ratchets, and B follows by itself (no key sent to B).
            keys_a.on_member_joined()
            opened = buffer.frames_opened
            await wait_until(lambda: buffer.frames_opened >= opened + 20, state=state)
            # Someone leaves: A draws a fresh key and sends it to B.
            keys_b.install(keys_a.on_member_left(), **FROM_A)
            opened = buffer.frames_opened
            await wait_until(lambda: buffer.frames_opened >= opened + 50, state=state)
            listening.cancel()
            heard = recorder.samples()[-SAMPLE_RATE:]
        await call.close()
        return {"heard": heard, "dropped": buffer.frames_dropped}

    result = await run_on_asyncio(scenario)
    assert abs(dominant_frequency(result["heard"]) - 300) < 3
    # Frames sealed under the fresh key before B installed it may drop; no more than that.
    assert result["dropped"] < 10
    assert keys_a.current_key().generation == 2


async def test_protected_vp8_video_decodes_and_the_sfu_reads_only_the_clear_header() -> None:
    keys_a, keys_b = FrameKeys.create(4), FrameKeys.create(5)
    keys_b.install(keys_a.current_key(), **FROM_A)

    async def scenario() -> dict[str, Any]:
        call = Call(Pattern(), keys_a, keys_b)
        _, receiving = await asyncio.wait_for(call.connect(), 20)
        remote = await asyncio.wait_for(call.remote, 20)
        pictures: list[np.ndarray] = []
        while len(pictures) < 10:
            frame = await asyncio.wait_for(remote.recv(), 20)
            pictures.append(video(frame).to_ndarray(format="rgb24"))
        await call.close()
        return {
            "pictures": pictures,
            "captured": call.captured,
            "dropped": receiving.jitter_buffer.frames_dropped,
        }

    result = await run_on_asyncio(scenario)
    assert result["dropped"] == 0
    for picture in result["pictures"]:
        assert picture.shape == (240, 320, 3)
        assert abs(float(picture[:, :, 1].mean()) - 128) < 12
        assert float(picture[:, :, 2].mean()) < 12

    # The SFU parses the VP8 payload descriptor of every packet; each frame's first packet
    # starts with the clear VP8 header (key frames: start code and 320x240).
    frames: dict[int, list[bytes]] = {}
    for packet in result["captured"]:
        descriptor, data = VpxPayloadDescriptor.parse(packet.payload)
        assert descriptor.picture_id is not None
        if descriptor.partition_start:
            assert packet.timestamp not in frames
            frames[packet.timestamp] = []
        if packet.timestamp in frames:
            frames[packet.timestamp].append(data)
    sealed = [b"".join(parts) for parts in frames.values()]
    key_frames = [f for f in sealed if f[0] & 0x01 == 0]
    assert key_frames
    for frame in key_frames:
        assert frame[3:6] == b"\x9d\x01\x2a"
        assert int.from_bytes(frame[6:8], "little") & 0x3FFF == 320
        assert int.from_bytes(frame[8:10], "little") & 0x3FFF == 240

    # Opened, the first key frame decodes to the picture; as the SFU has it, it does not.
    offline = FrameKeys.create(6)
    offline.install(keys_a.current_key(), **FROM_A)
    clear = offline.open_untrusted(Codec.VP8, key_frames[0])[1]
    assert clear[:10] == key_frames[0][:10]
    decoded = Vp8Decoder().decode(JitterFrame(clear, 0))
    assert abs(float(video(decoded[0]).to_ndarray(format="rgb24")[:, :, 1].mean()) - 128) < 12
    try:
        garbled = Vp8Decoder().decode(JitterFrame(key_frames[0], 0))
    except av.FFmpegError:
        garbled = []
    for picture in garbled:
        assert abs(float(video(picture).to_ndarray(format="rgb24")[:, :, 1].mean()) - 128) >= 12


# --- the hooks, without a network ------------------------------------------------------


async def test_a_sender_that_already_encoded_is_refused_rather_than_left_in_clear() -> None:
    async def scenario() -> None:
        pc = local_peer()
        transceiver = pc.addTransceiver(ToneSource(440), direction="sendonly")
        keys = FrameKeys.create(1)
        protect_transceiver(transceiver, keys)
        with pytest.raises(MediaHookUnavailable):
            protect_transceiver(transceiver, keys)
        await pc.close()

    await run_on_asyncio(scenario)


async def test_the_hooks_refuse_objects_without_the_aiortc_internals_they_rely_on() -> None:
    async def scenario() -> None:
        pc = local_peer()
        transceiver = pc.addTransceiver("audio")
        # As if a future aiortc renamed the receiver's jitter buffer.
        delattr(transceiver.receiver, "_RTCRtpReceiver__jitter_buffer")
        with pytest.raises(MediaHookUnavailable):
            protect_transceiver(transceiver, FrameKeys.create(1))
        # Nothing was changed on the sender: it still creates its own encoder.
        assert vars(transceiver.sender)["_RTCRtpSender__encoder"] is None
        await pc.close()

    await run_on_asyncio(scenario)


def rtp(sequence_number: int, timestamp: int, payload: bytes) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=sequence_number, timestamp=timestamp)
    packet.payload = payload
    packet._data = payload  # type: ignore[attr-defined]  # what aiortc's depayload sets
    return packet


async def test_opening_jitter_buffer_drops_tampered_and_replayed_frames() -> None:
    keys_a, keys_b = FrameKeys.create(1), FrameKeys.create(2)
    keys_b.install(keys_a.current_key(), **FROM_A)
    encoder = ProtectedOpusEncoder(keys_a)
    tone = ToneSource(440, realtime=False)
    payloads: list[bytes] = []
    while len(payloads) < 6:
        payloads += encoder.encode(await tone.recv())[0]
    tampered = bytearray(payloads[1])
    tampered[-1] ^= 1
    # prefetch=0 hands out a frame as soon as the next one starts.
    buffer = OpeningJitterBuffer(keys_b, Codec.OPUS, capacity=16, prefetch=0, is_video=False)
    stream = [payloads[0], bytes(tampered), payloads[2], payloads[2], payloads[3], payloads[4]]
    out = []
    for i, payload in enumerate(stream):
        _, frame = buffer.add(rtp(i, i * FRAME_SAMPLES, payload))
        if frame is not None:
            out.append(frame.data)
    # Frames 0, 2 and 3 open; the tampered frame and the replayed copy of 2 are dropped.
    assert len(out) == 3 and buffer.frames_opened == 3 and buffer.frames_dropped == 2
    sent = [payloads[0], payloads[2], payloads[3]]
    assert all(len(o) + MIN_SFRAME_OVERHEAD <= len(p) for o, p in zip(out, sent, strict=True))
    assert buffer.sender_index == 1


async def test_opening_jitter_buffer_counts_media_that_outran_its_key_apart() -> None:
    keys_a, keys_b = FrameKeys.create(1), FrameKeys.create(2)
    encoder = ProtectedOpusEncoder(keys_a)
    tone = ToneSource(440, realtime=False)
    payloads: list[bytes] = []
    while len(payloads) < 5:
        payloads += encoder.encode(await tone.recv())[0]
    buffer = OpeningJitterBuffer(keys_b, Codec.OPUS, capacity=16, prefetch=0, is_video=False)
    opened = []
    for i, payload in enumerate(payloads):
        if i == 3:  # the key arrives after the first two frames were handed out
            keys_b.install(keys_a.current_key(), **FROM_A)
        _, frame = buffer.add(rtp(i, i * FRAME_SAMPLES, payload))
        if frame is not None:
            opened.append(frame)
    # A frame is handed out once the next starts: frames 0 and 1 came before the key.
    assert buffer.frames_before_key == 2 and buffer.frames_dropped == 0
    assert len(opened) == buffer.frames_opened == 2


async def test_vp8_encoder_seals_each_frame_once_behind_clear_payload_descriptors() -> None:
    keys = FrameKeys.create(9)
    encoder = ProtectedVp8Encoder(keys)
    receiver = FrameKeys.create(10)
    receiver.install(keys.current_key(), **FROM_A)
    # A noisy picture makes a key frame bigger than one packet: the sealed frame is split.
    noise = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    frame = VideoFrame.from_ndarray(noise, format="rgb24")
    frame.pts, frame.time_base = 0, fractions.Fraction(1, 90000)
    payloads, _ = encoder.encode(frame, force_keyframe=True)
    assert len(payloads) > 1 and encoder.frames_protected == 1
    parsed = [VpxPayloadDescriptor.parse(p) for p in payloads]
    assert [d.partition_start for d, _ in parsed] == [1] + [0] * (len(parsed) - 1)
    sender_index, clear = receiver.open_untrusted(Codec.VP8, b"".join(d for _, d in parsed))
    assert sender_index == 9
    assert video(Vp8Decoder().decode(JitterFrame(clear, 0))[0]).width == 640


async def test_wrong_codec_or_garbage_never_opens() -> None:
    keys = FrameKeys.create(1)
    keys.install(FrameKeys.create(2).current_key(), **FROM_A)
    for data in [b"", b"\xfc", b"\xfc" + bytes(40), bytes(range(256))]:
        with pytest.raises(E2EEError):
            keys.open_untrusted(Codec.OPUS, data)
        with pytest.raises(E2EEError):
            keys.open_untrusted(Codec.VP8, data)


# --- sources and sinks ------------------------------------------------------------------
# Sources made with realtime=False never suspend, so these tests await them directly.


async def test_tone_source_makes_20_ms_frames_of_its_frequency() -> None:
    tone = ToneSource(1234.5, realtime=False)
    frames = [await tone.recv() for _ in range(50)]
    assert all(f.samples == FRAME_SAMPLES and f.sample_rate == SAMPLE_RATE for f in frames)
    assert [f.pts for f in frames[:3]] == [0, FRAME_SAMPLES, 2 * FRAME_SAMPLES]
    pcm = np.concatenate([f.to_ndarray().ravel() for f in frames])
    assert abs(dominant_frequency(pcm) - 1234.5) < 0.5
    tone.stop()
    with pytest.raises(MediaStreamError):
        await tone.recv()


async def test_tone_source_is_paced_in_real_time() -> None:
    async def scenario() -> float:
        tone = ToneSource(440)
        start = time.monotonic()
        for _ in range(26):
            await tone.recv()
        return time.monotonic() - start

    # 26 frames are 25 intervals of 20 ms after the first.
    assert await run_on_asyncio(scenario) >= 0.5


def write_wav(path: Path, pcm: np.ndarray, rate: int, width: int) -> None:
    """Write float samples in -1..1, shape (frames, channels), as PCM of ``width`` bytes."""
    scaled = np.round(pcm * (2 ** (8 * width - 1) - 1)).astype(np.int64)
    if width == 1:
        data = (scaled + 128).astype(np.uint8).tobytes()
    else:
        little = scaled.astype("<i8").view(np.uint8).reshape(*scaled.shape, 8)
        data = little[..., :width].tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(pcm.shape[1])
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(data)


@pytest.mark.parametrize(
    ("rate", "width", "channels"),
    [(48000, 2, 1), (44100, 3, 2), (16000, 1, 1), (22050, 4, 6)],
)
async def test_wav_file_source_plays_any_pcm_file_as_48_khz(
    tmp_path: Path, rate: int, width: int, channels: int
) -> None:
    t = np.arange(rate) / rate  # one second
    pcm = np.repeat((0.6 * np.sin(2 * np.pi * 700 * t)).reshape(-1, 1), channels, axis=1)
    write_wav(tmp_path / "in.wav", pcm, rate, width)
    source = WavFileSource(tmp_path / "in.wav", realtime=False)
    frames = []
    with pytest.raises(MediaStreamError):
        while True:
            frames.append(await source.recv())
    assert all(f.sample_rate == SAMPLE_RATE and f.format.name == "s16" for f in frames)
    assert all(f.samples == FRAME_SAMPLES for f in frames[:-1])
    assert abs(sum(f.samples for f in frames) - SAMPLE_RATE) <= FRAME_SAMPLES
    layout = "stereo" if channels == 2 else "mono"
    assert {f.layout.name for f in frames} == {layout}
    samples = np.concatenate(
        [f.to_ndarray().reshape(-1, 2 if channels == 2 else 1)[:, 0] for f in frames]
    )
    assert abs(dominant_frequency(samples) - 700) < 1
    assert abs(np.abs(samples).max() / 32767 - 0.6) < 0.03


async def test_wav_file_source_loops_and_an_empty_file_ends(tmp_path: Path) -> None:
    t = np.arange(4800) / 48000  # 0.1 s
    write_wav(tmp_path / "short.wav", np.sin(2 * np.pi * 500 * t).reshape(-1, 1), 48000, 2)
    looping = WavFileSource(tmp_path / "short.wav", loop=True, realtime=False)
    frames = [await looping.recv() for _ in range(25)]  # 0.5 s out of a 0.1 s file
    assert sum(f.samples for f in frames) >= 0.45 * SAMPLE_RATE
    looping.stop()
    write_wav(tmp_path / "empty.wav", np.zeros((0, 1)), 48000, 2)
    empty = WavFileSource(tmp_path / "empty.wav", loop=True, realtime=False)
    with pytest.raises(MediaStreamError):
        await empty.recv()


async def test_wav_file_source_refuses_what_is_not_a_pcm_wav_file(tmp_path: Path) -> None:
    (tmp_path / "text.wav").write_bytes(b"this is not a RIFF file at all")
    header = bytearray(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00")
    # Format 1 (PCM), 0 channels: a header no player should accept.
    header += (1).to_bytes(2, "little") + (0).to_bytes(2, "little")
    header += (48000).to_bytes(4, "little") + (0).to_bytes(4, "little")
    header += (0).to_bytes(2, "little") + (16).to_bytes(2, "little") + b"data\x00\x00\x00\x00"
    (tmp_path / "zero.wav").write_bytes(bytes(header))
    for name in ["text.wav", "zero.wav", "missing.wav"]:
        with pytest.raises(MediaFileError):
            WavFileSource(tmp_path / name)


async def test_recorder_writes_a_wav_file_and_keeps_a_bounded_tail(tmp_path: Path) -> None:
    tone = ToneSource(880, realtime=False)
    with WavRecorder(tmp_path / "out.wav", keep_seconds=0.5) as recorder:
        for _ in range(100):  # 2 s
            recorder.write(await tone.recv())
        tail = recorder.samples()
    assert recorder.frames == 100 and recorder.seconds == pytest.approx(2.0)
    assert 0.5 * SAMPLE_RATE <= len(tail) < 0.5 * SAMPLE_RATE + FRAME_SAMPLES
    with wave.open(str(tmp_path / "out.wav"), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 48000)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert len(pcm) == 2 * SAMPLE_RATE
    assert abs(dominant_frequency(pcm) - 880) < 1
    assert abs(dominant_frequency(tail) - 880) < 3


def test_dominant_frequency_is_precise_and_silence_is_zero() -> None:
    t = np.arange(SAMPLE_RATE // 10) / SAMPLE_RATE  # 0.1 s: 10 Hz bins
    assert abs(dominant_frequency(np.sin(2 * np.pi * 443.0 * t)) - 443.0) < 1
    mixed = np.sin(2 * np.pi * 300 * t) + 0.3 * np.sin(2 * np.pi * 2000 * t)
    assert abs(dominant_frequency(mixed) - 300) < 1
    assert 0.05 < band_energy_fraction(mixed, 2000) < 0.15
    assert dominant_frequency(np.zeros(1000)) == 0.0
    assert band_energy_fraction(np.zeros(1000), 440) == 0.0
    with pytest.raises(ValueError):
        dominant_frequency(np.zeros(1))


async def test_vp8_encoder_refuses_to_send_a_frame_its_hook_did_not_seal() -> None:
    encoder = ProtectedVp8Encoder(FrameKeys.create(1))
    # As if a future aiortc packetized without calling _packetize on the instance.
    encoder._packetize = Vp8Encoder._packetize  # type: ignore[method-assign]
    frame = VideoFrame.from_ndarray(pattern_image(0), format="rgb24")
    frame.pts, frame.time_base = 0, fractions.Fraction(1, 90000)
    with pytest.raises(MediaHookUnavailable):
        encoder.encode(frame)


async def test_an_offer_after_aiortc_closed_the_receive_transport_is_answered_anew() -> None:
    # aiortc closes a peer connection itself when its DTLS transports close (the SFU closed
    # the transport); the next SFU offer must not fail the call.
    from client.voice.call import CallMedia
    from client.voice.signalling import ConsumerInfo

    async def scenario() -> None:
        keys = FrameKeys.create(1)
        media = CallMedia(keys, (), lambda: ToneSource(440), lambda _c, _t: None)
        for _ in range(2):
            sfu = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            sfu.addTransceiver(ToneSource(660), direction="sendonly")
            await sfu.setLocalDescription(await sfu.createOffer())
            consumer = ConsumerInfo("0", "audio", "bob", "device-b", 2)
            answer = await media.answer(sfu.localDescription.sdp, (consumer,))
            assert "a=recvonly" in answer
            assert media.receive_pc is not None
            await media.receive_pc.close()  # as aiortc does once DTLS closed
            await sfu.close()
        await media.close()

    await run_on_asyncio(scenario)
