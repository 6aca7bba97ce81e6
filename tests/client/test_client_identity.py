"""A changed identity key is never silently accepted (a malicious server), and prekeys are
kept topped up and rotated."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest
from client_live import ControlProcess

from client import Client, UntrustedDevice
from client.models import PrekeyCounts
from e2ee.identity import MAX_SEEN_BASE_KEYS

pytestmark = pytest.mark.slow


async def test_a_swapped_device_key_is_never_encrypted_to(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice = await Client.register(tmp_path / "a", "pw", control.url, "alice")
    bob = await Client.register(tmp_path / "b", "pw", control.url, "bob")
    await alice.send_dm("bob", "before the swap")
    assert [m.body for m in await bob.sync()] == ["before the swap"]
    number_before, _ = await alice.safety_number("bob")

    # The server swaps the key of bob's (only) device for one it controls.
    db = sqlite3.connect(control.database, timeout=10)
    with db:
        db.execute(
            "UPDATE devices SET identity_key = ? WHERE id = ?",
            (secrets.token_bytes(32), bob.device_id),
        )
    db.close()

    # bob's account key never signed the new key: a fresh process (no cached list)
    # encrypts nothing to it and says why. The safety number covers the account keys,
    # which did not change: there is nothing to accept.
    await alice.aclose()
    alice = Client.open(tmp_path / "a", "pw")
    with pytest.raises(UntrustedDevice):
        await alice.send_dm("bob", "never sent")
    notices = alice.notices()
    assert [n.kind for n in notices] == ["untrusted_device"]
    assert "bob" in notices[0].text and bob.device_id in notices[0].text
    assert await bob.sync() == []
    assert await alice.safety_number("bob") == (number_before, False)
    await alice.aclose()
    await bob.aclose()


async def test_prekeys_are_topped_up_and_rotated(control: ControlProcess, tmp_path: Path) -> None:
    alice = await Client.register(tmp_path / "a", "pw", control.url, "alice")
    bob = await Client.register(tmp_path / "b", "pw", control.url, "bob")
    # Most one-time prekeys of both kinds are gone (claimed by others, say).
    db = sqlite3.connect(control.database, timeout=10)
    with db:
        for table in ("one_time_prekeys", "pq_one_time_prekeys"):
            db.execute(
                f"DELETE FROM {table} WHERE device_id = ? AND key_id NOT IN "
                f"(SELECT key_id FROM {table} WHERE device_id = ? LIMIT 15)",
                (alice.device_id, alice.device_id),
            )
    db.close()
    assert await alice.api.key_count() == PrekeyCounts(15, 15)
    spk_before = alice.prekeys.current_signed_prekey.key_id
    assert await alice.maintain_prekeys() == PrekeyCounts(115, 115)
    assert alice.prekeys.current_signed_prekey.key_id == spk_before  # not due yet
    # A week later the signed and PQ prekeys are replaced; sessions still open with them.
    alice.store.put("identity", "prekeys_rotated_at", 0.0)
    await alice.maintain_prekeys()
    (bundle,) = await bob.api.claim_bundles(alice.user_id)
    assert bundle.signed_prekey_id == alice.prekeys.current_signed_prekey.key_id != spk_before
    await bob.send_dm("alice", "after the rotation")
    assert [m.body for m in await alice.sync()] == ["after the rotation"]
    # Handled-envelope marks are forgotten once the relay could no longer resend them.
    assert alice.prune_envelope_marks() == 0
    assert alice.prune_envelope_marks(now=10**10) == 1
    await alice.aclose()
    await bob.aclose()


async def test_the_signed_prekey_turns_over_before_its_replay_record_fills(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice = await Client.register(tmp_path / "a", "pw", control.url, "alice")
    bob = await Client.register(tmp_path / "b", "pw", control.url, "bob")
    # alice's signed prekey has opened three quarters as many sessions as its replay
    # record holds (e2ee refuses new sessions once it is full).
    prekeys = alice.prekeys
    spk_before = prekeys.current_signed_prekey.key_id
    pq_before = prekeys.current_pq_prekey.key_id
    for _ in range(MAX_SEEN_BASE_KEYS * 3 // 4):
        prekeys.seen_base_keys.add(spk_before, secrets.token_bytes(32), secrets.token_bytes(32))
    assert prekeys.replay_record_nearly_full
    alice.store.put("identity", "prekeys", prekeys.serialize())

    # Maintenance turns the signed prekey over though the week is not up (the PQ
    # last-resort prekey stays), and publishes it; sessions open under the new one.
    await alice.maintain_prekeys()
    assert not alice.prekeys.replay_record_nearly_full
    assert alice.prekeys.current_signed_prekey.key_id != spk_before
    assert alice.prekeys.current_pq_prekey.key_id == pq_before
    (bundle,) = await bob.api.claim_bundles(alice.user_id)
    assert bundle.signed_prekey_id == alice.prekeys.current_signed_prekey.key_id
    await bob.send_dm("alice", "under the new signed prekey")
    assert [m.body for m in await alice.sync()] == ["under the new signed prekey"]
    await alice.aclose()
    await bob.aclose()
