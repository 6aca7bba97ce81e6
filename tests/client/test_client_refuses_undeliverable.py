"""The SDK refuses, before anything is encrypted or sent, a message every receiver would
drop: too long, not valid Unicode, or with a timer outside what receivers accept.

Receivers check every decrypted body (``client.envelope.decode_body_untrusted``); a sender
that posted such a body would believe it delivered a message nobody ever sees. Each test
runs a real ``python -m control`` and checks that nothing reached the recipient's queue.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from client_live import ControlProcess
from lying_server import queued_envelopes

from client import Client, UsageError
from client.envelope import MAX_EXPIRY_S, MAX_TEXT

pytestmark = pytest.mark.slow

PASS = "correct horse battery staple"


async def test_a_dm_receivers_would_drop_is_refused_and_nothing_is_sent(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice = await Client.register(tmp_path / "alice", PASS, control.url, "alice")
    bob = await Client.register(tmp_path / "bob", PASS, control.url, "bob")
    try:
        refused: list[tuple[str, int | None]] = [
            ("x" * (MAX_TEXT + 1), None),
            ("lone surrogate \ud800", None),
            ("a timer of zero", 0),
            ("a timer over a year", MAX_EXPIRY_S + 1),
        ]
        for text, expires_in in refused:
            with pytest.raises(UsageError):
                await alice.send_dm("bob", text, expires_in=expires_in)
        assert queued_envelopes(control.database, bob.device_id) == []

        # The longest text receivers accept still goes through, and arrives intact.
        longest = "y" * MAX_TEXT
        await alice.send_dm("bob", longest, expires_in=MAX_EXPIRY_S)
        assert [m.body for m in await bob.sync()] == [longest]
    finally:
        # Open connections would hold the server's graceful stop for seconds.
        await alice.aclose()
        await bob.aclose()


async def test_a_channel_message_receivers_would_drop_is_refused(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice = await Client.register(tmp_path / "alice", PASS, control.url, "alice")
    bob = await Client.register(tmp_path / "bob", PASS, control.url, "bob")
    try:
        guild = await alice.api.create_guild("refusals")
        general = guild.channels[0]
        await bob.api.accept_invite(await alice.api.create_invite(general.id))

        with pytest.raises(UsageError):
            await alice.send_channel(general.id, "z" * (MAX_TEXT + 1))
        # Not even the sender-key distribution went out: the refusal came first.
        assert queued_envelopes(control.database, bob.device_id) == []
        assert await bob.sync_channel(general.id) == []
        await alice.send_channel(general.id, "short enough")
        assert [m.body for m in await bob.sync_channel(general.id)] == ["short enough"]
    finally:
        await alice.aclose()
        await bob.aclose()
