"""Benchmark one SFU worker: synthetic SRTP publishers and subscribers on loopback.

Starts ``python -m sfu.worker`` (one process, one core's worth of forwarding), connects
``--publishers`` and ``--subscribers`` synthetic peers (real ICE checks, DTLS handshakes and
SRTP, via :mod:`sfu.synthetic_peer`), has every subscriber consume every publisher, then
sends ``--rate`` packets/s per publisher for ``--seconds`` and counts what arrives.

Figures: ``forwarded_pps`` (packets per second arriving at subscribers), ``loss_pct``
(forwarded packets that never arrived), ``latency_p99_ms`` (send → receive on loopback,
which bounds what the SFU adds; sampled on one packet in ``--sample``), and
``cpu_s_per_1k_packets`` (worker CPU seconds per 1,000 forwarded packets). The load
generator runs in two other processes (sender, receiver), so on a small machine they
compete with the worker for cores: read the figures as a floor.

The load generator must not be what is measured, so:

- latency ends at the kernel's receive timestamp of the datagram (``SO_TIMESTAMPNS``), not
  when the receiver process gets round to reading it: the receiver shares a core with the
  sender, and its own scheduling delay is not the SFU's. It starts at a ``CLOCK_REALTIME``
  stamp (the clock of those timestamps) taken as the packet is built. ``receiver_lag_p99_ms``
  says how much reading time instead would have added;
- loss is split by where it happened, from the kernel's per-socket drop counters
  (``/proc/net/udp``): ``worker_socket_drops`` (the worker did not read its input fast
  enough) and ``subscriber_socket_drops`` (the bench's receiver did not: that run says
  nothing about the SFU);
- ``sender_cpu_percent`` and ``receiver_cpu_percent`` show how close the generator came
  to its core, and with ``--pin`` ``worker_core_busy_percent`` and ``worker_core_steal_percent``
  how busy the worker's core was in all (the worker, the kernel's network processing, other
  jobs) and how much of it the hypervisor took: on a shared machine a run whose core was
  busy well beyond ``worker_cpu_percent`` measured the neighbours too.

``--worker-tree DIR`` runs the worker from another checkout with this load generator, so
two versions of the worker can be compared in one session.

``--in-process`` measures the forwarding core alone: the worker's sans-I/O core in this
process, fed pre-encrypted packets as fast as it takes them, sending real datagrams to a
loopback sink socket through the worker's batched sender (:mod:`sfu.udp`). No generator
competes for the core, so ``forwarded_pps`` is what one core sustains (CPU time, kernel
``sendmmsg`` included); loss and latency do not apply.

Usage: ``python bench/sfu_bench.py [--in-process] [--json]``; with ``--json`` the last line
is one JSON object with those keys.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from sfu.channel import FrameDecoder, encode_frame
from sfu.dtls import Certificate
from sfu.errors import SrtpError
from sfu.rtp import ABS_SEND_TIME, AUDIO_LEVEL, HEADER
from sfu.synthetic_peer import SyntheticPeer
from sfu.udp import UdpSender
from sfu.worker import Worker

_STAMP = struct.Struct("!Q")
# Publishers send what browsers send with audio: the audio level (id 1) and abs-send-time
# (id 2, read by the SFU's bandwidth estimator), in one one-byte-header block of 8 bytes.
_EXTENSIONS = {"1": AUDIO_LEVEL, "2": ABS_SEND_TIME}
# Without abs-send-time (``--no-abs-send-time``): the audio level alone, no estimator runs.
_LEVEL_ONLY = {"1": AUDIO_LEVEL}


def extension_block(abs_send_time: bool, now_s: float) -> bytes:
    """The header-extension block of one published packet (RFC 8285 one-byte form)."""
    if not abs_send_time:
        return b"\xbe\xde\x00\x01\x10\xa0\x00\x00"
    sent = int(now_s * (1 << 18)) & 0xFFFFFF  # 6.18 fixed-point seconds, 24 bits
    return b"\xbe\xde\x00\x02\x10\xa0\x22" + sent.to_bytes(3, "big") + b"\x00\x00"


# Linux's SO_TIMESTAMPNS (asm-generic/socket.h; not exported by the socket module): each
# datagram carries the CLOCK_REALTIME time the kernel queued it, as struct timespec.
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("=qq")
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


class WorkerProcess:
    """``python -m sfu.worker`` (from ``tree``) and the request channel on its stdin/stdout."""

    def __init__(self, tree: Path) -> None:
        environment = dict(os.environ, PYTHONPATH=str(tree))
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "sfu.worker", "--listen-ip", "127.0.0.1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=tree,
            env=environment,
        )
        assert self.popen.stdout is not None
        self.port = int(json.loads(self.popen.stdout.readline())["port"])
        self.decoder = FrameDecoder()
        self.ids = 0
        self.pending: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.ids += 1
        self.popen.stdin.write(encode_frame({"id": self.ids, "method": method, "params": params}))
        self.popen.stdin.flush()
        while True:
            for frame in self.pending:
                if frame.get("id") == self.ids:
                    self.pending.remove(frame)
                    if "error" in frame:
                        raise RuntimeError(f"{method}: {frame['error']}")
                    result: dict[str, Any] = frame["result"]
                    return result
            chunk = os.read(self.popen.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError("worker exited")
            self.pending.extend(self.decoder.feed_untrusted(chunk))

    def close(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()
        self.popen.wait(10)


def connect(worker: WorkerProcess, router_id: str, certificate: Certificate) -> tuple[Any, ...]:
    """Create a transport and bring a synthetic peer up on it over a real UDP socket."""
    created = worker.call("transport.create", router_id=router_id)
    peer = SyntheticPeer(created, certificate)
    worker.call(
        "transport.connect",
        transport_id=created["transport_id"],
        dtls_parameters=peer.dtls_parameters(),
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    target = peer.remote_address
    sock.sendto(peer.binding_request(), target)
    for datagram in peer.start_dtls(time.monotonic()):
        sock.sendto(datagram, target)
    while not peer.connected:
        data, _ = sock.recvfrom(2048)
        for reply in peer.receive(data, time.monotonic()):
            sock.sendto(reply, target)
    return created["transport_id"], peer, sock


def send_load(
    publishers: list[tuple[Any, ...]], rate: int, seconds: float, size: int, abs_send_time: bool
) -> int:
    """Sender process body: every publisher sends ``rate`` packets/s; returns packets sent."""
    payload_pad = bytes(max(0, size - _STAMP.size))
    sent = 0
    seq = [0] * len(publishers)
    per_publisher = 0
    start = time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        # Catch up to where the clock says we should be; bursts stay small (5 ms of load).
        due = int(rate * (now - start)) - per_publisher
        for index, (_, peer, sock, ssrc) in enumerate(publishers):
            for _ in range(due):
                s = seq[index] = (seq[index] + 1) & 0xFFFF
                header = HEADER.pack(0x90, 111, s, s * 960 & 0xFFFFFFFF, ssrc)
                packet = (
                    header
                    + extension_block(abs_send_time, time.monotonic())
                    + _STAMP.pack(time.time_ns())
                    + payload_pad
                )
                sock.sendto(peer.protect(packet), peer.remote_address)
                sent += 1
        per_publisher += due
        time.sleep(0.005)
    return sent


def receive_load(
    subscribers: list[tuple[Any, ...]], seconds: float, sample: int
) -> tuple[int, list[float], list[float]]:
    """Receiver body: count datagrams on every subscriber socket; decrypt one in ``sample``
    for its send stamp, and take its latency up to the kernel's arrival timestamp. Also
    returns, for the same datagrams, how long they waited for this process to read them."""
    import selectors

    selector = selectors.DefaultSelector()
    for sub in subscribers:
        sub[2].setblocking(False)
        sub[2].setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        selector.register(sub[2], selectors.EVENT_READ, sub[1])
    received = 0
    latencies: list[float] = []
    lags: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in selector.select(0.1):
            recvmsg = key.fileobj.recvmsg  # type: ignore[union-attr]
            peer = key.data
            while True:
                try:
                    data, ancillary, _, _ = recvmsg(2048, _CMSG_SPACE)
                except BlockingIOError:
                    break
                if data[1] >= 192:
                    continue  # RTCP (sender reports), not forwarded media
                received += 1
                if received % sample or not ancillary:
                    continue
                try:
                    clear = peer.srtp.unprotect_untrusted(data)
                except SrtpError:
                    continue
                seconds_part, nanoseconds = _TIMESPEC.unpack_from(ancillary[0][2])
                arrival = seconds_part * 1_000_000_000 + nanoseconds
                latencies.append((arrival - _STAMP.unpack_from(clear, 20)[0]) / 1e6)
                lags.append((time.time_ns() - arrival) / 1e6)
    return received, latencies, lags


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[int(fraction * (len(ordered) - 1))]


def socket_drops(ports: set[int]) -> dict[int, int]:
    """The kernel's count of datagrams dropped at each of these local UDP ports (receive
    buffer full), from the last column of ``/proc/net/udp``; empty where it is missing."""
    drops: dict[int, int] = {}
    try:
        with open("/proc/net/udp") as table:
            next(table)
            for line in table:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port in ports:
                    drops[port] = drops.get(port, 0) + int(fields[-1])
    except OSError:
        pass
    return drops


def core_times(core: int) -> tuple[int, int, int]:
    """``(total, idle, steal)`` clock ticks of one CPU so far, from ``/proc/stat``."""
    with open("/proc/stat") as table:
        for line in table:
            name, *fields = line.split()
            if name == f"cpu{core}":
                ticks = [int(field) for field in fields]
                # user nice system idle iowait irq softirq steal (guest time is in user)
                return sum(ticks[:8]), ticks[3] + ticks[4], ticks[7]
    raise LookupError(f"no cpu{core} in /proc/stat")


def in_process(args: argparse.Namespace) -> dict[str, Any]:
    """Drive a :class:`sfu.worker.Worker` core directly; see the module docstring."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)
    target = sink.getsockname()
    peers: dict[tuple[str, int], SyntheticPeer] = {}
    handshake: list[tuple[bytes, tuple[str, int]]] = []
    forwarding = False

    # The worker's own batched sender (sendmmsg); the sink is not read, so a full buffer
    # drops, as on a real network.
    sender = UdpSender(out)
    send_batched = sender.send

    def send(data: bytes, address: tuple[str, int]) -> None:
        if forwarding:
            send_batched(data, target)
        else:
            handshake.append((data, address))

    def send_rtp(
        srtp: Any,
        first: int,
        second: int,
        seq: int,
        ts: int,
        ssrc: int,
        tail: bytes,
        address: tuple[str, int],
    ) -> None:
        sender.send_rtp(srtp, first, second, seq, ts, ssrc, tail, target)

    worker = Worker("127.0.0.1", 40000, send, lambda event, data: None, send_rtp=send_rtp)
    certificate = Certificate.generate()
    router_id = worker.handle_request("router.create", {}, 0.0)["router_id"]

    def join(port: int) -> tuple[str, SyntheticPeer]:
        created = worker.handle_request("transport.create", {"router_id": router_id}, 0.0)
        peer = SyntheticPeer(created, certificate)
        address = ("127.0.0.1", port)
        peers[address] = peer
        worker.handle_request(
            "transport.connect",
            {"transport_id": created["transport_id"], "dtls_parameters": peer.dtls_parameters()},
            0.0,
        )
        worker.datagram_received(peer.binding_request(), address, 0.0)
        for datagram in peer.start_dtls(0.0):
            worker.datagram_received(datagram, address, 0.0)
        while handshake:
            data, to = handshake.pop(0)
            for reply in peers[to].receive(data, 0.0):
                worker.datagram_received(reply, to, 0.0)
        return created["transport_id"], peer

    publishers = []
    for index in range(args.publishers):
        transport_id, peer = join(20000 + index)
        producer = worker.handle_request(
            "producer.create",
            {
                "transport_id": transport_id,
                "kind": "audio",
                "payload_type": 111,
                "ssrcs": {str(1000 + index): 0},
                "extensions": _EXTENSIONS if args.abs_send_time else _LEVEL_ONLY,
            },
            0.0,
        )
        publishers.append(
            (producer["producer_id"], peer, ("127.0.0.1", 20000 + index), 1000 + index)
        )
    for index in range(args.subscribers):
        transport_id, _ = join(30000 + index)
        for producer_id, *_ in publishers:
            worker.handle_request(
                "consumer.create", {"transport_id": transport_id, "producer_id": producer_id}, 0.0
            )
    handshake.clear()
    count = max(1, int(args.rate * args.seconds))
    pad = bytes(max(0, args.size - _STAMP.size))
    batch = []
    for seq in range(1, count + 1):
        for _, peer, address, ssrc in publishers:
            header = HEADER.pack(0x90, 111, seq & 0xFFFF, seq * 960 & 0xFFFFFFFF, ssrc)
            packet = header + extension_block(args.abs_send_time, seq * 0.02) + bytes(8) + pad
            batch.append((peer.protect(packet), address))
    forwarding = True
    receive = worker.datagram_received
    started = time.process_time()
    sender.start_batch()  # as one long drain of the worker's socket
    for data, address in batch:
        receive(data, address, 1.0)
    sender.close_batch()
    cpu = time.process_time() - started
    forwarded = sum(r.packets_out for r in worker.routers.values())
    return {
        "mode": "in-process",
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "forwarded_packets": forwarded,
        "forwarded_pps": round(forwarded / cpu),
        "loss_pct": None,
        "latency_p99_ms": None,
        "cpu_s_per_1k_packets": round(1000 * cpu / max(forwarded, 1), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publishers", type=int, default=10)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--rate", type=int, default=1000, help="packets/s per publisher")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=120, help="payload bytes")
    parser.add_argument("--sample", type=int, default=50, help="decrypt 1 in N for latency")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--no-abs-send-time",
        dest="abs_send_time",
        action="store_false",
        help="publish without abs-send-time (no bandwidth estimator runs in the worker)",
    )
    parser.add_argument("--in-process", action="store_true", help="forwarding core alone")
    parser.add_argument(
        "--pin", action="store_true", help="pin the worker to one core, the load to the others"
    )
    parser.add_argument(
        "--worker-tree",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="checkout whose sfu package the worker runs (default: this one)",
    )
    args = parser.parse_args()
    if args.in_process:
        figures = in_process(args)
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            print(f"{key:<{width}}  {value}")
        if args.json:
            print(json.dumps(figures))
        return 0

    worker = WorkerProcess(args.worker_tree.resolve())
    certificate = Certificate.generate()
    router_id = worker.call("router.create")["router_id"]
    publishers = []
    for index in range(args.publishers):
        transport_id, peer, sock = connect(worker, router_id, certificate)
        ssrc = 1000 + index
        producer = worker.call(
            "producer.create",
            transport_id=transport_id,
            kind="audio",
            payload_type=111,
            ssrcs={str(ssrc): 0},
            extensions=_EXTENSIONS if args.abs_send_time else _LEVEL_ONLY,
        )
        publishers.append((producer["producer_id"], peer, sock, ssrc))
    subscribers = []
    for _ in range(args.subscribers):
        transport_id, peer, sock = connect(worker, router_id, certificate)
        for producer_id, *_ in publishers:
            worker.call("consumer.create", transport_id=transport_id, producer_id=producer_id)
        subscribers.append((transport_id, peer, sock))

    process = psutil.Process(worker.popen.pid)
    cores = sorted(os.sched_getaffinity(0))
    pinned = args.pin and len(cores) >= 2
    if pinned:
        # The worker gets a core to itself; sender and receiver share the rest.
        os.sched_setaffinity(worker.popen.pid, {cores[0]})
        os.sched_setaffinity(0, set(cores[1:]))
    subscriber_ports = {sub[2].getsockname()[1] for sub in subscribers}
    ports = subscriber_ports | {worker.port}
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        time.sleep(0.5)  # let the receiver start listening first
        sender_cpu = time.process_time()
        sender_started = time.monotonic()
        sent = send_load(publishers, args.rate, args.seconds, args.size, args.abs_send_time)
        sender_share = (time.process_time() - sender_cpu) / (time.monotonic() - sender_started)
        os.write(write_end, json.dumps([sent, sender_share]).encode())
        os._exit(0)
    os.close(write_end)
    drops_before = socket_drops(ports)
    core_before = core_times(cores[0])
    cpu_before = process.cpu_times()
    receiver_cpu = time.process_time()
    started = time.monotonic()
    received, latencies, lags = receive_load(subscribers, args.seconds + 1.5, args.sample)
    elapsed = time.monotonic() - started
    receiver_cpu = time.process_time() - receiver_cpu
    cpu_after = process.cpu_times()
    core_after = core_times(cores[0])
    drops_after = socket_drops(ports)
    os.waitpid(child, 0)
    sent, sender_share = json.loads(os.read(read_end, 64))
    worker.close()
    drops = {port: drops_after.get(port, 0) - drops_before.get(port, 0) for port in ports}

    expected = sent * args.subscribers
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    latencies.sort()
    p99 = percentile(latencies, 0.99) if latencies else float("nan")
    figures = {
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "offered_pps": round(expected / args.seconds),
        "forwarded_pps": round(received / args.seconds),
        "loss_pct": round(100.0 * max(0, expected - received) / max(expected, 1), 3),
        "latency_p50_ms": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "latency_p99_ms": round(p99, 3),
        # What reading time instead of arrival time would have added (the old measure).
        "receiver_lag_p99_ms": round(percentile(lags, 0.99), 3) if lags else None,
        "cpu_s_per_1k_packets": round(1000 * cpu / max(received, 1), 4),
        "worker_cpu_percent": round(100 * cpu / elapsed, 1),
        "worker_socket_drops": drops[worker.port],
        "subscriber_socket_drops": sum(drops[port] for port in subscriber_ports),
        "sender_cpu_percent": round(100 * sender_share, 1),
        "receiver_cpu_percent": round(100 * receiver_cpu / elapsed, 1),
    }
    if pinned:
        total, idle, steal = (
            after - before for after, before in zip(core_after, core_before, strict=True)
        )
        figures["worker_core_busy_percent"] = round(100 * (total - idle) / max(total, 1), 1)
        figures["worker_core_steal_percent"] = round(100 * steal / max(total, 1), 1)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
