"""Benchmark one control-plane process: idle gateway connections, channel fan-out, envelopes.

Starts ``python -m control`` on a loopback port the OS picks with a fresh data directory
(a fresh one per run with ``--runs N``, which prints the median and every run's value),
then measures, each in its own phase:

* **healthz**: bare ``GET /healthz`` requests per second by the same C keep-alive clients:
  the per-request ceiling of Quart + Hypercorn (and of this client) on this machine, the
  reference the API figures of the same run compare to;
* **envelopes**: durable envelopes (committed before the 201) posted by C senders and
  acknowledged by C recipient devices that follow the gateway and acknowledge in batches;
  ``--batch B`` posts B envelopes per request with ``POST /envelopes/batch``;
* **fanout**: latency from posting one channel message to its MESSAGE_CREATE arriving on
  each of M connected members (p50/p99 over several messages), and the CPU time the server
  and the receivers (this process, on the same cores) spent per message;
* **idle**: gateway connections identified and held, and the server's RSS with them open.

Run: ``python bench/control_bench.py [--phases healthz,envelopes] [--runs 3] [--batch 16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h11
import msgpack
import psutil
import trio
from nacl.signing import SigningKey
from trio_websocket import open_websocket_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract import proof_of_work as pow_  # noqa: E402
from contract import signing as sig  # noqa: E402
from control.gc_policy import tune_gc  # noqa: E402
from control.process import ControlProcess  # noqa: E402
from hushroom.secrets_file import ensure_secret_file  # noqa: E402

API = "/api/v1"
#: How long one idle connection may take from TCP connect to READY before it counts as failed.
READY_TIMEOUT_S = 120.0
MSGPACK = "application/msgpack"


class Http:
    """A keep-alive HTTP/1.1 client speaking msgpack bodies (h11 over a trio stream)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stream: trio.SocketStream | None = None
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        proof: str | None = None,
    ) -> tuple[int, Any]:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
            self.conn = h11.Connection(h11.CLIENT)
        data = b"" if body is None else msgpack.packb(body, use_bin_type=True)
        headers = [
            ("Host", f"{self.host}:{self.port}"),
            ("Accept", MSGPACK),
            ("Content-Length", str(len(data))),
        ]
        if body is not None:
            headers.append(("Content-Type", MSGPACK))
        if token is not None:
            headers.append(("Authorization", f"Bearer {token}"))
        if proof is not None:
            headers.append((pow_.HEADER, proof))
        out = self.conn.send(h11.Request(method=method, target=path, headers=headers))
        out += self.conn.send(h11.Data(data=data)) if data else b""
        out += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(out)
        status, chunks, is_json = 0, [], False
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                is_json = any(
                    name == b"content-type" and value.startswith(b"application/json")
                    for name, value in event.headers
                )
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        self.conn.start_next_cycle()
        raw = b"".join(chunks)
        if not raw:
            return status, None
        return status, json.loads(raw) if is_json else msgpack.unpackb(raw)

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


async def solved(http: Http, purpose: str) -> str:
    """A proof of work for one anonymous request (the bench's server asks for 0 bits)."""
    _, puzzle = await http.request("POST", f"{API}/auth/proof-of-work", {"purpose": purpose})
    return pow_.encode_proof(puzzle["seed"], pow_.solve(puzzle["seed"], puzzle["difficulty"]))


async def register(http: Http, handle: str) -> dict[str, Any]:
    key = SigningKey.generate()
    ik = bytes(key.verify_key)
    _, ch = await http.request(
        "POST", f"{API}/auth/challenge", {}, proof=await solved(http, "challenge")
    )
    spk, pq = os.urandom(32), os.urandom(sig.PQ_PUBLIC_KEY_LEN)
    status, body = await http.request(
        "POST",
        f"{API}/users",
        proof=await solved(http, "register"),
        body={
            "handle": handle,
            "identity_key": ik,
            "challenge": ch["challenge"],
            "signature": key.sign(sig.register_message(ch["challenge"], ik, handle)).signature,
            "signed_prekey": {
                "key_id": 1,
                "public_key": spk,
                "signature": key.sign(sig.signed_prekey_message(1, spk)).signature,
            },
            "pq_prekey": {
                "key_id": 1,
                "public_key": pq,
                "signature": key.sign(sig.pq_prekey_message(1, pq)).signature,
            },
        },
    )
    assert status == 201, body
    return {"id": body["user"]["id"], "device": body["device"]["id"], "token": body["token"]}


