"""A lying server cannot forge the author of a channel message.

Each test runs a real ``python -m control``; the lie is told the way a malicious operator
would tell it — by editing the control process's own database between requests
(:mod:`lying_server`) — sometimes helped by a malicious member, mallory, whose real
client's parts send what an honest client never would. Each time the real client of
bob refuses the forgery and shows a notice, and the honest conversation goes on.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import msgpack
import pytest
from client_live import ControlProcess
from lying_server import insert_channel_message, relabel_channel_message_author

from client import Client, Message
from client.models import Channel
from client.notices import Notices
from client.permissions import VIEW_CHANNEL
from client.prekeys import Prekeys
from client.sessions import Sessions
from client.trust import Trust
from e2ee import MessageType, SenderKeyDistribution, SenderKeySender, pad

pytestmark = pytest.mark.slow

PASS = "correct horse battery staple"


def bodies(messages: list[Message]) -> list[str]:
    return [m.body for m in messages]


def say(label: str) -> str:
    return f"{label} {secrets.token_hex(6)}"


async def three_in_general(
    control: ControlProcess, tmp_path: Path
) -> tuple[Client, Client, Client, Channel]:
    """alice (owner), bob and mallory in a guild; each has written once in #general, so
    each follows the others' chains."""
    alice = await Client.register(tmp_path / "alice", PASS, control.url, "alice")
    bob = await Client.register(tmp_path / "bob", PASS, control.url, "bob")
    mallory = await Client.register(tmp_path / "mallory", PASS, control.url, "mallory")
    guild = await alice.api.create_guild("book club")
    general = guild.channels[0]
    code = await alice.api.create_invite(general.id)
    for member in (bob, mallory):
        await member.api.accept_invite(code)
    lines = [say(f"{c.handle} says hello") for c in (alice, bob, mallory)]
    for client, line in zip((alice, bob, mallory), lines, strict=True):
        await client.send_channel(general.id, line)
    for client in (alice, bob, mallory):
        await client.sync_channel(general.id)
        assert bodies(client.history(f"ch:{general.id}")) == lines
    return alice, bob, mallory, general


async def send_sender_key(sender: Client, to: Client, channel_id: str, plaintext: bytes) -> None:
    """``sender`` puts ``plaintext`` in a SENDER_KEY_DISTRIBUTION for ``channel_id`` to every
    device of ``to``, through its real pairwise sessions — as a modified client would, with
    no regard for who may read the channel."""
    store, api, account = sender.store, sender.api, sender.account
    trust = Trust(store, api, account, Notices(store))
    sessions = Sessions(store, api, account, trust, Prekeys(store, api, sender.identity))
    devices = await trust.devices_of(to.user_id, to.handle)
    await sessions.fan_out(
        {to.user_id: devices},
        lambda _u: channel_id.encode(),
        lambda _u: plaintext,
        lambda _u: MessageType.SENDER_KEY_DISTRIBUTION,
    )


def raw_body(text: str, handle: str, author: tuple[str, str]) -> bytes:
    """A channel message body written by hand, naming whichever author the writer likes."""
    fields = {
        "id": secrets.token_hex(12),
        "body": text,
        "ts": time.time(),
        "exp": None,
        "from": handle,
        "by": list(author),
    }
    return pad(msgpack.packb(fields, use_bin_type=True))


