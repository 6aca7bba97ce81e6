"""The ``hushroom`` command and each package's ``python -m`` entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HUSHROOM = str(Path(sys.executable).parent / "hushroom")


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("package", ["control", "sfu", "turn", "loadtest", "hushroom"])
def test_every_package_runs_as_a_module_with_help(package: str) -> None:
    result = _run(sys.executable, "-m", package, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize("command", ["up", "control", "sfu", "turn", "loadtest"])
def test_console_script_subcommands_have_help(command: str) -> None:
    result = _run(HUSHROOM, command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_version_and_unknown_command() -> None:
    version = _run(HUSHROOM, "version")
    assert version.returncode == 0 and version.stdout.startswith("hushroom ")
    unknown = _run(HUSHROOM, "frobnicate")
    assert unknown.returncode == 2 and "unknown command" in unknown.stderr


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["up", "--control-port", "99999"], "--control-port"),
        (["up", "--workers", "many"], "--workers"),
        (["up", "--host", "0.0.0.0"], "--announce-ip"),
        (["up", "--host", "localhost"], "--host"),
        (["control", "--listen", "localhost"], "--listen"),
        (["control", "--log-level", "loud"], "--log-level"),
        (["sfu", "--control-url", "http://x"], "--control-url"),
        (["sfu", "--listen-ip", "not-an-ip"], "--listen-ip"),
        (["turn", "--listen", "nowhere"], "--listen"),
    ],
)
def test_bad_config_value_is_one_line_naming_the_key_and_exit_2(
    args: list[str], key: str, tmp_path: Path
) -> None:
    result = _run(HUSHROOM, *args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert key in result.stderr


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [HUSHROOM, "control"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"HUSHROOM_CONTROL_LISTEN": "127.0.0.1:http", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "HUSHROOM_CONTROL_LISTEN" in result.stderr and result.stderr.count("\n") == 1


def test_loadtest_routes_to_the_harness_scenarios() -> None:
    bare = _run(HUSHROOM, "loadtest")
    assert bare.returncode == 2 and "voice-room" in bare.stderr
    room = _run(HUSHROOM, "loadtest", "voice-room", "--help")
    assert room.returncode == 0 and "--participants" in room.stdout and "--spawn" in room.stdout