async def register_many(
    host: str, port: int, prefix: str, count: int, workers: int = 16
) -> list[dict[str, Any]]:
    users: list[dict[str, Any]] = []

    async def worker(indexes: range) -> None:
        http = Http(host, port)
        for i in indexes:
            users.append(await register(http, f"{prefix}{i}"))
        await http.close()

    async with trio.open_nursery() as nursery:
        for w in range(workers):
            nursery.start_soon(worker, range(w, count, workers))
    return users


async def identify(
    url: str,
    token: str,
    ready: trio.Event | None,
    hold: trio.Event,
    inbox: trio.MemorySendChannel[tuple[float, dict[str, Any]]] | None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    async with open_websocket_url(
        url, max_message_size=16 * 1024 * 1024, connect_timeout=600
    ) as ws:
        msgpack.unpackb(await ws.get_message())
        await ws.send_message(msgpack.packb({"op": 2, "d": {"token": token}}))
        while True:
            frame = msgpack.unpackb(await ws.get_message())
            if frame.get("t") == "READY":
                break
        task_status.started()
        if inbox is None:
            await hold.wait()
            return
        # Runs until the phase cancels the nursery holding every connection.
        while True:
            raw = await ws.get_message()
            received = time.perf_counter()
            frame = msgpack.unpackb(raw)
            if frame.get("t") == "MESSAGE_CREATE":
                await inbox.send((received, frame["d"]))


async def phase_idle(host: str, port: int, pid: int, count: int) -> dict[str, float]:
    users = await register_many(host, port, "idle", min(count, 200))
    url = f"ws://{host}:{port}{API}/gateway"
    hold = trio.Event()
    started = time.perf_counter()
    connected = failed = 0
    rss_before = psutil.Process(pid).memory_info().rss
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(64)

        async def one(i: int) -> None:
            nonlocal connected, failed
            async with limiter:
                # A connection that gets no READY within the limit counts as failed.
                with trio.move_on_after(READY_TIMEOUT_S) as scope:
                    token = users[i % len(users)]["token"]
                    await nursery.start(identify, url, token, None, hold, None)
            if scope.cancelled_caught:
                failed += 1
            else:
                connected += 1

        async with trio.open_nursery() as opening:
            for i in range(count):
                opening.start_soon(one, i)
        elapsed = time.perf_counter() - started
        await trio.sleep(1)
        rss = psutil.Process(pid).memory_info().rss
        hold.set()
        nursery.cancel_scope.cancel()
    return {
        "idle_connections": connected,
        "idle_failed": failed,
        "idle_rss_mib": rss / 2**20,
        "idle_rss_mib_before": rss_before / 2**20,
        "idle_connect_s": elapsed,
    }


async def phase_fanout(
    host: str, port: int, pid: int, members: int, messages: int
) -> dict[str, float]:
    users = await register_many(host, port, "fan", members)
    http = Http(host, port)
    owner = users[0]
    _, guild = await http.request("POST", f"{API}/guilds", {"name": "bench"}, owner["token"])
    channel = guild["channels"][0]["id"]
    _, invite = await http.request("POST", f"{API}/channels/{channel}/invites", {}, owner["token"])

    async def join(chunk: list[dict[str, Any]]) -> None:
        client = Http(host, port)
        for user in chunk:
            status, _ = await client.request(
                "POST", f"{API}/invites/{invite['code']}", {}, user["token"]
            )
            assert status == 200
        await client.close()

    async with trio.open_nursery() as nursery:
        for w in range(16):
            nursery.start_soon(join, users[1:][w::16])
    url = f"ws://{host}:{port}{API}/gateway"
    send, recv = trio.open_memory_channel[tuple[float, dict[str, Any]]](members * messages + 10)
    hold = trio.Event()
    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(100)

        async def one(user: dict[str, Any]) -> None:
            async with limiter:
                await nursery.start(identify, url, user["token"], None, hold, send)

        async with trio.open_nursery() as opening:
            for user in users:
                opening.start_soon(one, user)
        await trio.sleep(1)
        # The receivers hold hundreds of thousands of objects; a full collection over them
        # would stall every receiver and be measured as server latency.
        tune_gc()
        # CPU time of the server and of this process (the receivers) while messages fan out:
        # both share the machine's cores, so both are reported.
        server, cpu_before = psutil.Process(pid), psutil.Process(pid).cpu_times()
        client_before = time.process_time()
        for i in range(messages):
            sent = time.perf_counter()
            status, _ = await http.request(
                "POST",
                f"{API}/channels/{channel}/messages",
                {"ciphertext": os.urandom(200)},
                owner["token"],
            )
            assert status == 201
            got = 0
            with trio.move_on_after(30):
                while got < members:
                    received, _ = await recv.receive()
                    latencies.append(received - sent)
                    got += 1
            await trio.sleep(0.2)
            del i
        cpu_after, client_after = server.cpu_times(), time.process_time()
        hold.set()
        nursery.cancel_scope.cancel()
    await http.close()
    server_cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    latencies.sort()
    return {
        "fanout_members": members,
        "fanout_messages": messages,
        "fanout_delivered": len(latencies),
        "fanout_p50_ms": 1000 * statistics.median(latencies),
        "fanout_p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "fanout_max_ms": 1000 * latencies[-1],
        "fanout_server_cpu_ms_per_message": 1000 * server_cpu / messages,
        "fanout_client_cpu_ms_per_message": 1000 * (client_after - client_before) / messages,
    }


async def phase_healthz(host: str, port: int, seconds: float, concurrency: int) -> dict[str, float]:
    """The same server's bare request rate: the per-request ceiling of Quart + Hypercorn
    (and of this client) on this machine, for comparison with the API phases."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        http = Http(host, port)
        while time.perf_counter() < deadline:
            status, _ = await http.request("GET", "/healthz")
            assert status == 200
            done += 1
        await http.close()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    return {"healthz_per_s": done / (time.perf_counter() - started)}


async def phase_envelopes(
    host: str, port: int, seconds: float, concurrency: int, batch: int
) -> dict[str, float]:
    """C senders post for ``seconds``, ``batch`` envelopes per request (1: ``POST
    /envelopes``, one envelope each; more: ``POST /envelopes/batch``); each recipient device
    is on the gateway and acknowledges the ENVELOPE_CREATE dispatches that arrived since its
    last acknowledgement in one ``POST /envelopes/ack``, as a client does. The figure is
    envelopes both committed and acknowledged per second, timed until the last is acked."""
    users = await register_many(host, port, "env", 2 * concurrency)
    posted = acked = requests = 0
    deadline = time.perf_counter() + seconds
    senders_done = trio.Event()

    async def sender(me: dict[str, Any], recipient: dict[str, Any], count: list[int]) -> None:
        nonlocal posted, requests
        http = Http(host, port)
        body = {
            "recipients": [
                {
                    "user_id": recipient["id"],
                    "devices": [{"device_id": recipient["device"], "ciphertext": os.urandom(256)}],
                }
            ]
        }
        path, payload = f"{API}/envelopes", body
        if batch > 1:
            path, payload = f"{API}/envelopes/batch", {"sends": [body] * batch}
        while time.perf_counter() < deadline:
            status, sent = await http.request("POST", path, payload, me["token"])
            assert status == 201, sent
            posted += batch
            count[0] += batch
            requests += 1
        await http.close()

    async def recipient(me: dict[str, Any], expected: list[int], task_status: Any) -> None:
        """Follow the gateway like a client does, acknowledging in one request whatever
        ENVELOPE_CREATE dispatches arrived since the previous acknowledgement."""
        nonlocal acked, requests
        http = Http(host, port)
        pending: list[str] = []
        arrived = trio.Event()
        mine = 0
        async with open_websocket_url(url, max_message_size=16 * 1024 * 1024) as ws:
            msgpack.unpackb(await ws.get_message())
            await ws.send_message(msgpack.packb({"op": 2, "d": {"token": me["token"]}}))
            while msgpack.unpackb(await ws.get_message()).get("t") != "READY":
                pass
            task_status.started()
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    while True:
                        frame = msgpack.unpackb(await ws.get_message())
                        if frame.get("t") == "ENVELOPE_CREATE":
                            pending.append(frame["d"]["id"])
                            arrived.set()

                nursery.start_soon(reader)
                while not (senders_done.is_set() and mine == expected[0]):
                    with trio.move_on_after(0.1):
                        await arrived.wait()
                    if not pending:
                        continue
                    ids = pending[:500]
                    del pending[:500]
                    if not pending:
                        arrived = trio.Event()
                    status, result = await http.request(
                        "POST", f"{API}/envelopes/ack", {"ids": ids}, me["token"]
                    )
                    assert status == 200 and result["deleted"] == len(ids), result
                    mine += len(ids)
                    acked += len(ids)
                    requests += 1
                nursery.cancel_scope.cancel()
        await http.close()

    url = f"ws://{host}:{port}{API}/gateway"
    expected = [[0] for _ in range(concurrency)]
    async with trio.open_nursery() as nursery:
        for i in range(concurrency):
            await nursery.start(recipient, users[2 * i + 1], expected[i])
        tune_gc()  # this process's own collector stays out of the figure, as in fan-out
        started = time.perf_counter()
        async with trio.open_nursery() as senders:
            for i in range(concurrency):
                senders.start_soon(sender, users[2 * i], users[2 * i + 1], expected[i])
        senders_done.set()
    elapsed = time.perf_counter() - started
    assert acked == posted, (acked, posted)
    return {
        "envelopes_per_s": acked / elapsed,
        "envelope_requests_per_s": requests / elapsed,
        "envelopes_concurrency": concurrency,
        "envelopes_per_request": batch,
    }


async def run_once(args: argparse.Namespace) -> dict[str, float]:
    """One run of the selected phases against a fresh control process."""
    data_dir = Path(tempfile.mkdtemp(prefix="control-bench-"))
    ensure_secret_file(data_dir / "node-secret")
    control = ControlProcess(
        data_dir,
        "--log-level", "warning",
        "--rate-per-s", "1000000000",
        "--rate-burst", "1000000000",
        # Set-up registers up to thousands of users; their proofs of work are not measured.
        "--pow-base-bits", "0",
        "--pow-max-bits", "0",
        "--heartbeat-interval-ms", "600000",
    )  # fmt: skip
    (host, port), pid = control.host_port, control.proc.pid
    results: dict[str, float] = {}
    try:
        if "healthz" in args.phases:
            results.update(await phase_healthz(host, port, 3.0, args.concurrency))
        if "envelopes" in args.phases:
            results.update(
                await phase_envelopes(host, port, args.seconds, args.concurrency, args.batch)
            )
        if "fanout" in args.phases:
            results.update(await phase_fanout(host, port, pid, args.members, args.messages))
        if "idle" in args.phases:
            results.update(await phase_idle(host, port, pid, args.idle))
    finally:
        # SIGINT lets the server close thousands of connections gracefully; give it time.
        control.stop(within_s=120)
        shutil.rmtree(data_dir, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--phases", default="healthz,envelopes,fanout,idle")
    parser.add_argument("--runs", type=int, default=1, help="fresh server per run; medians")
    parser.add_argument("--idle", type=int, default=10_000, help="idle gateway connections")
    parser.add_argument("--members", type=int, default=1000, help="fan-out channel members")
    parser.add_argument("--messages", type=int, default=10, help="fan-out messages posted")
    parser.add_argument("--seconds", type=float, default=10.0, help="envelope phase length")
    parser.add_argument("--concurrency", type=int, default=32, help="envelope client pairs")
    parser.add_argument(
        "--batch", type=int, default=1, help="envelopes per send request (>1: /envelopes/batch)"
    )
    args = parser.parse_args()
    runs = [trio.run(run_once, args) for _ in range(args.runs)]
    for name in runs[0]:
        values = [r[name] for r in runs]
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(
            f"{name}: {statistics.median(values):.1f}"
            + (f"  (runs: {shown})" if len(runs) > 1 else "")
        )


if __name__ == "__main__":
    main()
