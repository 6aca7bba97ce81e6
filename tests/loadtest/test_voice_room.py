"""``python -m loadtest voice-room --spawn`` at a small size: a real deployment, real
accounts, gateway joins, ICE/DTLS/SRTP and SFrame, and the report's schema
(docs/loadtest.md) with loss under 1 %."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.__main__ import main
from loadtest.spawn import spawned
from loadtest.voice_room import RoomConfig, run_voice_room

pytestmark = pytest.mark.slow

PARTICIPANTS, SPEAKERS, DURATION = 6, 2, 4.0


def test_small_voice_room_reports_its_schema_and_no_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    argv = ["voice-room", "--spawn", "--participants", str(PARTICIPANTS)]
    argv += ["--speakers", str(SPEAKERS), "--duration", str(DURATION), "--ramp", "1"]
    plot = tmp_path / "out.png"
    argv += ["--json", str(out), "--plot", str(plot), "--quiet"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert "loss" in capsys.readouterr().out  # the summary table

    assert report["participants"] == PARTICIPANTS and report["joined"] == PARTICIPANTS
    assert report["errors"] == {} and report["error_details"] == {}
    assert report["loss_pct"] < 1.0
    # Every receiver expects every other participant's frames: speakers every 20 ms, the
    # silent ones a comfort update every 400 ms.
    per_second = SPEAKERS * 50 + (PARTICIPANTS - SPEAKERS) * 2.5
    assert report["expected"] == pytest.approx((PARTICIPANTS - 1) * per_second * DURATION, rel=0.05)
    for key in ("p50", "p95", "p99", "max"):
        assert 0 < report["latency_ms"][key] < 1000
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert 0 < report["join_ms"]["p50"] <= report["join_ms"]["p99"] < 15000
    sfu = report["sfu"]
    assert sfu["cpu_pct"] > 0 and sfu["rss_mb"] > 10
    assert sfu["pps_in"] == pytest.approx(per_second, rel=0.05)
    assert sfu["pps_out"] == pytest.approx((PARTICIPANTS - 1) * per_second, rel=0.05)
    assert len(sfu["workers"]) == 1
    seconds = report["per_second"]
    assert [row["second"] for row in seconds] == list(range(int(DURATION)))
    assert sum(row["expected"] for row in seconds) == report["expected"]
    assert sum(row["received"] for row in seconds) == report["received"]
    assert all(row["latency_ms"]["p99"] is not None for row in seconds)
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    rows = report["per_participant"]
    assert len(rows) == PARTICIPANTS
    for row in rows:
        assert row["received"] > 0 and row["loss_pct"] < 1.0 and row["duplicates"] == 0
        assert row["speaker"] == (row["participant"] < SPEAKERS)


async def test_target_mode_drives_a_running_deployment(tmp_path: Path) -> None:
    """``--target URL``: the same run against a deployment the harness did not start —
    accounts through the API with its proofs of work, no SFU process figures (null), packet
    rates from the participants."""
    async with spawned(tmp_path / "deployment") as world:
        config = RoomConfig(
            participants=4, speakers=1, duration=2.0, ramp=0.5, target=world.url + "/"
        )
        report = await run_voice_room(config)
    assert report["target"] == world.url + "/" and report["spawned_nodes"] is None
    assert report["joined"] == 4 and report["errors"] == {}
    assert report["loss_pct"] < 1.0 and report["received"] > 0
    assert report["sfu"]["cpu_pct"] is None and report["sfu"]["rss_mb"] is None
    assert report["sfu"]["pps_in"] > 0 and report["sfu"]["pps_out"] > 0


def test_many_rooms_keeps_each_rooms_media_in_its_room(tmp_path: Path) -> None:
    out = tmp_path / "rooms.json"
    argv = ["many-rooms", "--rooms", "2", "--spawn", "--participants", "3", "--speakers", "1"]
    argv += ["--duration", "2", "--ramp", "0.5", "--json", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["scenario"] == "many-rooms" and report["rooms"] == 2
    assert report["participants"] == 6 and report["joined"] == 6 and report["errors"] == {}
    assert [room["joined"] for room in report["per_room"]] == [3, 3]
    assert sum(room["expected"] for room in report["per_room"]) == report["expected"]
    assert all(room["loss_pct"] < 1.0 and room["received"] > 0 for room in report["per_room"])
    # Each receiver expects exactly the frames its own room's others sent; a frame from the
    # other room could not be decrypted (no key for it) and would show as an error.
    rows = report["per_participant"]
    for row in rows:
        mates = [r for r in rows if r["room"] == row["room"] and r is not row]
        assert len(mates) == 2
        assert row["expected"] == sum(r["sent_in_window"] for r in mates)


def test_measure_and_workers_options_on_a_spawned_node(tmp_path: Path) -> None:
    """``--workers 2 --measure 2``: a node of two workers, two receivers that decrypt and
    measure (ranks 0 and 2 of 5) while the others join, connect and never read media."""
    out = tmp_path / "measure.json"
    argv = ["voice-room", "--spawn", "--participants", "5", "--speakers", "2"]
    argv += ["--duration", "2", "--ramp", "0.5", "--workers", "2", "--measure", "2"]
    assert main([*argv, "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["joined"] == 5 and report["errors"] == {} and report["measured"] == 2
    assert 0 < report["setup_s"] < report["window_start_s"]
    workers = report["sfu"]["workers"]
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    rows = report["per_participant"]
    assert [row["measured"] for row in rows] == [True, False, True, False, False]
    for row in rows:
        others = sum(r["sent_in_window"] for r in rows if r is not row)
        assert row["consumes"] == 4
        if row["measured"]:
            assert row["expected"] == others and row["loss_pct"] < 1.0
        else:
            assert row["expected"] == row["received"] == row["decrypted"] == 0
            assert row["join_ms"] is None and "recv_connected" in row["join_steps_ms"]
    assert report["expected"] == sum(row["expected"] for row in rows)
    assert report["sfu"]["pps_out_due"] == pytest.approx(4 * report["sfu"]["pps_in"], rel=0.05)
