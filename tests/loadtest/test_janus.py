"""``voice-room --compare janus``: the same small load against hushroom's SFU and Janus's
VideoRoom (Debian ``janus``), both measured by the same code, and the ``compare`` report
(docs/loadtest.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from loadtest.__main__ import main
from loadtest.compare import compare_reports
from loadtest.janus import janus_missing, write_config

PARTICIPANTS, SPEAKERS, DURATION = 4, 2, 3.0


def _unavailable() -> str | None:
    missing = janus_missing()
    if missing is not None:
        return missing
    # The Janus side runs in a private network namespace (loadtest/janus.py says why).
    probe = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True)
    if probe.returncode != 0:
        return "cannot create a network namespace (unshare --net needs root)"
    return None


needs_janus = pytest.mark.skipif(
    _unavailable() is not None, reason=f"--compare janus cannot run: {_unavailable()}"
)


@pytest.mark.slow
@needs_janus
def test_compare_janus_measures_both_systems_under_the_same_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    argv = ["voice-room", "--spawn", "--participants", str(PARTICIPANTS)]
    argv += ["--speakers", str(SPEAKERS), "--duration", str(DURATION), "--ramp", "1"]
    argv += ["--compare", "janus", "--json", str(out), "--quiet"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "compare: hushroom vs Janus" in table and "CPU s / 1k forwarded" in table

    report = json.loads(out.read_text())
    compare = report["compare"]
    janus = compare["janus_report"]
    assert compare["janus_version"].startswith("1.")
    # Every receiver expects every other participant's frames: speakers every 20 ms, the
    # silent ones a comfort update every 400 ms — on both systems.
    per_second = SPEAKERS * 50 + (PARTICIPANTS - SPEAKERS) * 2.5
    for run in (report, janus):
        assert run["joined"] == PARTICIPANTS and run["errors"] == {}
        assert run["expected"] == pytest.approx(
            (PARTICIPANTS - 1) * per_second * DURATION, rel=0.05
        )
    assert janus["target"] == "janus" and len(janus["sfu"]["workers"]) == 1
    for system in ("hushroom", "janus"):
        figures = compare[system]
        assert set(figures) >= {
            "cpu_s_per_1k_forwarded",
            "loss_pct",
            "latency_ms",
            "pps_out",
            "cpu_pct",
        }
        assert figures["loss_pct"] < 1.0
        assert figures["cpu_pct"] > 0 and figures["cpu_s_per_1k_forwarded"] > 0
        assert figures["pps_out"] == pytest.approx((PARTICIPANTS - 1) * per_second, rel=0.05)
        assert 0 < figures["latency_ms"]["p50"] <= figures["latency_ms"]["p99"] < 1000
    ours, theirs, ratio = compare["hushroom"], compare["janus"], compare["ratio"]
    assert ours["cpu_s_per_1k_forwarded"] == pytest.approx(
        ours["cpu_pct"] / 100 / ours["pps_out"] * 1000, rel=1e-3
    )
    assert ratio["cpu_s_per_1k_forwarded"] == pytest.approx(
        ours["cpu_s_per_1k_forwarded"] / theirs["cpu_s_per_1k_forwarded"], rel=1e-2
    )
    assert ratio["latency_ms"]["p99"] == pytest.approx(
        ours["latency_ms"]["p99"] / theirs["latency_ms"]["p99"], rel=1e-2
    )


def test_ratio_is_null_where_janus_measured_nothing() -> None:
    """Loss 0 % on Janus (the usual case) has no ratio rather than a division error."""

    def report(cpu: float | None, loss: float) -> dict[str, object]:
        latency = {"p50": 1.0, "p95": 2.0, "p99": 4.0, "max": 8.0}
        return {
            "sfu": {"cpu_pct": cpu, "pps_out": 1000},
            "loss_pct": loss,
            "latency_ms": latency,
            "joined": 2,
            "errors": {},
        }

    compare = compare_reports(report(20.0, 0.5), report(10.0, 0.0))
    assert compare["hushroom"]["cpu_s_per_1k_forwarded"] == pytest.approx(0.2)
    assert compare["ratio"]["cpu_s_per_1k_forwarded"] == pytest.approx(2.0)
    assert compare["ratio"]["loss_pct"] is None
    assert compare["ratio"]["latency_ms"]["max"] == pytest.approx(1.0)
    assert compare_reports(report(None, 0.0), report(10.0, 0.0))["ratio"]["cpu_pct"] is None


@needs_janus
def test_janus_config_loads_only_the_videoroom_and_the_websocket_transport(
    tmp_path: Path,
) -> None:
    conf = write_config(tmp_path, 18188)
    assert [p.name for p in (tmp_path / "plugins").iterdir()] == ["libjanus_videoroom.so"]
    assert [p.name for p in (tmp_path / "transports").iterdir()] == ["libjanus_websockets.so"]
    assert not any((tmp_path / "events").iterdir())
    main_config = (conf / "janus.jcfg").read_text()
    assert "ice_lite = true" in main_config and "stun" not in main_config
    assert "turn" not in main_config and "nat_1_1" not in main_config
    assert 'ws_ip = "127.0.0.1"' in (conf / "janus.transport.websockets.jcfg").read_text()


def test_compare_refuses_a_target_deployment(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["voice-room", "--target", "http://127.0.0.1:9", "--compare", "janus"]
    assert main(argv) == 2
    assert "--compare needs --spawn" in capsys.readouterr().err