async def test_a_message_relabelled_as_another_members_is_refused(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice, bob, mallory, general = await three_in_general(control, tmp_path)
    conv = f"ch:{general.id}"

    # mallory writes; the operator says alice wrote it (her user, mallory's device).
    forged = say("mallory, passed off as alice: I resign")
    posted = await mallory.send_channel(general.id, forged)
    relabel_channel_message_author(control.database, posted.id, alice.user_id)
    assert await bob.sync_channel(general.id) == []
    notices = bob.notices()
    assert [n.kind for n in notices] == ["forged_author"], notices
    assert "alice" in notices[0].text and "mallory" in notices[0].text
    assert forged not in bodies(bob.history(conv))

    # The same with both labels alice's: alice's chain does not open it either.
    forged_again = say("mallory, labelled with alice's device too")
    posted = await mallory.send_channel(general.id, forged_again)
    relabel_channel_message_author(control.database, posted.id, alice.user_id, alice.device_id)
    assert await bob.sync_channel(general.id) == []
    notices = bob.notices()
    assert [n.kind for n in notices] == ["forged_author"], notices
    assert "mallory" in notices[0].text

    # The conversation goes on, each line under its real author.
    real = [say("alice, really"), say("mallory, really")]
    await alice.send_channel(general.id, real[0])
    await mallory.send_channel(general.id, real[1])
    got = await bob.sync_channel(general.id)
    assert [(m.body, m.sender_id, m.sender_handle) for m in got] == [
        (real[0], alice.user_id, "alice"),
        (real[1], mallory.user_id, "mallory"),
    ]
    assert bob.notices() == []
    for client in (alice, bob, mallory):
        await client.aclose()


async def test_a_key_passed_on_by_another_member_does_not_make_them_the_author(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice, bob, mallory, general = await three_in_general(control, tmp_path)

    # mallory follows alice's chain (she reads #general): she hands bob a copy of it as
    # her own key, and the operator labels alice's next message as mallory's.
    (state,) = [
        raw
        for label, raw in mallory.store.names("sender_in")
        if label.startswith(f"{general.id}/") and label.endswith(f"/{alice.device_id}")
    ]
    _, _, _, channel, [[key_id, iteration, chain_key, signing_key, _]] = msgpack.unpackb(state)
    copy = SenderKeyDistribution(channel, key_id, iteration, chain_key, signing_key)
    await send_sender_key(mallory, bob, general.id, copy.encode())
    words = say("alice's words, claimed by mallory")
    posted = await alice.send_channel(general.id, words)
    relabel_channel_message_author(control.database, posted.id, mallory.user_id, mallory.device_id)
    assert await bob.sync_channel(general.id) == []
    assert [n.kind for n in bob.notices()] == ["forged_author"]
    assert words not in bodies(bob.history(f"ch:{general.id}"))

    # Untouched, alice's and mallory's next lines read as theirs.
    real = [say("alice again"), say("mallory again")]
    await alice.send_channel(general.id, real[0])
    await mallory.send_channel(general.id, real[1])
    got = await bob.sync_channel(general.id)
    assert [(m.body, m.sender_id) for m in got] == [
        (real[0], alice.user_id),
        (real[1], mallory.user_id),
    ]
    assert bob.notices() == []
    for client in (alice, bob, mallory):
        await client.aclose()


async def test_a_key_planted_by_someone_who_cannot_read_the_channel_is_refused(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice, bob, mallory, general = await three_in_general(control, tmp_path)
    # #secret: @everyone may not view it; bob may (alice owns the guild).
    secret = await alice.api.create_channel(general.guild_id, "secret")
    deny_all = {"type": "role", "allow": 0, "deny": VIEW_CHANNEL}
    allow_bob = {"type": "member", "allow": VIEW_CHANNEL, "deny": 0}
    await alice.api.call("PUT", f"/channels/{secret.id}/permissions/{general.guild_id}", deny_all)
    await alice.api.call("PUT", f"/channels/{secret.id}/permissions/{bob.user_id}", allow_bob)
    opening = say("alice in secret")
    await alice.send_channel(secret.id, opening)
    assert bodies(await bob.sync_channel(secret.id)) == [opening]

    # mallory, who cannot see #secret, hands bob a key for it; the operator stores
    # messages under that key in #secret, labelled alice's and then mallory's own.
    planted = SenderKeySender(secret.id.encode())
    await send_sender_key(mallory, bob, secret.id, planted.distribution().encode())
    as_alice = say("planted, as alice")
    insert_channel_message(
        control.database,
        secret.id,
        alice.user_id,
        mallory.device_id,
        planted.encrypt(raw_body(as_alice, "alice", (alice.user_id, mallory.device_id))),
    )
    as_mallory = say("planted, as mallory")
    insert_channel_message(
        control.database,
        secret.id,
        mallory.user_id,
        mallory.device_id,
        planted.encrypt(raw_body(as_mallory, "mallory", (mallory.user_id, mallory.device_id))),
    )
    assert await bob.sync_channel(secret.id) == []
    notices = bob.notices()
    assert [n.kind for n in notices] == ["sender_key_refused", "undecryptable", "undecryptable"]
    assert "mallory" in notices[0].text
    assert bodies(bob.history(f"ch:{secret.id}")) == [opening]

    # alice and bob go on talking in #secret.
    reply = say("bob in secret")
    await bob.send_channel(secret.id, reply)
    assert bodies(await alice.sync_channel(secret.id)) == [reply]
    later = say("alice in secret, later")
    await alice.send_channel(secret.id, later)
    assert bodies(await bob.sync_channel(secret.id)) == [later]
    assert bob.notices() == []
    for client in (alice, bob, mallory):
        await client.aclose()


async def test_a_member_who_lost_and_regained_a_channel_is_read_again(
    control: ControlProcess, tmp_path: Path
) -> None:
    alice, bob, carol, general = await three_in_general(control, tmp_path)
    talk = await alice.api.create_channel(general.guild_id, "book-talk")

    # carol writes first in #book-talk (her key is queued for bob), then is kicked before
    # bob reads: by bob's reckoning she cannot read the channel, so her key is not
    # followed, and her message is not shown.
    first = say("carol in book-talk")
    await carol.send_channel(talk.id, first)
    await alice.api.kick(general.guild_id, carol.user_id)
    assert await bob.sync_channel(talk.id) == []
    assert [n.kind for n in bob.notices()] == ["sender_key_refused", "undecryptable"]

    # carol rejoins and writes again under the same key, which she never sends again
    # (bob holds it): now that she can read #book-talk, bob follows it.
    await carol.api.accept_invite(await alice.api.create_invite(general.id))
    again = say("carol back in book-talk")
    await carol.send_channel(talk.id, again)
    got = await bob.sync_channel(talk.id)
    assert [(m.body, m.sender_id) for m in got] == [(again, carol.user_id)]
    assert bob.notices() == []

    # And the channel works as before, both ways, for everyone.
    lines = [say("alice in book-talk"), say("bob in book-talk")]
    await alice.send_channel(talk.id, lines[0])
    await bob.send_channel(talk.id, lines[1])
    assert bodies(await carol.sync_channel(talk.id)) == lines
    assert bodies(await bob.sync_channel(talk.id)) == [lines[0]]
    # (alice reads only now, with carol a reader again: all of carol's lines.)
    assert bodies(await alice.sync_channel(talk.id)) == [first, again, lines[1]]
    for client in (alice, bob, carol):
        await client.aclose()
