"""Voice join time: from a device's join (op 4) to the first decoded audio frame of a
participant already in the channel, on a real deployment over loopback.

Each run starts ``hushroom up`` in a fresh temporary directory (control, TURN and one SFU
node with ``--workers`` workers), registers alice and bob with the CLI, and has alice make
a voice channel and stay in it publishing a tone (``hushroom voice join GUILD/CHANNEL
--tone 440``, a process of her own). Bob, following the gateway in this process with
:class:`client.Client` as a running client does, then joins and leaves the channel
``--joins`` times. Each join is timed from just before op 4 (VOICE_STATE_UPDATE) is sent
(so the time includes starting the call's trio-asyncio loop, a few ms) until aiortc hands
bob the first decoded audio frame of alice's track — after the VOICE_SERVER_UPDATE, the
send transport's offer/answer, the SFU's offer for alice's consumer and bob's answer, ICE,
DTLS-SRTP, and alice's media key reaching bob over their pairwise session (frames sealed
under a key bob does not hold yet are dropped, not decoded). The phases of each join are
reported too: ``server_update_s`` (VOICE_SERVER_UPDATE handled), ``published_s`` (SFU's
answer to bob's send transport applied), ``track_s`` (SFU's offer carrying alice answered).

One join before the timed ones warms bob's process (aiortc's import, codec set-up); it is
reported as ``warmup_s`` and not counted. Between joins bob waits until the server has
told him he left. Run: ``python bench/voice_join_bench.py [--runs 3] [--joins 20] [--json]``;
the summary gives each run's p50/p99/max and the medians over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiortc.mediastreams import MediaStreamError  # noqa: E402

from client import Client  # noqa: E402

PASS = "voice benchmark passphrase"
GUILD, CHANNEL = "Bench", "Lounge"
TONE_HZ = 440.0
JOIN_TIMEOUT_S = 30.0


def hushroom() -> str:
    """The ``hushroom`` command of this interpreter's environment."""
    return str(Path(sys.executable).parent / "hushroom")


