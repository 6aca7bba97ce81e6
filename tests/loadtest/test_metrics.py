"""The load tester's bookkeeping (``loadtest.metrics``): windowing, loss, duplicates,
latency and jitter from stamped frames, without any network."""

from __future__ import annotations

import pytest

from loadtest.__main__ import main
from loadtest.metrics import (
    COMFORT_BYTES,
    FRAME_BYTES,
    TOC,
    ReceiverStats,
    Window,
    frame_bytes,
    loss_pct,
    percentiles,
    read_stamp_untrusted,
)

MS = 1_000_000


def test_frames_carry_their_stamp_at_opus_sizes() -> None:
    frame = frame_bytes(7, 42, 123456789)
    assert len(frame) == FRAME_BYTES and frame[0] == TOC
    assert read_stamp_untrusted(frame) == (7, 42, 123456789)
    comfort = frame_bytes(7, 43, 5, comfort=True)
    assert len(comfort) == COMFORT_BYTES
    assert read_stamp_untrusted(comfort) == (7, 43, 5)
    with pytest.raises(ValueError):
        read_stamp_untrusted(comfort[:-1])


def test_only_frames_sent_inside_the_window_count() -> None:
    window = Window()
    stats = ReceiverStats(window)
    stats.record(1, 1, 0, 5 * MS)  # before the window opened: heard, not counted
    assert stats.heard == {1} and stats.received == 0 and stats.first_media_ns == 5 * MS
    window.open(100 * MS, 200 * MS)
    stats.record(1, 2, 99 * MS, 120 * MS)
    stats.record(1, 3, 100 * MS, 103 * MS)
    stats.record(2, 1, 199 * MS, 201 * MS)
    stats.record(2, 2, 200 * MS, 201 * MS)
    assert stats.received == 2
    assert list(stats.latencies_ms) == [3.0, 2.0]
    assert window.seconds == pytest.approx(0.1)


def test_loss_and_duplicates_are_counted_per_sender() -> None:
    window = Window()
    window.open(0, 10**12)
    stats = ReceiverStats(window)
    for seq in range(1, 101):
        if seq % 10 != 0:  # one in ten lost
            stats.record(1, seq, seq * 20 * MS, seq * 20 * MS + 2 * MS)
    stats.record(1, 5, 100 * MS, 130 * MS)  # delivered twice
    stats.duplicate()  # refused by the SFrame replay window
    row = stats.summary(expected=100)
    assert row["received"] == 90 and row["duplicates"] == 2
    assert row["loss_pct"] == 10.0
    assert row["latency_ms"]["p50"] == 2.0 and row["latency_ms"]["max"] == 2.0
    assert loss_pct(0, 0) == 0.0 and loss_pct(3, 5) == 0.0


def test_jitter_follows_rfc3550_from_transit_changes() -> None:
    window = Window()
    window.open(0, 10**12)
    steady, bumpy = ReceiverStats(window), ReceiverStats(window)
    for seq in range(1, 200):
        steady.record(1, seq, seq * 20 * MS, seq * 20 * MS + 5 * MS)
        delay = 5 * MS if seq % 2 else 9 * MS  # transit alternates by 4 ms
        bumpy.record(1, seq, seq * 20 * MS, seq * 20 * MS + delay)
    assert steady.jitter_ms() == 0.0
    # J converges to |D| = 4 ms when every transit change is 4 ms.
    assert bumpy.jitter_ms() == pytest.approx(4.0, rel=0.01)


def test_percentiles() -> None:
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None}
    result = percentiles(list(range(1, 101)))
    assert result["p50"] == pytest.approx(50.5) and result["max"] == 100.0
    assert result["p99"] == pytest.approx(99.01)


def test_cli_refuses_impossible_rooms(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["voice-room", "--spawn", "--participants", "2", "--speakers", "3"]) == 2
    assert main(["voice-room", "--spawn", "--participants", "1", "--speakers", "1"]) == 2
    with pytest.raises(SystemExit):
        main(["voice-room", "--participants", "4"])  # neither --spawn nor --target
    with pytest.raises(SystemExit):
        main(["voice-room", "--spawn", "--target", "http://127.0.0.1:1"])
    assert "exceeds" in capsys.readouterr().err
