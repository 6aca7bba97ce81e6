"""client.media_keys between real SDK clients over a real ``python -m control``.

The voice states are given to each client's :class:`MediaKeys` as the gateway would give
them (the control side of voice is not needed for keys: they travel as pairwise envelopes
through the relay). Frames sealed by one participant must open at another exactly when
the key schedule says so: on join the current key goes out, a joiner gets only the
ratcheted key (and cannot open what came before), a leaver cannot open what comes after,
and a device that claims another participant's sender index is refused.

The relay takes at most :data:`contract.relay.MAX_ENVELOPE_RECIPIENTS` users per post, so a
call of more participants needs several posts per key change; a key that did not get
through (here: the recipient's queue is full, 409 ``queue_full``) must go out again on the
next update instead of counting as sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from client_live import ControlProcess, generous_control
from trio.testing import MockClock

from client import Client
from client.device_list import DeviceDirectory
from client.errors import ApiError
from client.voice.signalling import VoiceState
from contract.errors import ErrorCode
from contract.relay import MAX_ENVELOPE_RECIPIENTS
from e2ee.errors import E2EEError
from e2ee.media import Codec

pytestmark = pytest.mark.slow

PASS = "correct horse battery staple"
CHANNEL = "voicechannel1"
GUILD = "guild1"
# An Opus frame: TOC byte then payload.
FRAME = bytes([0xFC]) + b"opus payload of twenty ms"


def state(client: Client, index: int, channel: str | None = CHANNEL) -> VoiceState:
    return VoiceState(GUILD, channel, client.user_id, client.device_id, index)


def participants(*entries: tuple[Client, int]) -> dict[tuple[str, str], VoiceState]:
    return {(c.user_id, c.device_id): state(c, i) for c, i in entries}


async def opens(receiver: Client, sender: Client) -> bool:
    """Whether a frame ``sender`` seals now opens at ``receiver`` (after its inbox)."""
    await receiver.sync()
    sender_keys, receiver_keys = sender.media_keys.keys, receiver.media_keys.keys
    assert sender_keys is not None and receiver_keys is not None
    sealed = sender_keys.protect(Codec.OPUS, FRAME)
    try:
        index, frame = receiver_keys.open_untrusted(Codec.OPUS, sealed)
    except E2EEError:
        return False
    assert frame == FRAME and index == sender_keys.sender_index
    return True


async def test_media_keys_follow_joins_and_leaves_between_real_clients(
    control: ControlProcess, tmp_path: Path
) -> None:
    url = control.url
    alice = await Client.register(tmp_path / "alice", PASS, url, "alice")
    bob = await Client.register(tmp_path / "bob", PASS, url, "bob")
    carol = await Client.register(tmp_path / "carol", PASS, url, "carol")
    try:
        # Alice is alone in the call, then bob joins.
        alice.media_keys.begin(CHANNEL, 1)
        await alice.media_keys.update({})
        bob.media_keys.begin(CHANNEL, 2)
        both = participants((alice, 1), (bob, 2))
        await bob.media_keys.update({k: v for k, v in both.items() if k[0] != bob.user_id})
        await alice.media_keys.update({k: v for k, v in both.items() if k[0] != alice.user_id})
        assert await opens(bob, alice)
        assert await opens(alice, bob)
        alice_keys = alice.media_keys.keys
        assert alice_keys is not None
        # Alice ratcheted for bob's join: bob got generation 1, nobody got generation 0.
        assert alice.media_keys.sent == {(bob.user_id, bob.device_id): [1]}
        before_carol = alice_keys.protect(Codec.OPUS, FRAME)

        # Carol joins late: she gets the current keys, and cannot open what came before.
        everyone = participants((alice, 1), (bob, 2), (carol, 3))
        carol.media_keys.begin(CHANNEL, 3)
        for client in (carol, alice, bob):
            others = {k: v for k, v in everyone.items() if k[0] != client.user_id}
            await client.media_keys.update(others)
        for receiver, sender in [(carol, alice), (carol, bob), (alice, carol), (bob, carol)]:
            assert await opens(receiver, sender), (receiver.handle, sender.handle)
        assert await opens(bob, alice)  # bob follows alice's join ratchet by himself
        carol_keys = carol.media_keys.keys
        assert carol_keys is not None
        with pytest.raises(E2EEError):
            carol_keys.open_untrusted(Codec.OPUS, before_carol)
        # The ratcheted key went to carol only.
        assert alice.media_keys.sent[(bob.user_id, bob.device_id)] == [1]

        # Carol leaves: alice and bob draw fresh keys for each other; carol cannot follow.
        carol_kept = carol.media_keys.keys
        assert carol_kept is not None
        carol.media_keys.end()
        for client in (alice, bob):
            await client.media_keys.update(participants((alice, 1), (bob, 2)))
        assert await opens(bob, alice) and await opens(alice, bob)
        after_carol = alice_keys.protect(Codec.OPUS, FRAME)
        with pytest.raises(E2EEError):
            carol_kept.open_untrusted(Codec.OPUS, after_carol)

        # Carol, back as a new session, claims bob's sender index: alice refuses her key.
        carol.media_keys.begin(CHANNEL, 2)
        await alice.media_keys.update(
            {**participants((bob, 2)), (carol.user_id, carol.device_id): state(carol, 2)}
        )
        await carol.media_keys.update(participants((alice, 1), (bob, 2)))
        await alice.sync()
        assert [n.kind for n in alice.notices()].count("media_key_refused") >= 1
        assert await opens(alice, bob)  # bob's frames still open as bob's
        assert not await opens(alice, carol)
    finally:
        for client in (alice, bob, carol):
            await client.aclose()


async def test_a_leave_long_into_a_call_fetches_no_device_list_again(
    control: ControlProcess, tmp_path: Path, mock_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A leave makes every participant send a fresh key to every other one: were the device
    # lists fetched again once some time had passed, a call of n would cost n² requests
    # per leave. The lists checked at the start serve until the relay says one changed.
    mock_clock.rate = 1.0  # real time, plus the jump below
    url = control.url
    alice, bob, carol = [
        await Client.register(tmp_path / name, PASS, url, name)
        for name in ("alice", "bob", "carol")
    ]
    fetched: list[str] = []
    directory = alice.api.device_directory

    async def counted(user_id: str) -> DeviceDirectory:
        fetched.append(user_id)
        return await directory(user_id)

    monkeypatch.setattr(alice.api, "device_directory", counted)
    try:
        for index, client in enumerate((alice, bob, carol), start=1):
            client.media_keys.begin(CHANNEL, index)
        await alice.media_keys.update(participants((bob, 2), (carol, 3)))
        assert sorted(fetched) == sorted([alice.user_id, bob.user_id, carol.user_id])

        mock_clock.jump(3600)
        fetched.clear()
        await alice.media_keys.update(participants((bob, 2)))
        assert fetched == []
        await bob.media_keys.update(participants((alice, 1)))
        assert await opens(bob, alice)
        assert alice.media_keys.sent[(bob.user_id, bob.device_id)] == [0, 1]
    finally:
        for client in (alice, bob, carol):
            await client.aclose()


async def test_media_restarting_in_the_same_voice_session_keeps_the_keys(
    control: ControlProcess, tmp_path: Path
) -> None:
    # The server sends VOICE_SERVER_UPDATE again for the same voice session when the SFU
    # closed one of its transports (never connected, consent lost): the media starts over,
    # nobody joined or left, so the others send no key. Frames must still open both ways.
    url = control.url
    alice = await Client.register(tmp_path / "alice", PASS, url, "alice")
    bob = await Client.register(tmp_path / "bob", PASS, url, "bob")
    try:
        alice.media_keys.begin(CHANNEL, 1, "session-a")
        await alice.media_keys.update({})
        bob.media_keys.begin(CHANNEL, 2, "session-b")
        both = participants((alice, 1), (bob, 2))
        await bob.media_keys.update({k: v for k, v in both.items() if k[0] != bob.user_id})
        await alice.media_keys.update({k: v for k, v in both.items() if k[0] != alice.user_id})
        assert await opens(bob, alice) and await opens(alice, bob)

        kept = alice.media_keys.begin(CHANNEL, 1, "session-a")
        await alice.media_keys.update({k: v for k, v in both.items() if k[0] != alice.user_id})
        assert kept is alice.media_keys.keys
        assert await opens(bob, alice) and await opens(alice, bob)

        # A new voice session is a new start: fresh keys.
        assert alice.media_keys.begin(CHANNEL, 1, "session-c") is not kept
    finally:
        for client in (alice, bob):
            await client.aclose()


async def test_a_key_change_reaches_more_users_than_one_post_takes(
    crowd: ControlProcess, tmp_path: Path
) -> None:
    # One more participant than a post may name besides the sender: two posts, the second
    # to the last two users in user id order (the order MediaKeys fans out in).
    count = MAX_ENVELOPE_RECIPIENTS + 1
    url = crowd.url
    clients: list[Client] = []
    try:

        async def register(i: int) -> None:
            clients.append(await Client.register(tmp_path / f"u{i}", PASS, url, f"user{i}"))

        async with trio.open_nursery() as nursery:
            for i in range(count + 2):
                nursery.start_soon(register, i)
        alice, filler = clients[0], clients[1]
        others = sorted(clients[2:], key=lambda c: c.user_id)
        first, second = others[: MAX_ENVELOPE_RECIPIENTS - 1], others[MAX_ENVELOPE_RECIPIENTS - 1 :]
        for index, client in enumerate(others, start=2):
            client.media_keys.begin(CHANNEL, index)
        alice.media_keys.begin(CHANNEL, 1)
        everyone = {(c.user_id, c.device_id): state(c, i) for i, c in enumerate(others, start=2)}

        # The queue of a user in the second post is full: the first post gets through, the
        # second does not, and only the first counts as sent.
        for n in range(QUEUE_MAX):
            await filler.send_dm(second[-1].handle, f"filler {n}")
        with pytest.raises(ApiError) as refused:
            await alice.media_keys.update(everyone)
        assert refused.value.code == ErrorCode.QUEUE_FULL
        assert sorted(alice.media_keys.sent) == sorted((c.user_id, c.device_id) for c in first)
        await second[-1].sync()  # room again

        # The next update sends the owed key to the second post's users only, and they
        # open the sessions whose first message was lost.
        await alice.media_keys.update(everyone)
        assert sorted(alice.media_keys.sent) == sorted(everyone)
        assert all(len(generations) == 1 for generations in alice.media_keys.sent.values())
        alice_there = {(alice.user_id, alice.device_id): state(alice, 1)}
        for receiver in (first[0], first[-1], *second):
            await receiver.media_keys.update(alice_there)
            assert await opens(receiver, alice), receiver.handle

        # One leaves: the fresh key reaches everyone remaining, and the leaver cannot follow.
        leaver = second[-1]
        kept = leaver.media_keys.keys
        assert kept is not None
        del everyone[(leaver.user_id, leaver.device_id)]
        await alice.media_keys.update(everyone)
        assert all(len(alice.media_keys.sent[k]) == 2 for k in everyone)
        assert await opens(first[0], alice) and await opens(second[0], alice)
        alice_keys = alice.media_keys.keys
        assert alice_keys is not None
        with pytest.raises(E2EEError):
            kept.open_untrusted(Codec.OPUS, alice_keys.protect(Codec.OPUS, FRAME))
    finally:
        for client in clients:
            await client.aclose()


#: Envelopes one device's queue holds on the ``crowd`` control plane (alice's keeps the
#: keys of the receivers that answer her, unread).
QUEUE_MAX = 5


@pytest.fixture
def crowd(tmp_path: Path) -> Iterator[ControlProcess]:
    """A control plane that lets a hundred accounts register at once (the proof of work
    stays at its resting difficulty: it rises under a burst of registrations), with small
    device queues."""
    server = generous_control(
        tmp_path,
        "control-crowd",
        "--pow-max-bits",
        "12",
        "--queue-max-envelopes",
        str(QUEUE_MAX),
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def small_queues(tmp_path: Path) -> Iterator[ControlProcess]:
    """A control plane whose device queues hold two envelopes."""
    server = generous_control(tmp_path, "control-small", "--queue-max-envelopes", "2")
    try:
        yield server
    finally:
        server.stop()


async def test_a_key_the_relay_refused_goes_out_on_the_next_update(
    small_queues: ControlProcess, tmp_path: Path
) -> None:
    url = small_queues.url
    alice = await Client.register(tmp_path / "alice", PASS, url, "alice")
    bob = await Client.register(tmp_path / "bob", PASS, url, "bob")
    try:
        bob.media_keys.begin(CHANNEL, 2)
        await bob.media_keys.update({(alice.user_id, alice.device_id): state(alice, 1)})
        # Bob's queue is full (two messages alice has not read yet would not do: it is
        # bob's queue that counts), so alice's key is refused.
        carol = await Client.register(tmp_path / "carol", PASS, url, "carol")
        try:
            await carol.send_dm("bob", "one")
            await carol.send_dm("bob", "two")
        finally:
            await carol.aclose()
        alice.media_keys.begin(CHANNEL, 1)
        with_bob = {(bob.user_id, bob.device_id): state(bob, 2)}
        with pytest.raises(ApiError) as refused:
            await alice.media_keys.update(with_bob)
        assert refused.value.code == ErrorCode.QUEUE_FULL
        assert alice.media_keys.sent == {}
        assert not await opens(bob, alice)  # bob drained his queue: room again

        # Nobody joined or left, yet the key still owed to bob goes out now.
        await alice.media_keys.update(with_bob)
        assert alice.media_keys.sent == {(bob.user_id, bob.device_id): [0]}
        assert await opens(bob, alice)
    finally:
        for client in (alice, bob):
            await client.aclose()
