"""``control.process.ControlProcess``: how tests, benchmarks and tools start control."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from control.process import ControlProcess, ControlStartError

pytestmark = pytest.mark.slow


def test_starts_on_a_port_the_os_picks_and_stops_with_exit_0(tmp_path: Path) -> None:
    control = ControlProcess(tmp_path / "data")
    try:
        host, port = control.host_port
        assert host == "127.0.0.1" and port > 0
        with urllib.request.urlopen(f"{control.url}/healthz", timeout=5) as response:
            assert json.load(response)["status"] == "ok"
    finally:
        assert control.stop() == 0


def test_a_control_that_cannot_start_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ControlStartError, match="exited before it was ready"):
        ControlProcess(tmp_path / "data", "--log-level", "loud")
