"""``python -m client`` run as separate processes, the way a person runs the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["Cli", "passphrase_env"]


def passphrase_env(passphrase: str, **extra: str) -> dict[str, str]:
    """This process's environment with a store passphrase and the keyring turned off, so
    tests never touch the keyring of whoever runs them (test_client_keyring.py starts its
    own)."""
    return dict(os.environ) | {
        "HUSHROOM_PASSPHRASE": passphrase,
        "HUSHROOM_NO_KEYRING": "1",
        **extra,
    }


class Cli:
    """``python -m client`` in one working directory with one environment.

    ``check``: every command must succeed unless a call says ``ok=False``; without it the
    test looks at each result itself.
    """

    def __init__(self, cwd: Path, env: dict[str, str], *, check: bool = True) -> None:
        self.cwd = cwd
        self.env = env
        self.check = check

    def __call__(
        self, *args: str, ok: bool | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run one command to its end; it must succeed when checked."""
        result = subprocess.run(
            [sys.executable, "-m", "client", *args],
            cwd=self.cwd,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if self.check if ok is None else ok:
            assert result.returncode == 0, (args, result.stderr)
        return result

    def json(self, *args: str) -> object:
        """Run a command with ``--json`` and decode its last output line."""
        return json.loads(self(*args, "--json").stdout.strip().splitlines()[-1])

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start a long-running command (``tail``, ``join-device``) with pipes."""
        return subprocess.Popen(
            [sys.executable, "-m", "client", *args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
