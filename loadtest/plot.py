"""``--plot FILE.png``: a report at a glance — latency percentiles and loss per second of the
measurement window, and SFU (and harness) CPU over the whole run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_report"]


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Draw ``report`` (the JSON of docs/loadtest.md) into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    seconds = report["per_second"]
    start = report["window_start_s"]
    figure, (latency, loss, cpu) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    figure.suptitle(
        f"{report['scenario']}: {report['joined']}/{report['participants']} participants, "
        + (
            f"{report['publishers']} video publishers"
            if "publishers" in report
            else f"{report['speakers']} speakers"
        )
        + f" ({report['target']})"
    )
    x = [start + row["second"] + 0.5 for row in seconds]
    for key, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        latency.plot(x, [row["latency_ms"][key] for row in seconds], style, label=key)
    latency.set_ylabel("one-way latency (ms)")
    latency.legend(loc="upper left")
    latency.grid(alpha=0.3)

    loss.bar(x, [row["loss_pct"] for row in seconds], width=0.8, color="tab:red")
    loss.set_ylabel("loss (% of frames sent that second)")
    loss.set_ylim(bottom=0, top=max([1.0, *(row["loss_pct"] * 1.2 for row in seconds)]))
    loss.grid(alpha=0.3)

    timeline = report["timeline"]
    t = [point["t"] for point in timeline]
    if any(point["sfu_cpu_pct"] is not None for point in timeline):
        cpu.plot(t, [point["sfu_cpu_pct"] for point in timeline], label="SFU workers")
    if any(point.get("control_cpu_pct") is not None for point in timeline):
        cpu.plot(t, [point["control_cpu_pct"] for point in timeline], label="control")
    cpu.plot(t, [point["harness_cpu_pct"] for point in timeline], "--", label="harness")
    cpu.axvspan(start, start + report["duration_s"], alpha=0.1, label="measured")
    cpu.set_ylabel("CPU (% of one core)")
    cpu.set_xlabel("seconds since the run started")
    cpu.legend(loc="upper left")
    cpu.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
