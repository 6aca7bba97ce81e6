"""``--aiortc``: a full SDK client with aiortc in a load-test room, in its own process —
real Opus under SFrame both ways between it and the synthetic participants, its key and
theirs bridged by the harness into the SDK's and the synthetic participants' install paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.__main__ import main

pytestmark = pytest.mark.slow

PARTICIPANTS, SPEAKERS, DURATION = 4, 2, 3.0


def test_an_aiortc_participant_hears_every_speaker_and_is_heard_by_everyone(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.json"
    argv = ["voice-room", "--spawn", "--participants", str(PARTICIPANTS), "--aiortc", "1"]
    argv += ["--speakers", str(SPEAKERS), "--duration", str(DURATION), "--ramp", "1"]
    argv += ["--json", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads(out.read_text())

    # The synthetic participants' figures are unchanged by the aiortc one's real Opus:
    # told apart by its sender index, never read as a stamp.
    assert report["joined"] == PARTICIPANTS and report["errors"] == {}
    assert report["loss_pct"] < 1.0

    aiortc = report["aiortc"]
    assert aiortc["participants"] == 1 and aiortc["joined"] == 1 and aiortc["errors"] == 0
    (row,) = aiortc["per_participant"]
    assert row["error"] is None and row["notices"] == []
    assert 0 < row["join_ms"] < 15000
    assert row["cpu_pct"] > 0 and row["rss_mb"] > 30
    # It opened (SFrame, with keys installed through the SDK's MediaKeys) and aiortc
    # decoded frames of every synthetic participant, speakers at their full rate.
    senders = {s["from"]: s for s in row["senders"]}
    assert set(senders) == set(range(PARTICIPANTS))
    for number, sender in senders.items():
        assert sender["opened"] > 0 and sender["decoded"] > 0 and sender["dropped"] == 0
        if number < SPEAKERS:
            assert sender["opened"] >= 0.8 * sender["expected"]
        assert sender["rtp_loss_pct"] < 1.0
    # Its Opus frames (a tone, encoded by aiortc, sealed by the SDK) reached and opened at
    # every synthetic participant.
    heard = row["received_by_synthetic"]
    assert heard["receivers"] == heard["heard_by"] == PARTICIPANTS
    assert row["sent_in_window"] >= 0.8 * 50 * DURATION
    assert heard["frames"] >= 0.9 * heard["expected"] > 0
