"""A real ``python -m control`` process on a loopback port the OS picks, and a tiny client."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[2]


class LiveControl:
    """``python -m control`` with stdout parsed and stderr (the log) kept in a file."""

    def __init__(self, data_dir: Path, log_path: Path, *extra: str) -> None:
        self.log_path = log_path
        self.log = log_path.open("ab")
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
            stderr=self.log,
        )
        self.base = ""
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        lines = b""
        while b"control ready" not in lines:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"control did not start: {lines!r}"
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                assert chunk, f"control exited: {lines!r}"
                lines += chunk
        for line in lines.decode().splitlines():
            if line.startswith("control listening http "):
                self.base = "http://" + line.rsplit(" ", 1)[1]
        assert self.base

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/api/v1/gateway"

    def request(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        """One blocking JSON request."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    async def call(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        """:meth:`request` from a worker thread."""
        return await trio.to_thread.run_sync(lambda: self.request(method, path, token, body))

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything."""
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> int:
        """SIGINT and wait; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(15)
        self.log.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.proc.returncode
