"""Find the largest 5-speaker voice room one SFU worker carries within the issue's limits:
frame loss ≤ 0.5 % and one-way latency p99 ≤ 50 ms (every participant joined, no errors).

Each size is one ``python -m loadtest voice-room --spawn`` run in a process of its own (a
fresh deployment with one SFU worker), the participants joining at ``--join-rate`` a second
so that the joins of a big room do not themselves decide the figure; ``--measure`` receivers
spread over the room decrypt and time every frame while the others keep their transports up
(docs/loadtest.md). Sizes are tried in the order given and the search stops at the first
size that fails; a size passes when the median over ``--runs`` runs of loss and of p99 both
hold, so one noisy run on a shared machine neither makes nor breaks it.

Prints one line per run and a summary; ``--json FILE`` keeps every run's figures and the
machine's load average before and after each.

Usage: ``python bench/largest_room.py --sizes 300,400,500,600 [--runs 1] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

LOSS_LIMIT_PCT = 0.5
P99_LIMIT_MS = 50.0


def run_size(args: argparse.Namespace, size: int, out: Path) -> dict[str, Any]:
    """One load-test run of ``size`` participants; its figures and the load around it."""
    ramp = max(1.0, size / args.join_rate)
    command = [sys.executable, "-m", "loadtest", "voice-room", "--spawn"]
    command += ["--participants", str(size), "--speakers", str(args.speakers)]
    command += ["--measure", str(args.measure), "--ramp", f"{ramp:g}"]
    command += ["--duration", f"{args.duration:g}", "--workers", "1"]
    command += ["--join-timeout", "120", "--ready-timeout", "120", "--quiet"]
    command += ["--json", str(out)]
    load_before = os.getloadavg()[0]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    load_after = os.getloadavg()[0]
    row: dict[str, Any] = {
        "participants": size,
        "command": " ".join(command[1:-2]),
        "exit": done.returncode,
        "load_before": round(load_before, 2),
        "load_after": round(load_after, 2),
    }
    if not out.exists():
        row["error"] = done.stderr.strip().splitlines()[-1:] or ["no report"]
        return row
    report = json.loads(out.read_text())
    row.update(
        {
            "joined": report["joined"],
            "loss_pct": report["loss_pct"],
            "latency_ms": report["latency_ms"],
            "join_ms": report["join_ms"],
            "sfu_cpu_pct": report["sfu"]["cpu_pct"],
            "sfu_rss_mb": report["sfu"]["rss_mb"],
            "pps_out_due": report["sfu"]["pps_out_due"],
            "harness_cpu_pct": report["harness_cpu_pct"],
            "errors": report["errors"],
            "error_details": report.get("error_details", {}),
        }
    )
    return row


def holds(rows: list[dict[str, Any]], size: int) -> bool:
    """Whether ``size`` passes: all joined without errors in every run, and the medians of
    loss and p99 within the limits."""
    if any("error" in r or r["joined"] != size or r["errors"] for r in rows):
        return False
    loss = float(statistics.median(r["loss_pct"] for r in rows))
    p99 = float(statistics.median(r["latency_ms"]["p99"] for r in rows))
    return loss <= LOSS_LIMIT_PCT and p99 <= P99_LIMIT_MS


def _line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['participants']:>5}  failed: {row['error']}"
    return (
        f"{row['participants']:>5}  joined {row['joined']:>4}  loss {row['loss_pct']:.3f} %  "
        f"p99 {row['latency_ms']['p99']} ms  join p99 {row['join_ms']['p99']} ms  "
        f"sfu {row['sfu_cpu_pct']} %  {row['pps_out_due']} pps due  "
        f"load {row['load_before']}→{row['load_after']}  errors {row['errors'] or 'none'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="300,400,500,600", help="room sizes, in order")
    parser.add_argument("--speakers", type=int, default=5)
    parser.add_argument("--measure", type=int, default=20, help="receivers that measure")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--join-rate", type=float, default=5.0, help="joins per second")
    parser.add_argument("--runs", type=int, default=1, help="runs per size (median)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per run")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: list[dict[str, Any]] = []
    largest: int | None = None
    with tempfile.TemporaryDirectory(prefix="hushroom-largest-") as tmp:
        for size in sizes:
            rows = []
            for run in range(args.runs):
                row = run_size(args, size, Path(tmp) / f"{size}-{run}.json")
                print(_line(row), flush=True)
                rows.append(row)
            results.extend(rows)
            if not holds(rows, size):
                break
            largest = size
    print(
        f"largest {args.speakers}-speaker room within loss ≤ {LOSS_LIMIT_PCT} % and "
        f"p99 ≤ {P99_LIMIT_MS:g} ms: {largest if largest is not None else 'none tried'}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"largest": largest, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
