"""Benchmark one subscriber renegotiation in the SFU worker: ``transport.consume`` (one new
consumer, the new offer) and ``transport.answer`` (the subscriber's answer), at about
``--consumers`` m-sections.

This is what every join costs the worker once per other subscriber of the room, so at 50
participants it bounds how many joins a second one worker takes besides forwarding.

The worker core runs in this process (sans-I/O, no sockets). A subscriber transport first
consumes ``--consumers`` - ``--steps`` producers (audio, like the voice rooms of the load
test); then each of ``--steps`` renegotiations adds one consumer and is answered. The
answers are real client answers: aiortc (the client SDK's WebRTC stack) answers every offer,
untimed; only the two worker calls are timed (``time.process_time``: CPU of this process).

Figures: ``consume_ms`` and ``answer_ms`` (median per renegotiation over all steps of all
``--runs``), ``renegotiation_ms`` (their sum), ``offer_bytes`` and ``answer_bytes`` (the last
step's SDP sizes).

``--tree DIR`` runs the worker code of another checkout (e.g. a git worktree of main), so
the old and the new code can be compared in one session: ``--compare DIR`` runs this script
for DIR and for this checkout alternately (``--rounds`` times each) and prints both.

Usage: ``python bench/sdp_bench.py [--consumers 50] [--json] [--compare DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _measure(consumers: int, steps: int, runs: int) -> dict[str, Any]:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from sfu.rtp import AUDIO_LEVEL, MID
    from sfu.worker import Worker

    consume_ms: list[float] = []
    answer_ms: list[float] = []
    sizes = (0, 0)

    async def run_once() -> None:
        nonlocal sizes
        worker = Worker("127.0.0.1", 40000, lambda d, a: None, lambda e, d: None)
        router_id = worker.handle_request("router.create", {}, 0.0)["router_id"]
        producers = []
        for index in range(consumers):
            publisher = worker.handle_request("transport.create", {"router_id": router_id}, 0.0)
            producers.append(
                worker.handle_request(
                    "producer.create",
                    {
                        "transport_id": publisher["transport_id"],
                        "kind": "audio",
                        "payload_type": 111,
                        "ssrcs": {1000 + index: 0},
                        "extensions": {1: AUDIO_LEVEL, 3: MID},
                    },
                    0.0,
                )["producer_id"]
            )
        sub = worker.handle_request("transport.create", {"router_id": router_id}, 0.0)
        tid = sub["transport_id"]
        pc = RTCPeerConnection()

        async def answer(offer: str) -> str:
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            return str(pc.localDescription.sdp)

        first = consumers - steps
        result = worker.handle_request(
            "transport.consume",
            {"transport_id": tid, "consume": [{"producer_id": p} for p in producers[:first]]},
            0.0,
        )
        worker.handle_request(
            "transport.answer",
            {"transport_id": tid, "sdp_answer": await answer(result["sdp_offer"])},
            0.0,
        )
        for producer_id in producers[first:]:
            params = {"transport_id": tid, "consume": [{"producer_id": producer_id}]}
            start = time.process_time()
            result = worker.handle_request("transport.consume", params, 0.0)
            consume_ms.append((time.process_time() - start) * 1000)
            text = await answer(result["sdp_offer"])
            start = time.process_time()
            worker.handle_request(
                "transport.answer", {"transport_id": tid, "sdp_answer": text}, 0.0
            )
            answer_ms.append((time.process_time() - start) * 1000)
            sizes = (len(result["sdp_offer"]), len(text))
        await pc.close()

    for _ in range(runs):
        asyncio.run(run_once())
    consume = statistics.median(consume_ms)
    answer = statistics.median(answer_ms)
    return {
        "consumers": consumers,
        "samples": len(consume_ms),
        "consume_ms": round(consume, 3),
        "answer_ms": round(answer, 3),
        "renegotiation_ms": round(consume + answer, 3),
        "offer_bytes": sizes[0],
        "answer_bytes": sizes[1],
    }


def _compare(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve().parent.parent
    trees = {"old": Path(args.compare).resolve(), "new": here}
    figures: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            command = [
                sys.executable,
                __file__,
                "--tree",
                str(tree),
                "--consumers",
                str(args.consumers),
                "--steps",
                str(args.steps),
                "--runs",
                str(args.runs),
                "--json",
            ]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            figures[name].append(json.loads(out.strip().splitlines()[-1]))
    summary: dict[str, Any] = {}
    for name, rounds in figures.items():
        summary[name] = {
            key: statistics.median(r[key] for r in rounds)
            for key in ("consume_ms", "answer_ms", "renegotiation_ms")
        }
        summary[name]["rounds"] = [r["renegotiation_ms"] for r in rounds]
    summary["speedup"] = round(
        summary["old"]["renegotiation_ms"] / summary["new"]["renegotiation_ms"], 2
    )
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consumers", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10, help="renegotiations timed per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", help="import the worker from this checkout")
    parser.add_argument("--compare", help="old checkout to compare this one with")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.compare:
        _compare(args)
        return
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))
    figures = _measure(args.consumers, args.steps, args.runs)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
