"""Interop with TURN clients nobody here wrote: aioice, and coturn's turnutils.

aioice runs in-process on a trio-asyncio loop against the real trio shell; coturn's
``turnutils_uclient``/``turnutils_peer`` run as processes against ``python -m turn``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio
from aioice.turn import create_turn_endpoint
from turn_support import SECRET, self_signed, start_turn

from turn.auth import rest_password, rest_username
from turn.config import TurnConfig
from turn.serve import Listening, TurnShell, serve


class Echo:
    """A UDP echo peer on loopback, as a trio task."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.received = 0

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        await self.sock.bind(("127.0.0.1", 0))
        task_status.started(self.sock.getsockname())
        while True:
            data, addr = await self.sock.recvfrom(65536)
            self.received += 1
            await self.sock.sendto(data, addr)


async def aioice_echo(
    server: tuple[str, int],
    peer: tuple[str, int],
    transport: str,
    count: int,
    ssl_context: ssl.SSLContext | None = None,
    wait: float = 5.0,
) -> tuple[tuple[str, int], list[bytes]]:
    """Allocate with aioice, send ``count`` datagrams to ``peer`` and collect the echoes."""
    username = rest_username(int(time.time()) + 3600, "aioice-session")
    password = rest_password(SECRET.encode(), username)
    received: asyncio.Queue[bytes] = asyncio.Queue()

    class Collect(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received.put_nowait(data)

    relay, _ = await create_turn_endpoint(
        Collect, server, username, password, transport=transport, ssl=ssl_context
    )
    try:
        relayed = relay.get_extra_info("sockname")
        echoes = []
        for i in range(count):
            relay.sendto(b"ping %04d" % i, peer)
            echoes.append(await asyncio.wait_for(received.get(), wait))
        return relayed, echoes
    finally:
        relay.close()


@pytest.fixture
async def in_process_turn(tmp_path: Path) -> AsyncIterator[tuple[TurnShell, dict[str, int]]]:
    cert, key = self_signed(tmp_path)
    config = TurnConfig(
        listen=["127.0.0.1:0"],
        tls_listen=["127.0.0.1:0"],
        tls_cert=str(cert),
        tls_key=str(key),
        secret=SECRET,
        realm="hushroom.test",
        allow_loopback_peers=True,
        bandwidth=0,
    )
    ports: dict[str, int] = {}

    def announce(listening: Listening) -> None:
        ports[listening.proto] = listening.port

    async with trio.open_nursery() as nursery:
        shell = await nursery.start(serve, config, announce)
        yield shell, ports
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_aioice_allocates_binds_a_channel_and_echoes_through_the_relay(
    in_process_turn: tuple[TurnShell, dict[str, int]], transport: str
) -> None:
    shell, ports = in_process_turn
    echo = Echo()
    context = None
    if transport == "tls":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    async with trio.open_nursery() as nursery:
        peer = await nursery.start(echo.run)
        async with trio_asyncio.open_loop():
            relayed, echoes = await trio_asyncio.aio_as_trio(aioice_echo)(
                ("127.0.0.1", ports[transport]),
                peer,
                "udp" if transport == "udp" else "tcp",
                20,
                context,
            )
        nursery.cancel_scope.cancel()
    assert echoes == [b"ping %04d" % i for i in range(20)]
    assert relayed[0] == "127.0.0.1"
    counters = shell.server.counters
    assert counters.channels_bound >= 1
    assert counters.packets_relayed == 40
    assert echo.received == 20


async def test_aioice_is_refused_a_loopback_peer_without_the_test_switch(tmp_path: Path) -> None:
    config = TurnConfig(listen=["127.0.0.1:0"], secret=SECRET, realm="hushroom.test")
    ports: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        shell = await nursery.start(serve, config, lambda li: ports.__setitem__(li.proto, li.port))
        async with trio_asyncio.open_loop():
            # aioice swallows the 403 of its ChannelBind; the echo simply never comes.
            with pytest.raises(TimeoutError):
                await trio_asyncio.aio_as_trio(aioice_echo)(
                    ("127.0.0.1", ports["udp"]), ("127.0.0.1", 9), "udp", 1, None, 1.0
                )
        assert shell.server.counters.peer_refusals >= 1
        nursery.cancel_scope.cancel()


# --- coturn's tools --------------------------------------------------------------------------

UCLIENT = shutil.which("turnutils_uclient")
PEER_TOOL = shutil.which("turnutils_peer")
needs_coturn = pytest.mark.skipif(
    UCLIENT is None or PEER_TOOL is None,
    reason="coturn's turnutils_uclient/turnutils_peer are not installed (apt-get install coturn)",
)


def free_udp_port_pair() -> int:
    """A UDP port that was free a moment ago with the one above it: turnutils_peer listens
    on both (uclient sends RTCP to the second). Were the second taken (by a test running
    alongside), half of uclient's packets would go unanswered."""
    import socket

    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if port == 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two free UDP ports in a row")


@pytest.fixture
def turnutils_peer() -> Any:
    port = free_udp_port_pair()
    assert PEER_TOOL is not None
    process = subprocess.Popen(
        [PEER_TOOL, "-L", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        process.terminate()
        process.wait(5)


@needs_coturn
@pytest.mark.slow
@pytest.mark.parametrize("channels", [False, True], ids=["send-indications", "channels"])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_turnutils_uclient_reports_zero_loss(
    turnutils_peer: int, tcp: bool, channels: bool
) -> None:
    turn = start_turn(
        "--listen",
        "127.0.0.1:0",
        "--allow-loopback-peers",
        "--bandwidth",
        "0",
        "--max-allocations-per-user",
        "100",
    )
    try:
        assert UCLIENT is not None
        # Without -s uclient binds channels, numbered in RFC 5766's 0x4000-0x7FFF (so most of
        # them above RFC 8656's 0x4FFF) and sends ChannelData; with -s it sends Send
        # indications. Without -c each client also allocates an RTCP relay through EVEN-PORT
        # with a reservation and RESERVATION-TOKEN.
        args = [UCLIENT, "-W", SECRET, "-u", "uclient", "-m", "4", "-n", "50"]
        args += ["-l", "170", "-z", "5", "-e", "127.0.0.1", "-r", str(turnutils_peer)]
        args += ["-p", str(turn.tcp_port if tcp else turn.udp_port)]
        if not channels:
            args.append("-s")
        if tcp:
            args.append("-t")
        result = subprocess.run([*args, "127.0.0.1"], capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        assert "error 400" not in output.lower(), output[-2000:]
        sent = re.search(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
        lost = re.search(r"Total lost packets (\d+) \(([\d.]+)%\)", output)
        assert sent and lost, output[-2000:]
        assert int(sent.group(1)) == 200 and int(sent.group(2)) == 200, output[-2000:]
        assert int(lost.group(1)) == 0 and float(lost.group(2)) == 0.0
    finally:
        assert turn.stop() == 0
    assert turn.process.stderr is not None
    counters = re.search(r"turn counters (.*)", turn.process.stderr.read())
    assert counters, "no counters line at exit"
    totals = dict(item.split("=") for item in counters.group(1).split())
    assert totals["malformed"] == "0"
    assert (int(totals["channels_bound"]) > 0) == channels
