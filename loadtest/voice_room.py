"""The ``voice-room`` scenario (N participants in one voice channel, S of them speaking) and
``many-rooms`` (R such rooms at once).

Every participant publishes its microphone as a client does; the S speakers send a 20 ms
Opus-sized frame every 20 ms, the others are silent with DTX, i.e. a comfort-noise update
every 400 ms. Participant 0 joins first; the others join spread over ``--ramp`` seconds.
Once everyone is in, consumes every speaker (and everyone else, or what it consumes has
settled) and has heard every speaker, the measurement window opens for ``--duration``
seconds; each receiver expects the frames of those it consumes (the ``consumers`` of its
subscribe offer). With ``--measure K`` only K receivers per room decrypt and measure
(docs/loadtest.md describes every figure).
"""

from __future__ import annotations

import contextlib
import math
import resource
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import psutil
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from client.api import ControlApi
from loadtest.aiortc_peers import AiortcPeers, aiortc_report, aiortc_summary
from loadtest.metrics import ReceiverStats, Window, loss_pct, percentiles
from loadtest.participant import (
    Account,
    Gateway,
    KeyDirectory,
    VoiceParticipant,
    register_account,
)
from loadtest.spawn import Spawned, spawned

__all__ = ["RoomConfig", "measured_ranks", "run_voice_room"]

FRAME_INTERVAL_S = 0.020
COMFORT_INTERVAL_S = 0.400
#: Accounts registered, invites accepted and gateways connected at once.
SETUP_CONCURRENCY = 16
#: With consumption short of everyone, the window waits until no subscribe offer came for
#: this long (docs/loadtest.md, "The measurement window").
SETTLE_S = 1.0
#: File descriptors per participant: two UDP sockets and the gateway's TCP connection.
FDS_PER_PARTICIPANT = 3
#: Frames sent inside the window still count if they arrive this long after it closes.
DRAIN_S = 1.0


@dataclass
class RoomConfig:
    """What ``python -m loadtest voice-room`` was asked for."""

    participants: int
    speakers: int
    duration: float
    ramp: float
    #: Rooms of ``participants`` each (``many-rooms``); 1 is ``voice-room``.
    rooms: int = 1
    target: str | None = None
    nodes: int = 1
    #: SFU worker processes per spawned node.
    workers: int = 1
    #: Receivers per room that decrypt and measure (spread over the room); None: all.
    measure: int | None = None
    join_timeout: float = 30.0
    ready_timeout: float = 60.0
    #: Full aiortc participants (SDK clients, own processes) added to each room.
    aiortc: int = 0
    progress: TextIO | None = None
    command: list[str] = field(default_factory=list)


class _SfuSampler:
    """CPU % and RSS of each spawned SFU worker, sampled every second (psutil, /proc)."""

    def __init__(self, workers: list[psutil.Process]) -> None:
        self.workers = workers
        self.samples: list[tuple[float, list[tuple[float, int]]]] = []
        for worker in workers:
            with contextlib.suppress(psutil.Error):
                worker.cpu_percent(None)

    def sample(self) -> None:
        now = time.monotonic_ns()
        row: list[tuple[float, int]] = []
        for worker in self.workers:
            try:
                row.append((worker.cpu_percent(None), worker.memory_info().rss))
            except psutil.Error:
                row.append((0.0, 0))
        self.samples.append((now, row))

    def latest_cpu(self) -> float | None:
        if not self.samples or not self.workers:
            return None
        return sum(cpu for cpu, _ in self.samples[-1][1])

    def summary(self, window: Window) -> dict[str, Any]:
        # A sample covers the second before it: keep those wholly inside the window.
        inside = [
            row for t, row in self.samples if window.start_ns + 1e9 <= t <= window.end_ns
        ] or [row for _, row in self.samples[-1:]]
        workers: list[dict[str, Any]] = []
        for n, worker in enumerate(self.workers):
            cpus = [row[n][0] for row in inside]
            rss = max((row[n][1] for row in inside), default=0)
            workers.append(
                {
                    "pid": worker.pid,
                    "cpu_pct": round(sum(cpus) / len(cpus), 1) if cpus else None,
                    "cpu_pct_max": round(max(cpus), 1) if cpus else None,
                    "rss_mb": round(rss / 2**20, 1),
                }
            )
        return {
            "cpu_pct": round(sum(w["cpu_pct"] or 0.0 for w in workers), 1),
            "rss_mb": round(sum(w["rss_mb"] for w in workers), 1),
            "workers": workers,
        }


