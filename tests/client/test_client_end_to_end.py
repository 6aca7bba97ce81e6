"""The whole text path against a real ``python -m control``: the server relays, clients read.

Three users — alice (guild owner), bob (two devices, the second linked later) and carol —
exchange DMs and a channel conversation. Along the way: a device added later reads new
messages but not old ones; a removed member cannot read what is sent after removal; a DM
to an offline recipient arrives exactly once when it reconnects; an envelope tampered with
in the server's store is rejected and reported; a changed identity is refused. At the end
the control store and its log hold none of the plaintexts sent.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from pathlib import Path

import pytest
import trio
from client_live import ControlProcess

from client import Client, Message, UntrustedDevice
from client.models import Device

pytestmark = pytest.mark.slow

PASS = "correct horse battery staple"


class Plaintexts:
    """Every plaintext sent, each with a random marker so a scan cannot miss or confuse it."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, label: str) -> str:
        text = f"{label} {secrets.token_hex(8)}"
        self.sent.append(text)
        return text


async def link_through_the_server(existing: Client, profile: Path, url: str) -> Client:
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


def bodies(messages: list[Message]) -> list[str]:
    return [m.body for m in messages]


async def drain(client: Client, count: int) -> list[Message]:
    """Follow the gateway until ``count`` new messages arrived (at most 10 s)."""
    got: list[Message] = []
    with trio.fail_after(10):
        async with client.live() as messages:
            async for message in messages:
                got.append(message)
                if len(got) >= count:
                    break
    return got


def tamper_envelopes_for(database: Path, device_id: str) -> int:
    """Flip one byte inside each ciphertext queued for ``device_id`` (a malicious server)."""
    db = sqlite3.connect(database, timeout=10)
    try:
        rows = db.execute(
            "SELECT id, ciphertext FROM envelopes WHERE recipient_device_id = ?", (device_id,)
        ).fetchall()
        for envelope_id, ciphertext in rows:
            data = bytearray(ciphertext)
            data[-20] ^= 0x01
            db.execute(
                "UPDATE envelopes SET ciphertext = ? WHERE id = ?", (bytes(data), envelope_id)
            )
        db.commit()
        return len(rows)
    finally:
        db.close()


def scan_for(paths: list[Path], needles: list[str]) -> list[tuple[str, str]]:
    found = []
    for path in paths:
        if not path.exists():
            continue
        blob = path.read_bytes()
        for needle in needles:
            if needle.encode() in blob:
                found.append((path.name, needle))
    return found


