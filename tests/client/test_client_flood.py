"""An anonymous flood does not lock people out: the anonymous routes cost work, not a
shared quota that a flooder can empty (issue 13, item 7)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from client_live import ControlProcess

from client import Client
from e2ee.linking import LinkingSecret

pytestmark = pytest.mark.slow

PASS = "flood test passphrase"
#: The flood's length: the price has settled by its second half (it rises a bit a second
#: from its resting 12 bits), and the registration and link below (done by about 6 s on
#: a busy two-core machine) happen inside it.
FLOOD_S = 14.0
#: What a legitimate registration or device link may take while the flood runs.
WITHIN_S = 15.0


async def test_registration_and_linking_succeed_during_an_anonymous_flood(
    tmp_path: Path,
) -> None:
    # Default limits: the shared per-route buckets that the flood emptied before.
    server = ControlProcess(tmp_path / "control-data", tmp_path / "control.log")
    flooders = [
        subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is awaited)
            [sys.executable, str(Path(__file__).with_name("flooder.py")), server.url, str(FLOOD_S)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        # Let the flood reach its pace and the price rise with it.
        await trio.sleep(4)
        started = time.monotonic()
        ann = await Client.register(tmp_path / "a", PASS, server.url, "ann")
        registered_s = time.monotonic() - started

        send_code, receive_code = trio.open_memory_channel[str](1)

        def show(secret: LinkingSecret, _ttl: int) -> None:
            send_code.send_nowait(secret.code)

        joined: list[Client] = []

        async def join() -> None:
            joined.append(await Client.join_device(tmp_path / "a2", PASS, server.url, show))

        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(join)
            await ann.link_device(await receive_code.receive())
        linked_s = time.monotonic() - started
        assert joined[0].user_id == ann.user_id and len(await joined[0].devices()) == 2
        assert registered_s < WITHIN_S and linked_s < WITHIN_S, (registered_s, linked_s)
        await joined[0].aclose()
        await ann.aclose()

        totals: dict[str, int] = {}
        late_accounts = 0
        for flooder in flooders:
            out, _ = flooder.communicate(timeout=FLOOD_S + 60)
            report = json.loads(out.strip().splitlines()[-1])
            for key, count in report["counts"].items():
                totals[key] = totals.get(key, 0) + count
            late_accounts += sum(1 for at in report["accounts_at"] if at >= FLOOD_S / 2)
        late_rate = late_accounts / (FLOOD_S / 2)
        print(
            f"registered in {registered_s:.2f} s, linked in {linked_s:.2f} s; flood: {totals}, "
            f"{late_rate:.1f} accounts/s in its second half"
        )
        # The flood ran and was priced: once the price had risen it got accounts only at
        # about the server's target rate (10/s per purpose), whatever work it could do (the
        # unpaid flood of the audit made 70 accounts a second).
        assert totals.get("register 201", 0) > 0 and totals.get("mailbox 201", 0) > 0
        assert late_rate < 2 * 10.0, late_rate
        assert not any(key.endswith(" 429") or key.endswith(" 500") for key in totals), totals
    finally:
        for flooder in flooders:
            flooder.kill()
            flooder.wait()
        server.stop()
