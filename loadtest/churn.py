"""The ``churn`` scenario: participants join and leave a voice channel at a rate, and what
each join and leave costs in media-key distribution (docs/loadtest.md, "churn").

Media keys travel as clients send them (docs/voice.md, client notes): every participant is
a full SDK :class:`client.Client` — its encrypted store, one-time and signed prekeys,
signed device list, pairwise PQXDH sessions and Double Ratchets (:mod:`client.sessions`),
inbox (:mod:`client.inbox`) and media keys (:class:`client.media_keys.MediaKeys`) — so a
key change is a real fan-out of MEDIA_KEY envelopes through the control plane's relay,
decrypted by the receivers' inboxes and installed into their SFrame receivers. What the
harness adds is only what ``Client.live`` and ``client.voice.call.VoiceCall`` would do
with aiortc: its own loop over the SDK's :class:`client.gateway.GatewayClient` hands
voice dispatches to the SDK's sans-I/O :class:`client.voice.signalling.CallSignalling`
and acts on its events exactly as ``VoiceCall._act`` does (``MediaKeys.begin`` and
``MediaKeys.update``), and envelopes to ``Client.receive_envelopes``. No media flows:
participants join (op 4) without publishing, so the figures are the key schedule's alone.

Whether a receiver holds a sender's new key is proved, not assumed: after every key
change the sender seals a probe frame under its current key (``FrameKeys.protect``), and
each receiver opens it (``FrameKeys.open_untrusted``) once it handled an envelope from
that sender — the moment it first opens is the moment it could hear that sender again.

The run: register ``participants`` accounts plus one per planned join, concurrently; the
first creates a guild with a voice channel and an invite the others accept; the first
``participants`` join and exchange keys (the *fill*, not measured); then a join or a leave
every ``1 / rate`` seconds, alternately (a fresh account joins; the longest-present
participant but the first leaves for good). Each event is measured from its op 4 until
every participant in the call has decrypted every other one's current key; an event does
not start before the previous one settled, so costs are never mixed (``lag_s`` says how
far behind the schedule that put it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil
import trio

from client import Client
from client.errors import ClientError
from client.gateway import Dispatch, GatewayClient
from client.models import Envelope
from client.voice.signalling import (
    CallFailed,
    CallSignalling,
    ParticipantsChanged,
    SignallingEvent,
    StartTransports,
    VoiceStates,
    decode_voice_state_untrusted,
)
from contract.gateway import EventName
from e2ee import E2EEError
from e2ee.media import Codec
from loadtest.metrics import percentiles
from loadtest.spawn import Spawned, spawned

__all__ = ["ChurnConfig", "main_churn", "plot_churn", "run_churn", "summary_table"]

#: The profiles live in a temporary directory removed at the end; their stores still
#: derive their keys from a passphrase (Argon2id), as a client's do.
PASSPHRASE = "hushroom-loadtest-churn"
#: A probe frame: an Opus TOC byte (kept in clear by SFrame's codec rule), then anything.
PROBE = b"\xfc" + b"churn probe"
#: Accounts registered (and invites accepted) at once.
SETUP_CONCURRENCY = 8
#: Participants joining at once during the fill. A receiver follows a sender's join
#: ratchets by itself only up to ``e2ee.media.MAX_RATCHET_AHEAD`` (16) generations past the
#: key it was given, and nothing but a later fresh key brings it back: a burst of more
#: joins than that before one's keys arrive would leave it deaf to those senders.
FILL_BATCH = 8
#: How often the harness looks whether an event has settled (the figures come from the
#: confirmation times, not from this poll).
POLL_S = 0.05


@dataclass
class ChurnConfig:
    """What ``python -m loadtest churn`` was asked for."""

    participants: int
    rate: float
    duration: float
    #: Joins (and as many leaves) to run; ``None``: ``rate × duration`` events in all.
    joins: int | None = None
    target: str | None = None
    nodes: int = 1
    #: Bound on one event and on each batch of the fill (at 200 participants a leave alone
    #: is about 40,000 keys sent through one harness process).
    settle_timeout: float = 900.0
    progress: TextIO | None = None
    command: list[str] = field(default_factory=list)

    def events(self) -> int:
        """How many events (joins and leaves, alternately) the run has."""
        if self.joins is not None:
            return 2 * self.joins
        return max(1, int(self.rate * self.duration))


class Member:
    """One participant: a full SDK client, its gateway session, and what it decrypted."""

    def __init__(self, number: int, client: Client, run: _Churn) -> None:
        self.number = number
        self.client = client
        self.run = run
        self.device_id = client.device_id
        self.states = VoiceStates()
        self.signalling: CallSignalling | None = None
        self.gateway: GatewayClient | None = None
        self.in_call = False
        #: Devices the key distribution last acted on (after ``MediaKeys.update`` returned).
        self.synced: frozenset[str] = frozenset()
        #: The probe of own current key: (sender index, generation, sealed frame).
        self.probe: tuple[int, int, bytes] | None = None
        #: Sender device → (generation, monotonic ns) of the newest probe opened.
        self.confirmed: dict[str, tuple[int, int]] = {}
        #: Sender device → when an envelope from it was last handled (monotonic ns).
        self.last_from: dict[str, int] = {}
        self.envelopes = 0
        self.envelope_bytes = 0
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        """Count one error of ``kind``."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def keys_sent(self) -> int:
        """Media keys this device has sent so far (the SDK's own bookkeeping)."""
        return sum(len(generations) for generations in self.client.media_keys.sent.values())

    async def live(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the gateway until cancelled: one task, as ``Client.live`` runs the SDK's
        dispatches, so the store is never written by two tasks at once."""
        api = self.client.api
        gateway = self.gateway = GatewayClient(api.server_url, api.token or "")
        started = False
        async with gateway.events() as events:
            async for event in events:
                try:
                    await self.dispatch(event)
                except (ClientError, E2EEError) as exc:
                    self.error(f"{event.type.lower()}:{type(exc).__name__}")
                if events.statistics().current_buffer_used == 0:
                    with contextlib.suppress(ClientError):
                        await self.client.flush_acks()
                if not started and event.type == EventName.READY:
                    started = True
                    task_status.started()

    async def dispatch(self, event: Dispatch) -> None:
        """What ``client.sync.Sync.handle_dispatch`` and ``client.voice.calls.Voice``
        do with the dispatches a call needs."""
        d = event.data
        if event.type == EventName.READY:
            data = d if isinstance(d, dict) else {}
            self.states.ready_untrusted(data.get("voice_states", []))
            envelopes = data.get("envelopes", [])
            if isinstance(envelopes, list) and envelopes:
                await self.receive([Envelope.from_wire_untrusted(e) for e in envelopes])
            return
        if event.type == EventName.ENVELOPE_CREATE:
            await self.receive([Envelope.from_wire_untrusted(d)])
            return
        if event.type == EventName.PREKEYS_LOW:
            await self.client.maintain_prekeys()
            return
        if event.type == EventName.VOICE_STATE_UPDATE:
            self.states.update(decode_voice_state_untrusted(d))
        if self.signalling is not None:
            for item in self.signalling.receive_untrusted(event.type, d):
                await self._act(item)

    async def _act(self, item: SignallingEvent) -> None:
        """``client.voice.call.VoiceCall._act`` without the media it hands to aiortc."""
        keys = self.client.media_keys
        signalling = self.signalling
        assert signalling is not None
        if isinstance(item, StartTransports):
            keys.begin(signalling.channel_id, item.sender_index, item.voice_session_id)
            await keys.update(signalling.participants)
        elif isinstance(item, ParticipantsChanged):
            await keys.update(item.participants)
        elif isinstance(item, CallFailed):
            keys.end()
            self.error(f"call_failed:{item.code}")
        else:
            return
        self.synced = frozenset(device for _, device in signalling.participants)
        self.run.key_changed(self)

    async def receive(self, envelopes: list[Envelope]) -> None:
        """Hand envelopes to the SDK's inbox; then see which new keys now open."""
        await self.client.receive_envelopes(envelopes, ack=False)
        now = time.monotonic_ns()
        for envelope in envelopes:
            self.envelopes += 1
            self.envelope_bytes += len(envelope.ciphertext)
            self.last_from[envelope.sender_device_id] = now
            sender = self.run.by_device.get(envelope.sender_device_id)
            if sender is not None:
                self.run.confirm(self, sender, now)

    async def join(self, guild_id: str, channel_id: str) -> None:
        """Op 4 into the channel, starting with the participants the voice states name
        (as ``client.voice.calls.Voice.join`` does)."""
        assert self.gateway is not None
        signalling = CallSignalling(
            guild_id,
            channel_id,
            self.client.user_id,
            self.device_id,
            roster=self.states,
        )
        signalling.participants = {
            k: s for k, s in self.states.in_channel(channel_id).items() if k[1] != self.device_id
        }
        self.signalling = signalling
        self.in_call = True
        await self.gateway.send(*signalling.join())

    async def leave(self) -> None:
        """Op 4 without a channel; the call's keys are forgotten (as ``VoiceCall.run``)."""
        assert self.gateway is not None and self.signalling is not None
        self.in_call = False
        frame = self.signalling.leave()
        self.signalling = None
        self.client.media_keys.end()
        self.probe = None
        await self.gateway.send(*frame)


@dataclass
class _Event:
    """One join or leave as it is measured."""

    index: int
    kind: str
    member: Member
    scheduled_s: float
    start_ns: int = 0
    before: int = 0
    keys_sent_before: int = 0
    envelopes_before: int = 0
    bytes_before: int = 0
    cpu_before: tuple[float, float] = (0.0, 0.0)


class _Churn:
    """The members, the events, and the live counters of one run."""

    def __init__(self, config: ChurnConfig) -> None:
        self.config = config
        self.members: list[Member] = []
        self.by_device: dict[str, Member] = {}
        self.started = time.monotonic()
        self.phase = "setting up"
        self.harness = psutil.Process()
        self.harness.cpu_percent(None)
        self.control: psutil.Process | None = None
        self.timeline: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.event_start_ns = 0
        #: When the churn phase began (``time.monotonic``): events are scheduled from it.
        self.churn_started = 0.0

    def add(self, member: Member) -> None:
        self.members.append(member)
        self.by_device[member.device_id] = member

    def in_call(self) -> list[Member]:
        return [m for m in self.members if m.in_call]

    # --- proof of decryption -------------------------------------------------------------

    def key_changed(self, sender: Member) -> None:
        """After ``sender``'s key distribution acted: seal a probe under its current key
        if that changed, and let every other participant try it."""
        frame_keys = sender.client.media_keys.keys
        if frame_keys is None:
            sender.probe = None
            return
        index, generation = frame_keys.sender_index, frame_keys.current_key().generation
        if sender.probe is not None and sender.probe[:2] == (index, generation):
            return
        sender.probe = (index, generation, frame_keys.protect(Codec.OPUS, PROBE))
        now = time.monotonic_ns()
        for receiver in self.in_call():
            if receiver is not sender:
                # A key that came before its probe was made: it could open since then.
                arrived = receiver.last_from.get(sender.device_id, 0)
                self.confirm(receiver, sender, arrived if arrived >= self.event_start_ns else now)

    def confirm(self, receiver: Member, sender: Member, at_ns: int) -> None:
        """Record when ``receiver`` first opens ``sender``'s current probe."""
        probe = sender.probe
        frame_keys = receiver.client.media_keys.keys
        if probe is None or frame_keys is None or not receiver.in_call:
            return
        seen = receiver.confirmed.get(sender.device_id)
        if seen is not None and seen[0] == probe[1]:
            return
        try:
            index, _ = frame_keys.open_untrusted(Codec.OPUS, probe[2])
        except E2EEError:
            return  # not (yet) holding that key
        if index != probe[0]:
            receiver.error("probe_index_mismatch")
            return
        receiver.confirmed[sender.device_id] = (probe[1], at_ns)

    def unconfirmed(self) -> int:
        """Pairs (receiver, sender) in the call whose current key is not decrypted yet."""
        members = self.in_call()
        return sum(
            1
            for m in members
            for s in members
            if s is not m
            and (s.probe is None or m.confirmed.get(s.device_id, (-1, 0))[0] != s.probe[1])
        )

    def settled(self) -> bool:
        """Everyone in the call has acted on who is in it and decrypted every other
        participant's current key."""
        members = self.in_call()
        devices = frozenset(m.device_id for m in members)
        for m in members:
            if m.probe is None or m.synced != devices - {m.device_id}:
                return False
        for m in members:
            confirmed = m.confirmed
            for s in members:
                if s is m:
                    continue
                seen = confirmed.get(s.device_id)
                if seen is None or s.probe is None or seen[0] != s.probe[1]:
                    return False
        return True

    def take_notices(self) -> None:
        """Count what the SDKs reported to their users as errors (``notice:<kind>``): a
        dropped envelope or a refused key is said only there, never raised."""
        for m in self.members:
            for notice in m.client.notices():
                m.error(f"notice:{notice.kind}")

    async def until_settled(self, within: float) -> bool:
        with trio.move_on_after(within):
            # Polled: settling is spread over every member's confirmations.
            while True:
                if self.settled():
                    return True
                await trio.sleep(POLL_S)
        return False

    # --- counters and progress -------------------------------------------------------------

    def totals(self) -> tuple[int, int, int]:
        """Keys sent, envelopes handled and their ciphertext bytes, over every member."""
        sent = sum(m.keys_sent() for m in self.members)
        envelopes = sum(m.envelopes for m in self.members)
        size = sum(m.envelope_bytes for m in self.members)
        return sent, envelopes, size

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds used so far by the harness and the spawned control process."""
        harness = self.harness.cpu_times()
        control = 0.0
        if self.control is not None:
            with contextlib.suppress(psutil.Error):
                times = self.control.cpu_times()
                control = times.user + times.system
        return harness.user + harness.system, control

    def errors(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for m in self.members:
            for kind, count in m.errors.items():
                total[kind] = total.get(kind, 0) + count
        return total

    async def monitor(self) -> None:
        """Once a second: envelope rate, harness and control CPU, the progress line."""
        last_envelopes = sum(m.envelopes for m in self.members)
        last = time.monotonic()
        while True:
            await trio.sleep(1.0)
            now = time.monotonic()
            envelopes = sum(m.envelopes for m in self.members)
            rate = (envelopes - last_envelopes) / (now - last)
            last_envelopes, last = envelopes, now
            control_cpu = None
            if self.control is not None:
                with contextlib.suppress(psutil.Error):
                    control_cpu = self.control.cpu_percent(None)
            point = {
                "t": round(now - self.started, 1),
                "phase": self.phase,
                "in_call": len(self.in_call()),
                "events": len(self.events),
                "envelopes_per_s": round(rate),
                "harness_cpu_pct": self.harness.cpu_percent(None),
                "control_cpu_pct": control_cpu,
            }
            self.timeline.append(point)
            self._progress(point)

    def _progress(self, point: dict[str, Any]) -> None:
        out = self.config.progress
        if out is None:
            return
        control = "-" if point["control_cpu_pct"] is None else f"{point['control_cpu_pct']:.0f}%"
        errors = sum(self.errors().values())
        line = (
            f"[{point['t']:6.1f}s] {point['phase']:10} in call {point['in_call']}"
            f"  events {point['events']}/{self.config.events()}"
            f"  envelopes {point['envelopes_per_s']}/s  control cpu {control}"
            f"  harness cpu {point['harness_cpu_pct']:.0f}%  errors {errors}"
        )
        end = "\r" if out.isatty() else "\n"
        print(line.ljust(110), end=end, file=out, flush=True)

    # --- events ------------------------------------------------------------------------------

    def begin(self, event: _Event) -> None:
        event.start_ns = self.event_start_ns = time.monotonic_ns()
        event.before = len(self.in_call())
        event.keys_sent_before, event.envelopes_before, event.bytes_before = self.totals()
        event.cpu_before = self.cpu_seconds()

    def finish(self, event: _Event, settled: bool) -> None:
        """The event's row (docs/loadtest.md, ``per_event``)."""
        members = self.in_call()
        start = event.start_ns
        delays: list[float] = []
        for m in members:
            for s in members:
                seen = m.confirmed.get(s.device_id) if s is not m else None
                if seen is not None and seen[1] >= start:
                    delays.append((seen[1] - start) / 1e6)
        sent, envelopes, size = self.totals()
        harness, control = self.cpu_seconds()
        delivered = envelopes - event.envelopes_before
        keys_ms = percentiles(delays)
        if not settled:
            event.member.error(f"not_settled:{self.unconfirmed()}_pairs")
        self.take_notices()
        self.events.append(
            {
                "event": event.index,
                "kind": event.kind,
                "participant": event.member.number,
                "participants_before": event.before,
                "participants_after": len(members),
                "scheduled_s": round(event.scheduled_s, 3),
                "lag_s": round(max(0.0, (start / 1e9 - self.churn_started) - event.scheduled_s), 3),
                "settled": settled,
                "settled_ms": keys_ms["max"] if settled else None,
                "keys_ms": keys_ms,
                "keys_decrypted": len(delays),
                "keys_sent": sent - event.keys_sent_before,
                "envelopes": delivered,
                "bytes": size - event.bytes_before,
                "bytes_per_envelope": round((size - event.bytes_before) / delivered)
                if delivered
                else None,
                "harness_cpu_s": round(harness - event.cpu_before[0], 3),
                "control_cpu_s": round(control - event.cpu_before[1], 3)
                if self.control is not None
                else None,
            }
        )


async def _register(server_url: str, profiles: Path, count: int, run_id: str) -> list[Client]:
    """``count`` SDK clients registered as ``hushroom register`` does (encrypted store,
    identity, signed prekeys, 100 one-time prekeys of each kind, signed device list)."""
    clients: list[Client | None] = [None] * count
    limiter = trio.CapacityLimiter(SETUP_CONCURRENCY)

    async def register(n: int) -> None:
        async with limiter:
            clients[n] = await Client.register(
                profiles / f"p{n}", PASSPHRASE, server_url, f"ch{run_id}p{n}"
            )

    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(register, n)
    return [c for c in clients if c is not None]


async def _guild(clients: list[Client], run_id: str) -> tuple[str, str]:
    """Participant 0 makes a guild with a voice channel; everyone else accepts its invite."""
    owner = clients[0].api
    guild = await owner.create_guild(f"loadtest churn {run_id}")
    channel = await owner.create_channel(guild.id, "churn", type="voice")
    invite = await owner.create_invite(guild.channels[0].id)
    limiter = trio.CapacityLimiter(SETUP_CONCURRENCY)

    async def accept(client: Client) -> None:
        async with limiter:
            await client.api.accept_invite(invite)

    async with trio.open_nursery() as nursery:
        for client in clients[1:]:
            nursery.start_soon(accept, client)
    return guild.id, channel.id


@contextlib.asynccontextmanager
async def _deployment(config: ChurnConfig, root: Path) -> AsyncIterator[tuple[str, Spawned | None]]:
    if config.target is not None:
        yield config.target.rstrip("/"), None
        return
    async with spawned(root / "deployment", nodes=config.nodes) as world:
        yield world.url, world


async def run_churn(config: ChurnConfig) -> dict[str, Any]:
    """Run the scenario and return the report (the JSON of docs/loadtest.md)."""
    if config.participants < 2:
        raise ValueError("--participants must be at least 2")
    if not config.rate > 0:
        raise ValueError("--rate must be positive")
    run = _Churn(config)
    total_events = config.events()
    joins = (total_events + 1) // 2
    run_id = f"{int(time.time()) % 100000:05d}"
    setup_s = fill_s = 0.0
    with tempfile.TemporaryDirectory(prefix="hushroom-churn-") as tmp:
        root = Path(tmp)
        async with _deployment(config, root) as (server_url, world):
            if world is not None:
                run.control = psutil.Process(world.control_pid)
                run.control.cpu_percent(None)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run.monitor)
                clients = await _register(
                    server_url, root / "profiles", config.participants + joins, run_id
                )
                try:
                    for number, client in enumerate(clients):
                        run.add(Member(number, client, run))
                    guild_id, channel_id = await _guild(clients, run_id)
                    setup_s = time.monotonic() - run.started
                    async with trio.open_nursery() as members:
                        for member in run.members:
                            await members.start(member.live)
                        run.phase = "filling"
                        fill_started = time.monotonic()
                        filled = await _fill(run, guild_id, channel_id)
                        fill_s = time.monotonic() - fill_started
                        if filled:
                            run.phase = "churning"
                            await _churn(run, guild_id, channel_id, total_events)
                        members.cancel_scope.cancel()
                finally:
                    for client in clients:
                        with trio.CancelScope(shield=True):
                            await client.aclose()
                nursery.cancel_scope.cancel()
        if config.progress is not None and config.progress.isatty():
            print(file=config.progress)
    return _report(run, world, setup_s, fill_s)


