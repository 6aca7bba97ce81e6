"""The client's media layer for voice channels: end-to-end protected aiortc media.

* :mod:`client.voice.keys` — :class:`FrameKeys`, a participant's media keys in one call;
* :mod:`client.voice.media` — SFrame on every encoded frame inside aiortc
  (:func:`protect_transceiver`);
* :mod:`client.voice.sources` — tone and WAV file tracks to publish;
* :mod:`client.voice.sinks` — per-participant WAV recording and frequency analysis;
* :mod:`client.voice.signalling` — a call's signalling, sans-I/O;
* :mod:`client.voice.call` — a call's aiortc transports and its trio shell;
* :mod:`client.voice.calls` — the client's voice part (voice states, the running call).

aiortc is asyncio-only: these run on an asyncio loop (trio-asyncio in the SDK). Names are
loaded on first use, so a command that never touches media does not load aiortc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.voice.errors import MediaError, MediaFileError, MediaHookUnavailable
    from client.voice.keys import FrameKeys
    from client.voice.media import (
        OpeningJitterBuffer,
        ProtectedOpusEncoder,
        ProtectedTransceiver,
        ProtectedVp8Encoder,
        codec_for_kind,
        protect_transceiver,
    )
    from client.voice.sinks import (
        WavRecorder,
        band_energy_fraction,
        dominant_frequency,
        record_track,
    )
    from client.voice.sources import ToneSource, WavFileSource

_WHERE = {
    "MediaError": "client.voice.errors",
    "MediaFileError": "client.voice.errors",
    "MediaHookUnavailable": "client.voice.errors",
    "FrameKeys": "client.voice.keys",
    "OpeningJitterBuffer": "client.voice.media",
    "ProtectedOpusEncoder": "client.voice.media",
    "ProtectedTransceiver": "client.voice.media",
    "ProtectedVp8Encoder": "client.voice.media",
    "codec_for_kind": "client.voice.media",
    "protect_transceiver": "client.voice.media",
    "WavRecorder": "client.voice.sinks",
    "band_energy_fraction": "client.voice.sinks",
    "dominant_frequency": "client.voice.sinks",
    "record_track": "client.voice.sinks",
    "ToneSource": "client.voice.sources",
    "WavFileSource": "client.voice.sources",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'client.voice' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
