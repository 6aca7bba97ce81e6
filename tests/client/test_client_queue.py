"""A stuffed envelope queue and the gateway's session ends, against a real control process.

Issue 13: a queue larger than a gateway frame must neither stop a device from following
live nor lose or repeat anything (item 5); a session revoked while connected ends the
gateway with a typed error, and one that expires is renewed without the caller noticing
(item 2).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from client_cli import Cli, passphrase_env
from client_live import ControlProcess

from client import Client
from client.errors import SessionRevoked
from contract.gateway import MAX_SERVER_FRAME, Close

pytestmark = pytest.mark.slow

#: Three senders, each within the relay's per-sender quota (8 MiB), together queue more
#: than a gateway frame may hold (16 MiB).
SENDERS = 3
PER_SENDER = 125
#: A long text: 16,000 characters (a body holds at most 16 KiB of them), most of them
#: three bytes long in UTF-8, so its padded bucket is 48 KiB, the largest that still fits a
#: 64 KiB ciphertext.
LONG = 16_000


def queued_bytes(control: ControlProcess) -> int:
    """Ciphertext bytes the relay holds (read from its SQLite file)."""
    with sqlite3.connect(control.database) as db:
        (total,) = db.execute(
            "SELECT coalesce(sum(length(ciphertext)), 0) FROM envelopes"
        ).fetchone()
    return int(total)


async def stuff(control: ControlProcess, tmp_path: Path, victim: str) -> list[Client]:
    """Senders queue SENDERS × PER_SENDER long DMs for ``victim``; returns the senders."""
    senders = [
        await Client.register(tmp_path / f"s{i}", "pw", control.url, f"sender{i}")
        for i in range(SENDERS)
    ]

    async def send_all(i: int, sender: Client) -> None:
        for n in range(PER_SENDER):
            body = f"s{i}-{n:03d} "
            await sender.send_dm(victim, body + "€" * (LONG - len(body)))

    async with trio.open_nursery() as nursery:
        for i, sender in enumerate(senders):
            nursery.start_soon(send_all, i, sender)
    return senders


async def test_tail_follows_live_and_shows_a_stuffed_queue_once(
    control: ControlProcess, tmp_path: Path
) -> None:
    cli = Cli(tmp_path, passphrase_env("queue test passphrase"))
    cli("register", "vic", "--profile", "v", "--server", control.url)
    senders = await stuff(control, tmp_path, "vic")
    assert queued_bytes(control) > MAX_SERVER_FRAME, "more than one gateway frame holds"
    queued = {f"s{i}-{n:03d}" for i in range(SENDERS) for n in range(PER_SENDER)}

    total = len(queued) + 1
    tail = cli.popen("tail", "--profile", "v", "--json", "--count", str(total), "--timeout", "80")
    assert tail.stdout is not None
    stdout = tail.stdout
    shown: list[str] = []

    async def next_line() -> str:
        line = await trio.to_thread.run_sync(stdout.readline)
        assert line, f"tail ended early: {tail.communicate(timeout=10)[1]}"
        record = json.loads(line)
        return str(record["body"]).split(" ", 1)[0]

    try:
        with trio.fail_after(90):
            # The first message shown means tail is connected and following live.
            shown.append(await next_line())
            sent_at = time.monotonic()
            await senders[0].send_dm("vic", "live-one sent while the backlog drains")
            while "live-one" not in shown:
                shown.append(await next_line())
            live_after_s = time.monotonic() - sent_at
            live_at = len(shown)
            while len(shown) < total:
                shown.append(await next_line())
        _, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 0, err
    assert len(shown) == total
    # Live messages are not held up behind the backlog ...
    assert live_after_s < 5, f"the live DM took {live_after_s:.1f} s"
    assert live_at < total, "the live DM came only after the whole backlog"
    # ... and every queued DM is shown exactly once.
    assert sorted(shown) == sorted(queued | {"live-one"})
    assert queued_bytes(control) == 0, "everything was acknowledged"

    # Reading afterwards finds them all stored, and nothing new.
    for i in range(SENDERS):
        history = cli.json("read", f"@sender{i}", "--profile", "v", "--limit", "1000")
        assert isinstance(history, list)
        bodies = {str(m["body"]).split(" ", 1)[0] for m in history}
        assert {f"s{i}-{n:03d}" for n in range(PER_SENDER)} <= bodies
    assert cli.json("read", "--profile", "v") == []
    for sender in senders:
        await sender.aclose()


async def test_signing_out_ends_the_gateway_with_a_typed_error(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice = await Client.register(tmp_path / "a", "pw", control.url, "alice")
    token = alice.api.token
    logout = (
        "import sys, trio\n"
        "from client.api import ControlApi\n"
        "async def main():\n"
        "    api = ControlApi(sys.argv[1], sys.argv[2])\n"
        "    await api.logout()\n"
        "    await api.aclose()\n"
        "trio.run(main)\n"
    )
    with pytest.raises(SessionRevoked), trio.fail_after(20):
        async with alice.live() as messages:
            # Signed out from another process: this device's open gateway ends at once.
            done = await trio.to_thread.run_sync(
                lambda: subprocess.run(
                    [sys.executable, "-c", logout, control.url, str(token)], timeout=30
                )
            )
            assert done.returncode == 0
            ended_at = time.monotonic()
            async for _ in messages:
                pass
    assert time.monotonic() - ended_at < 5
    await alice.aclose()


async def test_tail_stops_with_one_line_when_signed_out(
    control: ControlProcess, tmp_path: Path
) -> None:
    ann = await Client.register(tmp_path / "a", "pw", control.url, "ann")
    ben = await Client.register(tmp_path / "b", "pw", control.url, "ben")
    await ann.aclose()
    await ben.send_dm("ann", "before the sign-out")
    tail = Cli(tmp_path, passphrase_env("pw")).popen(
        "tail", "--profile", "a", "--json", "--timeout", "60"
    )
    assert tail.stdout is not None and tail.stderr is not None
    try:
        line = await trio.to_thread.run_sync(tail.stdout.readline)
        assert json.loads(line)["body"] == "before the sign-out", "tail is following"
        signed_out = Client.open(tmp_path / "a", "pw")
        await signed_out.api.logout()
        await signed_out.aclose()
        _, err = await trio.to_thread.run_sync(lambda: tail.communicate(timeout=20))
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 1
    assert err == (
        "hushroom: The server ended this device's session (signed out, the device "
        "removed or the account deleted).\n"
    )
    await ben.aclose()


async def test_an_expired_session_is_renewed_and_the_gateway_resumes(tmp_path: Path) -> None:
    server = ControlProcess(
        tmp_path / "data",
        tmp_path / "control.log",
        "--session-ttl-s",
        "3",
        "--rate-per-s",
        "10000",
        "--rate-burst",
        "10000",
    )
    try:
        alice = await Client.register(tmp_path / "a", "pw", server.url, "alice")
        bob = await Client.register(tmp_path / "b", "pw", server.url, "bob")
        with trio.fail_after(60):
            async with alice.live() as messages:
                gateway = alice.gateway
                assert gateway is not None
                session_id = gateway.core.session_id
                # Tokens last 3 s: across 7 s the server closes the connection with 4021
                # at least twice, and each time the client signs in again and resumes.
                # (The passage of time is what is tested here.)
                for n in range(7):
                    await trio.sleep(1)
                    await bob.send_dm("alice", f"message {n}")
                    assert (await messages.receive()).body == f"message {n}"
                assert gateway.renewals >= 2
                assert gateway.last_close_code == Close.SESSION_EXPIRED
                assert gateway.core.session_id == session_id, "resumed, not identified"
                assert gateway.connections == 1 + gateway.renewals
        await alice.aclose()
        await bob.aclose()
    finally:
        server.stop()
