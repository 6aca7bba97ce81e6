"""The SFU node: supervises one worker process per core and holds the link to control.

The node dials the control plane (``hushroom.node_link``), proves the shared node secret,
registers its workers and reports their health every few seconds; when the link drops it
dials again with backoff. A worker that dies stops the node with an error, so the process
supervisor (``hushroom up``, systemd, Kubernetes) restarts the whole node cleanly rather
than the node limping on with a hole in its capacity.

Control's requests ``{id, method, params}`` are answered by routing them to the worker that
owns the named router, transport, producer or consumer (``router.create`` places a new
router on the least-loaded worker); workers' events (``speaker``, ``transport.closed``) are
relayed, and a ``stats`` event with per-worker rates, loss, CPU and RSS goes out every 5 s.

A channel spreads over the node's workers here, not in control (docs/sfu.md, "One channel
across cores"): control knows one router per channel, the one ``router.create`` returned;
once the channel holds ``--spread-above`` transports, ``transport.create`` puts each new
transport on the least-loaded worker, in a router of the channel made there on demand, and
every producer of the channel is piped into each of the channel's routers, so any
transport can consume any producer under its own id. Workers, their loads and the pipes
between them are the node's business; control's view (one router, producer and consumer
ids, events naming that router) does not change.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

import psutil
import trio
import trio_websocket

from hushroom import node_link
from hushroom.secrets_file import read_secret_file

from .channel import FrameDecoder, FrameError, encode_frame
from .config import SfuConfig
from .errors import BadParams, NotFound, RpcError

__all__ = ["Node", "WorkerDied", "WorkerHandle"]

log = logging.getLogger("sfu.node")

WORKER_START_TIMEOUT_S = 20.0
STATS_INTERVAL_S = 5.0
EVENT_QUEUE = 1024
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0


class WorkerDied(Exception):
    """A worker process exited while the node was running."""


class WorkerError(RpcError):
    """A worker refused a request; carries the worker's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(eq=False)
class ChannelRouters:
    """One channel's routers on this node: the one control knows (``home``, what
    ``router.create`` returned) and one more per worker the channel spread to."""

    home: str
    #: worker index -> the channel's router on that worker
    routers: dict[int, str]

    def __post_init__(self) -> None:
        # Serialises adding a router (and piping everything into it) with piping a new
        # producer into every router, so each producer reaches each router exactly once.
        self.lock = trio.Lock()


