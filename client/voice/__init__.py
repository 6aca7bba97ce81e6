"""The client's media layer for voice channels: end-to-end protected aiortc media.

* :mod:`client.voice.media` — SFrame on every encoded frame inside aiortc
  (:func:`protect_transceiver`, :class:`FrameKeys`);
* :mod:`client.voice.sources` — tone and WAV file tracks to publish;
* :mod:`client.voice.sinks` — per-participant WAV recording and frequency analysis.

aiortc is asyncio-only: these run on an asyncio loop (trio-asyncio in the SDK).
"""

from client.voice.errors import MediaError, MediaFileError, MediaHookUnavailable
from client.voice.media import (
    FrameKeys,
    OpeningJitterBuffer,
    ProtectedOpusEncoder,
    ProtectedTransceiver,
    ProtectedVp8Encoder,
    codec_for_kind,
    protect_transceiver,
)
from client.voice.sinks import WavRecorder, band_energy_fraction, dominant_frequency, record_track
from client.voice.sources import ToneSource, WavFileSource

__all__ = [
    "FrameKeys",
    "MediaError",
    "MediaFileError",
    "MediaHookUnavailable",
    "OpeningJitterBuffer",
    "ProtectedOpusEncoder",
    "ProtectedTransceiver",
    "ProtectedVp8Encoder",
    "ToneSource",
    "WavFileSource",
    "WavRecorder",
    "band_energy_fraction",
    "codec_for_kind",
    "dominant_frequency",
    "protect_transceiver",
    "record_track",
]
