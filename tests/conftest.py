"""Suite-wide set-up: which tests pytest-xdist keeps on one worker.

The suite runs on two workers (pyproject's addopts, ``--dist loadgroup``). Tests that carry
real-time media — WebRTC calls (aiortc, Chromium), the load tester, TURN relays measured for
loss — time what they receive, so two of them at once on a two-core machine would each get
half a core and could miss their figures. They form one group that one worker runs one
after another, while the other worker takes the rest (API, cryptography, CLI, parsers).
"""

from __future__ import annotations

import pytest

#: Test files (path prefixes under the repository) whose tests carry real-time media.
MEDIA_TESTS = (
    "tests/loadtest/",
    "tests/sfu/test_sfu_interop",
    "tests/sfu/test_sfu_client_call",
    "tests/client/test_voice",
    "tests/control/test_voice_live",
    "tests/turn/test_turn_interop",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put every media test in the ``media`` xdist group (ignored when run serially)."""
    root = config.rootpath
    for item in items:
        path = item.path.relative_to(root).as_posix()
        if path.startswith(MEDIA_TESTS):
            item.add_marker(pytest.mark.xdist_group("media"))
