"""client.media_keys between real SDK clients over a real ``python -m control``.

The voice states are given to each client's :class:`MediaKeys` as the gateway would give
them (the control side of voice is not needed for keys: they travel as pairwise envelopes
through the relay). Frames sealed by one participant must open at another exactly when
the key schedule says so: on join the current key goes out, a joiner gets only the
ratcheted key (and cannot open what came before), a leaver cannot open what comes after,
and a device that claims another participant's sender index is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from client_live import ControlProcess

from client import Client
from client.voice.signalling import VoiceState
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
