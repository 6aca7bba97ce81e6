"""Double Ratchet: delivery faults, limits, tampering, forward secrecy, recovery, state."""

from __future__ import annotations

import hmac

import msgpack
import pytest
from _e2ee_helpers import CONV, ratchet_pair, session_pair
from hypothesis import given, settings
from hypothesis import strategies as st

from e2ee import MessageType, RatchetMessage, SenderKeySender, Session
from e2ee.double_ratchet import DoubleRatchet, RatchetLimits
from e2ee.errors import (
    DecryptionFailed,
    DuplicateMessage,
    E2EEError,
    StateError,
    TooManySkipped,
    WrongMessageType,
)

LIMITS = RatchetLimits(max_skip=50, max_skipped_keys=200, max_skipped_age=1000.0)
FAST = settings(max_examples=40, deadline=None)


def _send(r: DoubleRatchet, text: bytes) -> bytes:
    return r.encrypt(text, message_type=MessageType.TEXT, conversation_id=CONV)


def _recv(r: DoubleRatchet, data: bytes, now: float = 0.0) -> bytes:
    return r.decrypt(data, conversation_id=CONV, now=now).plaintext


@FAST
@given(
    st.lists(
        st.tuples(st.sampled_from(["send", "deliver"]), st.booleans(), st.integers(0, 10_000)),
        max_size=45,
    )
)
def test_loss_reordering_and_duplication_decrypt_each_message_exactly_once(
    ops: list[tuple[str, bool, int]],
) -> None:
    alice, bob = ratchet_pair(LIMITS)
    parties = {True: alice, False: bob}
    in_flight: dict[bool, list[tuple[bytes, bytes]]] = {True: [], False: []}  # to-whom
    delivered: set[bytes] = set()
    sent = 0
    for op, from_alice, pick in ops:
        if op == "send":
            sender = parties[from_alice]
            if not sender.can_send:
                continue
            text = b"message %d" % sent
            sent += 1
            in_flight[not from_alice].append((_send(sender, text), text))
        else:
            queue = in_flight[from_alice]  # messages addressed to this party
            if not queue:
                continue
            data, text = queue[pick % len(queue)]
            if text in delivered:
                with pytest.raises(E2EEError):
                    _recv(parties[from_alice], data)
            else:
                assert _recv(parties[from_alice], data) == text
                delivered.add(text)
    # Every message never delivered still decrypts now, exactly once.
    for to_alice, queue in in_flight.items():
        for data, text in queue:
            if text not in delivered:
                assert _recv(parties[to_alice], data) == text
                delivered.add(text)
            with pytest.raises(E2EEError):
                _recv(parties[to_alice], data)
    assert len(delivered) == sent


def test_jump_beyond_max_skip_fails_cleanly_and_changes_nothing() -> None:
    alice, bob = ratchet_pair(RatchetLimits(max_skip=10))
    msgs = [_send(alice, b"m%d" % i) for i in range(13)]
    before = bob.serialize()
    with pytest.raises(TooManySkipped):
        _recv(bob, msgs[11])
    assert bob.serialize() == before
    assert _recv(bob, msgs[10]) == b"m10"  # exactly MAX_SKIP ahead is allowed
    assert _recv(bob, msgs[3]) == b"m3"
    assert _recv(bob, msgs[12]) == b"m12"


def test_jump_beyond_max_skip_across_a_dh_ratchet_fails() -> None:
    alice, bob = ratchet_pair(RatchetLimits(max_skip=5))
    assert _recv(bob, _send(alice, b"a")) == b"a"
    assert _recv(alice, _send(bob, b"b")) == b"b"
    for _ in range(7):
        _send(alice, b"lost")
    with pytest.raises(TooManySkipped):
        _recv(bob, _send(alice, b"too far"))


def test_total_skipped_keys_are_capped_oldest_first() -> None:
    alice, bob = ratchet_pair(RatchetLimits(max_skip=20, max_skipped_keys=5))
    msgs = [_send(alice, b"m%d" % i) for i in range(12)]
    assert _recv(bob, msgs[11]) == b"m11"
    assert bob.skipped_key_count == 5
    with pytest.raises(DuplicateMessage):
        _recv(bob, msgs[0])  # evicted
    assert _recv(bob, msgs[10]) == b"m10"


def test_skipped_keys_expire_after_max_age() -> None:
    alice, bob = ratchet_pair(RatchetLimits(max_skipped_age=60.0))
    msgs = [_send(alice, b"m%d" % i) for i in range(3)]
    assert _recv(bob, msgs[2], now=100.0) == b"m2"
    assert bob.skipped_key_count == 2
    assert _recv(bob, msgs[0], now=150.0) == b"m0"
    bob.purge_expired(161.0)
    assert bob.skipped_key_count == 0
    with pytest.raises(DuplicateMessage):
        _recv(bob, msgs[1], now=161.0)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 7))
