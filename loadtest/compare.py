"""``voice-room --compare janus``: hushroom's SFU and Janus's VideoRoom under the same load.

The hushroom run (:func:`loadtest.voice_room.run_voice_room`, ``--spawn``) and the Janus run
(:func:`loadtest.janus.run_janus`) use the same participants, speakers, duration and ramp,
one after the other in one command, and are measured by the same code. For each system the
comparison keeps the SFU's CPU per forwarded packet (CPU-seconds per 1,000 frames that
reached a receiver, from the mean CPU % of the SFU's processes over the window: hushroom's
worker processes, the Janus process), loss, latency percentiles, frames out per second and
CPU %, and their ratios hushroom / Janus (docs/loadtest.md).
"""

from __future__ import annotations

from typing import Any

from loadtest.janus import run_janus
from loadtest.voice_room import RoomConfig, run_voice_room

__all__ = ["compare_reports", "compare_table", "run_compare"]

_LATENCY = ("p50", "p95", "p99", "max")


def system_figures(report: dict[str, Any]) -> dict[str, Any]:
    """What the comparison keeps of one system's ``voice-room`` report."""
    sfu = report["sfu"]
    cpu_pct, pps_out = sfu["cpu_pct"], sfu["pps_out"]
    per_1k = None
    if cpu_pct is not None and pps_out:
        # cpu_pct / 100 CPU-seconds per second, pps_out frames forwarded per second.
        per_1k = round(cpu_pct / 100 / pps_out * 1000, 5)
    return {
        "cpu_s_per_1k_forwarded": per_1k,
        "loss_pct": report["loss_pct"],
        "latency_ms": report["latency_ms"],
        "pps_out": pps_out,
        "cpu_pct": cpu_pct,
        "joined": report["joined"],
        "errors": report["errors"],
    }


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return round(ours / theirs, 3)


def compare_reports(hushroom: dict[str, Any], janus: dict[str, Any]) -> dict[str, Any]:
    """The ``compare`` key of the report: both systems' figures and hushroom / Janus."""
    ours, theirs = system_figures(hushroom), system_figures(janus)
    return {
        "hushroom": ours,
        "janus": theirs,
        "ratio": {
            **{
                key: _ratio(ours[key], theirs[key])
                for key in ("cpu_s_per_1k_forwarded", "cpu_pct", "loss_pct", "pps_out")
            },
            "latency_ms": {
                key: _ratio(ours["latency_ms"][key], theirs["latency_ms"][key]) for key in _LATENCY
            },
        },
        "janus_version": janus.get("janus_version"),
        "janus_report": janus,
    }


def compare_table(compare: dict[str, Any]) -> str:
    """Both systems side by side, for the end of the summary."""
    ours, theirs, ratio = compare["hushroom"], compare["janus"], compare["ratio"]

    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    rows = [
        ("CPU s / 1k forwarded", "cpu_s_per_1k_forwarded"),
        ("SFU CPU %", "cpu_pct"),
        ("frames out / s", "pps_out"),
        ("loss %", "loss_pct"),
    ]
    lines = [
        f"compare: hushroom vs Janus {cell(compare['janus_version'])} "
        f"(joined {ours['joined']} / {theirs['joined']})",
        f"  {'':22}{'hushroom':>12}{'janus':>12}{'ratio':>10}",
    ]
    for label, key in rows:
        lines.append(
            f"  {label:22}{cell(ours[key]):>12}{cell(theirs[key]):>12}{cell(ratio[key]):>10}"
        )
    for key in _LATENCY:
        lines.append(
            f"  {'latency ' + key + ' ms':22}{cell(ours['latency_ms'][key]):>12}"
            f"{cell(theirs['latency_ms'][key]):>12}{cell(ratio['latency_ms'][key]):>10}"
        )
    errors = theirs["errors"]
    lines.append(
        "  janus errors        "
        + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) if errors else "none")
    )
    return "\n".join(lines)


async def run_compare(config: RoomConfig) -> dict[str, Any]:
    """The hushroom run, then the Janus run; hushroom's report with ``compare`` added."""
    report = await run_voice_room(config)
    janus = await run_janus(config)
    report["compare"] = compare_reports(report, janus)
    return report
