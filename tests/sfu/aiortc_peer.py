"""A real WebRTC peer (aiortc, asyncio) for interop tests, driven over stdin/stdout.

aiortc is asyncio-only, so it runs in its own process (DESIGN.md principle 2). Protocol:
one JSON object per line.

``publish FREQ``: prints ``{"offer": sdp}`` for a sendonly Opus track playing a FREQ Hz
tone (and, with ``--video``, a VP8 track); reads ``{"answer": sdp}``; prints
``{"connected": true}`` once ICE and DTLS are up; then streams until stdin closes.

``subscribe SECONDS``: reads ``{"offer": sdp}`` (the SFU's), prints ``{"answer": sdp}``,
then decodes the first audio track for SECONDS of sound and prints
``{"first_audio_s": t, "frequency": f, "frames": n}`` — the delay from answering until the
first decoded frame, and the dominant frequency of what was heard; with ``--video`` also
``"video_frames"`` decoded from the first video track.

``follow SECONDS``: a subscriber across renegotiations. Each ``{"offer": sdp}`` is answered
with ``{"answer": sdp}``; ``{"hear": mid}`` decodes the audio track that arrived under that
mid for SECONDS of sound and prints ``{"first_audio_s": t, "frequency": f, "frames": n}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import sys
import time
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

RATE = 48000
PTIME = 0.02


class Tone(MediaStreamTrack):
    """A continuous sine tone, 20 ms frames of 16-bit mono, paced in real time."""

    kind = "audio"

    def __init__(self, frequency: float) -> None:
        super().__init__()
        self.frequency = frequency
        self.samples = 0
        self.start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.samples / RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        n = int(RATE * PTIME)
        t = (self.samples + np.arange(n)) / RATE
        pcm = (0.5 * 32767 * np.sin(2 * np.pi * self.frequency * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.samples
        frame.time_base = fractions.Fraction(1, RATE)
        self.samples += n
        return frame


class Pattern(MediaStreamTrack):
    """A moving gradient, 15 frames/s at 320x240."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.start: float | None = None

    async def recv(self) -> VideoFrame:
        if self.start is None:
            self.start = time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.count / 15 - time.monotonic()))
        image = np.zeros((240, 320, 3), dtype=np.uint8)
        image[:, :, 0] = (np.arange(320) + 4 * self.count) % 256
        image[:, :, 1] = 128
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self.count * 6000
        frame.time_base = fractions.Fraction(1, 90000)
        self.count += 1
        return frame


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def read_message() -> dict[str, Any]:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        raise EOFError("stdin closed")
    message: dict[str, Any] = json.loads(line)
    return message


async def publish(frequency: float, video: bool) -> None:
    pc = RTCPeerConnection()
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    pc.addTransceiver(Tone(frequency), direction="sendonly")
    if video:
        pc.addTransceiver(Pattern(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    emit({"offer": pc.localDescription.sdp})
    answer = await read_message()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["answer"], type="answer"))
    await asyncio.wait_for(connected.wait(), 15)
    emit({"connected": True})
    with contextlib.suppress(EOFError):
        await read_message()
    await pc.close()


async def hear(audio: MediaStreamTrack, seconds: float, since: float) -> dict[str, Any]:
    """Decode SECONDS of sound from ``audio``: the delay from ``since`` until the first
    audible frame, and the dominant frequency."""
    samples: list[np.ndarray] = []
    first_audio: float | None = None
    frames = 0

    async def decode() -> None:
        nonlocal first_audio, frames
        while sum(len(s) for s in samples) < seconds * RATE:
            frame = await audio.recv()
            pcm = frame.to_ndarray().astype(np.float64)
            mono = pcm.reshape(-1, len(frame.layout.channels))[:, 0]
            if first_audio is None and np.abs(mono).max() > 1000:
                first_audio = time.monotonic() - since
            if first_audio is not None:
                samples.append(mono)
                frames += 1

    with contextlib.suppress(asyncio.TimeoutError, MediaStreamError):
        await asyncio.wait_for(decode(), seconds + 20)
    frequency = 0.0
    if samples:
        sound = np.concatenate(samples)
        spectrum = np.abs(np.fft.rfft(sound * np.hanning(len(sound))))
        frequency = float(np.fft.rfftfreq(len(sound), 1 / RATE)[int(np.argmax(spectrum))])
    return {"first_audio_s": first_audio, "frequency": frequency, "frames": frames}


async def follow(seconds: float) -> None:
    """Answer offer after offer; hear the audio track of a mid when asked."""
    pc = RTCPeerConnection()
    # By the mid it arrived under: aiortc may later give a stale transceiver of a recycled
    # m-section the same mid, but the track event names the transceiver that was created.
    audio: dict[str, MediaStreamTrack] = {}

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.receiver.track is track and transceiver.mid is not None:
                audio[transceiver.mid] = track

    answered = time.monotonic()
    with contextlib.suppress(EOFError):
        while True:
            message = await read_message()
            if "offer" in message:
                offer = RTCSessionDescription(sdp=message["offer"], type="offer")
                await pc.setRemoteDescription(offer)
                await pc.setLocalDescription(await pc.createAnswer())
                answered = time.monotonic()
                emit({"answer": pc.localDescription.sdp})
            else:
                emit(await hear(audio[message["hear"]], seconds, answered))
    await pc.close()


async def subscribe(seconds: float, video: bool) -> None:
    pc = RTCPeerConnection()
    tracks: dict[str, asyncio.Future[MediaStreamTrack]] = {
        "audio": asyncio.get_running_loop().create_future(),
        "video": asyncio.get_running_loop().create_future(),
    }

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if not tracks[track.kind].done():
            tracks[track.kind].set_result(track)

    offer = await read_message()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["offer"], type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    answered = time.monotonic()
    emit({"answer": pc.localDescription.sdp})
    audio = await asyncio.wait_for(tracks["audio"], 10)
    heard = asyncio.ensure_future(hear(audio, seconds, answered))
    video_frames = 0

    async def watch() -> None:
        nonlocal video_frames
        track = await asyncio.wait_for(tracks["video"], 10)
        while True:
            await track.recv()
            video_frames += 1

    watcher = asyncio.ensure_future(watch()) if video else None
    result = await heard
    if watcher is not None:
        watcher.cancel()
    if video:
        result["video_frames"] = video_frames
    emit(result)
    await pc.close()


async def watch(seconds: float) -> None:
    """Decode the first video track for SECONDS; report frames and the widths seen."""
    pc = RTCPeerConnection()
    track_future: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video" and not track_future.done():
            track_future.set_result(track)

    offer = await read_message()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["offer"], type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    emit({"answer": pc.localDescription.sdp})
    track = await asyncio.wait_for(track_future, 10)
    frames = 0
    widths: set[int] = set()

    async def decode() -> None:
        nonlocal frames
        while True:
            frame = await track.recv()
            frames += 1
            widths.add(frame.width)

    with contextlib.suppress(TimeoutError, MediaStreamError):
        await asyncio.wait_for(decode(), seconds)
    emit({"video_frames": frames, "widths": sorted(widths)})
    await pc.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["publish", "subscribe", "watch", "follow"])
    parser.add_argument("value", type=float)
    parser.add_argument("--video", action="store_true")
    args = parser.parse_args()
    if args.mode == "publish":
        asyncio.run(publish(args.value, args.video))
    elif args.mode == "watch":
        asyncio.run(watch(args.value))
    elif args.mode == "follow":
        asyncio.run(follow(args.value))
    else:
        asyncio.run(subscribe(args.value, args.video))


if __name__ == "__main__":
    main()
