"""``python -m loadtest video --spawn`` at a small size: publishers sending three VP8
simulcast layers through the real join flow, subscribers each receiving the layer its REMB
asks for, and the report's schema (docs/loadtest.md) with loss under 1 %."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.__main__ import main
from loadtest.video import wanted_layer
from loadtest.video_frames import FPS

pytestmark = pytest.mark.slow

PARTICIPANTS, PUBLISHERS, DURATION = 5, 2, 3.0


def test_small_video_room_reports_its_schema_layers_and_no_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, plot = tmp_path / "video.json", tmp_path / "video.png"
    argv = ["video", "--spawn", "--participants", str(PARTICIPANTS)]
    argv += ["--publishers", str(PUBLISHERS), "--duration", str(DURATION), "--ramp", "1"]
    argv += ["--json", str(out), "--plot", str(plot), "--quiet"]
    assert main(argv) == 0
    assert "layers" in capsys.readouterr().out  # the summary table
    report = json.loads(out.read_text())

    assert report["scenario"] == "video" and report["publishers"] == PUBLISHERS
    assert report["participants"] == PARTICIPANTS and report["joined"] == PARTICIPANTS
    assert report["errors"] == {}
    assert report["loss_pct"] < 1.0
    assert [layer["rid"] for layer in report["layers"]] == ["q", "h", "f"]
    # Every participant receives every other publisher's 30 frames a second.
    receivers = PARTICIPANTS * PUBLISHERS - PUBLISHERS
    assert report["expected"] == pytest.approx(receivers * FPS * DURATION, rel=0.05)
    for key in ("p50", "p95", "p99", "max"):
        assert 0 < report["latency_ms"][key] < 1000
    assert 0 < report["join_ms"]["p50"] <= report["join_ms"]["p99"] < 15000
    # The SFU forwarded each consumer's stream continuously across its layer switch.
    assert report["sequence_gaps"] == 0 and report["picture_id_jumps"] == 0
    # Subscribers asking for layers below the top made the SFU request key frames.
    assert report["keyframe_requests"] > 0
    sfu = report["sfu"]
    assert sfu["cpu_pct"] > 0 and sfu["rss_mb"] > 10
    assert sfu["pps_in"] > PUBLISHERS * FPS * 3 and sfu["pps_out"] > 0
    seconds = report["per_second"]
    assert [row["second"] for row in seconds] == list(range(int(DURATION)))
    assert sum(row["expected"] for row in seconds) == report["expected"]
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    rows = report["per_participant"]
    assert len(rows) == PARTICIPANTS
    counted = {"0": 0, "1": 0, "2": 0}
    for row in rows:
        assert row["publisher"] == (row["participant"] < PUBLISHERS)
        # Every subscriber receives a layer: the one its bandwidth asked for.
        assert row["wanted_layer"] == wanted_layer(row["participant"])
        assert row["layer"] == row["wanted_layer"]
        assert row["received"] > 0 and row["loss_pct"] < 1.0 and row["duplicates"] == 0
        received = row["layers_received"]
        assert received[str(row["layer"])] >= row["received"]
        counted[str(row["layer"])] += 1
    assert report["subscribers_by_layer"] == counted
    publishers = [row for row in rows if row["publisher"]]
    assert all(
        row["frames_sent_in_window"] == pytest.approx(FPS * DURATION, abs=2) for row in publishers
    )
    assert all(row["keyframes_sent"] >= 3 for row in publishers)  # one per layer at the start


def test_layer_switches_inside_the_window_lose_no_frame(tmp_path: Path) -> None:
    """``--switch``: every subscriber asks for another layer each second; the SFU switches
    at key frames, keeps each consumer's stream continuous and loses no frame."""
    out = tmp_path / "switch.json"
    argv = ["video", "--spawn", "--participants", "4", "--publishers", "2", "--duration", "3"]
    argv += ["--ramp", "0.5", "--switch", "1", "--json", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["errors"] == {} and report["switch_s"] == 1
    # Two changes (at 1 s and 2 s) for each of the 6 subscriber-publisher pairs.
    assert report["layer_switches_requested"] == 12
    assert report["layer_switches"] == report["layer_switches_requested"]
    assert report["loss_pct"] < 1.0 and report["duplicates"] == 0
    assert report["sequence_gaps"] == 0 and report["picture_id_jumps"] == 0
    for row in report["per_participant"]:
        assert sum(1 for v in row["layers_received"].values() if v) == 3  # all three seen


def test_publishers_beyond_participants_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["video", "--spawn", "--participants", "2", "--publishers", "3"]) == 2
    assert "--publishers exceeds --participants" in capsys.readouterr().err
