"""The ``video`` scenario: P publishers sending a camera with three simulcast layers, and
every participant of the one voice channel (publishers included) receiving every other
publisher on the layer the SFU picks for it.

Participants ``0 … P-1`` publish (``loadtest.video_participant``); the others join
listen-only. Subscribers are spread over the three layers by the bandwidth they announce
(REMB): participant ``k`` asks for layer ``2 - k % 3``, so each layer is forwarded and the
SFU's layer selection and key-frame requests are exercised. The set-up, the join ramp and
the measurement window are ``voice-room``'s (:func:`loadtest.voice_room.run_voice_room`);
the window opens once everyone receives every other publisher on the layer it asked for.
docs/loadtest.md describes every figure.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import trio

from loadtest.metrics import loss_pct, percentiles
from loadtest.participant import VoiceParticipant
from loadtest.spawn import Spawned
from loadtest.video_frames import FPS, LAYERS
from loadtest.video_participant import VideoParticipant, stream_key
from loadtest.voice_room import RoomConfig, _Room, run_voice_room, summary_figures

__all__ = ["VideoConfig", "main_video", "run_video", "video_summary_table", "wanted_layer"]


def wanted_layer(rank: int) -> int:
    """The layer participant ``rank`` of the room asks for (through its REMB)."""
    return len(LAYERS) - 1 - rank % len(LAYERS)


@dataclass
class VideoConfig(RoomConfig):
    """``RoomConfig`` (``speakers`` is the number of publishers) and ``--switch``."""

    switch: float = 0.0


class _VideoRoom(_Room):
    """``voice-room``'s bookkeeping with video publishers, readiness and report."""

    def __init__(self, config: RoomConfig) -> None:
        super().__init__(config)
        #: Layer changes asked for by ``--switch``, one per subscriber and publisher.
        self.switches_requested = 0

    def publishers(self, participant: VoiceParticipant) -> list[VideoParticipant]:
        """The joined publishers ``participant`` should receive."""
        return [
            p
            for p in self.joined_by_room[participant.room]
            if isinstance(p, VideoParticipant) and p.publishing and p is not participant
        ]

    async def join(self, participant: VoiceParticipant, nursery: trio.Nursery) -> None:
        assert isinstance(participant, VideoParticipant)
        participant.publishing = self.speaker(participant)
        participant.wanted_layer = participant.initial_layer = wanted_layer(participant.rank)
        await super().join(participant, nursery)

    async def send_frames(self, participant: VoiceParticipant) -> None:
        """A publisher's frames every 1/30 s (all three layers), and its RTCP reader."""
        assert isinstance(participant, VideoParticipant)
        if not participant.publishing:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(participant.read_feedback)
            window = self.window
            deadline = trio.current_time()
            while True:
                participant.send_video_frame(window)
                deadline += 1 / FPS
                await trio.sleep_until(deadline)

    @property
    def switch(self) -> float:
        """``--switch``: seconds between layer changes inside the window (0: none)."""
        return self.config.switch if isinstance(self.config, VideoConfig) else 0.0

    async def monitor(self) -> None:
        """``voice-room``'s monitor, and the layer changes of ``--switch``."""
        async with trio.open_nursery() as nursery:
            if self.switch > 0:
                nursery.start_soon(self._switch_layers)
            await super().monitor()

    async def _switch_layers(self) -> None:
        """Every ``--switch`` seconds of the window, each subscriber asks for the next layer
        down (from the lowest: the highest), at once by REMB."""
        window = self.window
        while True:
            # Polled, as readiness is: the window opens inside run_voice_room.
            if window.start_ns < math.inf:
                break
            await trio.sleep(0.05)
        step = 1
        while True:
            at = window.start_ns / 1e9 + step * self.switch
            if at >= window.end_ns / 1e9:
                return
            await trio.sleep(max(0.0, at - time.monotonic()))
            for p in self.joined:
                assert isinstance(p, VideoParticipant)
                if self.publishers(p):
                    p.wanted_layer = (p.wanted_layer - 1) % len(LAYERS)
                    p.send_remb()
                    self.switches_requested += len(self.publishers(p))
            step += 1

    def consumes_everyone(self, participant: VoiceParticipant) -> bool:
        return participant.consuming >= len(self.publishers(participant))

    def ready(self) -> bool:
        """Everyone joined consumes every other publisher and receives each on the layer
        it asked for."""
        for joined in self.joined_by_room:
            for p in joined:
                assert isinstance(p, VideoParticipant)
                publishers = self.publishers(p)
                if not publishers:
                    continue
                if not (self.consumes_everyone(p) and p.recv_connected.is_set()):
                    return False
                if any(
                    stream_key(q.number, p.wanted_layer) not in p.heard_layers for q in publishers
                ):
                    return False
        return True

    def report(self, spawned_world: Spawned | None) -> dict[str, Any]:
        config = self.config
        seconds = self.window.seconds if self.window.start_ns < math.inf else 0.0
        rows = []
        expected_total = received_total = duplicates = broken = 0
        latencies: list[float] = []
        jitters: list[float] = []
        joins: list[float] = []
        step_times: dict[str, list[float]] = {}
        by_layer = {str(n): 0 for n in range(len(LAYERS))}
        for p in self.participants:
            assert isinstance(p, VideoParticipant)
            in_call = p in self.joined
            publishers = self.publishers(p) if in_call else []
            expected = received = 0
            layers_received = {str(n): 0 for n in range(len(LAYERS))}
            chosen: list[int] = []
            for q in publishers:
                counts = [
                    p.frames_by_layer.get(stream_key(q.number, n), 0) for n in range(len(LAYERS))
                ]
                for n, count in enumerate(counts):
                    layers_received[str(n)] += count
                chosen.append(int(np.argmax(counts)))
                expected += q.sent_in_window
                stream = p.stats.streams.get(q.number)
                received += len(stream.seqs) if stream is not None else 0
            layer_of_p = max(set(chosen), key=chosen.count) if chosen else None
            if layer_of_p is not None:
                by_layer[str(layer_of_p)] += 1
            summary = p.stats.summary(expected)
            join_ms, steps = self.join_figures(p, in_call, joins, step_times)
            rows.append(
                {
                    "participant": p.number,
                    "publisher": p.publishing,
                    "joined": in_call,
                    "wanted_layer": p.initial_layer,
                    "layer": layer_of_p,
                    "layers_received": layers_received,
                    "expected": expected,
                    "received": received,
                    "loss_pct": loss_pct(expected, received),
                    "duplicates": summary["duplicates"],
                    "before_key": summary["before_key"],
                    "layer_switches": p.layer_switches,
                    "switch_repeats": p.switch_repeats,
                    "broken_frames": p.broken_frames,
                    "sequence_gaps": p.sequence_gaps,
                    "picture_id_jumps": p.picture_id_jumps,
                    "latency_ms": summary["latency_ms"],
                    "jitter_ms": summary["jitter_ms"],
                    "decrypted": summary["decrypted"],
                    "frames_sent_in_window": p.sent_in_window,
                    "packets_sent_in_window": p.packets_in_window,
                    "keyframes_sent": p.keyframes_sent,
                    "keyframe_requests": p.keyframe_requests,
                    "join_ms": join_ms,
                    "join_steps_ms": steps,
                    "errors": dict(p.errors),
                }
            )
            expected_total += expected
            received_total += received
            duplicates += summary["duplicates"]
            broken += p.broken_frames
            latencies.extend(p.stats.latencies_ms)
            if publishers:
                jitters.append(p.stats.jitter_ms())
        sfu: dict[str, Any] = {"cpu_pct": None, "rss_mb": None, "workers": []}
        if self.sampler is not None:
            sfu = self.sampler.summary(self.window)
        videos = [p for p in self.joined if isinstance(p, VideoParticipant)]
        packets_in = sum(p.packets_in_window for p in videos)
        packets_out = sum(p.received_in_window for p in videos)
        sfu["pps_in"] = round(packets_in / seconds) if seconds else 0
        sfu["pps_out"] = round(packets_out / seconds) if seconds else 0
        errors = self.errors()
        if self.failed_joins:
            errors["participants_not_joined"] = self.failed_joins
        return {
            "scenario": "video",
            "command": config.command,
            "target": config.target or "spawn",
            "participants": config.participants,
            "joined": len(self.joined),
            "publishers": config.speakers,
            "layers": [
                {
                    "rid": layer.rid,
                    "width": layer.width,
                    "height": layer.height,
                    "kbps": layer.bitrate // 1000,
                    "fps": FPS,
                }
                for layer in LAYERS
            ],
            **self.totals(
                seconds, expected_total, received_total, duplicates, latencies, jitters, joins
            ),
            "broken_frames": broken,
            "before_key": sum(p.stats.before_key for p in self.participants),
            "sequence_gaps": sum(p.sequence_gaps for p in videos),
            "picture_id_jumps": sum(p.picture_id_jumps for p in videos),
            "join_steps_ms": {
                step: percentiles(values)["p50"] for step, values in step_times.items()
            },
            "subscribers_by_layer": by_layer,
            "switch_s": self.switch,
            "layer_switches_requested": self.switches_requested,
            "layer_switches": sum(p.layer_switches for p in videos),
            "switch_repeats": sum(p.switch_repeats for p in videos),
            "keyframe_requests": sum(p.keyframe_requests for p in videos),
            "sfu": sfu,
            "harness_cpu_pct": self.harness_cpu(seconds),
            "errors": errors,
            "error_details": self.error_details(),
            "per_second": self._video_per_second(),
            "window_start_s": round(self.window.start_ns / 1e9 - self.started, 3),
            "per_participant": rows,
            "timeline": self.timeline,
            "spawned_nodes": len(spawned_world.nodes) if spawned_world is not None else None,
        }

    def _video_per_second(self) -> list[dict[str, Any]]:
        """Frames expected and received, loss and latency by the window second they were
        sent in."""
        seconds = math.ceil(self.window.seconds) if self.window.start_ns < math.inf else 0
        rows = []
        for n in range(seconds):
            expected = received = 0
            values: list[float] = []
            for p in self.joined:
                for q in self.publishers(p):
                    expected += q.sent_per_second[n] if n < len(q.sent_per_second) else 0
                stats = p.stats
                received += stats.per_second[n] if n < len(stats.per_second) else 0
                which = np.asarray(stats.latency_seconds, dtype=np.int64) == n
                values.extend(np.asarray(stats.latencies_ms, dtype=np.float64)[which])
            rows.append(
                {
                    "second": n,
                    "expected": expected,
                    "received": received,
                    "loss_pct": loss_pct(expected, received),
                    "latency_ms": percentiles(values),
                }
            )
        return rows


