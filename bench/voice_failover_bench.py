"""Benchmark voice failover: SIGKILL the SFU node under a three-person call, time until audio.

Each run starts a fresh deployment on loopback (``loadtest.voice_call``: control, two SFU
nodes with the node secret), puts three real SDK clients in one voice channel, each
publishing its own tone, waits until everyone hears everyone, then kills the node carrying
the call (SIGKILL, its workers too, as when its machine dies). Control sees the node link
drop, places the channel on the other node and sends every participant a new
VOICE_SERVER_UPDATE; the clients start over there.

Figures per run: ``resume_s`` — seconds from the kill until every participant has heard
sound from every other again (the slowest of the six listener/speaker pairs), and
``first_s`` — until the first pair did. The summary gives their medians over ``--runs``
(goal: ``resume_s`` ≤ 5 s). The clients run in this process, so the figures include their
own scheduling on a shared machine.

Usage: ``python bench/voice_failover_bench.py [--runs 5]``; the last line printed is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from loadtest.voice_call import (
    Hearing,
    Participant,
    deployment,
    in_call,
    node_of_call,
    resume_times,
    until_all_hear,
)

TONES = (440.0, 660.0, 880.0)
GOAL_S = 5.0


async def one_run(root: Path, give_up_s: float) -> dict[str, Any]:
    """One deployment, one call, one kill; the run's figures."""
    async with deployment(root, nodes=2) as world:
        participants = [
            Participant(c, f, Hearing()) for c, f in zip(world.clients, TONES, strict=True)
        ]
        start = time.monotonic()
        async with trio.open_nursery() as nursery:
            with trio.fail_after(120):
                for participant in participants:
                    await nursery.start(partial(in_call, world, participant))
                await until_all_hear(participants, start, seconds=1.0)
            node = node_of_call(world, participants[0])
            killed_at = time.monotonic()
            node.kill()
            with trio.move_on_after(give_up_s):
                await until_all_hear(participants, killed_at)
            times = resume_times(participants, killed_at)
            nursery.cancel_scope.cancel()
    complete = len(times) == len(participants) * (len(participants) - 1)
    return {
        "killed_node": node.node_id,
        "resume_s": round(max(times.values()), 3) if complete else None,
        "first_s": round(min(times.values()), 3) if times else None,
        "pairs": {k: round(v, 3) for k, v in sorted(times.items())},
    }


async def main(runs: int, give_up_s: float) -> dict[str, Any]:
    results = []
    for n in range(runs):
        with tempfile.TemporaryDirectory(prefix="voice-failover-") as tmp:
            result = await one_run(Path(tmp), give_up_s)
        print(json.dumps({"run": n + 1, **result}), flush=True)
        results.append(result)
    resumed = [r["resume_s"] for r in results if r["resume_s"] is not None]
    firsts = [r["first_s"] for r in results if r["first_s"] is not None]
    median = statistics.median(resumed) if len(resumed) == runs else None
    return {
        "runs": runs,
        "resume_s": [r["resume_s"] for r in results],
        "median_resume_s": median,
        "median_first_s": statistics.median(firsts) if firsts else None,
        "goal_s": GOAL_S,
        "goal_met": median is not None and median <= GOAL_S,
    }


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="deployments to kill (median)")
    parser.add_argument(
        "--give-up-s", type=float, default=60.0, help="a run without audio after this fails"
    )
    args = parser.parse_args()
    summary = trio.run(main, args.runs, args.give_up_s)
    print(json.dumps(summary))
    return 0 if summary["median_resume_s"] is not None else 1


if __name__ == "__main__":
    sys.exit(cli())
