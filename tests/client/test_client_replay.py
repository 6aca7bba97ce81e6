"""A lying server cannot replay a first message, and first messages use one-time PQ keys.

Each test runs a real ``python -m control`` and tells its lies by editing the control
process's own database (:mod:`lying_server`): it withholds a device's one-time prekeys so
a first message uses only keys any number of messages can use, then queues that message
again under new envelope ids; or it serves a one-time PQ prekey as the last-resort kind.
The real clients refuse, say so, and the honest conversation goes on (docs/e2ee.md,
"Threat model").
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from client_live import ControlProcess
from lying_server import (
    pass_one_time_pq_prekey_off_as_last_resort,
    queued_envelopes,
    replay_envelope,
    strip_one_time_prekeys,
)

from client import Client, ClientError
from client.models import PrekeyCounts
from client.prekeys import OTK_BATCH, PQ_OTK_BATCH
from client.sessions import MAX_SESSIONS_PER_DEVICE

pytestmark = pytest.mark.slow

PASS = "correct horse battery staple"
#: More replays than a device keeps sessions with one peer: each accepted replay would put
#: a session in front, and this many would push the genuine one out.
REPLAYS = MAX_SESSIONS_PER_DEVICE + 1


def say(label: str) -> str:
    return f"{label} {secrets.token_hex(6)}"


def sessions_with(client: Client, peer: Client) -> int:
    """How many pairwise session states ``client`` keeps with ``peer``'s device."""
    return len(client.store.get("sessions", f"{peer.user_id}/{peer.device_id}", []))


async def test_a_replayed_first_message_is_refused_and_the_session_survives(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice = await Client.register(tmp_path / "alice", PASS, control.url, "alice")
    bob = await Client.register(tmp_path / "bob", PASS, control.url, "bob")

    # The operator withholds bob's one-time prekeys: alice's first message uses only the
    # signed prekey and the last-resort PQ prekey, so nothing single-use stops a replay.
    assert strip_one_time_prekeys(control.database, bob.device_id) == OTK_BATCH + PQ_OTK_BATCH
    secret = say("a disappearing first message")
    await alice.send_dm("bob", secret, expires_in=60)
    (first,) = queued_envelopes(control.database, bob.device_id)  # copied before bob acks
    assert [m.body for m in await bob.sync()] == [secret]
    reply = say("bob answers")
    await bob.send_dm("alice", reply)
    assert [m.body for m in await alice.sync()] == [reply]
    # The message disappears on bob's device on time.
    bob.store.purge_expired(now=time.time() + 120)
    assert secret not in [m.body for m in bob.history(f"dm:{alice.user_id}")]
    assert sessions_with(bob, alice) == 1

    for _ in range(REPLAYS):
        replay_envelope(control.database, first)
        assert await bob.sync() == [], "the replayed first message is shown again"
        notices = bob.notices()
        assert [n.kind for n in notices] == ["rejected"], notices
        assert "alice" in notices[0].text and "ReplayedMessage" in notices[0].text
    assert secret not in [m.body for m in bob.history(f"dm:{alice.user_id}")]
    assert sessions_with(bob, alice) == 1, "a replay made a session"

    # The genuine session goes on, both ways.
    later = say("alice, later")
    await alice.send_dm("bob", later)
    assert [m.body for m in await bob.sync()] == [later]
    back = say("bob, later")
    await bob.send_dm("alice", back)
    assert [m.body for m in await alice.sync()] == [back]
    assert bob.notices() == [] and alice.notices() == []
    await alice.aclose()
    await bob.aclose()


async def test_first_messages_use_a_one_time_pq_prekey_then_the_last_resort(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice = await Client.register(tmp_path / "alice", PASS, control.url, "alice")
    bob = await Client.register(tmp_path / "bob", PASS, control.url, "bob")
    carol = await Client.register(tmp_path / "carol", PASS, control.url, "carol")
    assert await bob.api.key_count() == PrekeyCounts(OTK_BATCH, PQ_OTK_BATCH)
    assert len(bob.prekeys.pq_one_time_prekeys) == PQ_OTK_BATCH

    # alice's first message takes one one-time key of each kind from the directory, and
    # bob's device uses (and forgets) the one-time PQ key it carried.
    hello = say("alice's first message")
    await alice.send_dm("bob", hello)
    assert await bob.api.key_count() == PrekeyCounts(OTK_BATCH - 1, PQ_OTK_BATCH - 1)
    assert [m.body for m in await bob.sync()] == [hello]
    assert len(bob.prekeys.pq_one_time_prekeys) == PQ_OTK_BATCH - 1
    assert len(bob.prekeys.one_time_prekeys) == OTK_BATCH - 1

    # Once they have run out, a bundle carries the last-resort PQ prekey, and it works.
    strip_one_time_prekeys(control.database, bob.device_id)
    (bundle,) = await alice.api.claim_bundles(bob.user_id)
    assert bundle.pq_prekey_one_time is False
    assert bundle.pq_prekey_id == bob.prekeys.current_pq_prekey.key_id
    assert bundle.one_time_prekey is None
    late = say("carol, after the one-time keys ran out")
    await carol.send_dm("bob", late)
    assert [m.body for m in await bob.sync()] == [late]
    assert len(bob.prekeys.pq_one_time_prekeys) == PQ_OTK_BATCH - 1, "no one-time key used"
    assert bob.notices() == []

    # bob tops both kinds up.
    assert await bob.maintain_prekeys() == PrekeyCounts(OTK_BATCH, PQ_OTK_BATCH)
    await alice.aclose()
    await bob.aclose()
    await carol.aclose()


async def test_a_one_time_pq_prekey_served_as_the_last_resort_is_refused(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice = await Client.register(tmp_path / "alice", PASS, control.url, "alice")
    bob = await Client.register(tmp_path / "bob", PASS, control.url, "bob")
    # Served as the last-resort key, a one-time key could open any number of sessions;
    # its signature says which kind it is.
    pass_one_time_pq_prekey_off_as_last_resort(control.database, bob.device_id)
    with pytest.raises(ClientError, match="do not verify"):
        await alice.send_dm("bob", "never sent")
    assert await bob.sync() == []
    await alice.aclose()
    await bob.aclose()
