"""Fixtures for control-plane tests: an app with its lifespan running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from control_harness import Harness, make_config

from control.app import create_app
from control.config import ControlConfig


@pytest.fixture
def config(tmp_path: Path) -> ControlConfig:
    return make_config(tmp_path)


@pytest.fixture
async def harness(config: ControlConfig) -> AsyncIterator[Harness]:
    app = create_app(config)
    async with app.test_app():
        yield Harness(app)
