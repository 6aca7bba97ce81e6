"""A real ``python -m control`` process on a loopback port the OS picks, and a tiny client."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trio

from contract import proof_of_work as pow_
from control.process import ControlProcess


class LiveControl(ControlProcess):
    """``python -m control`` at debug level, its log (stderr) kept in ``log_path``."""

    def __init__(self, data_dir: Path, log_path: Path, *extra: str) -> None:
        self.log_path = log_path
        self.log = log_path.open("ab")
        super().__init__(data_dir, "--log-level", "debug", *extra, log=self.log)

    @property
    def base(self) -> str:
        """``http://HOST:PORT`` of the API."""
        return self.url

    def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        proof: str | None = None,
    ) -> tuple[int, Any]:
        """One blocking JSON request; ``proof`` names the purpose of a proof of work to
        solve and send with it (the anonymous routes need one)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if proof is not None:
            status, puzzle = self.request(
                "POST", "/api/v1/auth/proof-of-work", body={"purpose": proof}
            )
            assert status == 200, puzzle
            seed = base64.b64decode(puzzle["seed"])
            nonce = pow_.solve(seed, puzzle["difficulty"])
            req.add_header(pow_.HEADER, pow_.encode_proof(seed, nonce))
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
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        proof: str | None = None,
    ) -> tuple[int, Any]:
        """:meth:`request` from a worker thread."""
        return await trio.to_thread.run_sync(lambda: self.request(method, path, token, body, proof))

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything."""
        super().kill()
        self.log.close()

    def stop(self, within_s: float = 15.0) -> int:
        """SIGINT and wait; return the exit code."""
        code = super().stop(within_s)
        self.log.close()
        return code