@asynccontextmanager
async def _deployment(config: RoomConfig) -> AsyncIterator[tuple[str, Spawned | None]]:
    if config.target is not None:
        yield config.target.rstrip("/"), None
        return
    with tempfile.TemporaryDirectory(prefix="hushroom-loadtest-") as root:
        async with spawned(Path(root), nodes=config.nodes, workers=config.workers) as world:
            yield world.url, world


def _ws_url(server_url: str) -> str:
    scheme, rest = server_url.split("://", 1)
    return ("wss" if scheme == "https" else "ws") + "://" + rest + "/api/v1/gateway"


async def _set_up(
    server_url: str, rooms: int, per_room: int, run_id: str
) -> list[tuple[list[Account], str, str]]:
    """Register ``rooms × per_room`` accounts; the first of each room creates a guild with a
    voice channel and an invite the room's others accept. Returns, per room, its accounts,
    guild id and channel id."""
    count = rooms * per_room
    accounts: list[Account | None] = [None] * count
    limiter = trio.CapacityLimiter(SETUP_CONCURRENCY)

    async def register(n: int) -> None:
        async with limiter:
            accounts[n] = await register_account(server_url, f"lt{run_id}p{n}")

    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(register, n)
    done = [a for a in accounts if a is not None]
    result = []
    for room in range(rooms):
        members = done[room * per_room : (room + 1) * per_room]
        owner = ControlApi(server_url, members[0].token)
        try:
            guild = await owner.create_guild(f"loadtest {run_id} room {room}")
            channel = await owner.create_channel(guild.id, "room", type="voice")
            invite = await owner.create_invite(guild.channels[0].id)
        finally:
            await owner.aclose()

        async def accept(account: Account, invite: str = invite) -> None:
            async with limiter:
                api = ControlApi(server_url, account.token)
                try:
                    await api.accept_invite(invite)
                finally:
                    await api.aclose()

        async with trio.open_nursery() as nursery:
            for account in members[1:]:
                nursery.start_soon(accept, account)
        result.append((members, guild.id, channel.id))
    return result


async def _connected(
    ws_url: str, participant: VoiceParticipant, *, task_status: trio.TaskStatus[None]
) -> None:
    async with open_websocket_url(ws_url, max_message_size=64 * 1024 * 1024) as ws:
        gateway = Gateway(ws, participant.on_dispatch)
        await gateway.identify(participant.account.token)
        participant.gateway = gateway
        task_status.started()
        await gateway.run()
        if gateway.closed:
            participant.error(gateway.closed)


