"""Media frames (clear codec bytes bound into the AAD) and media key lifecycle."""

from __future__ import annotations

import pytest

from e2ee import (
    Codec,
    DecryptedMessage,
    MediaKey,
    MediaKeyReceiver,
    MediaKeySender,
    MessageType,
    SFrameReceiver,
    SFrameSender,
    protect_frame,
    unprotect_frame,
)
from e2ee.errors import (
    DecodeError,
    DecryptionFailed,
    DuplicateMessage,
    E2EEError,
    SenderIndexClaimed,
    StateError,
    UnknownKey,
    UnknownSender,
    WrongMessageType,
)
from e2ee.media import make_kid, split_kid

OPUS = bytes([0x78]) + b"opus payload bytes" * 8
VP8_KEY = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01]) + b"k" * 100
VP8_DELTA = bytes([0x31, 0x04, 0x00]) + b"d" * 60


def _sframe_pair() -> tuple[SFrameSender, SFrameReceiver]:
    receiver = SFrameReceiver(4)
    receiver.add_key(3, b"m" * 16)
    return SFrameSender(4, b"m" * 16, 3), receiver


@pytest.mark.parametrize(
    ("codec", "frame", "clear"),
    [(Codec.OPUS, OPUS, 1), (Codec.VP8, VP8_KEY, 10), (Codec.VP8, VP8_DELTA, 3)],
)
def test_codec_bytes_stay_clear_and_are_authenticated(
    codec: Codec, frame: bytes, clear: int
) -> None:
    sender, receiver = _sframe_pair()
    protected = protect_frame(sender, codec, frame)
    assert protected[:clear] == frame[:clear]
    assert frame[clear:] not in protected
    assert unprotect_frame(receiver, codec, protected) == frame
    tampered = bytearray(protect_frame(sender, codec, frame))
    tampered[clear - 1] ^= 0x40  # an SFU rewriting a clear byte is detected
    with pytest.raises(E2EEError):
        unprotect_frame(receiver, codec, bytes(tampered))


def test_too_short_frames_are_refused() -> None:
    sender, receiver = _sframe_pair()
    with pytest.raises(DecodeError):
        protect_frame(sender, Codec.VP8, VP8_KEY[:5])
    with pytest.raises(DecodeError):
        unprotect_frame(receiver, Codec.OPUS, b"\x78")


def test_kid_carries_sender_index_and_generation() -> None:
    assert split_kid(make_kid(5, 9)) == (5, 9)
    sender = MediaKeySender(5)
    assert split_kid(sender.kid) == (5, 0)


def _install(
    receiver: MediaKeyReceiver,
    key: MediaKey,
    now: float = 0.0,
    *,
    sender: tuple[str, str] | None = None,
) -> None:
    # By default the key comes from the device named after the sender index it carries.
    user_id, device_id = sender or (f"user-{key.sender_index}", f"device-{key.sender_index}")
    receiver.install(
        MediaKey.from_pairwise(DecryptedMessage(MessageType.MEDIA_KEY, b"call", key.encode())),
        user_id=user_id,
        device_id=device_id,
        now=now,
    )


def test_media_key_must_come_from_a_pairwise_media_key_message() -> None:
    key = MediaKeySender(1).current_key()
    with pytest.raises(WrongMessageType):
        MediaKey.from_pairwise(DecryptedMessage(MessageType.TEXT, b"call", key.encode()))


def test_join_ratchets_forward_and_joiner_cannot_read_the_past() -> None:
    alice = MediaKeySender(1)
    bob = MediaKeyReceiver()
    _install(bob, alice.current_key())
    before = protect_frame(alice.sframe, Codec.OPUS, OPUS)
    joiner_key = alice.on_member_joined()
    assert joiner_key.generation == 1
    after = protect_frame(alice.sframe, Codec.OPUS, OPUS)
    # Bob follows the ratchet on his own; the joiner only gets generation 1.
    assert unprotect_frame(bob, Codec.OPUS, after, now=1) == OPUS
    carol = MediaKeyReceiver()
    _install(carol, joiner_key)
    assert unprotect_frame(carol, Codec.OPUS, after, now=1) == OPUS
    with pytest.raises(UnknownKey):
        unprotect_frame(carol, Codec.OPUS, before, now=1)
    # Generation 0 remains readable for Bob during the grace period only.
    assert unprotect_frame(bob, Codec.OPUS, before, now=5) == OPUS
    late = protect_frame(MediaKeySender(1).sframe, Codec.OPUS, OPUS)  # unrelated gen-0 key
    with pytest.raises(E2EEError):
        unprotect_frame(bob, Codec.OPUS, late, now=100)


def test_frame_that_carried_the_receiver_through_a_join_ratchet_is_not_accepted_twice() -> None:
    alice = MediaKeySender(1)
    bob = MediaKeyReceiver()
    _install(bob, alice.current_key())
    alice.on_member_joined()
    after = protect_frame(alice.sframe, Codec.OPUS, OPUS)
    assert unprotect_frame(bob, Codec.OPUS, after, now=1) == OPUS
    with pytest.raises(DuplicateMessage):
        unprotect_frame(bob, Codec.OPUS, after, now=1)
    # The ratcheted key stays installed: the sender's next frame opens normally.
    assert unprotect_frame(bob, Codec.OPUS, protect_frame(alice.sframe, Codec.OPUS, OPUS), now=1)