async def _fill(run: _Churn, guild_id: str, channel_id: str) -> bool:
    """The first ``participants`` join, :data:`FILL_BATCH` at a time, each batch once the
    one before has settled; false if a batch did not settle within the settle timeout."""
    config = run.config
    for start in range(0, config.participants, FILL_BATCH):
        for member in run.members[start : min(start + FILL_BATCH, config.participants)]:
            await member.join(guild_id, channel_id)
        if not await run.until_settled(config.settle_timeout):
            run.members[0].error(f"fill_not_settled:{run.unconfirmed()}_pairs")
            run.take_notices()
            return False
    return True


async def _churn(run: _Churn, guild_id: str, channel_id: str, total: int) -> None:
    """Joins and leaves, alternately, one every ``1 / rate`` seconds (never two at once)."""
    config = run.config
    fresh = iter(run.members[config.participants :])
    leavers = iter(run.members[1 : config.participants])
    run.churn_started = time.monotonic()
    start = trio.current_time()
    for index in range(total):
        scheduled = index / config.rate
        await trio.sleep_until(start + scheduled)
        kind = "join" if index % 2 == 0 else "leave"
        member = next(fresh) if kind == "join" else next(leavers, None)
        if member is None:
            break  # everyone but the first has left
        event = _Event(index, kind, member, scheduled)
        run.begin(event)
        if kind == "join":
            await member.join(guild_id, channel_id)
        else:
            await member.leave()
        run.finish(event, await run.until_settled(config.settle_timeout))


