"""Helpers for the TURN tests: a real ``python -m turn`` process on OS-chosen loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SECRET = "test-secret-one"
REALM = "hushroom.test"


@dataclass
class TurnProcess:
    """A running ``python -m turn`` and the ports it announced."""

    process: subprocess.Popen[str]
    udp: dict[str, int] = field(default_factory=dict)
    tcp: dict[str, int] = field(default_factory=dict)
    tls: dict[str, int] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    @property
    def udp_port(self) -> int:
        return next(iter(self.udp.values()))

    @property
    def tcp_port(self) -> int:
        return next(iter(self.tcp.values()))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def start_turn(*args: str, env: dict[str, str] | None = None) -> TurnProcess:
    """Start ``python -m turn`` with ``args`` and wait for ``turn ready``."""
    full_env = {**os.environ, "HUSHROOM_TURN_SECRET": SECRET, **(env or {})}
    full_env.pop("HUSHROOM_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "turn", "--realm", REALM, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=Path(__file__).resolve().parents[2],
    )
    turn = TurnProcess(process)
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip("\n")
        turn.lines.append(line)
        if line == "turn ready":
            return turn
        parts = line.split()
        if parts[:2] == ["turn", "listening"]:
            host, _, port = parts[3].rpartition(":")
            getattr(turn, parts[2])[host.strip("[]")] = int(port)
    process.wait(5)
    raise RuntimeError(f"turn exited early: {process.stderr.read() if process.stderr else ''}")
