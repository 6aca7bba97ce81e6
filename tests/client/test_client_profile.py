"""Two processes on one profile (say `tail` running while `send` runs) never reuse a key."""

from __future__ import annotations

from pathlib import Path

import pytest
from client_live import ControlProcess

from client import Client

pytestmark = pytest.mark.slow


async def test_two_clients_on_one_profile_take_distinct_ratchet_steps(
    control: ControlProcess, tmp_path: Path
) -> None:
    first = await Client.register(tmp_path / "a", "pw", control.url, "alice")
    bob = await Client.register(tmp_path / "b", "pw", control.url, "bob")
    second = Client.open(tmp_path / "a", "pw")
    guild = await first.api.create_guild("g")
    channel = guild.channels[0].id
    await bob.api.accept_invite(await first.api.create_invite(channel))
    for i in range(3):
        await first.send_dm("bob", f"dm from the first {i}")
        await second.send_dm("bob", f"dm from the second {i}")
        await first.send_channel(channel, f"channel from the first {i}")
        await second.send_channel(channel, f"channel from the second {i}")
    dms = {m.body for m in await bob.sync()}
    assert dms == {f"dm from the {w} {i}" for w in ("first", "second") for i in range(3)}
    lines = [m.body for m in await bob.sync_channel(channel)]
    assert lines == [f"channel from the {w} {i}" for i in range(3) for w in ("first", "second")]
    assert [n.kind for n in bob.notices()] == []
    for client in (first, second, bob):
        await client.aclose()


async def test_a_revoked_token_is_renewed_by_signing_in_again(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice = await Client.register(tmp_path / "a", "pw", control.url, "alice")
    old = alice.api.token
    await alice.api.logout()  # the server forgets the token
    assert (await alice.api.me()).handle == "alice"
    assert alice.api.token not in (None, old)
    await alice.aclose()
    # The renewed token was saved: a new process uses it without signing in.
    again = Client.open(tmp_path / "a", "pw")
    assert again.api.token == alice.api.token
    await again.aclose()
