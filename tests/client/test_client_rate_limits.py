"""The client waits out the server's rate limit (429 with ``retry_after``) instead of
failing, within a bounded budget, against a real control process."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from client_live import ControlProcess

from client import Client
from client.api import RATE_LIMIT_BUDGET_S
from client.errors import ApiError

pytestmark = pytest.mark.slow

PASS = "rate limit test passphrase"


async def test_requests_beyond_the_burst_are_waited_out_not_failed(tmp_path: Path) -> None:
    # 4 requests a second, a burst of 4: the twelve calls below need about two seconds.
    server = ControlProcess(
        tmp_path / "control-data",
        tmp_path / "control.log",
        *("--rate-per-s", "4", "--rate-burst", "4"),
    )
    try:
        ann = await Client.register(tmp_path / "a", PASS, server.url, "ann")
        async with ann:
            started = trio.current_time()
            for _ in range(12):
                assert len(await ann.api.devices(ann.user_id)) == 1
            assert trio.current_time() - started >= 1.5
    finally:
        server.stop()


async def test_a_rate_limit_longer_than_the_budget_reaches_the_caller(tmp_path: Path) -> None:
    # One request per 100 s: the second call would wait longer than the budget allows.
    server = ControlProcess(
        tmp_path / "control-data",
        tmp_path / "control.log",
        *("--rate-per-s", "0.01", "--rate-burst", "20"),
    )
    try:
        ann = await Client.register(tmp_path / "a", PASS, server.url, "ann")
        async with ann:
            with pytest.raises(ApiError) as refused:  # the burst is spent first
                for _ in range(40):
                    await ann.api.devices(ann.user_id)
            assert refused.value.status == 429
            assert refused.value.extra["retry_after"] > RATE_LIMIT_BUDGET_S
    finally:
        server.stop()
