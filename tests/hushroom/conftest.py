"""Helpers for tests that start real hushroom processes on loopback."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class Proc:
    """A child process whose stdout is read line by line with deadlines."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._buffer = b""

    def wait_for_line(self, prefix: str, timeout: float = 30.0) -> str:
        """Return the first stdout line starting with ``prefix`` (lines seen are kept)."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line = raw.decode()
                self.lines.append(line)
                if line.startswith(prefix):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line {prefix!r} within {timeout} s: {self.lines}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = self.popen.stderr.read().decode() if self.popen.stderr else ""
                    raise AssertionError(f"process exited; stdout={self.lines} stderr={err}")
                self._buffer += chunk

    def interrupt(self, timeout: float = 20.0) -> int:
        """Send SIGINT and return the exit status."""
        self.popen.send_signal(signal.SIGINT)
        return self.popen.wait(timeout)

    def stop(self) -> None:
        """Make sure the process is gone."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[object]:
    """Start ``python -m <args>`` processes (``python -c CODE <args>`` when given ``code``)
    in a temp dir; all are killed at teardown."""
    procs: list[Proc] = []

    def start(*args: str, env: dict[str, str] | None = None, code: str | None = None) -> Proc:
        program = ["-m"] if code is None else ["-c", code]
        proc = Proc([sys.executable, *program, *args], tmp_path, env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that was free a moment ago on 127.0.0.1 (for programs that need a fixed one)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """Pids of all live descendants of ``pid`` (from /proc)."""
    found: list[int] = []
    parents = {pid}
    changed = True
    while changed:
        changed = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in found:
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid in parents:
                found.append(int(entry))
                parents.add(int(entry))
                changed = True
    return found
