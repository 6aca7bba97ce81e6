"""The README's "First chat" walk-through, run exactly as written, and the CLI's contract."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from client_live import ControlProcess

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def first_chat_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## First chat\n", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "no sh block in the First chat section"
    return match.group(1)


def env_for(control: ControlProcess) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HUSHROOM_SERVER"] = control.url
    env.pop("HUSHROOM_PASSPHRASE", None)
    # Never the keyring of whoever runs the tests (test_client_keyring.py has its own).
    env["HUSHROOM_NO_KEYRING"] = "1"
    return env


def test_readme_first_chat_runs_as_written(control: ControlProcess, tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", first_chat_block()],
        cwd=tmp_path,
        env=env_for(control),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"alice: Hello Bob! Chapter three tonight\?", out), out
    assert re.search(r"bob: Yes, see you at eight\.", out), out
    assert "safety number with bob (not verified):" in out
    assert re.search(r"(\d{5} ){11}\d{5}", out)
    assert result.stderr == ""


def run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_json_output_and_one_sentence_errors(control: ControlProcess, tmp_path: Path) -> None:
    env = env_for(control) | {"HUSHROOM_PASSPHRASE": "pw for the json test"}
    reg = run_cli(
        ["register", "carol", "--profile", "c", "--server", control.url, "--json"], tmp_path, env
    )
    assert reg.returncode == 0, reg.stderr
    assert json.loads(reg.stdout)["handle"] == "carol"
    devices = run_cli(["devices", "--profile", "c", "--json"], tmp_path, env)
    (device,) = json.loads(devices.stdout)
    assert device["this"] is True
    # Errors: one plain sentence on stderr, non-zero status, nothing on stdout.
    missing = run_cli(["dm", "nobody", "hi", "--profile", "c"], tmp_path, env)
    assert missing.returncode != 0 and missing.stdout == ""
    assert missing.stderr.strip() == "hushroom: No user has the handle 'nobody'."
    wrong = run_cli(
        ["devices", "--profile", "c"], tmp_path, env | {"HUSHROOM_PASSPHRASE": "not it"}
    )
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        "hushroom: Wrong passphrase for this profile, or the store is damaged."
    )
    nothing = run_cli(["read", "--profile", "nowhere"], tmp_path, env)
    assert nothing.returncode != 0 and nothing.stderr.count("\n") == 1
    down = run_cli(
        ["register", "dave", "--profile", "d", "--server", "http://127.0.0.1:9"], tmp_path, env
    )
    assert down.returncode == 1 and "cannot reach the server" in down.stderr.lower()
    assert run_cli(["--help"], tmp_path, env).returncode == 0