class _Room:
    """The participants, the window, and the live counters of one run."""

    def __init__(self, config: RoomConfig) -> None:
        self.config = config
        self.window = Window()
        self.participants: list[VoiceParticipant] = []
        self.joined: list[VoiceParticipant] = []
        self.joined_by_room: list[list[VoiceParticipant]] = [[] for _ in range(config.rooms)]
        self.failed_joins = 0
        self.started = time.monotonic()
        #: Seconds from the deployment being up to every gateway identified.
        self.setup_s: float | None = None
        self.sampler: _SfuSampler | None = None
        self.control: psutil.Process | None = None
        self.harness = psutil.Process()
        self.harness.cpu_percent(None)
        self.timeline: list[dict[str, Any]] = []
        #: Device id → participant number, for reading subscribe offers' ``consumers``.
        self.device_numbers: dict[str, int] = {}
        #: What each joined participant consumed when the window opened.
        self.window_consumes: dict[int, frozenset[int]] = {}
        #: ``--aiortc``: each room's full aiortc participants.
        self.aiortc: list[AiortcPeers] = []

    def speaker(self, participant: VoiceParticipant) -> bool:
        return participant.rank < self.config.speakers

    async def send_frames(self, participant: VoiceParticipant) -> None:
        """Frames on the participant's clock, each sent without waiting."""
        comfort = not self.speaker(participant)
        interval = COMFORT_INTERVAL_S if comfort else FRAME_INTERVAL_S
        window = self.window
        deadline = trio.current_time()
        while True:
            participant.send_frame(comfort=comfort, window=window)
            deadline += interval
            await trio.sleep_until(deadline)

    async def join(self, participant: VoiceParticipant, nursery: trio.Nursery) -> None:
        await nursery.start(participant.subscribe, self.config.join_timeout)
        nursery.start_soon(participant.keep_consent)
        try:
            await participant.join(self.config.join_timeout)
        except (trio.TooSlowError, ConnectionClosed, OSError, ValueError, KeyError) as exc:
            reached = ", ".join(participant.marks) or "nothing"
            participant.error(f"join_failed:{type(exc).__name__}", str(exc) or f"reached {reached}")
            self.failed_joins += 1
            return
        self.joined.append(participant)
        self.joined_by_room[participant.room].append(participant)
        nursery.start_soon(self.send_frames, participant)

    async def ramp(self, rest: list[VoiceParticipant], nursery: trio.Nursery) -> None:
        """Join ``rest`` spread evenly over ``--ramp``; returns once every join is done."""
        spacing = self.config.ramp / len(rest) if rest else 0.0
        start = trio.current_time()
        async with trio.open_nursery() as joins:
            for k, p in enumerate(rest):
                await trio.sleep_until(start + k * spacing)
                joins.start_soon(self.join, p, nursery)

    def consumes_everyone(self, participant: VoiceParticipant) -> bool:
        """Whether ``participant``'s latest subscribe answer has every other one's track."""
        return participant.consuming >= len(self.joined_by_room[participant.room]) - 1

    def consumes(self, participant: VoiceParticipant) -> frozenset[int]:
        """The participants whose frames ``participant`` receives: the devices the
        ``consumers`` list of its latest answered subscribe offer names."""
        numbers = self.device_numbers
        return frozenset(numbers[d] for d in participant.consumed_devices if d in numbers)

    def ready(self) -> bool:
        """Everyone joined consumes every other speaker of its room, has its receive
        transport connected and (if measured) has heard every other speaker, and what it
        consumes is settled: it consumes everyone else (the full mode), or nobody in the
        room got a subscribe offer for :data:`SETTLE_S` (the SFU forwards only some, e.g.
        a large channel's voice-active participants)."""
        for joined in self.joined_by_room:
            everyone = {p.number for p in joined}
            speakers = {p.number for p in joined if self.speaker(p)}
            quiet = self._quiet(joined)
            for p in joined:
                consumes = self.consumes(p)
                others_speaking = speakers - {p.number}
                if not (
                    p.recv_connected.is_set()
                    and others_speaking <= consumes
                    and (not p.measured or others_speaking <= p.stats.heard)
                    and (quiet or everyone - {p.number} <= consumes)
                ):
                    return False
        return all(
            peers.ready(self.joined_by_room[peers.room], self.speaker) for peers in self.aiortc
        )

    async def measure(self) -> None:
        """Once everyone is ready (or ``ready_timeout`` passed), the window: opens 0.5 s
        later, lasts ``duration``, and its frames may still arrive for :data:`DRAIN_S`."""
        with trio.move_on_after(self.config.ready_timeout):
            # Polled: readiness is spread over every participant's counters.
            while True:
                if self.ready():
                    break
                await trio.sleep(0.05)
        if not self.ready():
            self.blame_not_ready()
        await trio.sleep(0.5)
        begin = time.monotonic_ns()
        self.open_window(begin, begin + int(self.config.duration * 1e9))
        for peers in self.aiortc:
            await peers.open_window(self.window)
        await trio.sleep(max(0.0, (self.window.end_ns - time.monotonic_ns()) / 1e9))
        for peers in self.aiortc:
            await peers.close_window()
        await trio.sleep(DRAIN_S)
        for peers in self.aiortc:
            await peers.stop()

    @staticmethod
    def _quiet(joined: list[VoiceParticipant]) -> bool:
        """Whether none of ``joined`` got a subscribe offer for :data:`SETTLE_S`."""
        last_offer = max((p.last_offer_ns for p in joined), default=0)
        return time.monotonic_ns() - last_offer >= SETTLE_S * 1e9

    def blame_not_ready(self) -> None:
        """At the ready timeout: an error on each participant that held the window up."""
        for joined in self.joined_by_room:
            speakers = {p.number for p in joined if self.speaker(p)}
            quiet = self._quiet(joined)
            for p in joined:
                others_speaking = speakers - {p.number}
                if not others_speaking <= self.consumes(p):
                    p.error("not_consuming_speakers")
                elif not p.recv_connected.is_set() or (
                    p.measured and not others_speaking <= p.stats.heard
                ):
                    p.error("not_hearing_speakers")
                elif not quiet and not {q.number for q in joined} - {p.number} <= self.consumes(p):
                    p.error("not_consuming_everyone")  # nor did the room's offers settle

    def open_window(self, start_ns: int, end_ns: int) -> None:
        """Open the window; each receiver from now on expects the frames of the joined
        participants it consumes at this moment."""
        for joined in self.joined_by_room:
            in_room = {p.number for p in joined}
            for p in joined:
                p.stats.expects = self.consumes(p) & in_room - {p.number}
                self.window_consumes[p.number] = p.stats.expects
        self.window.open(start_ns, end_ns)

    def expects(self, p: VoiceParticipant) -> frozenset[int]:
        """Whose window frames ``p`` counts: none unless it joined and is measured."""
        if not p.measured or p not in self.joined:
            return frozenset()
        return self.window_consumes.get(p.number, frozenset())

    def counters(self) -> tuple[int, int]:
        """Frames sent and datagrams received by all participants so far."""
        sent = sum(p.sent for p in self.participants)
        received = sum(p.received_datagrams for p in self.participants)
        return sent, received

    def errors(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self.participants:
            for kind, count in p.errors.items():
                total[kind] = total.get(kind, 0) + count
        return total

    def error_details(self) -> dict[str, str]:
        """The first detail any participant kept of each error kind."""
        details: dict[str, str] = {}
        for p in self.participants:
            for kind, detail in p.error_details.items():
                details.setdefault(kind, detail)
        return details

    async def monitor(self) -> None:
        """Once a second: SFU and harness CPU, rates, and the progress line."""
        last_sent, last_received = self.counters()
        last = time.monotonic()
        while True:
            await trio.sleep(1.0)
            now = time.monotonic()
            sent, received = self.counters()
            elapsed = now - last
            pps_in = (sent - last_sent) / elapsed
            pps_out = (received - last_received) / elapsed
            last_sent, last_received, last = sent, received, now
            sfu_cpu = None
            if self.sampler is not None:
                self.sampler.sample()
                sfu_cpu = self.sampler.latest_cpu()
            harness_cpu = self.harness.cpu_percent(None)
            control_cpu = None
            if self.control is not None:
                with contextlib.suppress(psutil.Error):
                    control_cpu = self.control.cpu_percent(None)
            point = {
                "t": round(now - self.started, 1),
                "joined": len(self.joined),
                "pps_in": round(pps_in),
                "pps_out": round(pps_out),
                "sfu_cpu_pct": sfu_cpu,
                "harness_cpu_pct": harness_cpu,
                "control_cpu_pct": control_cpu,
            }
            aiortc = [peer.cpu[-1][1] for peers in self.aiortc for peer in peers.peers if peer.cpu]
            if aiortc:
                point["aiortc_cpu_pct"] = round(sum(aiortc), 1)
            self.timeline.append(point)
            self._progress(point)

    def _progress(self, point: dict[str, Any]) -> None:
        out = self.config.progress
        if out is None:
            return
        phase = "measuring" if self.window.start_ns < math.inf else "joining"
        sfu = "-" if point["sfu_cpu_pct"] is None else f"{point['sfu_cpu_pct']:.0f}%"
        errors = sum(self.errors().values())
        control = point["control_cpu_pct"]
        extra = "" if control is None else f"  control cpu {control:.0f}%"
        if "aiortc_cpu_pct" in point:
            extra += f"  aiortc cpu {point['aiortc_cpu_pct']:.0f}%"
        line = (
            f"[{point['t']:6.1f}s] {phase:9} joined {point['joined']}/{len(self.participants)}"
            f"  in {point['pps_in']} pps  out {point['pps_out']} pps"
            f"  sfu cpu {sfu}  harness cpu {point['harness_cpu_pct']:.0f}%{extra}"
            f"  errors {errors}"
        )
        end = "\r" if out.isatty() else "\n"
        print(line.ljust(110), end=end, file=out, flush=True)

    def _per_second(self, latencies: list[float]) -> list[dict[str, Any]]:
        """Expected and received frames, loss and latency by the window second the frames
        were sent in (each measured receiver expects the frames of those it consumes)."""
        seconds = math.ceil(self.window.seconds) if self.window.seconds < math.inf else 0
        expected_by_second = [0] * seconds
        receivers = self._receivers_of()
        for p in self.joined:
            for n, count in enumerate(p.sent_per_second[:seconds]):
                expected_by_second[n] += count * receivers.get(p.number, 0)
        received = [0] * seconds
        for p in self.participants:
            for n, count in enumerate(p.stats.per_second[:seconds]):
                received[n] += count
        values = np.asarray(latencies, dtype=np.float64)
        which = (
            np.concatenate(
                [np.asarray(p.stats.latency_seconds, dtype=np.int64) for p in self.participants]
            )
            if self.participants
            else np.zeros(0, dtype=np.int64)
        )
        rows = []
        for n in range(seconds):
            expected = expected_by_second[n]
            rows.append(
                {
                    "second": n,
                    "expected": expected,
                    "received": received[n],
                    "loss_pct": loss_pct(expected, received[n]),
                    "latency_ms": percentiles(values[which == n]),
                }
            )
        return rows

    @staticmethod
    def join_figures(
        p: VoiceParticipant,
        in_call: bool,
        joins: list[float],
        step_times: dict[str, list[float]],
    ) -> tuple[float | None, dict[str, float]]:
        """``p``'s join time (op 4 → first frame decrypted) and the time to each join step,
        ms; also added to ``joins`` and ``step_times`` unless ``p`` is its room's first."""
        join_ms = None
        if p.rank != 0 and in_call and p.stats.first_media_ns is not None:
            join_ms = round((p.stats.first_media_ns - p.join_started_ns) / 1e6, 1)
            joins.append(join_ms)
        steps = {
            step: round((at - p.join_started_ns) / 1e6, 1)
            for step, at in p.marks.items()
            if p.join_started_ns
        }
        if p.rank != 0:
            for step, value in steps.items():
                step_times.setdefault(step, []).append(value)
        return join_ms, steps

    def totals(
        self,
        seconds: float,
        expected: int,
        received: int,
        duplicates: int,
        latencies: list[float],
        jitters: list[float],
        joins: list[float],
    ) -> dict[str, Any]:
        """The report's figures over all receivers (docs/loadtest.md)."""
        return {
            "duration_s": round(seconds, 3),
            "ramp_s": self.config.ramp,
            "expected": expected,
            "received": received,
            "loss_pct": loss_pct(expected, received),
            "duplicates": duplicates,
            "latency_ms": percentiles(latencies),
            "jitter_ms": round(sum(jitters) / len(jitters), 3) if jitters else None,
            "join_ms": percentiles(joins),
        }

    def harness_cpu(self, seconds: float) -> float | None:
        """The harness's mean CPU % over the last ``seconds`` of the timeline."""
        harness = [p["harness_cpu_pct"] for p in self.timeline[-int(seconds) :]] if seconds else []
        return round(sum(harness) / len(harness), 1) if harness else None

    def _receivers_of(self) -> dict[int, int]:
        """Sender number → how many measured receivers expect its frames."""
        counts: dict[int, int] = {}
        for p in self.joined:
            for sender in self.expects(p):
                counts[sender] = counts.get(sender, 0) + 1
        return counts

    def report(self, spawned_world: Spawned | None) -> dict[str, Any]:
        config = self.config
        rows = []
        expected_total = received_total = duplicates = 0
        latencies: list[float] = []
        jitters: list[float] = []
        joins: list[float] = []
        step_times: dict[str, list[float]] = {}
        sent = {p.number: p.sent_in_window for p in self.joined}
        due = 0
        for p in self.participants:
            in_call = p in self.joined
            consumes = self.window_consumes.get(p.number, frozenset()) if in_call else None
            expected = sum(sent[o] for o in self.expects(p))
            due += sum(sent[o] for o in consumes or ())
            if consumes is not None and self.consumes(p) & set(sent) - {p.number} != consumes:
                p.error("consumption_changed")
            if p.stats.unexpected:
                p.errors["unexpected_sender"] = p.stats.unexpected
            row = p.stats.summary(expected)
            join_ms, steps = self.join_figures(p, in_call, joins, step_times)
            row.update(
                {
                    "participant": p.number,
                    "room": p.room,
                    "join_steps_ms": steps,
                    "speaker": self.speaker(p),
                    "joined": in_call,
                    "measured": p.measured,
                    "consumes": None if consumes is None else len(consumes),
                    "sent_in_window": p.sent_in_window,
                    "join_ms": join_ms,
                    "errors": dict(p.errors),
                }
            )
            rows.append(row)
            expected_total += expected
            received_total += row["received"]
            duplicates += row["duplicates"]
            latencies.extend(p.stats.latencies_ms)
            if in_call and p.measured:
                jitters.append(p.stats.jitter_ms())
        seconds = self.window.seconds
        sent_in_window = sum(p.sent_in_window for p in self.joined)
        sfu: dict[str, Any] = {"cpu_pct": None, "rss_mb": None, "workers": []}
        if self.sampler is not None:
            sfu = self.sampler.summary(self.window)
        sfu["pps_in"] = round(sent_in_window / seconds) if seconds else 0
        sfu["pps_out"] = round(received_total / seconds) if seconds else 0
        sfu["pps_out_due"] = round(due / seconds) if seconds else 0
        errors = self.errors()
        if self.failed_joins:
            errors["participants_not_joined"] = self.failed_joins
        failed_aiortc = sum(1 for peers in self.aiortc for peer in peers.peers if peer.error)
        if failed_aiortc:
            errors["aiortc_failed"] = failed_aiortc
        per_second = self._per_second(latencies)
        per_room = []
        for room in range(config.rooms):
            in_room = [row for row in rows if row["room"] == room]
            expected = sum(row["expected"] for row in in_room)
            received = sum(row["received"] for row in in_room)
            per_room.append(
                {
                    "room": room,
                    "joined": len(self.joined_by_room[room]),
                    "expected": expected,
                    "received": received,
                    "loss_pct": loss_pct(expected, received),
                    "latency_ms": percentiles(
                        [
                            v
                            for p in self.participants
                            if p.room == room
                            for v in p.stats.latencies_ms
                        ]
                    ),
                }
            )
        return {
            "scenario": "many-rooms" if config.rooms > 1 else "voice-room",
            "command": config.command,
            "target": config.target or "spawn",
            "participants": config.participants * config.rooms,
            "rooms": config.rooms,
            "participants_per_room": config.participants,
            "joined": len(self.joined),
            "speakers": config.speakers,
            "measured": sum(1 for p in self.joined if p.measured),
            **self.totals(
                seconds, expected_total, received_total, duplicates, latencies, jitters, joins
            ),
            "join_steps_ms": {
                step: percentiles(values)["p50"] for step, values in step_times.items()
            },
            "sfu": sfu,
            "harness_cpu_pct": self.harness_cpu(seconds),
            "before_key": sum(row["before_key"] for row in rows),
            "errors": errors,
            "error_details": self.error_details(),
            "per_second": per_second,
            "window_start_s": round(self.window.start_ns / 1e9 - self.started, 3),
            "setup_s": None if self.setup_s is None else round(self.setup_s, 3),
            "per_room": per_room,
            "per_participant": rows,
            "timeline": self.timeline,
            "spawned_nodes": len(spawned_world.nodes) if spawned_world is not None else None,
            **(
                {"aiortc": aiortc_report(self.aiortc, self.window, self.joined_by_room)}
                if self.aiortc
                else {}
            ),
        }


def measured_ranks(participants: int, measure: int | None) -> frozenset[int]:
    """The ranks in a room that measure: ``measure`` of them spread evenly over the join
    order (rank 0, a speaker, first), or all."""
    if measure is None or measure >= participants:
        return frozenset(range(participants))
    return frozenset(n * participants // measure for n in range(measure))


def _raise_fd_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit if ``needed`` descriptors would not
    fit; refuse clearly if even the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise ValueError(f"{needed} file descriptors needed, the hard limit is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _connect_all(
    nursery: trio.Nursery, ws_url: str, participants: list[VoiceParticipant]
) -> None:
    """Every participant's gateway, :data:`SETUP_CONCURRENCY` identifying at once; each
    connection lives in ``nursery``."""
    limiter = trio.CapacityLimiter(SETUP_CONCURRENCY)

    async def connect(p: VoiceParticipant) -> None:
        async with limiter:
            await nursery.start(_connected, ws_url, p)

    async with trio.open_nursery() as connecting:
        for p in participants:
            connecting.start_soon(connect, p)


async def run_voice_room(
    config: RoomConfig,
    room_type: type[_Room] | None = None,
    participant_type: type[VoiceParticipant] = VoiceParticipant,
) -> dict[str, Any]:
    """Run the scenario and return the report (the JSON of docs/loadtest.md).

    ``room_type`` and ``participant_type`` let another scenario (``video``) run the same
    set-up, join ramp and window with its own participants, readiness and report.
    """
    if not 1 <= config.speakers <= config.participants:
        raise ValueError("--speakers must be between 1 and --participants")
    if config.participants < 2:
        raise ValueError("--participants must be at least 2")
    if config.measure is not None and config.measure < 1:
        raise ValueError("--measure must be at least 1")
    _raise_fd_limit(FDS_PER_PARTICIPANT * config.participants * config.rooms + 256)
    room = (room_type or _Room)(config)
    measuring = measured_ranks(config.participants, config.measure)
    run_id = f"{int(time.time()) % 100000:05d}"
    async with _deployment(config) as (server_url, world):
        if world is not None:
            room.sampler = _SfuSampler(world.worker_processes())
            room.control = psutil.Process(world.control_pid)
            room.control.cpu_percent(None)
        setup_began = time.monotonic()
        rooms = await _set_up(server_url, config.rooms, config.participants, run_id)
        bind_ip = "127.0.0.1" if world is not None else "0.0.0.0"
        for index, (accounts, guild_id, channel_id) in enumerate(rooms):
            keys = KeyDirectory()
            for rank, account in enumerate(accounts):
                participant = participant_type(
                    len(room.participants),
                    account,
                    keys=keys,
                    stats=ReceiverStats(room.window),
                    bind_ip=bind_ip,
                    measured=rank in measuring,
                )
                participant.room, participant.rank = index, rank
                participant.guild_id, participant.channel_id = guild_id, channel_id
                if participant.measured:
                    keys.listeners.append(participant)
                room.device_numbers[account.device_id] = participant.number
                room.participants.append(participant)
            if config.aiortc:
                room.aiortc.append(
                    AiortcPeers(
                        config.aiortc,
                        server_url=server_url,
                        owner_token=accounts[0].token,
                        guild_id=guild_id,
                        channel_id=channel_id,
                        participants=room.participants[-len(accounts) :],
                        keys=keys,
                        run_id=run_id,
                        room=index,
                    )
                )
        try:
            async with trio.open_nursery() as nursery:
                await _connect_all(nursery, _ws_url(server_url), room.participants)
                room.setup_s = time.monotonic() - setup_began
                for peers in room.aiortc:
                    await nursery.start(peers.run)
                nursery.start_soon(room.monitor)
                # The first of each room joins alone; then the others of every room,
                # interleaved, over the ramp.
                for first in (p for p in room.participants if p.rank == 0):
                    await room.join(first, nursery)
                    if first not in room.joined:
                        raise RuntimeError(
                            f"the first participant of room {first.room} could not join"
                        )
                for peers in room.aiortc:
                    await peers.join()
                rest = sorted(
                    (p for p in room.participants if p.rank != 0), key=lambda p: (p.rank, p.room)
                )
                await room.ramp(rest, nursery)
                await room.measure()
                nursery.cancel_scope.cancel()
        finally:
            for p in room.participants:
                p.close()
            if config.progress is not None and config.progress.isatty():
                print(file=config.progress)
        return room.report(world)


def summary_table(report: dict[str, Any]) -> str:
    """The summary a person reads at the end of a run."""
    lines = [
        f"{report['scenario']}: {report['joined']}/{report['participants']} participants in "
        f"{report['rooms']} room(s), "
        f"{report['speakers']} speakers, {report['duration_s']:.1f} s measured by "
        f"{report['measured']} receivers ({report['target']})",
        f"  frames       expected {report['expected']}  received {report['received']}  "
        f"loss {report['loss_pct']:.3f} %  duplicates {report['duplicates']}"
        f"  before key {report['before_key']}",
    ]
    return "\n".join(lines + summary_figures(report))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary_figures(report: dict[str, Any]) -> list[str]:
    """The summary's lines every scenario shares: latency, join, SFU, harness, errors."""
    lat, join, sfu = report["latency_ms"], report["join_ms"], report["sfu"]
    ms = _ms
    lines = [
        f"  latency ms   p50 {ms(lat['p50'])}  p95 {ms(lat['p95'])}  p99 {ms(lat['p99'])}  "
        f"max {ms(lat['max'])}  jitter {ms(report['jitter_ms'])}",
        f"  join ms      p50 {ms(join['p50'])}  p95 {ms(join['p95'])}  p99 {ms(join['p99'])}  "
        f"max {ms(join['max'])}",
        f"  sfu          cpu {ms(sfu['cpu_pct'])} %  rss {ms(sfu['rss_mb'])} MB  "
        f"in {sfu['pps_in']} pps  out {sfu['pps_out']} pps measured"
        + (f", {sfu['pps_out_due']} pps due" if "pps_out_due" in sfu else ""),
    ]
    for worker in sfu.get("workers", []):
        lines.append(
            f"    worker {worker['pid']}: cpu {ms(worker['cpu_pct'])} % "
            f"(max {ms(worker['cpu_pct_max'])})  rss {worker['rss_mb']} MB"
        )
    lines.append(f"  harness cpu  {ms(report['harness_cpu_pct'])} %")
    if "aiortc" in report:
        lines.extend(aiortc_summary(report["aiortc"], ms))
    errors = report["errors"]
    lines.append(
        "  errors       "
        + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) if errors else "none")
    )
    for kind, detail in sorted(report.get("error_details", {}).items()):
        lines.append(f"    {kind}: {detail}")
    return lines


def main_voice_room(config: RoomConfig) -> dict[str, Any]:
    """Run from synchronous code (the CLI)."""
    return trio.run(run_voice_room, config)
