"""Sender Keys: signatures first, bounded jumps, replay refusal, pairwise-only distribution."""

from __future__ import annotations

import hmac

import msgpack
import pytest
from _e2ee_helpers import CONV, session_pair
from hypothesis import given, settings
from hypothesis import strategies as st

from e2ee import (
    DecryptedMessage,
    MessageType,
    SenderKeyMessage,
    SenderKeyReceiver,
    SenderKeySender,
    rotate_after_removal,
)
from e2ee.errors import (
    BadSignature,
    DecodeError,
    DuplicateMessage,
    E2EEError,
    TooManySkipped,
    UnknownKey,
    WrongMessageType,
)
from e2ee.sender_keys import MAX_FORWARD_JUMP, MAX_SENDER_KEY_STATES

CHANNEL = b"channel-42"


def _pair() -> tuple[SenderKeySender, SenderKeyReceiver]:
    sender = SenderKeySender(CHANNEL)
    receiver = SenderKeyReceiver(CHANNEL)
    receiver.process_distribution(
        DecryptedMessage(
            MessageType.SENDER_KEY_DISTRIBUTION, CHANNEL, sender.distribution().encode()
        )
    )
    return sender, receiver


def test_distribution_travels_inside_a_pairwise_session() -> None:
    alice, bob, _ = session_pair()
    sender = SenderKeySender(CHANNEL)
    wrapped = alice.encrypt(
        sender.distribution().encode(),
        message_type=MessageType.SENDER_KEY_DISTRIBUTION,
        conversation_id=CHANNEL,
    )
    receiver = SenderKeyReceiver(CHANNEL)
    receiver.process_distribution(bob.decrypt(wrapped, conversation_id=CHANNEL, now=0))
    assert receiver.decrypt(sender.encrypt(b"hello channel")) == b"hello channel"


def test_distribution_outside_a_pairwise_session_or_mislabelled_is_refused() -> None:
    sender = SenderKeySender(CHANNEL)
    receiver = SenderKeyReceiver(CHANNEL)
    raw = sender.distribution().encode()
    with pytest.raises(WrongMessageType):
        receiver.process_distribution(raw)  # type: ignore[arg-type]
    with pytest.raises(WrongMessageType):
        receiver.process_distribution(DecryptedMessage(MessageType.TEXT, CHANNEL, raw))
    with pytest.raises(WrongMessageType):
        receiver.process_distribution(
            DecryptedMessage(MessageType.SENDER_KEY_DISTRIBUTION, CONV, raw)
        )


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 29), max_size=60))
def test_reordered_and_duplicated_messages_decrypt_exactly_once(picks: list[int]) -> None:
    sender, receiver = _pair()
    msgs = [sender.encrypt(b"m%d" % i) for i in range(30)]
    seen: set[int] = set()
    for i in picks:
        if i in seen:
            with pytest.raises(DuplicateMessage):
                receiver.decrypt(msgs[i])
        else:
            assert receiver.decrypt(msgs[i]) == b"m%d" % i
            seen.add(i)


def test_signature_is_checked_before_decryption() -> None:
    sender, receiver = _pair()
    msg = SenderKeyMessage.decode_untrusted(sender.encrypt(b"x"))
    forged = SenderKeyMessage(msg.key_id, msg.iteration + 5, msg.ciphertext, msg.signature)
    with pytest.raises(BadSignature):
        receiver.decrypt(forged.encode())
    # A member holding the chain key but not the signing key cannot author messages.
    impostor = SenderKeySender(CHANNEL)
    impostor.key_id, impostor._chain_key = sender.key_id, sender._chain_key
    impostor.iteration = sender.iteration
    with pytest.raises(BadSignature):
        receiver.decrypt(impostor.encrypt(b"forged"))
    assert receiver.decrypt(SenderKeyMessage.encode(msg)) == b"x"


def test_every_byte_flip_fails() -> None:
    sender, receiver = _pair()
    data = sender.encrypt(b"payload")
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x41
        with pytest.raises(E2EEError):
            receiver.decrypt(bytes(bad))
    assert receiver.decrypt(data) == b"payload"


def test_forward_jump_is_capped() -> None:
    sender, receiver = _pair()
    sender.iteration = MAX_FORWARD_JUMP + 1  # the receiver is still at iteration 0
    with pytest.raises(TooManySkipped):
        receiver.decrypt(sender.encrypt(b"far"))


def test_message_cannot_move_to_another_channel() -> None:
    sender, _ = _pair()
    other = SenderKeyReceiver(b"other-channel")
    other.process_distribution(
        DecryptedMessage(
            MessageType.SENDER_KEY_DISTRIBUTION,
            b"other-channel",
            msgpack.packb(
                [7, 1, b"other-channel", *msgpack.unpackb(sender.distribution().encode())[3:]],
                use_bin_type=True,
            ),
        )
    )
    with pytest.raises(BadSignature):
        other.decrypt(sender.encrypt(b"for channel-42 only"))


def test_rotation_after_removal_locks_out_the_old_key() -> None:
    sender, receiver = _pair()
    removed = SenderKeyReceiver(CHANNEL)
    removed.process_distribution(
        DecryptedMessage(
            MessageType.SENDER_KEY_DISTRIBUTION, CHANNEL, sender.distribution().encode()
        )
    )
    old_id = sender.key_id
    dist = rotate_after_removal(sender)
    assert dist.key_id != old_id
    receiver.process_distribution(
        DecryptedMessage(MessageType.SENDER_KEY_DISTRIBUTION, CHANNEL, dist.encode())
    )
    data = sender.encrypt(b"after removal")
    assert receiver.decrypt(data) == b"after removal"
    with pytest.raises(UnknownKey):
        removed.decrypt(data)


def test_at_most_five_states_per_sender() -> None:
    sender, receiver = _pair()
    first = sender.encrypt(b"first key")
    for _ in range(MAX_SENDER_KEY_STATES):
        receiver.process_distribution(
            DecryptedMessage(MessageType.SENDER_KEY_DISTRIBUTION, CHANNEL, sender.rotate().encode())
        )
    with pytest.raises(UnknownKey):
        receiver.decrypt(first)


def test_malformed_message_is_a_decode_error() -> None:
    _, receiver = _pair()
    with pytest.raises(DecodeError):
        receiver.decrypt(b"\x96\x06\x01\x00\x00\xc4\x00\xc4\x00")


@settings(max_examples=20, deadline=None)
@given(st.permutations(list(range(6))))
def test_forward_secrecy_message_key_gone_from_state_after_decrypt(order: list[int]) -> None:
    sender, receiver = _pair()
    keys, msgs = [], []
    for i in range(6):
        keys.append(hmac.digest(sender._chain_key, b"\x01", "sha256"))
        msgs.append(sender.encrypt(b"m%d" % i))
    for i in order:
        assert receiver.decrypt(msgs[i]) == b"m%d" % i
        assert keys[i] not in receiver.serialize()


def test_state_serializes_and_restores_exactly() -> None:
    sender, receiver = _pair()
    skipped = sender.encrypt(b"later")
    receiver.decrypt(sender.encrypt(b"now"))
    restored_sender = SenderKeySender.restore_untrusted(sender.serialize())
    restored_receiver = SenderKeyReceiver.restore_untrusted(receiver.serialize())
    assert restored_sender.serialize() == sender.serialize()
    assert restored_receiver.serialize() == receiver.serialize()
    assert restored_receiver.decrypt(skipped) == b"later"
    assert restored_receiver.decrypt(restored_sender.encrypt(b"next")) == b"next"