@dataclass(eq=False)
class WorkerHandle:
    """One worker process as the node sees it, and the request channel to it."""

    index: int
    process: trio.Process
    port: int
    routers: int = 0

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._write_lock = trio.Lock()

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one request to the worker and wait for its reply."""
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[request_id] = send
        try:
            assert self.process.stdin is not None
            async with self._write_lock:
                await self.process.stdin.send_all(
                    encode_frame({"id": request_id, "method": method, "params": params})
                )
            reply = await receive.receive()
        finally:
            del self._pending[request_id]
        error = reply.get("error")
        if isinstance(error, dict):
            raise WorkerError(str(error.get("code")), str(error.get("message")))
        result = reply.get("result")
        return result if isinstance(result, dict) else {}

    def deliver_reply(self, frame: dict[str, Any]) -> None:
        """Hand a reply frame from the worker to the request waiting for it."""
        waiting = self._pending.get(frame.get("id"))  # type: ignore[arg-type]
        if waiting is not None:
            waiting.send_nowait(frame)

    def health(self) -> dict[str, Any]:
        """Liveness and resource use, as sent to control."""
        alive = self.process.returncode is None
        cpu, rss = 0.0, 0
        if alive:
            try:
                ps = psutil.Process(self.process.pid)
                cpu, rss = ps.cpu_percent(None), ps.memory_info().rss
            except psutil.Error:
                alive = False
        return {
            "index": self.index,
            "port": self.port,
            "alive": alive,
            "cpu_percent": cpu,
            "rss_bytes": rss,
        }


class Node:
    """A running SFU node (see module docstring)."""

    def __init__(self, config: SfuConfig) -> None:
        self.config = config
        self.node_id = config.node_id or secrets.token_hex(8)
        self.secret = read_secret_file(config.node_secret_file)[0]
        self.workers: list[WorkerHandle] = []
        self.registered = trio.Event()
        # Which worker owns what, for routing control's requests.
        self._routers: dict[str, WorkerHandle] = {}
        self._transports: dict[str, tuple[WorkerHandle, str]] = {}
        self._producers: dict[str, tuple[WorkerHandle, str]] = {}
        self._consumers: dict[str, tuple[WorkerHandle, str]] = {}
        # (source router, target router) -> (pipe id there, pipe id here); and each piped
        # producer's copies, so closing the original closes them too.
        self._pipes: dict[tuple[str, str], tuple[str, str]] = {}
        self._piped: dict[str, dict[str, WorkerHandle]] = {}
        # Channels by any of their routers (docs: module docstring).
        self._channels: dict[str, ChannelRouters] = {}
        self._events_in, self._events_out = trio.open_memory_channel[tuple[str, dict[str, Any]]](
            EVENT_QUEUE
        )
        self._last_stats: dict[int, tuple[float, dict[str, Any]]] = {}
        # Producers whose transport went away while copies live on other workers.
        self._orphans_in, self._orphans_out = trio.open_memory_channel[str](EVENT_QUEUE)

    def worker_count(self) -> int:
        """Workers to start: as configured, else one per core."""
        return self.config.workers or os.cpu_count() or 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers, keep the control link up; ``started`` once registered."""
        async with trio.open_nursery() as nursery:
            for index in range(self.worker_count()):
                handle = await nursery.start(self._run_worker, index)
                self.workers.append(handle)
            nursery.start_soon(self._link_forever)
            nursery.start_soon(self._close_orphaned_copies)
            await self.registered.wait()
            task_status.started()

    async def _run_worker(
        self, index: int, *, task_status: trio.TaskStatus[WorkerHandle] = trio.TASK_STATUS_IGNORED
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "sfu.worker",
            "--listen-ip",
            self.config.listen_ip,
            "--announce-ip",
            self.config.resolved_announce_ip,
            "--consent-timeout",
            str(self.config.consent_timeout),
            "--max-incoming-bitrate",
            str(self.config.max_incoming_bitrate),
        ]
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    check=False,
                )
            )
            assert process.stdout is not None
            with trio.fail_after(WORKER_START_TIMEOUT_S):
                line = await _read_line(process.stdout)
            ready = json.loads(line)
            handle = WorkerHandle(index, process, int(ready["port"]))
            nursery.start_soon(self._read_worker, handle)
            task_status.started(handle)
            await process.wait()
            raise WorkerDied(f"worker {index} exited with status {process.returncode}")

    async def _read_worker(self, handle: WorkerHandle) -> None:
        """Replies go to their waiting requests, events to the control link."""
        assert handle.process.stdout is not None
        decoder = FrameDecoder()
        while chunk := await handle.process.stdout.receive_some(65536):
            try:
                frames = decoder.feed_untrusted(chunk)
            except FrameError:
                log.error("worker %d sent an undecodable frame", handle.index)
                return
            for frame in frames:
                event, data = frame.get("event"), frame.get("data")
                if isinstance(event, str) and isinstance(data, dict):
                    self._on_worker_event(handle, event, data)
                else:
                    handle.deliver_reply(frame)

    def _on_worker_event(self, handle: WorkerHandle, event: str, data: dict[str, Any]) -> None:
        if event == "transport.closed":
            self._forget_transport(str(data.get("transport_id")))
        router_id = data.get("router_id")
        channel = self._channels.get(router_id) if isinstance(router_id, str) else None
        if channel is not None and len(channel.routers) > 1:
            # Every router of a spread channel holds every producer: relay one report per
            # producer, under the router control knows. The speaker as the home router sees
            # it; voice activity as the producer's own router (where it arrives) sees it.
            if event == "speaker" and router_id != channel.home:
                return
            if event == "voice" and self._origin_router(data.get("producer_id")) != router_id:
                return
            data = {**data, "router_id": channel.home}
        data = {**data, "worker": handle.index}
        try:
            self._events_in.send_nowait((event, data))
        except trio.WouldBlock:
            log.warning("control link is not draining events; dropped a %s event", event)

    # -- routing control's requests ------------------------------------------------------

    def _owner(
        self, table: dict[str, tuple[WorkerHandle, str]], params: dict[str, Any], key: str
    ) -> WorkerHandle:
        value = params.get(key)
        if not isinstance(value, str):
            raise BadParams(f"{key!r} must be a string")
        entry = table.get(value)
        if entry is None:
            raise NotFound(f"no such {key.removesuffix('_id')}")
        return entry[0]

    def _origin_router(self, producer_id: object) -> str | None:
        """The router of the transport that publishes ``producer_id`` (not a copy's)."""
        entry = self._producers.get(producer_id) if isinstance(producer_id, str) else None
        transport = self._transports.get(entry[1]) if entry is not None else None
        return transport[1] if transport is not None else None

    def _forget_transport(self, transport_id: str) -> None:
        self._transports.pop(transport_id, None)
        for table in (self._producers, self._consumers):
            for key in [k for k, (_, t) in table.items() if t == transport_id]:
                del table[key]
                if key in self._piped:
                    try:
                        self._orphans_in.send_nowait(key)
                    except trio.WouldBlock:
                        log.warning("too many piped producers to close at once; one is left")

    async def _close_orphaned_copies(self) -> None:
        """Close the piped copies of producers whose transport closed (left or timed out)."""
        async for producer_id in self._orphans_out:
            await self._close_copies(producer_id)

    async def _close_copies(self, producer_id: str) -> None:
        for copy in self._piped.pop(producer_id, {}).values():
            with contextlib.suppress(RpcError):
                await copy.request("producer.close", {"producer_id": producer_id})

    def _load(self, worker: WorkerHandle) -> tuple[int, int, int]:
        """Placement order for a new router: fewest transports (participants), then fewest
        routers, then lowest index."""
        transports = sum(1 for owner, _ in self._transports.values() if owner is worker)
        return transports, worker.routers, worker.index

    async def handle_request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Answer one request from control by routing it to the owning worker."""
        if method == "stats":
            return {"workers": [await w.request("stats", {}) for w in self.workers]}
        if method == "router.create":
            worker = min(self.workers, key=self._load)
            home = await self._create_router(worker)
            self._channels[home] = ChannelRouters(home, {worker.index: home})
            return {"router_id": home}
        if method == "router.close":
            router_id = params.get("router_id")
            channel = self._channels.get(router_id) if isinstance(router_id, str) else None
            if channel is None or channel.home != router_id:
                raise NotFound("no such router")
            # The copies in the other routers go with them; the home router goes last, so
            # a failure on the way leaves the channel closable again by the same request.
            for other in [r for r in channel.routers.values() if r != channel.home]:
                with contextlib.suppress(RpcError):
                    await self._close_router(other)
            return await self._close_router(channel.home)
        if method == "transport.create":
            router_id = params.get("router_id")
            channel = self._channels.get(router_id) if isinstance(router_id, str) else None
            if channel is None or channel.home != router_id:
                raise NotFound("no such router")
            placed = await self._place_transport(channel, params.get("near"))
            owner = self._routers[placed]
            result = await owner.request(method, {"router_id": placed})
            self._transports[str(result["transport_id"])] = (owner, placed)
            return result
        if method.startswith("transport.") or method in ("producer.create", "consumer.create"):
            worker = self._owner(self._transports, params, "transport_id")
            result = await worker.request(method, params)
            transport_id = str(params["transport_id"])
            if method == "transport.close":
                self._forget_transport(transport_id)
            created = [str(producer["producer_id"]) for producer in result.get("producers", [])]
            if method == "producer.create":
                created.append(str(result["producer_id"]))
            for producer_id in created:
                self._producers[producer_id] = (worker, transport_id)
            if created:
                # Before the reply: once control hears of a producer, every router of the
                # channel can be asked for consumers of it.
                await self._spread_producers(transport_id, created)
            if method == "consumer.create":
                self._consumers[str(result["consumer_id"])] = (worker, transport_id)
            if method == "transport.consume":
                for consumer_id in params.get("close", []):
                    self._consumers.pop(consumer_id, None)
                for consumer in result.get("consumers", []):
                    self._consumers[str(consumer["consumer_id"])] = (worker, transport_id)
            return result
        if method == "producer.pipe":
            return await self._pipe_producer(params)
        if method.startswith("producer."):
            worker = self._owner(self._producers, params, "producer_id")
            result = await worker.request(method, params)
            if method == "producer.close":
                producer_id = str(params["producer_id"])
                self._producers.pop(producer_id, None)
                await self._close_copies(producer_id)
            return result
        if method.startswith("consumer."):
            worker = self._owner(self._consumers, params, "consumer_id")
            result = await worker.request(method, params)
            if method == "consumer.close":
                self._consumers.pop(str(params["consumer_id"]), None)
            return result
        raise BadParams(f"unknown method {method!r}")

    async def _create_router(self, worker: WorkerHandle) -> str:
        result = await worker.request("router.create", {})
        router_id = str(result["router_id"])
        self._routers[router_id] = worker
        worker.routers += 1
        return router_id

    async def _close_router(self, router_id: str) -> dict[str, Any]:
        owner = self._routers[router_id]
        result = await owner.request("router.close", {"router_id": router_id})
        del self._routers[router_id]
        owner.routers -= 1
        channel = self._channels.pop(router_id, None)
        if channel is not None:
            channel.routers.pop(owner.index, None)
        for pair in [pair for pair in self._pipes if router_id in pair]:
            del self._pipes[pair]
        for copies in self._piped.values():
            copies.pop(router_id, None)
        for transport_id in [t for t, (_, r) in self._transports.items() if r == router_id]:
            self._forget_transport(transport_id)
        return result

    async def _place_transport(self, channel: ChannelRouters, near: object) -> str:
        """The router of ``channel`` a new transport goes in: next to the transport ``near``
        names (a participant's other transport: its media stays on one worker) if that is
        the channel's; the home router until the channel holds ``spread_above``
        transports; then the router on the worker with the fewest transports (made there,
        with every producer of the channel piped in, if the channel has none yet)."""
        beside = self._transports.get(near) if isinstance(near, str) else None
        if beside is not None and self._channels.get(beside[1]) is channel:
            return beside[1]
        held = sum(1 for _, r in self._transports.values() if self._channels.get(r) is channel)
        if len(self.workers) == 1 or held < self.config.spread_above:
            return channel.home
        worker = min(
            self.workers, key=lambda w: (self._load(w)[0], w.index not in channel.routers, w.index)
        )
        if worker.index in channel.routers:
            return channel.routers[worker.index]
        async with channel.lock:
            if worker.index not in channel.routers:
                router_id = await self._create_router(worker)
                channel.routers[worker.index] = router_id
                self._channels[router_id] = channel
                for producer_id, (_, transport_id) in list(self._producers.items()):
                    if self._channels.get(self._transports[transport_id][1]) is channel:
                        with contextlib.suppress(RpcError):
                            await self._pipe(producer_id, router_id)
            return channel.routers[worker.index]

    async def _spread_producers(self, transport_id: str, producer_ids: list[str]) -> None:
        """Pipe new producers of a spread channel into the channel's other routers."""
        source_router = self._transports[transport_id][1]
        channel = self._channels.get(source_router)
        if channel is None or len(channel.routers) == 1:
            return
        async with channel.lock:
            for router_id in list(channel.routers.values()):
                if router_id == source_router:
                    continue
                for producer_id in producer_ids:
                    # Closed meanwhile (its transport left): nothing to copy.
                    with contextlib.suppress(RpcError):
                        await self._pipe(producer_id, router_id)

    async def _pipe_producer(self, params: dict[str, Any]) -> dict[str, Any]:
        """``producer.pipe {producer_id, router_id}``: make a producer consumable in a router
        on another worker of this node (so one channel can span cores). Afterwards
        ``consumer.create`` in that router takes the same producer id."""
        producer_id, router_id = params.get("producer_id"), params.get("router_id")
        if not isinstance(producer_id, str) or not isinstance(router_id, str):
            raise BadParams("'producer_id' and 'router_id' must be strings")
        await self._pipe(producer_id, router_id)
        return {"producer_id": producer_id, "router_id": router_id}

    async def _pipe(self, producer_id: str, router_id: str) -> None:
        """Copy ``producer_id`` into ``router_id`` (once: a second copy is a no-op)."""
        if router_id in self._piped.get(producer_id, {}):
            return
        source_entry = self._producers.get(producer_id)
        target = self._routers.get(router_id)
        if source_entry is None or target is None:
            raise NotFound("no such producer or router")
        source, transport_id = source_entry
        source_router = self._transports[transport_id][1]
        if source is target:
            raise BadParams("router is on the producer's worker: consume directly")
        pair = self._pipes.get((source_router, router_id))
        if pair is None:
            there = await source.request("pipe.create", {"router_id": source_router})
            here = await target.request("pipe.create", {"router_id": router_id})
            await source.request(
                "pipe.connect",
                {"pipe_id": there["pipe_id"], "ip": here["ip"], "port": here["port"]},
            )
            await target.request(
                "pipe.connect",
                {"pipe_id": here["pipe_id"], "ip": there["ip"], "port": there["port"]},
            )
            pair = (str(there["pipe_id"]), str(here["pipe_id"]))
            self._pipes[(source_router, router_id)] = pair
        description = await source.request(
            "pipe.consume", {"pipe_id": pair[0], "producer_id": producer_id}
        )
        await target.request(
            "pipe.produce", {**description, "pipe_id": pair[1], "producer_id": producer_id}
        )
        self._piped.setdefault(producer_id, {})[router_id] = target

    async def _answer(self, ws: trio_websocket.WebSocketConnection, frame: dict[Any, Any]) -> None:
        try:
            request_id, method, params = node_link.decode_request_untrusted(frame)
        except node_link.LinkProtocolError as exc:
            log.warning("malformed request from control: %s", exc)
            return
        try:
            reply = node_link.encode_reply(
                request_id, result=await self.handle_request(method, params)
            )
        except RpcError as exc:
            reply = node_link.encode_reply(request_id, error=(exc.code, str(exc)))
        except (KeyError, TypeError, ValueError) as exc:
            reply = node_link.encode_reply(request_id, error=(BadParams.code, str(exc)))
        await ws.send_message(reply)

    async def _link_forever(self) -> None:
        delay = RECONNECT_MIN_S
        while True:
            # The link's tasks run in a nursery, so a failure arrives wrapped in an
            # exception group (trio's strict groups); except* sees through it.
            try:
                await self._link_once()
            except* (
                OSError,
                trio_websocket.HandshakeError,
                trio_websocket.ConnectionClosed,
                node_link.LinkProtocolError,
            ) as group:
                names = ", ".join(type(exc).__name__ for exc in group.exceptions)
                log.warning("control link down (%s); retrying in %.1f s", names, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _link_once(self) -> None:
        async with trio_websocket.open_websocket_url(
            self.config.control_url, max_message_size=node_link.MAX_FRAME_BYTES
        ) as ws:
            event, data = node_link.decode_frame_untrusted(await ws.get_message())
            challenge = data.get("challenge")
            if event != "hello" or not isinstance(challenge, bytes):
                raise node_link.LinkProtocolError("expected hello with a challenge")
            await ws.send_message(
                node_link.encode_frame(
                    "register",
                    {
                        "node_id": self.node_id,
                        "announce_ip": self.config.resolved_announce_ip,
                        "workers": [w.health() for w in self.workers],
                        "capacity": {"workers": len(self.workers)},
                        "proof": node_link.prove(self.secret, challenge, self.node_id),
                    },
                )
            )
            event, _ = node_link.decode_frame_untrusted(await ws.get_message())
            if event != "registered":
                raise node_link.LinkProtocolError("registration not acknowledged")
            if not self.registered.is_set():
                log.info("registered with control as node %s", self.node_id)
                self.registered.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_health, ws)
                nursery.start_soon(self._report_stats, ws)
                nursery.start_soon(self._relay_events, ws)
                while True:
                    frame = node_link.decode_message_untrusted(await ws.get_message())
                    if "method" in frame:
                        nursery.start_soon(self._answer, ws, frame)

    async def _report_health(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            health = [w.health() for w in self.workers]
            await ws.send_message(node_link.encode_frame("health", {"workers": health}))
            await trio.sleep(node_link.HEALTH_INTERVAL_S)

    async def _relay_events(self, ws: trio_websocket.WebSocketConnection) -> None:
        async for event, data in self._events_out:
            await ws.send_message(node_link.encode_frame(event, data))

    async def _report_stats(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            await trio.sleep(STATS_INTERVAL_S)
            await ws.send_message(node_link.encode_frame("stats", await self.stats()))

    async def stats(self) -> dict[str, Any]:
        """Per-worker rates since the previous call: packets/s and bytes/s in and out,
        loss, CPU (percent of one core) and RSS."""
        now = trio.current_time()
        workers = []
        for worker in self.workers:
            current = await worker.request("stats", {})
            before_time, before = self._last_stats.get(worker.index, (now, current))
            self._last_stats[worker.index] = (now, current)
            elapsed = max(now - before_time, 1e-9)
            rate = {
                key: (current[key] - before[key]) / elapsed if before is not current else 0.0
                for key in ("packets_in", "packets_out", "bytes_in", "bytes_out", "cpu_s")
            }
            expected = current["packets_expected"] - before["packets_expected"]
            lost = current["packets_lost"] - before["packets_lost"]
            workers.append(
                {
                    "index": worker.index,
                    "routers": current["routers"],
                    "transports": current["transports"],
                    "packets_in_per_s": rate["packets_in"],
                    "packets_out_per_s": rate["packets_out"],
                    "bytes_in_per_s": rate["bytes_in"],
                    "bytes_out_per_s": rate["bytes_out"],
                    "loss": lost / expected if expected > 0 else 0.0,
                    "cpu_percent": 100.0 * rate["cpu_s"],
                    "rss_bytes": current["rss_bytes"],
                }
            )
        return {"workers": workers}


async def _read_line(stream: trio.abc.ReceiveStream, limit: int = 4096) -> bytes:
    """Read one newline-terminated line from a pipe, byte by byte (used once per worker)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            raise WorkerDied("worker closed its stdout before reporting ready")
        line += chunk
        if len(line) > limit:
            raise WorkerDied("worker start-up line too long")
    return bytes(line)
