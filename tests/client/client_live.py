"""A real ``python -m control`` process on a loopback port the OS picks."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class ControlProcess:
    """``python -m control`` with its stdout parsed and its log (stderr) kept in a file."""

    def __init__(self, data_dir: Path, log_path: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "control",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(data_dir),
                "--log-level",
                "debug",
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self.url = ""
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        seen = b""
        while b"control ready" not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"control did not start: {seen!r}"
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                assert chunk, f"control exited: {seen!r}"
                seen += chunk
        for line in seen.decode().splitlines():
            if line.startswith("control listening http "):
                self.url = "http://" + line.rsplit(" ", 1)[1]
        assert self.url

    @property
    def database(self) -> Path:
        """The SQLite file of the control store."""
        return self.data_dir / "control.sqlite3"

    def stop(self) -> None:
        """SIGINT, wait, close the log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