def test_flipping_any_bit_of_a_message_fails_and_leaves_state_intact(pos: int, bit: int) -> None:
    alice, bob = ratchet_pair()
    data = _send(alice, b"attack at dawn")
    bad = bytearray(data)
    bad[pos % len(bad)] ^= 1 << bit
    before = bob.serialize()
    with pytest.raises(E2EEError):
        _recv(bob, bytes(bad))
    assert bob.serialize() == before
    assert _recv(bob, data) == b"attack at dawn"


def test_every_byte_flip_of_one_message_fails() -> None:
    alice, bob = ratchet_pair()
    data = _send(alice, b"x" * 40)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0xFF
        with pytest.raises(E2EEError):
            _recv(bob, bytes(bad))
    assert _recv(bob, data) == b"x" * 40


def test_wrong_conversation_or_relabelled_type_fails() -> None:
    alice, bob = ratchet_pair()
    data = _send(alice, b"for conversation 1")
    with pytest.raises(DecryptionFailed):
        bob.decrypt(data, conversation_id=b"conversation-2", now=0)
    fields = msgpack.unpackb(data)
    fields[2] = int(MessageType.SENDER_KEY_DISTRIBUTION)
    with pytest.raises(DecryptionFailed):
        _recv(bob, msgpack.packb(fields, use_bin_type=True))
    msg = bob.decrypt(data, conversation_id=CONV, now=0)
    assert msg.message_type is MessageType.TEXT


def test_group_message_is_never_accepted_as_pairwise() -> None:
    _, bob, _ = session_pair()
    group = SenderKeySender(b"channel").encrypt(b"group text")
    with pytest.raises(WrongMessageType):
        bob.decrypt(group, conversation_id=CONV, now=0)


@FAST
@given(st.permutations(list(range(8))))
def test_forward_secrecy_message_key_gone_from_state_after_decrypt(order: list[int]) -> None:
    alice, bob = ratchet_pair()
    keys, msgs = [], []
    for i in range(8):
        ck = alice._cks
        assert ck is not None
        keys.append(hmac.digest(ck, b"\x01", "sha256"))
        msgs.append(_send(alice, b"m%d" % i))
    for i in order:
        chain_before = bob._ckr
        assert _recv(bob, msgs[i]) == b"m%d" % i
        state = bob.serialize()
        assert keys[i] not in state
        if chain_before is not None and chain_before != bob._ckr:
            assert chain_before not in state  # the chain key that derived it is gone too
    assert bob.skipped_key_count == 0


def test_post_compromise_stolen_state_cannot_follow_after_dh_ratchet() -> None:
    alice, bob = ratchet_pair()
    assert _recv(bob, _send(alice, b"1")) == b"1"
    stolen = DoubleRatchet.restore_untrusted(bob.serialize())
    # Before any new DH ratchet the thief reads along (no future secrecy yet) ...
    m = _send(alice, b"2")
    assert _recv(DoubleRatchet.restore_untrusted(stolen.serialize()), m) == b"2"
    assert _recv(bob, m) == b"2"
    # ... but a round trip brings fresh DH keys the thief does not have.
    assert _recv(alice, _send(bob, b"3")) == b"3"
    assert _recv(bob, _send(alice, b"4")) == b"4"
    assert _recv(alice, _send(bob, b"5")) == b"5"
    after = _send(alice, b"6")
    with pytest.raises(E2EEError):
        _recv(stolen, after)
    assert _recv(bob, after) == b"6"


@FAST
@given(st.lists(st.sampled_from(["a", "b", "skip_a"]), max_size=20))
def test_state_serializes_and_restores_exactly(ops: list[str]) -> None:
    alice, bob = ratchet_pair()
    for op in ops:
        if op == "a":
            _recv(bob, _send(alice, b"x"), now=1.5)
        elif op == "skip_a":
            _send(alice, b"lost")
        elif bob.can_send:
            _recv(alice, _send(bob, b"y"), now=2)
    for party in (alice, bob):
        blob = party.serialize()
        restored = DoubleRatchet.restore_untrusted(blob)
        assert restored.serialize() == blob
    twin = DoubleRatchet.restore_untrusted(bob.serialize())
    nxt = _send(alice, b"next")
    assert _recv(twin, nxt) == _recv(bob, nxt) == b"next"


def test_responder_cannot_send_first() -> None:
    _, bob = ratchet_pair()
    with pytest.raises(StateError):
        _send(bob, b"too early")


def test_session_repeats_handshake_until_answered_then_stops() -> None:
    alice, bob, _ = session_pair()
    assert not alice.awaiting_reply
    data = alice.encrypt(b"plain ratchet now", conversation_id=CONV)
    assert RatchetMessage.decode_untrusted(data).message_type is MessageType.TEXT
    restored = Session.restore_untrusted(bob.serialize())
    assert restored.serialize() == bob.serialize()
    assert restored.decrypt(data, conversation_id=CONV, now=0).plaintext == b"plain ratchet now"