def _by_kind(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    rows = [e for e in events if e["kind"] == kind]

    def mean(key: str) -> float | None:
        values = [e[key] for e in rows if e[key] is not None]
        return round(sum(values) / len(values), 1) if values else None

    return {
        "count": len(rows),
        "settled_ms": percentiles([e["settled_ms"] for e in rows if e["settled_ms"] is not None]),
        "keys_sent": mean("keys_sent"),
        "envelopes": mean("envelopes"),
        "bytes": mean("bytes"),
        "harness_cpu_s": mean("harness_cpu_s"),
        "control_cpu_s": mean("control_cpu_s"),
    }


def _report(run: _Churn, world: Spawned | None, setup_s: float, fill_s: float) -> dict[str, Any]:
    config = run.config
    errors = run.errors()
    return {
        "scenario": "churn",
        "command": config.command,
        "target": config.target or "spawn",
        "participants": config.participants,
        "rate_per_s": config.rate,
        "events": len(run.events),
        "settled_events": sum(1 for e in run.events if e["settled"]),
        "setup_s": round(setup_s, 1),
        "fill_s": round(fill_s, 1),
        "join": _by_kind(run.events, "join"),
        "leave": _by_kind(run.events, "leave"),
        "errors": errors,
        "gateway_reconnects": sum(
            m.gateway.connections - 1 for m in run.members if m.gateway is not None
        ),
        "per_event": run.events,
        "timeline": run.timeline,
        "spawned_nodes": len(world.nodes) if world is not None else None,
    }


def summary_table(report: dict[str, Any]) -> str:
    """The summary a person reads at the end of a run."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"churn: {report['participants']} participants, {report['events']} events "
        f"({report['settled_events']} settled) at {report['rate_per_s']}/s "
        f"({report['target']}); set-up {report['setup_s']} s, fill {report['fill_s']} s",
        f"  {'':6} {'count':>5} {'settled p50':>11} {'p99':>8} {'max':>8} {'keys sent':>9} "
        f"{'envelopes':>9} {'bytes':>10} {'harness s':>9} {'control s':>9}",
    ]
    for kind in ("join", "leave"):
        row = report[kind]
        settled = row["settled_ms"]
        lines.append(
            f"  {kind:6} {row['count']:>5} {ms(settled['p50']):>11} {ms(settled['p99']):>8} "
            f"{ms(settled['max']):>8} {ms(row['keys_sent']):>9} {ms(row['envelopes']):>9} "
            f"{ms(row['bytes']):>10} {ms(row['harness_cpu_s']):>9} {ms(row['control_cpu_s']):>9}"
        )
    errors = report["errors"]
    lines.append(
        "  errors "
        + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) if errors else "none")
    )
    return "\n".join(lines)


def plot_churn(report: dict[str, Any], path: Path) -> None:
    """Per event: the time until everyone decrypted the new keys, and the envelopes sent."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    events = report["per_event"]
    figure, (settle, cost) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    figure.suptitle(
        f"churn: {report['participants']} participants, {report['events']} events "
        f"({report['target']})"
    )
    for kind, colour in (("join", "tab:blue"), ("leave", "tab:red")):
        rows = [e for e in events if e["kind"] == kind]
        x = [e["event"] for e in rows]
        settle.bar(x, [e["settled_ms"] or 0 for e in rows], color=colour, label=kind)
        cost.bar(x, [e["envelopes"] for e in rows], color=colour, label=kind)
    settle.set_ylabel("all keys decrypted (ms)")
    settle.legend(loc="upper left")
    cost.set_ylabel("MEDIA_KEY envelopes")
    cost.set_xlabel("event")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main_churn(args: argparse.Namespace, command: list[str]) -> int:
    """``python -m loadtest churn`` (the options of ``loadtest.__main__``)."""
    if args.participants < 2:
        print("hushroom loadtest: --participants must be at least 2", file=sys.stderr)
        return 2
    config = ChurnConfig(
        participants=args.participants,
        rate=args.rate,
        duration=args.duration,
        joins=args.joins,
        target=args.target,
        nodes=args.nodes,
        settle_timeout=args.settle_timeout,
        progress=None if args.quiet else sys.stderr,
        command=command,
    )
    report = trio.run(run_churn, config)
    print(summary_table(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot is not None:
        plot_churn(report, args.plot)
    return 0
