"""End-to-end message rates of the client SDK through a real control plane.

Starts ``python -m control`` on a loopback port the OS picks (fresh data directory, rate
limits raised so the limiter is not what is measured), registers the users it needs with
:class:`client.Client`, and measures, as medians of ``--runs`` runs:

* ``dm_msgs_per_s`` — a DM conversation: alice sends ``--dm-messages`` DMs to bob
  (``Client.send_dm``: directory lookups, Double Ratchet encrypt, envelope POST) while bob
  follows the gateway (``Client.live``: ENVELOPE_CREATE, decrypt, persist in his sealed
  store, ack). Rate = messages / (first send → bob has decrypted the last one).
* ``channel50_msgs_per_s`` — a 50-member channel: one member (itself following the
  gateway, as a running client does) sends ``--channel-messages`` messages (Sender Key
  encrypt, POST) while the 49 others follow the gateway
  (MESSAGE_CREATE, verify, decrypt, persist). Rate = messages / (first send → every member
  has decrypted the last one); ``channel50_deliveries_per_s`` counts each member's copy.
  The sender-key distribution to the 49 is done by a warm-up message before timing.

Everything — the 51 clients and their gateway sessions — runs in this one trio process,
and the server in another, on the same machine: the figures are a whole-system rate, not
the SDK's alone. Run: ``python bench/client_bench.py [--runs 5] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client import Client  # noqa: E402
from control.process import ControlProcess  # noqa: E402

PASS = "benchmark passphrase"


async def dm_run(alice: Client, bob: Client, count: int) -> float:
    """Seconds from alice's first DM until bob has decrypted all ``count``."""
    async with bob.live() as messages:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                for i in range(count):
                    await alice.send_dm("bob", f"dm {i}")

            nursery.start_soon(send)
            got = 0
            async for _ in messages:
                got += 1
                if got == count:
                    break
        return time.perf_counter() - start


async def channel_run(sender: Client, readers: list[Client], channel_id: str, count: int) -> float:
    """Seconds from the first channel message until every reader has decrypted all."""
    finished = trio.Event()
    left = len(readers)
    start = 0.0

    async def follow(reader: Client, ready: trio.Event, task_status: Any) -> None:
        nonlocal left
        async with reader.live() as messages:
            task_status.started()
            got = 0
            async for _ in messages:
                got += 1
                if got == count:
                    break
        left -= 1
        if left == 0:
            finished.set()

    async with trio.open_nursery() as nursery:
        for reader in readers:
            await nursery.start(follow, reader, finished)
        # The sender follows the gateway too, as a running client does: who may read the
        # channel then comes from dispatches instead of three requests per message.
        async with sender.live():
            start = time.perf_counter()
            for i in range(count):
                await sender.send_channel(channel_id, f"channel {i}")
            await finished.wait()
    return time.perf_counter() - start


async def bench(url: str, base: Path, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    alice = await Client.register(base / "alice", PASS, url, "alice")
    bob = await Client.register(base / "bob", PASS, url, "bob")
    await alice.send_dm("bob", "warm-up")
    await bob.sync()
    dm_times = [await dm_run(alice, bob, args.dm_messages) for _ in range(args.runs)]
    results["dm_msgs_per_s"] = round(args.dm_messages / statistics.median(dm_times), 1)
    results["dm_runs_s"] = [round(t, 3) for t in dm_times]

    members = [alice]
    for i in range(49):
        members.append(await Client.register(base / f"m{i}", PASS, url, f"member{i:02d}"))
    guild = await alice.api.create_guild("bench")
    channel = guild.channels[0].id
    code = await alice.api.create_invite(channel)
    for member in members[1:]:
        await member.api.accept_invite(code)
    await alice.send_channel(channel, "warm-up")  # distributes the sender key to all 49
    for member in members[1:]:
        await member.sync_channel(channel)
    times = [
        await channel_run(alice, members[1:], channel, args.channel_messages)
        for _ in range(max(1, args.runs))
    ]
    median = statistics.median(times)
    results["channel50_msgs_per_s"] = round(args.channel_messages / median, 1)
    results["channel50_deliveries_per_s"] = round(args.channel_messages * 49 / median, 1)
    results["channel50_runs_s"] = [round(t, 3) for t in times]
    for member in [*members, bob]:
        await member.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dm-messages", type=int, default=200)
    parser.add_argument("--channel-messages", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="client-bench-"))
    with (base / "control.log").open("ab") as log:
        control = ControlProcess(
            base / "control",
            "--log-level", "warning",
            "--rate-per-s", "100000",
            "--rate-burst", "100000",
            log=log,
        )  # fmt: skip
        try:
            results = trio.run(bench, control.url, base, args)
        finally:
            control.stop()
            shutil.rmtree(base, ignore_errors=True)
    results["python"] = platform.python_version()
    results["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:32} {value}")


if __name__ == "__main__":
    main()