def test_leave_draws_a_fresh_key_the_leaver_cannot_follow() -> None:
    alice = MediaKeySender(2)
    bob, leaver = MediaKeyReceiver(grace_seconds=5), MediaKeyReceiver()
    _install(bob, alice.current_key())
    _install(leaver, alice.current_key())
    in_flight = protect_frame(alice.sframe, Codec.OPUS, OPUS)
    too_late = protect_frame(alice.sframe, Codec.OPUS, OPUS)
    fresh = alice.on_member_left()
    _install(bob, fresh, now=10)
    frame = protect_frame(alice.sframe, Codec.OPUS, OPUS)
    assert unprotect_frame(bob, Codec.OPUS, frame, now=11) == OPUS
    with pytest.raises(DecryptionFailed):
        unprotect_frame(leaver, Codec.OPUS, frame, now=11)  # ratcheting cannot reach it
    assert unprotect_frame(bob, Codec.OPUS, in_flight, now=12) == OPUS
    with pytest.raises(UnknownKey):
        unprotect_frame(bob, Codec.OPUS, too_late, now=16)  # grace period (5 s) is over


def test_frame_from_unknown_sender_is_refused_as_media_before_its_key() -> None:
    with pytest.raises(UnknownSender):
        unprotect_frame(
            MediaKeyReceiver(),
            Codec.OPUS,
            protect_frame(MediaKeySender(9).sframe, Codec.OPUS, OPUS),
            now=0,
        )


def test_a_generation_not_held_of_a_known_sender_is_not_media_before_its_key() -> None:
    # Only a sender with no key at all is "media before its key"; an expired generation
    # of a known sender stays an ordinary UnknownKey a client reports.
    alice = MediaKeySender(2)
    bob = MediaKeyReceiver(grace_seconds=5)
    _install(bob, alice.current_key())
    old = protect_frame(alice.sframe, Codec.OPUS, OPUS)
    _install(bob, alice.on_member_left(), now=0)
    with pytest.raises(UnknownKey) as refused:
        unprotect_frame(bob, Codec.OPUS, old, now=10)
    assert not isinstance(refused.value, UnknownSender)


def test_media_key_receiver_needs_the_time() -> None:
    sender = MediaKeySender(1)
    receiver = MediaKeyReceiver()
    _install(receiver, sender.current_key())
    with pytest.raises(StateError):
        unprotect_frame(receiver, Codec.OPUS, protect_frame(sender.sframe, Codec.OPUS, OPUS))


def test_grace_period_ends_exactly_at_its_expiry_and_the_key_is_dropped() -> None:
    alice = MediaKeySender(3)
    bob = MediaKeyReceiver(grace_seconds=5)
    _install(bob, alice.current_key())
    old_kid = alice.kid
    in_flight = [protect_frame(alice.sframe, Codec.OPUS, OPUS) for _ in range(2)]
    _install(bob, alice.on_member_left(), now=10)
    current = protect_frame(alice.sframe, Codec.OPUS, OPUS)
    assert unprotect_frame(bob, Codec.OPUS, in_flight[0], now=15) == OPUS  # expiry is 15
    # A frame of the current generation after the expiry already drops the old key.
    assert unprotect_frame(bob, Codec.OPUS, current, now=15.5) == OPUS
    assert not bob._sframe.has_key(old_kid)
    with pytest.raises(UnknownKey):
        unprotect_frame(bob, Codec.OPUS, in_flight[1], now=15.5)


def test_late_older_generation_is_held_for_its_grace_period_only() -> None:
    alice = MediaKeySender(4)
    first = alice.current_key()
    old = [protect_frame(alice.sframe, Codec.OPUS, OPUS) for _ in range(2)]
    bob = MediaKeyReceiver(grace_seconds=5)
    _install(bob, alice.on_member_left(), now=0)
    _install(bob, first, now=1)  # delivered late: held until 6
    assert unprotect_frame(bob, Codec.OPUS, old[0], now=6) == OPUS
    with pytest.raises(UnknownKey):
        unprotect_frame(bob, Codec.OPUS, old[1], now=7)


def test_a_participant_cannot_install_a_key_under_another_participants_sender_index() -> None:
    alice = MediaKeySender(1)
    bob = MediaKeyReceiver()
    _install(bob, alice.current_key(), sender=("alice", "phone"))
    assert bob.owner(1) == ("alice", "phone")
    # Mallory, in the call, sends Bob a key of her own under Alice's index.
    forged = MediaKeySender(1)
    for generation_key in (forged.current_key(), forged.on_member_left()):
        with pytest.raises(SenderIndexClaimed):
            _install(bob, generation_key, now=1, sender=("mallory", "laptop"))
    # Nor may another device of Alice's take it: the index is bound to a device.
    with pytest.raises(SenderIndexClaimed):
        _install(bob, forged.on_member_left(), now=1, sender=("alice", "tablet"))
    # Nothing of hers was installed: her frames do not open, Alice's still do.
    with pytest.raises(E2EEError):
        unprotect_frame(bob, Codec.OPUS, protect_frame(forged.sframe, Codec.OPUS, OPUS), now=2)
    assert unprotect_frame(bob, Codec.OPUS, protect_frame(alice.sframe, Codec.OPUS, OPUS), now=2)
    # Alice's own next key is accepted from her device.
    _install(bob, alice.on_member_left(), now=3, sender=("alice", "phone"))
    assert unprotect_frame(bob, Codec.OPUS, protect_frame(alice.sframe, Codec.OPUS, OPUS), now=3)


def test_removing_a_sender_frees_its_index_for_the_next_participant() -> None:
    bob = MediaKeyReceiver()
    _install(bob, MediaKeySender(7).current_key(), sender=("alice", "phone"))
    bob.remove_sender(7)
    assert bob.owner(7) is None
    carol = MediaKeySender(7)
    _install(bob, carol.current_key(), sender=("carol", "desk"))
    assert bob.owner(7) == ("carol", "desk")
    assert unprotect_frame(bob, Codec.OPUS, protect_frame(carol.sframe, Codec.OPUS, OPUS), now=1)
