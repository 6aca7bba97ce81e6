"""Active speaker detection from RFC 6464 audio levels, with hysteresis.

The audio level header extension is in clear even when frames are end-to-end encrypted, so
the SFU can tell who is talking without hearing anything. Levels are −dBov (0 loudest,
127 silence, RFC 6464 §3). A producer's loudness is an exponential average of its packets;
packets that stop arriving (Opus DTX during silence) count as silence. The active speaker
changes only when a challenger has been louder by ``margin_db`` for ``hold`` seconds, so a
cough or crosstalk does not flip the spotlight.

Separately, voice activity per producer (what a large channel's subscribers consume, see
docs/voice.md "Large channels"): a producer turns voiced with its first packet at speech
level — at once, so a new speaker's first words cost as little as possible — and unvoiced
once it has sent no such packet for ``voice_hold`` seconds, so pauses between words and
sentences do not flap.
"""

from __future__ import annotations

__all__ = ["ActiveSpeakerDetector"]


class ActiveSpeakerDetector:
    """Per-router detector: fed levels per packet, polled a few times per second."""

    __slots__ = (
        "_alpha",
        "_challenger",
        "_challenger_since",
        "_hold",
        "_last_seen",
        "_loudness",
        "_margin",
        "_onsets",
        "_silence_after",
        "_threshold",
        "_voice_hold",
        "_voiced_at",
        "active",
    )

    def __init__(
        self,
        *,
        margin_db: float = 6.0,
        hold: float = 0.4,
        speech_dbov: float = -50.0,
        silence_after: float = 0.3,
        smoothing: float = 0.15,
        voice_hold: float = 1.0,
    ) -> None:
        self._margin = margin_db
        self._hold = hold
        self._threshold = 127.0 + speech_dbov
        self._silence_after = silence_after
        self._alpha = smoothing
        self._loudness: dict[str, float] = {}
        self._last_seen: dict[str, float] = {}
        self._challenger: str | None = None
        self._challenger_since = 0.0
        self.active: str | None = None
        self._voice_hold = voice_hold
        #: voiced producer id -> when its last packet at speech level came
        self._voiced_at: dict[str, float] = {}
        self._onsets: list[str] = []

    def observe(self, producer_id: str, level: int, now: float) -> None:
        """Account one packet's audio level (−dBov) for a producer."""
        loudness = self._loudness.get(producer_id, 0.0)
        self._loudness[producer_id] = loudness + self._alpha * ((127 - level) - loudness)
        self._last_seen[producer_id] = now
        if 127 - level >= self._threshold:
            if producer_id not in self._voiced_at:
                self._onsets.append(producer_id)
            self._voiced_at[producer_id] = now

    def voice_activity(self, now: float) -> list[tuple[str, bool]]:
        """Changes of voice activity since the last call: ``(producer id, voiced)``."""
        changes = [(producer_id, True) for producer_id in self._onsets]
        self._onsets = []
        for producer_id, voiced_at in list(self._voiced_at.items()):
            if now - voiced_at > self._voice_hold:
                del self._voiced_at[producer_id]
                changes.append((producer_id, False))
        return changes

    def remove(self, producer_id: str) -> None:
        """Forget a closed producer; if it was the active speaker, nobody is until re-elected."""
        self._loudness.pop(producer_id, None)
        self._last_seen.pop(producer_id, None)
        self._voiced_at.pop(producer_id, None)
        if producer_id in self._onsets:
            self._onsets.remove(producer_id)
        if self.active == producer_id:
            self.active = None
        if self._challenger == producer_id:
            self._challenger = None

    def _current(self, producer_id: str, now: float) -> float:
        if now - self._last_seen.get(producer_id, -1e9) > self._silence_after:
            self._loudness[producer_id] = 0.0
        return self._loudness.get(producer_id, 0.0)

    def poll(self, now: float) -> str | None:
        """Re-evaluate; returns the new active speaker's producer id when it changed."""
        if not self._loudness:
            return None
        levels = {pid: self._current(pid, now) for pid in list(self._loudness)}
        loudest = max(levels, key=levels.__getitem__)
        if levels[loudest] < self._threshold or loudest == self.active:
            self._challenger = None
            return None
        active_level = levels.get(self.active, 0.0) if self.active is not None else 0.0
        if self.active is not None and levels[loudest] < active_level + self._margin:
            self._challenger = None
            return None
        if self._challenger != loudest:
            self._challenger = loudest
            self._challenger_since = now
        if self.active is not None and now - self._challenger_since < self._hold:
            return None
        self.active = loudest
        self._challenger = None
        return loudest
