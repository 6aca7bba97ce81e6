"""Cross-signing against a lying server: a real control process whose operator edits its
database between requests (tests/client/lying_server.py), and real clients.

Every lie — a device planted on one's own account or a contact's, a device list rolled
back to bring a removed device back, a list the account key did not sign, a replaced
account key — ends with nothing encrypted to a device the account did not sign and a
notice the user sees; the legitimate flows (linking, a contact's new device, removal)
keep working without anything to verify again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from client_live import ControlProcess
from lying_server import (
    envelopes_for,
    forge_device_list,
    plant_device,
    replace_account_key,
    roll_back_device_list,
    stored_device_list,
)

from client import Client, IdentityChanged, UntrustedDevice, UsageError

pytestmark = pytest.mark.slow

PASS = "pw"


async def link(existing: Client, profile: Path, url: str) -> Client:
    """A new device joins (showing a code) while ``existing`` links it with that code."""
    send_code, receive_code = trio.open_memory_channel[str](1)
    joined: list[Client] = []

    async def join() -> None:
        joined.append(
            await Client.join_device(
                profile, PASS, url, lambda secret, _ttl: send_code.send_nowait(secret.code)
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(join)
        await existing.link_device(await receive_code.receive())
    return joined[0]


def bodies(messages: list[object]) -> list[str]:
    return [m.body for m in messages]  # type: ignore[attr-defined]


def kinds(client: Client) -> list[str]:
    return [n.kind for n in client.notices()]


async def acquainted(
    control: ControlProcess, tmp_path: Path, greeting: str
) -> tuple[Client, Client]:
    """alice and bob, registered, once alice's ``greeting`` reached bob (so each pinned
    the other's account key and list)."""
    alice = await Client.register(tmp_path / "a", PASS, control.url, "alice")
    bob = await Client.register(tmp_path / "b", PASS, control.url, "bob")
    await alice.send_dm("bob", greeting)
    assert bodies(await bob.sync()) == [greeting]
    return alice, bob


