"""Audio to publish: a tone generator and a WAV file, as aiortc media tracks.

Both produce what aiortc's Opus encoder expects (RFC 7587: 48 kHz): 20 ms frames of packed
signed 16-bit samples at 48 kHz, mono (or stereo for a stereo file), stamped with a
presentation time in samples. By default they are paced in real time, as a microphone
would be, so the RTP stream has the right rate; ``realtime=False`` returns frames as fast
as they are asked for (offline encoding, tests).
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
import wave
from collections import deque
from pathlib import Path

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, AudioResampler

from client.voice.errors import MediaFileError

__all__ = ["FRAME_SAMPLES", "SAMPLE_RATE", "ToneSource", "WavFileSource"]

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
# Bounds on what a WAV file may declare, so a hostile header cannot ask for absurd buffers.
MAX_WAV_RATE = 384000
MAX_WAV_CHANNELS = 32


class _PacedAudioTrack(MediaStreamTrack):
    """An audio track that stamps its frames and paces them in real time if asked."""

    kind = "audio"

    def __init__(self, *, realtime: bool) -> None:
        super().__init__()
        self._realtime = realtime
        self._samples_sent = 0
        self._start: float | None = None

    async def _pace(self) -> None:
        if not self._realtime:
            return
        now = time.monotonic()
        if self._start is None:
            self._start = now
        await asyncio.sleep(max(0.0, self._start + self._samples_sent / SAMPLE_RATE - now))

    def _stamp(self, frame: AudioFrame) -> AudioFrame:
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._samples_sent
        frame.time_base = TIME_BASE
        self._samples_sent += frame.samples
        return frame


class ToneSource(_PacedAudioTrack):
    """A continuous sine tone at ``frequency`` Hz, mono, ``amplitude`` of full scale."""

    def __init__(self, frequency: float, *, amplitude: float = 0.5, realtime: bool = True) -> None:
        if not 0 < frequency < SAMPLE_RATE / 2:
            raise ValueError(f"a tone must be within 0..{SAMPLE_RATE // 2} Hz")
        if not 0 <= amplitude <= 1:
            raise ValueError("amplitude must be within 0..1 of full scale")
        super().__init__(realtime=realtime)
        self.frequency = frequency
        self.amplitude = amplitude

    async def recv(self) -> AudioFrame:
        """The next 20 ms of tone."""
        if self.readyState != "live":
            raise MediaStreamError
        await self._pace()
        t = (self._samples_sent + np.arange(FRAME_SAMPLES)) / SAMPLE_RATE
        wave_ = self.amplitude * 32767 * np.sin(2 * np.pi * self.frequency * t)
        pcm = np.round(wave_).astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        return self._stamp(frame)


def _pcm16_untrusted(data: bytes, sample_width: int, channels: int) -> np.ndarray:
    """WAV sample bytes (little-endian; 8-bit unsigned) as int16, shape (frames, channels)."""
    usable = len(data) - len(data) % (sample_width * channels)
    raw = np.frombuffer(data[:usable], dtype=np.uint8)
    if sample_width == 1:
        pcm = (raw.astype(np.int16) - 128) << 8
    elif sample_width == 2:
        pcm = raw.view("<i2").astype(np.int16)
    elif sample_width == 3:
        b = raw.reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        value = np.where(value & 0x800000, value - (1 << 24), value)
        pcm = (value >> 8).astype(np.int16)
    else:
        pcm = (raw.view("<i4") >> 16).astype(np.int16)
    return pcm.reshape(-1, channels)


class WavFileSource(_PacedAudioTrack):
    """A PCM WAV file (8/16/24/32-bit, any rate, any channels) played as 48 kHz audio.

    Mono files play as mono, stereo as stereo; more channels are mixed down to mono. At the
    end of the file the track ends (``MediaStreamError``, as aiortc's player does) unless
    ``loop`` is set. Raises :class:`MediaFileError` for a file that is not a PCM WAV file.
    """

    def __init__(self, path: str | Path, *, loop: bool = False, realtime: bool = True) -> None:
        super().__init__(realtime=realtime)
        self.path = Path(path)
        self.loop = loop
        try:
            self._wav = wave.open(str(self.path), "rb")  # noqa: SIM115 (closed by stop())
        except (OSError, EOFError, wave.Error) as exc:
            raise MediaFileError(f"{self.path} cannot be read as a PCM WAV file: {exc}") from exc
        self.channels = self._wav.getnchannels()
        self.sample_width = self._wav.getsampwidth()
        self.source_rate = self._wav.getframerate()
        if (
            not 1 <= self.channels <= MAX_WAV_CHANNELS
            or self.sample_width not in (1, 2, 3, 4)
            or not 1 <= self.source_rate <= MAX_WAV_RATE
        ):
            self._wav.close()
            raise MediaFileError(
                f"{self.path} is a WAV file this player does not support "
                f"({self.channels} channels, {8 * self.sample_width}-bit, {self.source_rate} Hz)"
            )
        self._layout = "stereo" if self.channels == 2 else "mono"
        self._chunk = math.ceil(self.source_rate * FRAME_SAMPLES / SAMPLE_RATE)
        self._resampler = self._new_resampler()
        self._ready: deque[AudioFrame] = deque()
        self._ended = False
        # Whether this pass over the file produced any sample: an empty file must not loop.
        self._pass_had_audio = False

    def _new_resampler(self) -> AudioResampler:
        return AudioResampler(
            format="s16", layout=self._layout, rate=SAMPLE_RATE, frame_size=FRAME_SAMPLES
        )

    def _read_chunk(self) -> list[AudioFrame]:
        """Resampled frames from the next chunk of the file (flushed at its end)."""
        try:
            data = self._wav.readframes(self._chunk)
        except (OSError, EOFError, wave.Error) as exc:
            raise MediaFileError(f"{self.path} could not be read: {exc}") from exc
        pcm = _pcm16_untrusted(data, self.sample_width, self.channels)
        if len(pcm) == 0:
            frames: list[AudioFrame] = list(self._resampler.resample(None))
            if self.loop and self._pass_had_audio:
                self._pass_had_audio = False
                self._wav.rewind()
                self._resampler = self._new_resampler()
            else:
                self._ended = True
            return frames
        self._pass_had_audio = True
        if self.channels > 2:
            pcm = pcm.mean(axis=1, dtype=np.float64).round().astype(np.int16).reshape(-1, 1)
        frame = AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout=self._layout
        )
        frame.sample_rate = self.source_rate
        return list(self._resampler.resample(frame))

    async def recv(self) -> AudioFrame:
        """The next 20 ms of the file (the last frame may be shorter)."""
        if self.readyState != "live":
            raise MediaStreamError
        while not self._ready:
            if self._ended:
                self.stop()
                raise MediaStreamError
            self._ready.extend(self._read_chunk())
        await self._pace()
        return self._stamp(self._ready.popleft())

    def stop(self) -> None:
        """End the track and close the file."""
        super().stop()
        self._wav.close()
