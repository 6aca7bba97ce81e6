"""Fixtures for the TURN tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from turn_support import TurnProcess, start_turn


@pytest.fixture
def turn_server() -> Iterator[TurnProcess]:
    """A TURN process on loopback that lets loopback peers through (tests only)."""
    turn = start_turn("--listen", "127.0.0.1:0", "--allow-loopback-peers", "--bandwidth", "0")
    try:
        yield turn
    finally:
        turn.stop()
