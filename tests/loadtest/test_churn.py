"""``python -m loadtest churn --spawn`` at a small size: full SDK clients join and leave a
voice channel, media keys travel pairwise through the relay, and every participant in the
call decrypts every other one's new key after each event (docs/loadtest.md, "churn")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.__main__ import main

pytestmark = pytest.mark.slow

PARTICIPANTS, JOINS = 3, 1
#: An ML-KEM-1024 ciphertext: a PQXDH initial message carries one.
MLKEM1024_CIPHERTEXT = 1568


def test_small_churn_reports_each_event_and_everyone_decrypts_every_new_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, plot = tmp_path / "out.json", tmp_path / "out.png"
    argv = ["churn", "--spawn", "--participants", str(PARTICIPANTS), "--joins", str(JOINS)]
    argv += ["--rate", "2", "--settle-timeout", "20", "--quiet"]
    argv += ["--json", str(out), "--plot", str(plot)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert "settled p50" in capsys.readouterr().out  # the summary table

    assert report["scenario"] == "churn" and report["participants"] == PARTICIPANTS
    assert report["errors"] == {}
    assert report["events"] == report["settled_events"] == 2 * JOINS
    assert report["setup_s"] > 0 and report["fill_s"] > 0
    events = report["per_event"]
    assert [e["kind"] for e in events] == ["join", "leave"] * JOINS
    for event in events:
        before, after = event["participants_before"], event["participants_after"]
        assert after == before + (1 if event["kind"] == "join" else -1)
        # Every participant in the call opened every other one's current key.
        assert event["settled"] and event["keys_decrypted"] == after * (after - 1)
        assert 0 < event["keys_ms"]["p50"] <= event["keys_ms"]["max"] == event["settled_ms"]
        # One device per account: one envelope per key, each through the relay.
        assert event["envelopes"] == event["keys_sent"]
        assert abs(event["bytes"] / event["envelopes"] - event["bytes_per_envelope"]) <= 0.5
        assert event["harness_cpu_s"] > 0 and event["control_cpu_s"] > 0
    join, leave = events[0], events[1]
    # A join: the joiner's key to everyone, everyone's ratcheted key to the joiner, all
    # first messages of new PQXDH sessions (a fresh account meets everyone).
    assert join["keys_sent"] == 2 * join["participants_before"]
    assert join["bytes_per_envelope"] > MLKEM1024_CIPHERTEXT
    # A leave: a fresh key from everyone remaining to everyone remaining, over sessions
    # that exist by then (no KEM ciphertext any more).
    remaining = leave["participants_after"]
    assert leave["keys_sent"] == remaining * (remaining - 1)
    assert leave["bytes_per_envelope"] < MLKEM1024_CIPHERTEXT
    for kind in ("join", "leave"):
        assert report[kind]["count"] == JOINS
        assert report[kind]["settled_ms"]["max"] is not None
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_churn_refuses_a_room_of_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["churn", "--spawn", "--participants", "1", "--quiet"]) == 2
    assert "--participants" in capsys.readouterr().err