async def test_three_users_dms_channels_devices_removal_offline_tamper(
    control: ControlProcess, tmp_path: Path
) -> None:
    say = Plaintexts()
    url = control.url
    alice = await Client.register(tmp_path / "alice", PASS, url, "alice")
    bob = await Client.register(tmp_path / "bob", PASS, url, "bob")
    carol = await Client.register(tmp_path / "carol", PASS, url, "carol")

    # --- DMs, both ways ---------------------------------------------------------------
    first = say("alice to bob")
    await alice.send_dm("bob", first)
    assert bodies(await bob.sync()) == [first]
    assert await bob.sync() == []
    reply = say("bob to alice")
    await bob.send_dm("alice", reply)
    got = await alice.sync()
    assert bodies(got) == [reply] and got[0].sender_handle == "bob"
    assert bodies(await alice.dm_history("bob")) == [first, reply]

    # --- a channel conversation --------------------------------------------------------
    guild = await alice.api.create_guild("book club")
    general = guild.channels[0]
    code = await alice.api.create_invite(general.id)
    await bob.api.accept_invite(code)
    await carol.api.accept_invite(code)
    lines = [say("alice in general"), say("bob in general"), say("carol in general")]
    await alice.send_channel(general.id, lines[0])
    await bob.send_channel(general.id, lines[1])
    await carol.send_channel(general.id, lines[2])
    for reader in (alice, bob, carol):
        await reader.sync_channel(general.id)
        assert bodies(reader.history(f"ch:{general.id}")) == lines

    # --- a device added later reads new messages, not old ones -----------------------
    bob2 = await link_through_the_server(bob, tmp_path / "bob-laptop", url)
    assert len(await bob.devices()) == 2
    assert await bob2.sync() == []  # old DMs were never queued for it
    assert await bob2.sync_channel(general.id) == []  # old channel messages: no key
    kinds = [n.kind for n in bob2.notices()]
    assert kinds.count("undecryptable") == 3
    after_link = say("alice to both bob devices")
    await alice.send_dm("bob", after_link)
    assert bodies(await bob.sync()) == [after_link]
    assert bodies(await bob2.sync()) == [after_link]
    from_laptop = say("bob from the laptop to carol")
    await bob2.send_dm("carol", from_laptop)
    assert bodies(await carol.sync()) == [from_laptop]
    synced = await bob.sync()  # bob's phone gets the copy of what the laptop sent
    assert [(m.body, m.direction, m.conversation) for m in synced] == [
        (from_laptop, "out", f"dm:{carol.user_id}")
    ]
    new_line = say("alice after the laptop joined")
    await alice.send_channel(general.id, new_line)
    assert bodies(await bob2.sync_channel(general.id)) == [new_line]
    assert bodies(await bob.sync_channel(general.id)) == [new_line]
    assert bodies(await carol.sync_channel(general.id)) == [new_line]

    # --- a removed member cannot read what is sent after removal ------------------------
    await alice.api.kick(guild.id, carol.user_id)
    secret_line = say("alice after carol left")
    await alice.send_channel(general.id, secret_line)
    assert bodies(await bob.sync_channel(general.id)) == [secret_line]
    assert bodies(await bob2.sync_channel(general.id)) == [secret_line]
    # The server no longer shows carol the channel; even given the ciphertext (say, kept by
    # a compromised server), her client holds no key that opens it.
    stored = await alice.api.history(general.id, limit=1)
    assert stored[0].id and stored[0].author_id == alice.user_id
    assert await carol.receive_channel_messages(stored) == []
    # (carol was also told, earlier, that bob has a new device.)
    assert [n.kind for n in carol.notices()] == ["new_device", "undecryptable"]
    assert secret_line not in bodies(carol.history(f"ch:{general.id}"))

    # --- an offline recipient receives exactly once on reconnect ------------------------
    offline = say("alice to carol while carol is offline")
    await alice.send_dm("carol", offline)
    got = await drain(carol, 1)
    assert bodies(got) == [offline]
    # Reconnecting again delivers nothing twice: READY and REST both come back empty.
    with trio.move_on_after(1.5):
        extra = await drain(carol, 1)
        pytest.fail(f"delivered again: {extra}")
    assert bodies(await carol.dm_history("alice")) == [offline]

    # --- live delivery while connected (gateway) -----------------------------------------
    live_dm, live_line = say("bob to alice, live"), say("bob in general, live")
    received: list[Message] = []
    with trio.fail_after(10):
        async with alice.live() as messages:
            # alice is connected and caught up: these arrive as dispatches.
            await bob.send_dm("alice", live_dm)
            await bob.send_channel(general.id, live_line)
            async for message in messages:
                received.append(message)
                if len(received) == 2:
                    break
    assert sorted(bodies(received)) == sorted([live_dm, live_line])

    # --- a tampered envelope is rejected and reported --------------------------------------
    tampered = say("alice to bob, tampered by the server")
    await alice.send_dm("bob", tampered)
    assert tamper_envelopes_for(control.database, bob.device_id) == 1
    assert await bob.sync() == []
    notices = bob.notices()
    assert [n.kind for n in notices] == ["rejected"], notices
    assert "alice" in notices[0].text
    assert await bob.sync() == []  # acked and dropped, not retried forever
    intact = say("alice to bob, intact")
    await alice.send_dm("bob", intact)
    assert bodies(await bob.sync()) == [intact]  # the session survived the forgery
    # The laptop got the untouched copies, and the copy of bob's live DM to alice.
    assert sorted(bodies(await bob2.sync())) == sorted([live_dm, tampered, intact])

    # --- a changed identity is surfaced, never silently accepted ---------------------------
    await alice.mark_verified("carol")
    _, verified = await alice.safety_number("carol")
    assert verified
    ghost = Device("ghostdevice0000000000000", secrets.token_bytes(32))
    db = sqlite3.connect(control.database, timeout=10)
    with db:
        db.execute(
            "INSERT INTO devices (id, user_id, identity_key, created_day, last_seen_day) "
            "VALUES (?, ?, ?, 0, 0)",
            (ghost.id, carol.user_id, ghost.identity_key),
        )
    db.close()
    never = say("alice to carol after a ghost device appeared")
    # carol's account key never signed it: nothing is encrypted to it, and a server that
    # will not deliver without it gets nothing at all.
    with pytest.raises(UntrustedDevice, match="ghostdevice"):
        await alice.send_dm("carol", never)
    # (alice was told of the laptop earlier, then of the ghost — and refused to send.)
    assert [n.kind for n in alice.notices()] == ["new_device", "untrusted_device"]
    _, still_verified = await alice.safety_number("carol")
    assert still_verified  # a ghost does not change the account keys the number covers
    assert await carol.sync() == []
    say.sent.remove(never)  # never sent: it may not appear anywhere, but need not be scanned

    # --- disappearing messages ---------------------------------------------------------------
    fleeting = say("bob to alice, disappearing")
    await bob.send_dm("alice", fleeting, expires_in=60)
    assert bodies(await alice.sync()) == [fleeting]
    alice.store.purge_expired(now=time.time() + 61)
    bob.store.purge_expired(now=time.time() + 61)
    assert fleeting not in bodies(await alice.dm_history("bob"))
    assert fleeting not in bodies(await bob.dm_history("alice"))
    brief = say("bob in general, disappearing")
    posted = await bob.send_channel(general.id, brief, expires_in=60)
    assert bodies(await alice.sync_channel(general.id)) == [brief]
    assert await bob.expire_sent_messages() == 0  # not due yet
    assert await bob.expire_sent_messages(now=time.time() + 61) == 1
    alice.store.purge_expired(now=time.time() + 61)
    assert brief not in bodies(alice.history(f"ch:{general.id}"))
    assert brief not in bodies(bob.history(f"ch:{general.id}"))
    # The author removed the ciphertext from the server's retained history too.
    assert posted.id not in [m.id for m in await alice.api.history(general.id)]

    for client in (alice, bob, bob2, carol):
        await client.aclose()

    # --- the server holds and logged none of it ---------------------------------------------
    control.stop()
    data = control.data_dir
    files = [
        control.database,
        data / "control.sqlite3-wal",
        data / "control.sqlite3-shm",
        control.log_path,
    ]
    assert control.log_path.stat().st_size > 0
    assert scan_for(files, say.sent) == []
    # The clients' own stores are sealed too.
    stores = [tmp_path / p / "store.sqlite3" for p in ("alice", "bob", "bob-laptop", "carol")]
    assert scan_for(stores + [s.with_name("store.sqlite3-wal") for s in stores], say.sent) == []
