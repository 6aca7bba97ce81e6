"""Fixtures for the client tests: a fresh control plane process per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from client_live import ControlProcess, generous_control


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlProcess]:
    """A fresh control plane for one test (generous rate limits: tests are bursty)."""
    server = generous_control(tmp_path, "control")
    try:
        yield server
    finally:
        server.stop()
