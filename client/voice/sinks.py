"""Audio received: recording each remote track to a WAV file, and what frequency it holds.

A :class:`WavRecorder` takes the frames aiortc decodes (Opus decodes to 48 kHz stereo),
converts them to 48 kHz signed 16-bit and writes them to a WAV file while keeping the last
seconds in memory for analysis. :func:`record_track` drives one recorder from one remote
track; the SDK runs one per participant. :func:`dominant_frequency` and
:func:`band_energy_fraction` analyse samples with a Hann-windowed FFT.
"""

from __future__ import annotations

import wave
from collections import deque
from pathlib import Path
from types import TracebackType

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, AudioResampler

from client.voice.errors import MediaError, MediaFileError
from client.voice.sources import SAMPLE_RATE

__all__ = ["WavRecorder", "band_energy_fraction", "dominant_frequency", "record_track"]


def _spectrum(samples: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and power of a Hann-windowed, mean-removed signal."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError("need a one-dimensional signal of at least two samples")
    if sample_rate <= 0:
        raise ValueError("sample rate must be positive")
    x = (x - x.mean()) * np.hanning(len(x))
    power = np.abs(np.fft.rfft(x)) ** 2
    return np.fft.rfftfreq(len(x), 1 / sample_rate), power


def dominant_frequency(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """The frequency (Hz) of the strongest spectral peak; 0.0 for silence.

    The peak bin is refined by parabolic interpolation of the log power of its neighbours,
    so the estimate is well inside one bin (``sample_rate / len(samples)``).
    """
    freqs, power = _spectrum(samples, sample_rate)
    if not power[1:].any():
        return 0.0
    k = int(np.argmax(power[1:])) + 1
    if 1 <= k < len(power) - 1 and power[k - 1] > 0 and power[k + 1] > 0:
        a, b, c = np.log(power[k - 1 : k + 2])
        denominator = a - 2 * b + c
        offset = 0.5 * (a - c) / denominator if denominator else 0.0
        return float(freqs[k] + offset * (freqs[1] - freqs[0]))
    return float(freqs[k])


def band_energy_fraction(
    samples: np.ndarray, frequency: float, *, width: float = 20.0, sample_rate: int = SAMPLE_RATE
) -> float:
    """The share (0..1) of the signal's energy within ``width`` Hz of ``frequency``."""
    freqs, power = _spectrum(samples, sample_rate)
    total = float(power.sum())
    if total == 0:
        return 0.0
    return float(power[np.abs(freqs - frequency) <= width].sum()) / total


class WavRecorder:
    """Writes received audio to a 16-bit 48 kHz WAV file; keeps the last seconds in memory.

    ``channels`` is 1 (received stereo is mixed down) or 2. Raises :class:`MediaFileError`
    when the file cannot be created or written.
    """

    def __init__(self, path: str | Path, *, channels: int = 1, keep_seconds: float = 10.0) -> None:
        if channels not in (1, 2):
            raise ValueError("a recording has one or two channels")
        if not 0 <= keep_seconds <= 600:
            raise ValueError("keep_seconds must be within 0..600")
        self.path = Path(path)
        self.channels = channels
        self._resampler = AudioResampler(
            format="s16", layout="mono" if channels == 1 else "stereo", rate=SAMPLE_RATE
        )
        self._keep = int(keep_seconds * SAMPLE_RATE)
        self._tail: deque[np.ndarray] = deque()
        self._tail_samples = 0
        self.frames = 0
        self.samples_written = 0
        try:
            self._wav = wave.open(str(self.path), "wb")  # noqa: SIM115 (closed by close())
            self._wav.setnchannels(channels)
            self._wav.setsampwidth(2)
            self._wav.setframerate(SAMPLE_RATE)
        except (OSError, wave.Error) as exc:
            raise MediaFileError(f"{self.path} cannot be written: {exc}") from exc

    @property
    def seconds(self) -> float:
        """How much audio has been written."""
        return self.samples_written / SAMPLE_RATE

    def write(self, frame: AudioFrame) -> None:
        """Append one decoded frame (any format, layout and rate aiortc hands out)."""
        for converted in self._resampler.resample(frame):
            pcm = converted.to_ndarray().reshape(-1, self.channels)
            try:
                self._wav.writeframes(pcm.astype("<i2").tobytes())
            except (OSError, wave.Error) as exc:
                raise MediaFileError(f"{self.path} could not be written: {exc}") from exc
            self.samples_written += len(pcm)
            self._remember(pcm[:, 0] if self.channels == 1 else pcm.mean(axis=1))
        self.frames += 1

    def _remember(self, mono: np.ndarray) -> None:
        self._tail.append(mono.astype(np.int16))
        self._tail_samples += len(mono)
        while self._tail and self._tail_samples - len(self._tail[0]) >= self._keep:
            self._tail_samples -= len(self._tail.popleft())

    def samples(self) -> np.ndarray:
        """The last ``keep_seconds`` (at least) of what was written, mono int16."""
        if not self._tail:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(list(self._tail))

    def close(self) -> None:
        """Finish the WAV file (its header gets the final length)."""
        try:
            self._wav.close()
        except (OSError, wave.Error) as exc:
            raise MediaFileError(f"{self.path} could not be finished: {exc}") from exc

    def __enter__(self) -> WavRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def record_track(
    track: MediaStreamTrack, recorder: WavRecorder, *, seconds: float | None = None
) -> None:
    """Write ``track``'s audio into ``recorder`` until it ends or ``seconds`` were written."""
    while seconds is None or recorder.seconds < seconds:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if not isinstance(frame, AudioFrame):
            raise MediaError(f"track {track.id} is not an audio track")
        recorder.write(frame)
