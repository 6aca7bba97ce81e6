"""Relayed packets/s and round-trip p99 through hushroom's TURN server and through coturn.

Both servers run on this machine in the same run, on loopback, under the same load:

* echo peer: coturn's ``turnutils_peer`` (C, so the peer is never the bottleneck);
* load: ``--clients`` TURN clients in this process, each with an allocation and a channel
  bound to the peer, sending ``--size``-byte ChannelData packets at a paced rate; every packet
  carries its send time, the peer echoes it back through the relay, and the client records
  the round trip. One round trip = two relayed packets (client->peer, peer->client).

Throughput is the highest offered rate, on a ladder growing by ``--step`` from ``--start``,
at which every packet came back (0 % loss); the ladder stops at the first loss or when the
load generator itself cannot keep the pace (then the figure is a lower bound, flagged so).
p99 is measured at a fixed moderate rate (``--p99-rate``). Each server is measured
``--runs`` times, alternating, and medians are reported with the ratio ours/coturn.

    .venv/bin/python bench/turn_bench.py --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from turn.auth import rest_password, rest_username
from turn.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    decode_error_code_untrusted,
    encode_xor_address,
    long_term_key,
    new_transaction_id,
    parse_message_untrusted,
)

SECRET = "bench-secret"
REALM = "bench.hushroom"
CHANNEL = 0x4000
_STAMP = struct.Struct("!QQ")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A loopback port free for both UDP and TCP right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port")


def wait_udp_stun(port: int, timeout: float = 10.0) -> None:
    """Wait until a STUN Binding on ``port`` is answered."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(
                Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id()).serialize(),
                ("127.0.0.1", port),
            )
            try:
                s.recv(2048)
                return
            except OSError:
                continue
    raise RuntimeError(f"nothing answers STUN on {port}")