class Deployment:
    """``hushroom up`` in ``base`` on ports the OS picks; its output goes to ``base/up.log``."""

    def __init__(self, base: Path, workers: int) -> None:
        self.base = base
        self.log = base / "up.log"
        with self.log.open("wb") as log:
            command = [
                hushroom(), "up",
                "--control-port", "0",
                "--turn-port", "0",
                "--data-dir", str(base / "data"),
                "--workers", str(workers),
            ]  # fmt: skip
            self.process = subprocess.Popen(command, cwd=base, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "Press Ctrl-C to stop." not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hushroom up did not come up:\n{self.log.read_text()}")
            time.sleep(0.1)
        port = re.search(r"control\s+http 127\.0\.0\.1:(\d+)", self.log.read_text())
        assert port is not None
        self.url = f"http://127.0.0.1:{port.group(1)}"

    def stop(self) -> None:
        """Ctrl-C, as a user would; ``up`` stops every part."""
        stop(self.process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, then a kill if it has not exited within a minute."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["HUSHROOM_PASSPHRASE"] = PASS
    env["HUSHROOM_NO_KEYRING"] = "1"
    return env


def cli(base: Path, *args: str) -> str:
    """One CLI command in ``base``; its stdout."""
    done = subprocess.run(
        [hushroom(), *args], cwd=base, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"hushroom {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def set_up_people(base: Path, url: str) -> tuple[str, str]:
    """alice and bob registered, in one guild with a voice channel; (alice's user id, the
    channel id)."""
    alice = json.loads(
        cli(base, "register", "alice", "--profile", "alice", "--server", url, "--json")
    )
    cli(base, "register", "bob", "--profile", "bob", "--server", url)
    cli(base, "guild", "create", GUILD, "--profile", "alice")
    code = cli(base, "guild", "invite", GUILD, "--profile", "alice").strip()
    cli(base, "guild", "join", code, "--profile", "bob")
    made = json.loads(
        cli(base, "channel", "create", GUILD, CHANNEL, "--voice", "--profile", "alice", "--json")
    )
    return str(alice["user_id"]), str(made["id"])


async def one_join(bob: Client, guild_id: str, channel_id: str, alice_id: str) -> dict[str, Any]:
    """Join, wait for alice's first decoded frame, leave, wait until the server agrees."""
    from client.voice import ToneSource
    from client.voice.signalling import CallFailed, CallState

    marks: dict[str, float] = {}
    got_frame = trio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def first_frame(track: Any) -> None:
        try:
            await track.recv()
        except MediaStreamError:
            marks.setdefault("track_ended", time.perf_counter())
            return
        marks.setdefault("frame", time.perf_counter())
        got_frame.set()

    def on_track(consumer: Any, track: Any) -> None:
        if consumer is not None and consumer.user_id == alice_id:
            marks.setdefault("track", time.perf_counter())
            task = asyncio.ensure_future(first_frame(track))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def watch(call: Any) -> None:
        # Phases, for the profile of where the time goes: polled, so each mark is late by
        # at most one interval (5 ms); the total is event-driven.
        while True:
            now = time.perf_counter()
            if call.signalling.state is not CallState.JOINING:
                marks.setdefault("server_update", now)
            if call.published.is_set():
                marks.setdefault("published", now)
            await trio.sleep(0.005)

    async def fail_on_refusal(call: Any) -> None:
        async for update in call.updates:
            if isinstance(update, CallFailed):
                raise RuntimeError(f"voice refused ({update.code}): {update.message}")

    failure = None
    start = time.perf_counter()
    try:
        async with (
            bob.voice_call(
                guild_id, channel_id, lambda: ToneSource(660, amplitude=0.0), on_track=on_track
            ) as call,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(watch, call)
            nursery.start_soon(fail_on_refusal, call)
            with trio.move_on_after(JOIN_TIMEOUT_S):
                await got_frame.wait()
            nursery.cancel_scope.cancel()
        await until(lambda: all(k[1] != bob.device_id for k in bob.voice_states(channel_id)))
    except Exception as exc:  # a failed join is a result to report, not the end of the run
        failure = f"{type(exc).__name__}: {exc}"
    if "frame" not in marks and failure is None:
        failure = f"no audio from alice within {JOIN_TIMEOUT_S:.0f} s"
    result: dict[str, Any] = {
        "total_s": round(marks["frame"] - start, 4) if "frame" in marks else None,
        **{
            f"{name}_s": round(marks[name] - start, 4)
            for name in ("server_update", "published", "track", "track_ended")
            if name in marks
        },
    }
    if failure is not None:
        result["failure"] = failure
    return result


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    """Poll ``condition``: the SDK keeps voice states current but signals no change."""
    with trio.fail_after(within):
        while True:
            if condition():
                return
            await trio.sleep(0.01)


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between order statistics."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    if position == low or ordered[high] == ordered[low]:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def bench_joins(base: Path, url: str, alice_id: str, joins: int) -> dict[str, Any]:
    """Bob's warm-up join and ``joins`` timed ones, alice being in the channel."""
    bob = Client.open(base / "bob", PASS, url)
    async with bob, bob.live():
        channel = await bob.find_channel(f"{GUILD}/{CHANNEL}")
        await until(lambda: any(k[0] == alice_id for k in bob.voice_states(channel.id)), 60)
        warmup = await one_join(bob, channel.guild_id, channel.id, alice_id)
        runs = [await one_join(bob, channel.guild_id, channel.id, alice_id) for _ in range(joins)]
    # A join that never heard alice took forever: it counts, as infinity.
    totals = [math.inf if r["total_s"] is None else r["total_s"] for r in runs]
    phases = {
        f"{name}_p50_s": round(
            statistics.median(r[f"{name}_s"] for r in runs if f"{name}_s" in r), 4
        )
        for name in ("server_update", "published", "track")
        if any(f"{name}_s" in r for r in runs)
    }
    return {
        "p50_s": finite(quantile(totals, 0.5)),
        "p99_s": finite(quantile(totals, 0.99)),
        "max_s": finite(max(totals)),
        "failed": sum(1 for r in runs if "failure" in r),
        "warmup_s": warmup["total_s"],
        **phases,
        "joins": runs,
    }


def finite(value: float) -> float | None:
    """Rounded, or None (JSON null) for a quantile that reaches a failed join."""
    return None if math.isinf(value) or math.isnan(value) else round(value, 4)


def one_run(joins: int, workers: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="hushroom-voice-bench-"))
    try:
        deployment = Deployment(base, workers)
        try:
            alice_id, _ = set_up_people(base, deployment.url)
            join = ["voice", "join", f"{GUILD}/{CHANNEL}", "--tone", str(TONE_HZ)]
            with (base / "alice.log").open("wb") as alice_log:
                alice = subprocess.Popen(
                    [hushroom(), *join, "--profile", "alice"],
                    cwd=base,
                    env=cli_env(),
                    stdout=alice_log,
                    stderr=subprocess.STDOUT,
                )
            try:
                return trio.run(bench_joins, base, deployment.url, alice_id, joins)
            finally:
                stop(alice)
        finally:
            deployment.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh deployments (default 3)")
    parser.add_argument("--joins", type=int, default=20, help="timed joins per run (default 20)")
    parser.add_argument("--workers", type=int, default=1, help="SFU workers (default 1)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = parser.parse_args()
    if args.runs < 1 or args.joins < 2:
        parser.error("need at least one run of at least two joins")
    runs = []
    for i in range(args.runs):
        result = one_run(args.joins, args.workers)
        runs.append(result)
        print(
            f"run {i + 1}: p50 {result['p50_s']} s, p99 {result['p99_s']} s, "
            f"max {result['max_s']} s, {result['failed']} failed (warm-up {result['warmup_s']} s)",
            file=sys.stderr,
            flush=True,
        )

    def median_of(key: str) -> float | None:
        return finite(statistics.median(math.inf if r[key] is None else r[key] for r in runs))

    summary = {
        "joins_per_run": args.joins,
        "runs": len(runs),
        "median_p50_s": median_of("p50_s"),
        "median_p99_s": median_of("p99_s"),
        "max_s": finite(max(math.inf if r["max_s"] is None else r["max_s"] for r in runs)),
        "failed_joins": sum(r["failed"] for r in runs),
        "goal_p99_s": 1.0,
        "sfu_workers": args.workers,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "per_run": runs,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        brief = {k: v for k, v in summary.items() if k != "per_run"}
        brief["per_run"] = [{k: v for k, v in r.items() if k != "joins"} for r in runs]
        print(json.dumps(brief, indent=2))


if __name__ == "__main__":
    main()
