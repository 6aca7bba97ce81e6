"""Addresses never survive into the log."""

from __future__ import annotations

import logging

import pytest

from control.logs import RedactAddresses


@pytest.mark.parametrize(
    "text",
    ["Running on http://127.0.0.1:8080", "peer 10.0.0.7 reset", "from [::1]:5000", "fe80::1%eth0"],
)
def test_addresses_are_redacted(text: str) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (text,), None)
    RedactAddresses().filter(record)
    message = record.getMessage()
    assert "<address>" in message
    for literal in ("127.0.0.1", "10.0.0.7", "::1", "fe80::1"):
        assert literal not in message


def test_versions_and_times_are_left_alone() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "v1.2.3 at 06:25:01", None, None)
    RedactAddresses().filter(record)
    assert record.getMessage() == "v1.2.3 at 06:25:01"