@contextlib.contextmanager
def process(
    args: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a helper process and stop it afterwards."""
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def ours(port: int, workers: int) -> Iterator[None]:
    """hushroom's ``python -m turn`` on ``port`` with ``workers`` processes."""
    args = [sys.executable, "-m", "turn", "--listen", f"127.0.0.1:{port}", "--realm", REALM]
    args += ["--workers", str(workers)]
    args += ["--allow-loopback-peers", "--bandwidth", "0", "--max-allocations-per-user", "1000"]
    args += ["--relay-ports", "40000-44999", "--log-level", "warning"]
    with process(args, {"HUSHROOM_TURN_SECRET": SECRET}):
        wait_udp_stun(port)
        yield


@contextlib.contextmanager
def coturn(port: int, workers: int) -> Iterator[None]:
    """coturn's ``turnserver`` on ``port`` with a temporary configuration.

    ``workers`` is ignored: coturn picks its relay threads itself (one per CPU).
    """
    binary = shutil.which("turnserver")
    if binary is None:
        raise SystemExit("turnserver not found: apt-get install coturn")
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "turnserver.conf"
        conf.write_text(
            "\n".join(
                [
                    "listening-ip=127.0.0.1",
                    f"listening-port={port}",
                    "relay-ip=127.0.0.1",
                    "min-port=45000",
                    "max-port=49999",
                    "use-auth-secret",
                    f"static-auth-secret={SECRET}",
                    f"realm={REALM}",
                    "allow-loopback-peers",
                    "no-cli",
                    "no-tls",
                    "no-dtls",
                    "no-tcp-relay",
                    "no-stdout-log",
                    f"log-file={tmp}/turn.log",
                    f"pidfile={tmp}/turn.pid",
                    f"userdb={tmp}/turndb",
                    "",
                ]
            )
        )
        with process([binary, "-c", str(conf)]):
            wait_udp_stun(port)
            yield


class Client:
    """One TURN client: allocation plus a channel bound to the echo peer."""

    def __init__(self, server: tuple[str, int], peer: tuple[str, int], session: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)
        self.server = server
        self.username = rest_username(int(time.time()) + 7200, session)
        self.key = long_term_key(
            self.username, REALM, rest_password(SECRET.encode(), self.username)
        )
        self.nonce = b""
        self._request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00")])
        tid = new_transaction_id()
        self._request(
            Method.CHANNEL_BIND,
            [
                (Attr.CHANNEL_NUMBER, CHANNEL.to_bytes(2, "big") + b"\x00\x00"),
                (Attr.XOR_PEER_ADDRESS, encode_xor_address(peer[0], peer[1], tid)),
            ],
            tid,
        )
        self.sock.setblocking(False)

    def _request(
        self, method: int, attrs: list[tuple[int, bytes]], tid: bytes | None = None
    ) -> None:
        for _ in range(4):
            msg = Message(method, MessageClass.REQUEST, tid or new_transaction_id(), list(attrs))
            if self.nonce:
                msg.add(Attr.USERNAME, self.username.encode()).add(Attr.REALM, REALM.encode())
                msg.add(Attr.NONCE, self.nonce)
                raw = msg.serialize(integrity_key=self.key, fingerprint=True)
            else:
                raw = msg.serialize(fingerprint=True)
            self.sock.sendto(raw, self.server)
            response = parse_message_untrusted(self.sock.recv(4096))
            if response.message_class == MessageClass.SUCCESS:
                return
            code = decode_error_code_untrusted(response.get(Attr.ERROR_CODE) or b"")[0]
            if code in (401, 438):
                self.nonce = response.get(Attr.NONCE) or b""
                continue
            raise RuntimeError(f"TURN error {code}")
        raise RuntimeError("authentication did not converge")


@dataclass
class Step:
    """One rung of the ladder."""

    offered: float
    achieved_send: float
    sent: int
    received: int
    rtts_us: list[float]

    @property
    def lost(self) -> int:
        return self.sent - self.received


def run_load(clients: list[Client], rate: float, seconds: float, size: int) -> Step:
    """Send ChannelData at ``rate`` packets/s for ``seconds`` and collect the echoes."""
    poller = select.epoll()
    by_fd = {}
    for c in clients:
        poller.register(c.sock.fileno(), select.EPOLLIN)
        by_fd[c.sock.fileno()] = c.sock
    header = CHANNEL.to_bytes(2, "big") + size.to_bytes(2, "big")
    padding = b"\x00" * (size - _STAMP.size)
    socks = [c.sock for c in clients]
    targets = [c.server for c in clients]
    n_clients = len(clients)
    rtts: list[float] = []
    sent = received = 0
    start = time.perf_counter()
    end = start + seconds
    drain_until = end + 1.0
    seq = 0
    now = start
    while now < drain_until:
        if now < end:
            due = int((now - start) * rate) - sent
            for _ in range(min(due, 256)):
                i = seq % n_clients
                payload = _STAMP.pack(seq, time.perf_counter_ns()) + padding
                with contextlib.suppress(BlockingIOError):
                    socks[i].sendto(header + payload, targets[i])
                seq += 1
                sent += 1
        elif received >= sent:
            break
        for fd, _ in poller.poll(0.0005):
            sock = by_fd[fd]
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                if len(data) >= 4 + _STAMP.size:
                    _, stamp = _STAMP.unpack_from(data, 4)
                    rtts.append((time.perf_counter_ns() - stamp) / 1000.0)
                    received += 1
        now = time.perf_counter()
    poller.close()
    return Step(rate, sent / seconds, sent, received, rtts)


def p99(values: list[float]) -> float:
    """99th percentile (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@dataclass
class RunResult:
    """One measurement of one server."""

    max_rate: float  # round trips/s at 0 % loss
    generator_bound: bool
    p99_us: float
    ladder: list[tuple[float, float, int, int]]


def _worker(
    conn: Connection, server: tuple[str, int], peer: tuple[str, int], clients: int, tag: str
) -> None:
    """A load-generator process: its own clients, driven step by step over ``conn``."""
    own = [Client(server, peer, f"{tag}-{i}") for i in range(clients)]
    conn.send("ready")
    while True:
        command = conn.recv()
        if command is None:
            break
        rate, seconds, size = command
        step = run_load(own, rate, seconds, size)
        conn.send((step.sent, step.received, step.achieved_send, step.rtts_us))
    for c in own:
        c.sock.close()


class Generator:
    """``processes`` load-generator processes sharing the offered rate equally."""

    def __init__(
        self, server: tuple[str, int], peer: tuple[str, int], clients: int, processes: int, tag: str
    ) -> None:
        context = multiprocessing.get_context("fork")
        self.conns: list[Connection] = []
        self.procs = []
        for p in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(
                target=_worker, args=(child, server, peer, clients // processes, f"{tag}-{p}")
            )
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            if conn.recv() != "ready":
                raise RuntimeError("generator failed to start")

    def load(self, rate: float, seconds: float, size: int) -> Step:
        share = rate / len(self.conns)
        for conn in self.conns:
            conn.send((share, seconds, size))
        sent = received = 0
        achieved = 0.0
        rtts: list[float] = []
        for conn in self.conns:
            s, r, a, t = conn.recv()
            sent, received, achieved = sent + s, received + r, achieved + a
            rtts.extend(t)
        return Step(rate, achieved, sent, received, rtts)

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(10)


def measure(server_port: int, peer_port: int, args: argparse.Namespace, tag: str) -> RunResult:
    """Ladder + p99 against the server on ``server_port``."""
    generator = Generator(
        ("127.0.0.1", server_port), ("127.0.0.1", peer_port), args.clients, args.generators, tag
    )
    try:
        warm = generator.load(args.p99_rate, 1.0, args.size)
        if warm.lost:
            raise RuntimeError(f"{tag}: loss during warm-up ({warm.lost}/{warm.sent})")
        p99_step = generator.load(args.p99_rate, args.p99_seconds, args.size)
        ladder = []
        best = 0.0
        bound = False
        rate = args.start
        while rate <= args.max_rate:
            step = generator.load(rate, args.seconds, args.size)
            ladder.append((rate, step.achieved_send, step.sent, step.received))
            if step.achieved_send < 0.95 * rate:
                bound = step.lost == 0
                if bound:
                    best = max(best, step.achieved_send)
                break
            if step.lost:
                break
            best = rate
            rate *= args.step
            time.sleep(0.3)
        return RunResult(best, bound, p99(p99_step.rtts_us), ladder)
    finally:
        generator.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="our --workers (coturn: 1/CPU)"
    )
    parser.add_argument("--generators", type=int, default=2, help="load-generator processes")
    parser.add_argument("--size", type=int, default=160, help="payload bytes per packet")
    parser.add_argument(
        "--start", type=float, default=2000.0, help="first ladder rate, round trips/s"
    )
    parser.add_argument("--step", type=float, default=1.2)
    parser.add_argument("--max-rate", type=float, default=200000.0)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each ladder step")
    parser.add_argument("--p99-rate", type=float, default=2000.0)
    parser.add_argument("--p99-seconds", type=float, default=3.0)
    parser.add_argument("--only", choices=["ours", "coturn"], default=None)
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = parser.parse_args(argv)

    peer_tool = shutil.which("turnutils_peer")
    if peer_tool is None:
        raise SystemExit("turnutils_peer not found: apt-get install coturn")
    peer_port = free_port()
    results: dict[str, list[RunResult]] = {"ours": [], "coturn": []}
    servers = {"ours": ours, "coturn": coturn}
    names = [args.only] if args.only else ["ours", "coturn"]
    with process([peer_tool, "-L", "127.0.0.1", "-p", str(peer_port)]):
        time.sleep(0.3)
        for run in range(args.runs):
            for name in names:
                port = free_port()
                with servers[name](port, args.workers):
                    result = measure(port, peer_port, args, f"{name}{run}")
                results[name].append(result)
                flag = " (generator-bound)" if result.generator_bound else ""
                print(
                    f"run {run + 1} {name:6s}: {result.max_rate:8.0f} round trips/s at 0% loss"
                    f"{flag} = {2 * result.max_rate:8.0f} relayed packets/s;"
                    f" p99 {result.p99_us:7.0f} us @ {args.p99_rate:.0f}/s",
                    flush=True,
                )
    summary = {}
    for name in names:
        rates = [r.max_rate for r in results[name]]
        summary[name] = {
            "round_trips_per_s": statistics.median(rates),
            "relayed_packets_per_s": 2 * statistics.median(rates),
            "p99_us": statistics.median(r.p99_us for r in results[name]),
            "generator_bound_runs": sum(r.generator_bound for r in results[name]),
        }
        print(
            f"median {name:6s}: {summary[name]['relayed_packets_per_s']:.0f} relayed packets/s,"
            f" p99 {summary[name]['p99_us']:.0f} us",
        )
    if len(names) == 2 and summary["coturn"]["round_trips_per_s"]:
        ratio = summary["ours"]["round_trips_per_s"] / summary["coturn"]["round_trips_per_s"]
        print(f"ratio ours/coturn throughput: {ratio:.2f}")
    if args.json:
        print(
            json.dumps(
                {
                    "summary": summary,
                    "runs": {k: [r.__dict__ for r in v] for k, v in results.items()},
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
