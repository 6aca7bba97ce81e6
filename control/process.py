"""A real ``python -m control`` process on a loopback port the OS picks.

Tests, benchmarks and the load tester start the control plane the way an operator does and
learn where it listens from its ``control listening http HOST:PORT`` line, so nothing
depends on a fixed port being free.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

__all__ = ["ControlProcess", "ControlStartError"]

READY_LINE = b"control ready"
LISTENING_PREFIX = "control listening http "


class ControlStartError(Exception):
    """The control process exited or stayed silent before it was ready."""


class ControlProcess:
    """``python -m control --listen 127.0.0.1:0 --data-dir DATA_DIR *extra``.

    ``log`` receives the process's stderr (its log); ``url`` is ``http://HOST:PORT`` once
    the constructor returns.
    """

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        log: IO[bytes] | None = None,
        ready_within_s: float = 30.0,
    ) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "control",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
        )
        self.url = self._wait_until_ready(ready_within_s)

    def _wait_until_ready(self, within_s: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + within_s
        seen = b""
        while READY_LINE not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise ControlStartError(f"control was not ready within {within_s} s: {seen!r}")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    self.proc.wait(5)
                    raise ControlStartError(f"control exited before it was ready: {seen!r}")
                seen += chunk
        for line in seen.decode().splitlines():
            if line.startswith(LISTENING_PREFIX):
                return "http://" + line.removeprefix(LISTENING_PREFIX)
        self.kill()
        raise ControlStartError(f"control did not say where it listens: {seen!r}")

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port of :attr:`url`."""
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        return host, int(port)

    @property
    def ws_url(self) -> str:
        """The gateway's WebSocket URL."""
        return self.url.replace("http://", "ws://", 1) + "/api/v1/gateway"

    @property
    def database(self) -> Path:
        """The SQLite file of the control store."""
        return self.data_dir / "control.sqlite3"

    def stop(self, within_s: float = 15.0) -> int:
        """SIGINT, wait (SIGKILL after ``within_s``); return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(within_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_stdout()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._close_stdout()

    def _close_stdout(self) -> None:
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