async def test_a_device_planted_on_your_own_account_receives_no_copy(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice, bob = await acquainted(control, tmp_path, "before")
    ghost, _ = plant_device(control.database, alice.user_id)

    # alice's client would have sent it a DEVICE_SYNC copy; now nothing goes out at all.
    with pytest.raises(UntrustedDevice, match=ghost):
        await alice.send_dm("bob", "never sent")
    notices = alice.notices()
    assert [n.kind for n in notices] == ["untrusted_device"]
    assert "your account" in notices[0].text and ghost in notices[0].text
    assert envelopes_for(control.database, ghost) == 0
    assert await bob.sync() == []

    # Both sides still see equal safety numbers (they cover the account keys), and
    # marking verified pins no ghost: bob's client refuses to send to it as well.
    mine, _ = await alice.safety_number("bob")
    theirs, _ = await bob.safety_number("alice")
    assert mine == theirs
    await bob.mark_verified("alice")
    with pytest.raises(UntrustedDevice, match=ghost):
        await bob.send_dm("alice", "never sent either")
    assert "untrusted_device" in kinds(bob)
    assert envelopes_for(control.database, ghost) == 0

    # Removing the stranger is an ordinary (signed) device removal; then all is well.
    await alice.remove_device(ghost)
    await alice.send_dm("bob", "after removal")
    assert bodies(await bob.sync()) == ["after removal"]
    await bob.send_dm("alice", "verified and delivered")
    assert bodies(await alice.sync()) == ["verified and delivered"]
    assert (await bob.safety_number("alice"))[1]  # still verified
    await alice.aclose()
    await bob.aclose()


async def test_a_device_planted_on_a_contacts_account_receives_nothing(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice, bob = await acquainted(control, tmp_path, "before")
    ghost, _ = plant_device(control.database, bob.user_id)

    # A fresh process: no cached list, the server's word is all it has.
    await alice.aclose()
    alice = Client.open(tmp_path / "a", PASS)
    with pytest.raises(UntrustedDevice, match=ghost):
        await alice.send_dm("bob", "never sent")
    notices = alice.notices()
    assert [n.kind for n in notices] == ["untrusted_device"]
    assert "bob" in notices[0].text and ghost in notices[0].text
    assert envelopes_for(control.database, ghost) == 0
    assert await bob.sync() == []
    # Nor does a list naming it, in a signature the account key did not make, help.
    forge_device_list(control.database, bob.user_id)
    await alice.aclose()
    alice = Client.open(tmp_path / "a", PASS)
    with pytest.raises(UntrustedDevice, match=ghost):
        await alice.send_dm("bob", "never sent")
    assert kinds(alice) == ["untrusted_device", "untrusted_device"]  # forged list, ghost
    assert envelopes_for(control.database, ghost) == 0
    await alice.aclose()
    await bob.aclose()


async def test_a_contacts_new_and_removed_devices_follow_their_signed_list(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice, bob = await acquainted(control, tmp_path, "hello")
    number, _ = await alice.safety_number("bob")
    await alice.mark_verified("bob")

    # bob adds a laptop through cross-signing: alice encrypts to it with nothing to
    # verify again — the safety number covers bob's account key, which did not change.
    laptop = await link(bob, tmp_path / "b2", control.url)
    await alice.aclose()
    alice = Client.open(tmp_path / "a", PASS)
    await alice.send_dm("bob", "to both")
    assert bodies(await bob.sync()) == ["to both"]
    assert bodies(await laptop.sync()) == ["to both"]
    assert await alice.safety_number("bob") == (number, True)
    assert kinds(alice) == ["new_device"]
    # The laptop, given the account key at linking, verifies alice alike.
    assert (await laptop.safety_number("alice"))[0] == number

    # bob removes the laptop; the server then brings it back, with the list that named
    # it: a genuine signature, an older version. alice's client keeps the newest.
    older = stored_device_list(control.database, bob.user_id)
    await bob.remove_device(laptop.device_id)
    await alice.aclose()
    alice = Client.open(tmp_path / "a", PASS)
    await alice.send_dm("bob", "to the phone only")
    assert bodies(await bob.sync()) == ["to the phone only"]
    assert kinds(alice) == []
    back, _ = plant_device(control.database, bob.user_id, laptop.identity)
    roll_back_device_list(control.database, bob.user_id, older)
    await alice.aclose()
    alice = Client.open(tmp_path / "a", PASS)
    with pytest.raises(UntrustedDevice, match=back):
        await alice.send_dm("bob", "never sent")
    notices = alice.notices()
    assert [n.kind for n in notices] == ["untrusted_device", "untrusted_device"]
    assert "older device list of bob" in notices[0].text
    assert envelopes_for(control.database, back) == 0
    await laptop.aclose()
    await alice.aclose()
    await bob.aclose()


async def test_a_kept_device_list_follows_changes_through_the_relays_409(
    control: ControlProcess, tmp_path: Path
) -> None:
    # alice's client keeps bob's checked list for as long as it runs: the relay refusing
    # a fan-out that does not name bob's current devices is what makes it look again.
    alice, bob = await acquainted(control, tmp_path, "hello")

    laptop = await link(bob, tmp_path / "b2", control.url)
    await alice.send_dm("bob", "to both")
    assert bodies(await bob.sync()) == ["to both"]
    assert bodies(await laptop.sync()) == ["to both"]
    assert kinds(alice) == ["new_device"]

    await bob.remove_device(laptop.device_id)
    await alice.send_dm("bob", "to the phone only")
    assert bodies(await bob.sync()) == ["to the phone only"]

    # A device the server plants is insisted on by the relay, and refused by the list.
    ghost, _ = plant_device(control.database, bob.user_id)
    with pytest.raises(UntrustedDevice, match=ghost):
        await alice.send_dm("bob", "never sent")
    assert envelopes_for(control.database, ghost) == 0
    await laptop.aclose()
    await alice.aclose()
    await bob.aclose()


async def test_a_replaced_account_key_is_an_identity_change(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice, bob = await acquainted(control, tmp_path, "hello")
    number_before, _ = await alice.safety_number("bob")

    # The operator draws its own account key for bob and signs a list with a ghost.
    ghost, _ = plant_device(control.database, bob.user_id)
    replace_account_key(control.database, bob.user_id)
    await alice.aclose()
    alice = Client.open(tmp_path / "a", PASS)
    with pytest.raises(IdentityChanged):
        await alice.send_dm("bob", "never sent")
    notices = alice.notices()
    assert [n.kind for n in notices] == ["identity_changed"]
    assert "verify bob --accept" in notices[0].text
    assert envelopes_for(control.database, ghost) == 0
    number_now, verified = await alice.safety_number("bob")
    assert number_now != number_before and not verified

    # bob's own client refuses the key it does not hold, and sends nothing either.
    with pytest.raises(IdentityChanged):
        await bob.send_dm("alice", "never sent")
    assert "your account" in bob.notices()[0].text
    await alice.aclose()
    await bob.aclose()


async def test_a_profile_from_before_cross_signing_sets_up_its_account_key(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice = await Client.register(tmp_path / "a", PASS, control.url, "alice")
    alice2 = await link(alice, tmp_path / "a2", control.url)
    bob = await Client.register(tmp_path / "b", PASS, control.url, "bob")
    await bob.send_dm("alice", "hello")
    assert bodies(await alice.sync()) == ["hello"]
    assert bodies(await alice2.sync()) == ["hello"]
    await bob.send_dm("alice", "hello again")
    # Each of alice's devices has pinned the other (as clients before cross-signing did).
    await alice.send_dm("bob", "hi")
    await alice2.send_dm("bob", "hi from the laptop")
    for client in (alice, alice2, bob):
        await client.aclose()
    # Back to before cross-signing: no account keys anywhere, only pinned device keys.
    forget_cross_signing(control.database, [tmp_path / p for p in ("a", "a2", "b")])

    # alice's first device starts first: it sets the key up for the devices it pinned
    # and hands it to the other one over their pairwise session.
    alice = Client.open(tmp_path / "a", PASS)
    assert bodies(await alice.sync()) == ["hello again", "hi from the laptop"]
    assert alice.store.get("identity", "account_key") is not None
    bob = Client.open(tmp_path / "b", PASS)
    assert bodies(await bob.sync()) == ["hi", "hi from the laptop"]  # bob's start-up
    # bob pinned alice's devices before; her account key is pinned on first sight now.
    await alice.send_dm("bob", "from the first device")
    assert bodies(await bob.sync()) == ["from the first device"]

    alice2 = Client.open(tmp_path / "a2", PASS)
    assert alice2.store.get("identity", "account_key") is None
    # Until the key arrives the second device cannot add or remove devices.
    with pytest.raises(UsageError, match="does not hold your account key"):
        await alice2.remove_device(alice.device_id)
    synced = await alice2.sync()
    assert sorted(bodies(synced)) == ["from the first device", "hello again", "hi"]
    assert alice2.store.get("identity", "account_key") == alice.store.get("identity", "account_key")
    await bob.send_dm("alice", "to both, cross-signed")
    assert bodies(await alice.sync()) == ["to both, cross-signed"]
    assert bodies(await alice2.sync()) == ["to both, cross-signed"]
    assert kinds(bob) == []  # alice's devices are the ones bob had pinned
    numbers = {(await c.safety_number(h))[0] for c, h in ((alice, "bob"), (alice2, "bob"))}
    assert numbers == {(await bob.safety_number("alice"))[0]}
    for client in (alice, alice2, bob):
        await client.aclose()


def forget_cross_signing(database: Path, profiles: list[Path]) -> None:
    """Make profiles and server look as they did before cross-signing existed."""
    import sqlite3

    from client.store import Store

    db = sqlite3.connect(database, timeout=10)
    with db:
        db.execute("DELETE FROM device_lists")
    db.close()
    for profile in profiles:
        store = Store.open(profile, PASS)
        with store.transaction():
            store.delete("identity", "account_key")
            for user_id, contact in list(store.names("contact")):
                for field in ("account_key", "list"):
                    contact.pop(field, None)
                store.put("contact", user_id, contact)
        store.close()
