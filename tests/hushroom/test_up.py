"""``hushroom up`` brings every part up, proves each is ready, and stops them all cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import secrets
import select
import signal
import socket
import struct
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import children_of

pytestmark = pytest.mark.slow

HUSHROOM = str(Path(sys.executable).parent / "hushroom")


def _binding_request() -> tuple[bytes, bytes]:
    txid = secrets.token_bytes(12)
    return struct.pack("!HHI", 0x0001, 0, 0x2112A442) + txid, txid


def _stun_udp(port: int, within: float = 30.0) -> bytes:
    """A Binding round trip over UDP, resent every second: UDP may drop one on a busy host."""
    deadline = time.monotonic() + within
    sent: set[bytes] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while (remaining := deadline - time.monotonic()) > 0:
            request, txid = _binding_request()
            sent.add(txid)
            sock.sendto(request, ("127.0.0.1", port))
            sock.settimeout(min(1.0, remaining))
            with contextlib.suppress(TimeoutError):
                while True:
                    reply = sock.recv(2048)
                    if reply[8:20] in sent:
                        return reply
    raise AssertionError(f"no answer to {len(sent)} Binding requests in {within} s")


def _stun_tcp(port: int) -> bytes:
    request, txid = _binding_request()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        header = sock.recv(20, socket.MSG_WAITALL)
        length = struct.unpack("!H", header[2:4])[0]
        body = sock.recv(length, socket.MSG_WAITALL) if length else b""
    assert header[8:20] == txid
    return header + body


def _up_args(tmp_path: Path, control_port: int = 0) -> list[str]:
    return [
        "up",
        "--control-port", str(control_port),
        "--turn-port", "0",
        "--data-dir", str(tmp_path / "data"),
        "--workers", "2",
    ]  # fmt: skip


#: ``hushroom up`` with trio's idle worker threads retired after 1 s instead of 10 (the
#: module attribute is read each time a worker waits; it must still exist).
_UP_WITH_QUICK_THREAD_RETIREMENT = """
import runpy
import trio._core._thread_cache as thread_cache
assert isinstance(thread_cache.IDLE_TIMEOUT, (int, float))
thread_cache.IDLE_TIMEOUT = 1
runpy.run_module("hushroom", run_name="__main__")
"""


def _wait_until_single_threaded(pid: int, within_s: float) -> None:
    """Wait until ``pid`` runs on its main thread alone: trio has retired every worker
    thread it started (``up`` starts some to probe its children)."""
    deadline = time.monotonic() + within_s
    while len(os.listdir(f"/proc/{pid}/task")) > 1:
        assert time.monotonic() < deadline, f"{pid} still has worker threads after {within_s} s"
        time.sleep(0.1)


def _announced_port(lines: list[str], prefix: str) -> int:
    line = next(line for line in lines if line.startswith(prefix))
    return int(line.rsplit(":", 1)[1])


def test_up_starts_everything_answers_health_and_stops_on_sigint(
    spawn: Any, tmp_path: Path
) -> None:
    # trio retires an idle worker thread after 10 s; here after a second, so that the
    # moment the children must outlive comes in a second rather than ten.
    up = spawn(*_up_args(tmp_path), code=_UP_WITH_QUICK_THREAD_RETIREMENT)
    up.wait_for_line("hushroom is up", timeout=90)
    up.wait_for_line("Press Ctrl-C to stop.")
    control_port = _announced_port(up.lines, "  control  http ")
    turn_port = _announced_port(up.lines, "  turn     udp ")
    # With port 0 TURN tries the UDP port for TCP too, but takes another if it is in use.
    turn_tcp_port = _announced_port(up.lines, "  turn     tcp ")
    shown = "\n".join(up.lines)
    assert f"control  http 127.0.0.1:{control_port}" in shown
    assert f"turn     udp 127.0.0.1:{turn_port}" in shown
    assert shown.count("sfu      udp 127.0.0.1:") == 2

    with urllib.request.urlopen(f"http://127.0.0.1:{control_port}/healthz", timeout=5) as r:
        health = json.load(r)
    assert health["status"] == "ok" and health["sfu_nodes"] == 1
    assert struct.unpack("!H", _stun_udp(turn_port)[:2])[0] == 0x0101
    assert struct.unpack("!H", _stun_tcp(turn_tcp_port)[:2])[0] == 0x0101
    for name in ("node-secret", "turn-secret"):
        assert (tmp_path / "data" / name).stat().st_mode & 0o777 == 0o600

    descendants = children_of(up.popen.pid)
    assert len(descendants) >= 5  # control, turn, sfu node and its two workers
    # Still up once trio has retired its idle worker threads: the children's parent-death
    # signal must follow up's life, not that of the thread that forked them. up's own
    # threads show when they have gone; a SIGTERMed child then takes a moment to exit.
    _wait_until_single_threaded(up.popen.pid, within_s=30)
    time.sleep(2)
    assert up.popen.poll() is None, up.lines
    with urllib.request.urlopen(f"http://127.0.0.1:{control_port}/healthz", timeout=5) as r:
        assert json.load(r)["sfu_nodes"] == 1
    assert [p for p in descendants if not Path(f"/proc/{p}").exists()] == []
    assert up.interrupt(timeout=30) == 0
    # up has reaped its children; a grandchild left to init may take a moment to be reaped.
    deadline = time.monotonic() + 10
    while left := [p for p in descendants if Path(f"/proc/{p}").exists()]:
        assert time.monotonic() < deadline, f"still running after up exited: {left}"
        time.sleep(0.05)


def test_up_exits_1_and_leaves_nothing_when_a_part_cannot_start(spawn: Any, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        up = spawn("hushroom", *_up_args(tmp_path, squatter.getsockname()[1]))
        assert up.popen.wait(60) == 1
    assert up.popen.stderr is not None
    assert "control exited before it was ready" in up.popen.stderr.read().decode()
    assert children_of(up.popen.pid) == []


def test_ctrl_c_under_make_exits_0_with_no_process_left(tmp_path: Path) -> None:
    """The README's ``make run`` path: Ctrl-C at a terminal reaches only ``up``."""
    makefile = tmp_path / "Makefile"
    makefile.write_text(f"run:\n\t{HUSHROOM} {' '.join(_up_args(tmp_path))}\n")
    pid, master = pty.fork()
    if pid == 0:  # the child: a session leader on a fresh terminal, as an interactive shell
        os.execvp("make", ["make", "-s", "-C", str(tmp_path), "run"])
    output = b""
    status: int | None = None
    deadline = time.monotonic() + 90
    try:
        while b"Press Ctrl-C to stop." not in output:
            assert time.monotonic() < deadline, output.decode(errors="replace")
            if select.select([master], [], [], 1)[0]:
                output += os.read(master, 65536)
        descendants = children_of(pid)
        lines = output.decode(errors="replace").replace("\r", "").splitlines()
        control_port = _announced_port(lines, "  control  http ")
        os.write(master, b"\x03")  # what the terminal sends for Ctrl-C
        deadline = time.monotonic() + 30
        while status is None:
            if select.select([master], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):
                    output += os.read(master, 65536)
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                status = wait_status
            assert time.monotonic() < deadline, output.decode(errors="replace")
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0, output.decode(errors="replace")
    assert [p for p in descendants if Path(f"/proc/{p}").exists()] == []
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{control_port}/healthz", timeout=2)
