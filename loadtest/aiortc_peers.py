"""``--aiortc N``: full aiortc participants in a load-test room, each in a process of its own.

Each runs :mod:`loadtest.aiortc_worker`: the SDK's own client (account, cross-signed device
list, gateway, :meth:`client.Client.voice_call` with aiortc, real Opus from a tone, SFrame by
the SDK's hooks, aiortc's Opus decoder). This module is the harness's side: it starts the
processes, bridges media keys between them and the synthetic participants, opens and closes
their measurement window, samples their CPU, and writes the report's ``aiortc`` key
(docs/loadtest.md).

**Media keys.** Between aiortc participants keys travel for real: pairwise ``MEDIA_KEY``
messages over X3DH/Double Ratchet sessions through the relay, sent and installed by the SDK.
Towards and from synthetic participants the harness carries them, because a synthetic
participant keeps no pairwise sessions: a synthetic participant's key (its
:class:`~loadtest.participant.KeyDirectory` entry) is handed to each aiortc participant's
:meth:`client.media_keys.MediaKeys.received`, as its inbox would hand over a decrypted
message; an aiortc participant's key, read from the SDK as it changes (first key, then each
join ratchet), is published in the room's ``KeyDirectory``. The SDK still sends its real
``MEDIA_KEY`` envelopes to the synthetic devices (their accounts are cross-signed), which
they do not read.

**Telling frames apart.** A synthetic receiver counts frames whose SFrame sender index is an
aiortc participant's separately (``VoiceParticipant.foreign``): they are real Opus, with no
stamp. An aiortc receiver opens every frame with the SDK and hands it to aiortc's Opus
decoder; the synthetic frames are not Opus, so for them it is the opened count (and RTP
loss) that matters, and decoding fails (aiortc logs and drops them).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import trio

from client.api import ControlApi
from e2ee.media import MediaKey
from loadtest.metrics import Window, loss_pct, percentiles
from loadtest.participant import KeyDirectory, VoiceParticipant

__all__ = ["AiortcPeers", "aiortc_report", "aiortc_summary"]

#: Seconds a worker gets to register (Argon2id for its store, proof of work, prekeys).
REGISTER_TIMEOUT_S = 60.0
#: Seconds a worker gets to send its window's counters, and to report and leave at the end.
MARK_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 20.0
#: Each aiortc participant's tone (Hz): distinct, so a recording would tell them apart.
BASE_TONE_HZ = 330.0
TONE_STEP_HZ = 110.0
BRIDGE_INTERVAL_S = 0.05


class _Peer:
    """One worker process and what it said."""

    def __init__(self, index: int, handle: str) -> None:
        self.index = index
        self.handle = handle
        self.label = f"aiortc-{index}"
        self.process: trio.Process | None = None
        self.psutil: psutil.Process | None = None
        self.lock = trio.Lock()
        self.user_id = ""
        self.device_id = ""
        self.registered = trio.Event()
        self.joined = False
        self.key: MediaKey | None = None
        self.heard: set[str] = set()
        self.marks: dict[str, dict[str, Any]] = {}
        self.marked = trio.Event()
        self.final: dict[str, Any] | None = None
        self.reported = trio.Event()
        self.error: str | None = None
        self.cpu: list[tuple[int, float, int]] = []

    async def send(self, command: dict[str, Any]) -> None:
        """One command line to the worker (ignored once it is gone)."""
        if self.process is None or self.process.stdin is None:
            return
        async with self.lock:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.process.stdin.send_all(json.dumps(command).encode() + b"\n")


class AiortcPeers:
    """The aiortc participants of one room (see the module docstring)."""

    def __init__(
        self,
        count: int,
        *,
        server_url: str,
        owner_token: str,
        guild_id: str,
        channel_id: str,
        participants: list[VoiceParticipant],
        keys: KeyDirectory,
        run_id: str,
        room: int = 0,
    ) -> None:
        self.server_url = server_url
        self.owner_token = owner_token
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.participants = participants
        self.keys = keys
        self.room = room
        self.peers = [_Peer(k, f"lt{run_id}r{room}a{k}") for k in range(count)]
        self._forwarded: dict[str, MediaKey] = {}
        #: Frames each synthetic participant had counted from each aiortc sender index, at
        #: each mark.
        self._foreign_marks: dict[str, dict[int, dict[int, int]]] = {}

    # --- running ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers; ``started`` once every one is registered and live; then
        bridge keys and sample CPU until cancelled (the processes are killed then)."""
        api = ControlApi(self.server_url, self.owner_token)
        try:
            invite = await api.create_invite(self.channel_id)
        finally:
            await api.aclose()
        with tempfile.TemporaryDirectory(prefix="hushroom-aiortc-logs-") as logs:
            try:
                async with trio.open_nursery() as nursery:
                    for peer in self.peers:
                        await self._start(peer, invite, Path(logs), nursery)
                    with trio.move_on_after(REGISTER_TIMEOUT_S):
                        for peer in self.peers:
                            await peer.registered.wait()
                    for peer in self.peers:
                        if not peer.registered.is_set():
                            peer.error = peer.error or "not registered in time"
                    task_status.started()
                    nursery.start_soon(self._bridge)
                    nursery.start_soon(self._sample_cpu)
            finally:
                for peer in self.peers:
                    if peer.process is not None and peer.process.returncode is None:
                        peer.process.kill()
                    if peer.error is not None:
                        log = Path(logs) / f"{peer.label}.log"
                        with contextlib.suppress(OSError):
                            # The last line that is not a traceback's frame or border.
                            tail = [
                                line
                                for line in log.read_text(errors="replace").splitlines()
                                if line.strip() and not line.lstrip().startswith(("+", "|", "^"))
                            ][-1:]
                            peer.error += "".join(f" ({line.strip()})" for line in tail)

    async def _start(self, peer: _Peer, invite: str, logs: Path, nursery: trio.Nursery) -> None:
        with (logs / f"{peer.label}.log").open("wb") as log:
            peer.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "loadtest.aiortc_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        with contextlib.suppress(psutil.Error):
            peer.psutil = psutil.Process(peer.process.pid)
            peer.psutil.cpu_percent(None)
        await peer.send(
            {
                "server_url": self.server_url,
                "handle": peer.handle,
                "invite": invite,
                "guild_id": self.guild_id,
                "channel_id": self.channel_id,
                "tone_hz": BASE_TONE_HZ + TONE_STEP_HZ * peer.index,
            }
        )
        nursery.start_soon(self._read, peer)

    async def _read(self, peer: _Peer) -> None:
        assert peer.process is not None and peer.process.stdout is not None
        buffer = b""
        async for chunk in peer.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._on_event(peer, json.loads(line))
        if not peer.reported.is_set():
            peer.error = peer.error or "exited early"
        peer.reported.set()
        peer.marked.set()

    def _on_event(self, peer: _Peer, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "registered":
            peer.user_id, peer.device_id = str(event["user_id"]), str(event["device_id"])
            peer.registered.set()
        elif kind == "key":
            key = MediaKey.decode_untrusted(bytes.fromhex(event["key"]))
            peer.key = key
            for p in self.participants:
                # Told apart before anyone can open its frames.
                p.foreign.setdefault(key.sender_index, 0)
                # Every generation goes to every synthetic participant (the SDK sends a
                # join ratchet's key to the joiner only, and the others follow by
                # themselves; but a synthetic participant installs a key as soon as it
                # sees the voice state, before it joins, and could not follow more than
                # e2ee.media.MAX_RATCHET_AHEAD join ratchets by the time frames reach it).
                p.installed.discard(peer.device_id)
            self.keys.publish(peer.device_id, key)
        elif kind == "joined":
            peer.joined = True
        elif kind == "progress":
            peer.heard = set(event["heard"])
        elif kind == "mark":
            name = str(event["name"])
            peer.marks[name] = event["counters"]
            if name == "end":
                peer.marked.set()
        elif kind == "report":
            peer.final = event
            peer.reported.set()
        elif kind == "failed":
            peer.error = str(event["error"])

    async def _bridge(self) -> None:
        """Give every synthetic participant's (new) key to every aiortc participant."""
        users = {p.account.device_id: p.account.user_id for p in self.participants}
        while True:
            for device_id, key in list(self.keys.keys.items()):
                if device_id not in users or self._forwarded.get(device_id) is key:
                    continue
                self._forwarded[device_id] = key
                command = {
                    "cmd": "key",
                    "user_id": users[device_id],
                    "device_id": device_id,
                    "key": key.encode().hex(),
                }
                for peer in self.peers:
                    await peer.send(command)
            await trio.sleep(BRIDGE_INTERVAL_S)

    async def _sample_cpu(self) -> None:
        while True:
            await trio.sleep(1.0)
            now = time.monotonic_ns()
            for peer in self.peers:
                if peer.psutil is None:
                    continue
                try:
                    peer.cpu.append(
                        (now, peer.psutil.cpu_percent(None), peer.psutil.memory_info().rss)
                    )
                except psutil.Error:
                    continue

    async def join(self) -> None:
        """Every registered aiortc participant joins the voice channel."""
        for peer in self.peers:
            if peer.registered.is_set():
                await peer.send({"cmd": "join"})

    def ready(
        self, joined: list[VoiceParticipant], speaking: Callable[[VoiceParticipant], bool]
    ) -> bool:
        """Every aiortc participant opened frames of every speaker (synthetic and aiortc),
        and every joined synthetic participant opened frames of every aiortc one."""
        live = [peer for peer in self.peers if peer.error is None]
        indexes = [peer.key.sender_index for peer in live if peer.key is not None]
        if len(indexes) < len(live):
            return False
        speakers = {p.account.device_id for p in joined if speaking(p)}
        for peer in live:
            others = {q.device_id for q in live if q is not peer}
            if not peer.joined or not (speakers | others) <= peer.heard:
                return False
        return all(p.foreign.get(index, 0) > 0 for p in joined for index in indexes)

    async def open_window(self, window: Window) -> None:
        """The window just opened: note what the synthetic participants counted from the
        aiortc ones, and tell every worker the window (it takes its counters at both ends)."""
        self._foreign_marks["open"] = {p.number: dict(p.foreign) for p in self.participants}
        for peer in self.peers:
            if peer.process is not None and peer.error is None:
                command = {"cmd": "window", "start_ns": window.start_ns, "end_ns": window.end_ns}
                await peer.send(command)
            else:
                peer.marked.set()

    async def close_window(self) -> None:
        """The window just closed: note the synthetic counts; wait for the workers' own."""
        self._foreign_marks["end"] = {p.number: dict(p.foreign) for p in self.participants}
        with trio.move_on_after(MARK_TIMEOUT_S):
            for peer in self.peers:
                await peer.marked.wait()

    async def stop(self) -> None:
        """Ask every worker for its final report and to leave; wait for them to exit."""
        for peer in self.peers:
            await peer.send({"cmd": "stop"})
        with trio.move_on_after(STOP_TIMEOUT_S):
            for peer in self.peers:
                await peer.reported.wait()
            for peer in self.peers:
                if peer.process is not None:
                    await peer.process.wait()

    # --- the report -------------------------------------------------------------------

    def rows(self, window: Window, joined: list[VoiceParticipant]) -> list[dict[str, Any]]:
        """One row per aiortc participant (docs/loadtest.md, ``aiortc.per_participant``)."""
        names: dict[str, int | str] = {p.account.device_id: p.number for p in self.participants}
        names.update({peer.device_id: peer.label for peer in self.peers})
        sent = {p.account.device_id: p.sent_in_window for p in joined}
        for peer in self.peers:
            sent[peer.device_id] = _protected(peer)
        rows = []
        for peer in self.peers:
            opened_in = _window_diff(peer)
            senders: list[dict[str, Any]] = []
            for device_id, diff in sorted(opened_in.items(), key=lambda kv: str(names.get(kv[0]))):
                expected = sent.get(device_id)
                rtp_total = diff["rtp_received"] + diff["rtp_lost"]
                senders.append(
                    {
                        "from": names.get(device_id, device_id),
                        "expected": expected,
                        "opened": diff["opened"],
                        "dropped": diff["dropped"],
                        "before_key": diff["before_key"],
                        "decoded": diff["decoded"],
                        "rtp_received": diff["rtp_received"],
                        "rtp_lost": diff["rtp_lost"],
                        "rtp_loss_pct": loss_pct(rtp_total, diff["rtp_received"]),
                    }
                )
            rtp_received = sum(s["rtp_received"] for s in senders)
            rtp_lost = sum(s["rtp_lost"] for s in senders)
            join_ms = None
            if peer.final is not None:
                started = int(peer.final["join_started_ns"])
                firsts = [int(v) for v in peer.final["first_decoded_ns"].values()]
                if firsts:
                    join_ms = round((min(firsts) - started) / 1e6, 1)
            cpu = [c for t, c, _ in peer.cpu if window.start_ns + 1e9 <= t <= window.end_ns]
            rows.append(
                {
                    "participant": peer.label,
                    "room": self.room,
                    "joined": peer.joined,
                    "join_ms": join_ms,
                    "measured_s": _measured_s(peer),
                    "voice_sessions": (peer.final or {}).get("counters", {}).get("voice_sessions"),
                    "sent_in_window": sent[peer.device_id],
                    "opened": sum(s["opened"] for s in senders),
                    "decoded": sum(s["decoded"] for s in senders),
                    "rtp_loss_pct": loss_pct(rtp_received + rtp_lost, rtp_received),
                    "senders": senders,
                    "received_by_synthetic": self._received_by_synthetic(peer, joined),
                    "cpu_pct": round(sum(cpu) / len(cpu), 1) if cpu else None,
                    "rss_mb": round(max((r for _, _, r in peer.cpu), default=0) / 2**20, 1),
                    "notices": peer.final.get("notices", []) if peer.final else [],
                    "error": peer.error,
                }
            )
        return rows

    def _received_by_synthetic(self, peer: _Peer, joined: list[VoiceParticipant]) -> dict[str, Any]:
        """What the joined synthetic participants counted from this aiortc participant
        between the window's marks, against what it sealed meanwhile."""
        if peer.key is None:
            return {"receivers": 0, "heard_by": 0, "frames": 0, "expected": 0, "loss_pct": 0.0}
        index = peer.key.sender_index
        start = self._foreign_marks.get("open", {})
        end = self._foreign_marks.get("end", {})
        counts = [
            end.get(p.number, {}).get(index, 0) - start.get(p.number, {}).get(index, 0)
            for p in joined
        ]
        expected = _protected(peer) * len(joined)
        frames = sum(counts)
        return {
            "receivers": len(joined),
            "heard_by": sum(1 for c in counts if c > 0),
            "frames": frames,
            "expected": expected,
            "loss_pct": loss_pct(expected, frames),
        }


def _protected(peer: _Peer) -> int:
    """Frames the worker sealed between the window's marks."""
    start, end = peer.marks.get("open"), peer.marks.get("end")
    if start is None or end is None:
        return 0
    return int(end["protected"]) - int(start["protected"])


def _measured_s(peer: _Peer) -> float | None:
    """How far apart the worker's two counter snapshots actually were."""
    start, end = peer.marks.get("open"), peer.marks.get("end")
    if start is None or end is None:
        return None
    return round((int(end["at_ns"]) - int(start["at_ns"])) / 1e9, 3)


def _window_diff(peer: _Peer) -> dict[str, dict[str, int]]:
    """Per sending device: counters at the window's end minus at its start."""
    start = peer.marks.get("open", {}).get("senders", {})
    end = peer.marks.get("end", {}).get("senders", {})
    fields = ("opened", "dropped", "before_key", "decoded", "rtp_received", "rtp_lost")
    return {
        device_id: {f: int(row.get(f, 0)) - int(start.get(device_id, {}).get(f, 0)) for f in fields}
        for device_id, row in end.items()
    }


def aiortc_report(
    rooms: list[AiortcPeers], window: Window, joined_by_room: list[list[VoiceParticipant]]
) -> dict[str, Any]:
    """The report's ``aiortc`` key (docs/loadtest.md)."""
    rows = [row for peers in rooms for row in peers.rows(window, joined_by_room[peers.room])]
    received = sum(r["decoded"] for r in rows)
    rtp = [(s["rtp_received"], s["rtp_lost"]) for r in rows for s in r["senders"]]
    rtp_received = sum(a for a, _ in rtp)
    cpu = [r["cpu_pct"] for r in rows if r["cpu_pct"] is not None]
    return {
        "participants": len(rows),
        "joined": sum(1 for r in rows if r["joined"]),
        "join_ms": percentiles([r["join_ms"] for r in rows if r["join_ms"] is not None]),
        "opened": sum(r["opened"] for r in rows),
        "decoded": received,
        "rtp_loss_pct": loss_pct(rtp_received + sum(b for _, b in rtp), rtp_received),
        "cpu_pct": round(sum(cpu), 1) if cpu else None,
        "rss_mb": round(sum(r["rss_mb"] for r in rows), 1),
        "errors": sum(1 for r in rows if r["error"]),
        "per_participant": rows,
    }


def aiortc_summary(aiortc: dict[str, Any], ms: Callable[[float | None], str]) -> list[str]:
    """The summary table's lines for the aiortc participants (``ms`` formats a figure as
    the rest of the table does)."""
    lines = [
        f"  aiortc       {aiortc['joined']}/{aiortc['participants']} joined  "
        f"join ms p50 {ms(aiortc['join_ms']['p50'])}  opened {aiortc['opened']}  "
        f"decoded {aiortc['decoded']}  rtp loss {aiortc['rtp_loss_pct']:.3f} %  "
        f"cpu {ms(aiortc['cpu_pct'])} %  rss {aiortc['rss_mb']} MB"
    ]
    for row in aiortc["per_participant"]:
        heard = row["received_by_synthetic"]
        lines.append(
            f"    {row['participant']} (room {row['room']}): join {ms(row['join_ms'])} ms  "
            f"opened {row['opened']} from {len(row['senders'])} senders  "
            f"sent {row['sent_in_window']}, synthetic got {heard['frames']}/{heard['expected']}"
            f"  cpu {ms(row['cpu_pct'])} %" + (f"  error {row['error']}" if row["error"] else "")
        )
    return lines
