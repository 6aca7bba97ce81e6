"""Active speaker detection with hysteresis."""

from __future__ import annotations

from sfu.active_speaker import ActiveSpeakerDetector


def _talk(detector: ActiveSpeakerDetector, levels: dict[str, int], start: float, end: float):
    changes = []
    now = start
    while now < end:
        for pid, level in levels.items():
            detector.observe(pid, level, now)
        if round(now / 0.02) % 10 == 0:
            change = detector.poll(now)
            if change is not None:
                changes.append((round(now, 2), change))
        now += 0.02
    return changes


def test_first_speaker_is_elected_and_silence_does_not_flip_it() -> None:
    detector = ActiveSpeakerDetector()
    changes = _talk(detector, {"alice": 30, "bob": 127}, 0.0, 1.0)
    assert [pid for _, pid in changes] == ["alice"]
    # Alice stops (DTX: no packets), Bob stays silent: Alice remains the active speaker.
    assert _talk(detector, {"bob": 127}, 1.0, 3.0) == []
    assert detector.active == "alice"


def test_a_brief_louder_burst_does_not_steal_the_spotlight() -> None:
    detector = ActiveSpeakerDetector(hold=0.6)
    _talk(detector, {"alice": 35}, 0.0, 1.0)
    assert _talk(detector, {"alice": 35, "bob": 10}, 1.0, 1.3) == []
    assert _talk(detector, {"alice": 35, "bob": 60}, 1.3, 2.0) == []
    assert detector.active == "alice"


def test_a_sustained_louder_speaker_takes_over_after_the_hold_time() -> None:
    detector = ActiveSpeakerDetector(hold=0.4)
    _talk(detector, {"alice": 40}, 0.0, 1.0)
    changes = _talk(detector, {"alice": 40, "bob": 20}, 1.0, 3.0)
    assert [pid for _, pid in changes] == ["bob"]
    assert changes[0][0] >= 1.4
    detector.remove("bob")
    assert detector.active is None


def test_similar_levels_within_the_margin_do_not_switch() -> None:
    detector = ActiveSpeakerDetector(margin_db=6.0)
    _talk(detector, {"alice": 30}, 0.0, 1.0)
    assert _talk(detector, {"alice": 30, "bob": 27}, 1.0, 4.0) == []


def test_voice_activity_starts_with_the_first_word_and_outlasts_pauses() -> None:
    detector = ActiveSpeakerDetector(voice_hold=1.0)
    detector.observe("silent", 127, 0.0)  # DTX comfort noise is never speech
    detector.observe("talker", 30, 0.0)
    assert detector.voice_activity(0.0) == [("talker", True)]
    detector.observe("talker", 30, 0.5)
    detector.observe("talker", 127, 1.2)  # a pause shorter than the hold
    assert detector.voice_activity(1.4) == []
    assert detector.voice_activity(1.6) == [("talker", False)]
    detector.observe("talker", 30, 2.0)
    detector.remove("talker")  # closed before anyone heard the onset
    assert detector.voice_activity(2.0) == []