async def run_video(config: RoomConfig) -> dict[str, Any]:
    """Run the scenario (``config.speakers`` is the number of publishers) and return the
    report (the JSON of docs/loadtest.md)."""
    return await run_voice_room(config, _VideoRoom, VideoParticipant)


def video_summary_table(report: dict[str, Any]) -> str:
    """The summary a person reads at the end of a run."""
    layers = ", ".join(
        f"{layer['rid']} {layer['height']}p {layer['kbps']} kbit/s" for layer in report["layers"]
    )
    lines = [
        f"video: {report['joined']}/{report['participants']} participants, "
        f"{report['publishers']} publishers ({layers}), {report['duration_s']:.1f} s measured "
        f"({report['target']})",
        f"  frames       expected {report['expected']}  received {report['received']}  "
        f"loss {report['loss_pct']:.3f} %  duplicates {report['duplicates']}  "
        f"broken {report['broken_frames']}",
        f"  continuity   sequence gaps {report['sequence_gaps']}  "
        f"picture id jumps {report['picture_id_jumps']}",
        "  layers       subscribers receiving "
        + ", ".join(f"layer {k}: {v}" for k, v in report["subscribers_by_layer"].items())
        + f"  (key-frame requests {report['keyframe_requests']}, layer switches "
        f"{report['layer_switches']} seen / {report['layer_switches_requested']} asked for, "
        f"{report['switch_repeats']} repeating a frame)",
    ]
    return "\n".join(lines + summary_figures(report))


def main_video(config: RoomConfig) -> dict[str, Any]:
    """Run from synchronous code (the CLI)."""
    return trio.run(run_video, config)
