"""The encrypted key backup carries the account signing key (cross-signing), against a
real control process: a restored profile manages the account's devices under the same
key and knows the newest own list; a backup from before the key existed still imports,
and the restored profile says what it cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
import trio
from client_cli import Cli, passphrase_env
from client_live import ControlProcess
from lying_server import envelopes_for, plant_device, roll_back_device_list, stored_device_list
from nacl import pwhash
from nacl.secret import SecretBox

from client import Client, UntrustedDevice
from client.backup import NO_ACCOUNT_KEY
from e2ee import IdentityKeyPair, export_backup, import_backup
from e2ee.backup import MIN_MEMLIMIT, MIN_OPSLIMIT

pytestmark = pytest.mark.slow

PASS = "backup test passphrase"
BACKUP_PASS = "the backup's own passphrase"
FAST_KDF = {"opslimit": MIN_OPSLIMIT, "memlimit": MIN_MEMLIMIT}


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


def account_key_of(client: Client) -> IdentityKeyPair:
    return IdentityKeyPair(client.store.get("identity", "account_key"))


async def restore(client: Client, profile: Path, url: str) -> Client:
    """Back ``client`` up (through the encrypted file format), close it, and restore the
    backup into a new profile."""
    blob = export_backup(client.backup_contents(), BACKUP_PASS, **FAST_KDF)
    await client.aclose()
    return await Client.restore_backup(profile, PASS, url, import_backup(blob, BACKUP_PASS))


def bodies(messages: list[object]) -> list[str]:
    return [m.body for m in messages]  # type: ignore[attr-defined]


async def test_a_restored_profile_links_and_removes_devices_under_the_same_account_key(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice = await Client.register(tmp_path / "a", PASS, control.url, "alice")
    bob = await Client.register(tmp_path / "b", PASS, control.url, "bob")
    laptop = await link(alice, tmp_path / "laptop", control.url)
    key = account_key_of(alice)
    user_id, phone_key = alice.user_id, alice.identity.public

    restored = await restore(alice, tmp_path / "restored", control.url)
    assert restored.notices() == []
    assert account_key_of(restored).seed == key.seed

    # It links a new device with the next list, signed by the same account key.
    tablet = await link(restored, tmp_path / "tablet", control.url)
    served = await restored.api.device_directory(user_id)
    assert served.account_key == key.public and served.device_list is not None
    assert served.device_list.version == 3
    assert served.device_list.verifies(key.public, user_id)
    assert set(served.device_list.identity_keys) == {
        phone_key,
        laptop.identity.public,
        tablet.identity.public,
    }
    # The new device got the same key from it, and so can manage devices too.
    assert account_key_of(tablet).seed == key.seed

    # It removes one: the list without it, version 4, same key.
    await restored.remove_device(laptop.device_id)
    served = await restored.api.device_directory(user_id)
    assert served.device_list is not None and served.device_list.version == 4
    assert served.device_list.verifies(key.public, user_id)
    assert set(served.device_list.identity_keys) == {phone_key, tablet.identity.public}

    # The account's devices, restored one included, receive what bob sends next.
    await bob.send_dm("alice", "after the restore")
    assert bodies(await restored.sync()) == ["after the restore"]
    assert bodies(await tablet.sync()) == ["after the restore"]
    for client in (restored, tablet, laptop, bob):
        await client.aclose()


async def test_a_restored_profile_refuses_an_own_list_older_than_the_backed_up_one(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice = await Client.register(tmp_path / "a", PASS, control.url, "alice")
    bob = await Client.register(tmp_path / "b", PASS, control.url, "bob")
    laptop = await link(alice, tmp_path / "laptop", control.url)
    with_laptop = stored_device_list(control.database, alice.user_id)
    await alice.remove_device(laptop.device_id)
    user_id = alice.user_id
    restored = await restore(alice, tmp_path / "restored", control.url)

    # The operator brings the removed laptop back with the list that still named it: a
    # genuine signature, but older than the version the backup carried.
    back, _ = plant_device(control.database, user_id, laptop.identity)
    roll_back_device_list(control.database, user_id, with_laptop)
    with pytest.raises(UntrustedDevice, match=back):
        await restored.send_dm("bob", "never sent")
    notices = [n.text for n in restored.notices()]
    assert any("older device list of your account" in text for text in notices), notices
    assert envelopes_for(control.database, back) == 0
    for client in (restored, laptop, bob):
        await client.aclose()


def _old_format_backup(profile: Path, passphrase: str) -> bytes:
    """A backup as written before the account key was in it: the 7-field plaintext
    (identity seed, prekeys, sessions, sender keys), encrypted as export_backup does."""

    async def contents() -> list[object]:
        async with Client.open(profile, PASS) as client:
            now = client.backup_contents()
        return [
            11,
            1,
            now.identity.seed,
            None if now.prekeys is None else now.prekeys.serialize(),
            {label: s.serialize() for label, s in now.sessions.items()},
            {label: s.serialize() for label, s in now.sender_keys.items()},
            {label: r.serialize() for label, r in now.sender_key_receivers.items()},
        ]

    plaintext = msgpack.packb(trio.run(contents), use_bin_type=True)
    salt, nonce = bytes(range(16)), bytes(range(24))
    key = pwhash.argon2id.kdf(32, passphrase.encode(), salt, **FAST_KDF)
    ct = SecretBox(key).encrypt(plaintext, nonce).ciphertext
    return msgpack.packb([10, 1, salt, MIN_OPSLIMIT, MIN_MEMLIMIT, nonce, ct], use_bin_type=True)


def test_the_cli_restores_the_account_key_and_still_imports_an_old_backup(
    control: ControlProcess, tmp_path: Path
) -> None:
    cli = Cli(tmp_path, passphrase_env(PASS, HUSHROOM_BACKUP_PASSPHRASE=BACKUP_PASS))
    cli("register", "ann", "--profile", "a", "--server", control.url)
    cli("register", "ben", "--profile", "b", "--server", control.url)
    cli("dm", "ann", "before the backup", "--profile", "b")
    assert len(cli.json("read", "@ben", "--profile", "a")) == 1  # type: ignore[arg-type]

    # A backup written now: the restored profile links a device, and says nothing more.
    cli("backup", "export", "ann.backup", "--profile", "a")
    restored = cli(
        "backup", "import", "ann.backup", "--profile", "r", "--server", control.url, "--json"
    )
    assert json.loads(restored.stdout)["handle"] == "ann"
    assert "notice" not in restored.stdout and restored.stderr == ""
    joining = cli.popen("join-device", "--profile", "tablet", "--server", control.url, "--json")
    assert joining.stdout is not None
    code = json.loads(joining.stdout.readline())["code"]
    cli("link-device", code, "--profile", "r")
    _, err = joining.communicate(timeout=60)
    assert joining.returncode == 0, err
    assert len(cli.json("devices", "--profile", "r")) == 2  # type: ignore[arg-type]

    # A backup from before the account key was in it still imports, and says in one
    # line that device management needs the key from another device.
    (tmp_path / "old.backup").write_bytes(_old_format_backup(tmp_path / "a", BACKUP_PASS))
    old = cli("backup", "import", "old.backup", "--profile", "old", "--server", control.url)
    assert old.stdout == "restored ann into old\n"
    assert old.stderr == f"! {NO_ACCOUNT_KEY}\n"
    as_json = cli(
        "backup", "import", "old.backup", "--profile", "old2", "--server", control.url, "--json"
    )
    *notice, done = (json.loads(line) for line in as_json.stdout.strip().splitlines())
    assert notice == [{"notice": "no_account_key", "text": NO_ACCOUNT_KEY}]
    assert done["handle"] == "ann"
    # It sends and receives as before...
    cli("dm", "ann", "after the old restore", "--profile", "b")
    late = cli.json("read", "@ben", "--profile", "old")
    assert [m["body"] for m in late] == ["after the old restore"]  # type: ignore[union-attr]
    # ...but adds no device: one sentence, as the notice said.
    refused = cli("link-device", code, "--profile", "old", ok=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("hushroom: This device does not hold your account key")
    assert refused.stderr.count("\n") == 1
