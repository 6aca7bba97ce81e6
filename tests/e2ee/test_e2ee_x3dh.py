"""Identities, prekeys, bundles and the X3DH / PQXDH handshakes."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from _e2ee_helpers import V1_PREKEY_STORE
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.signing import signed_prekey_message
from e2ee import (
    IdentityKeyPair,
    InitialMessage,
    PreKeyBundle,
    PreKeyStore,
    PreKeyUpload,
    SeenBaseKeys,
    accept_session,
    agree_as_initiator,
    agree_as_responder,
    identity,
    initiate_session,
)
from e2ee._primitives import X25519KeyPair, ed25519_to_x25519_public, ed25519_verify, x25519
from e2ee.errors import (
    BadSignature,
    DecodeError,
    DecryptionFailed,
    DowngradeRefused,
    E2EEError,
    InvalidKey,
    ReplayedMessage,
    TooManySessions,
    UnknownKey,
    WrongMessageType,
)
from e2ee.identity import SignedPreKey
from e2ee.x3dh import INFO_PQXDH, INFO_X3DH

CONV = b"dm"
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


def _setup(otks: int = 3) -> tuple[IdentityKeyPair, PreKeyStore]:
    return IdentityKeyPair.generate(), PreKeyStore.generate(IdentityKeyPair.generate(), otks)


def test_identity_x25519_form_matches_libsodium_conversion() -> None:
    ik = IdentityKeyPair.generate()
    assert ed25519_to_x25519_public(ik.public) == ik.x25519_public
    assert X25519KeyPair.from_private(ik.x25519_private).public == ik.x25519_public


@pytest.mark.parametrize("with_otk", [True, False])
@pytest.mark.parametrize("pq", [True, False])
def test_x3dh_and_pqxdh_agree_on_both_sides(pq: bool, with_otk: bool) -> None:
    alice, store = _setup()
    otk = next(iter(store.one_time_prekeys)) if with_otk else None
    bundle = PreKeyBundle.decode_untrusted(store.bundle(otk, pq=pq).encode())
    hs = agree_as_initiator(alice, bundle, require_pq=pq)
    msg = InitialMessage.decode_untrusted(hs.initial_message(b"payload").encode())
    bob = agree_as_responder(store, msg, require_pq=pq)
    assert hs.secret.shared_key == bob.shared_key
    assert hs.secret.associated_data == bob.associated_data
    assert hs.secret.associated_data == b"\x06" + alice.public + b"\x06" + store.identity.public
    assert hs.secret.post_quantum is pq and bob.post_quantum is pq
    assert (msg.kem_ciphertext is not None) is pq
    assert INFO_PQXDH != INFO_X3DH


def test_pqxdh_and_x3dh_secrets_differ_for_the_same_keys() -> None:
    alice, store = _setup(0)
    pq = agree_as_initiator(alice, store.bundle())
    classic = agree_as_initiator(alice, store.bundle(pq=False), require_pq=False)
    assert pq.secret.shared_key != classic.secret.shared_key


def test_forged_signed_prekey_is_refused_on_decode_and_on_agreement() -> None:
    alice, store = _setup()
    mallory = X25519KeyPair.generate()
    forged = dataclasses.replace(store.bundle(), signed_prekey=mallory.public)
    with pytest.raises(BadSignature):
        PreKeyBundle.decode_untrusted(forged.encode())
    with pytest.raises(BadSignature):
        agree_as_initiator(alice, forged)
    # Signed by another identity: also refused.
    other = IdentityKeyPair.generate()
    resigned = dataclasses.replace(
        store.bundle(),
        signed_prekey=mallory.public,
        signed_prekey_signature=other.sign(
            signed_prekey_message(store.current_signed_prekey.key_id, mallory.public)
        ),
    )
    with pytest.raises(BadSignature):
        agree_as_initiator(alice, resigned)


def test_forged_pq_prekey_is_refused() -> None:
    alice, store = _setup()
    other = PreKeyStore.generate(IdentityKeyPair.generate())
    forged = dataclasses.replace(store.bundle(), pq_prekey=other.current_pq_prekey.public)
    with pytest.raises(BadSignature):
        PreKeyBundle.decode_untrusted(forged.encode())
    with pytest.raises(BadSignature):
        agree_as_initiator(alice, forged)


def test_signed_prekey_signature_cannot_be_moved_to_another_id() -> None:
    alice, store = _setup()
    moved = dataclasses.replace(
        store.bundle(), signed_prekey_id=store.current_signed_prekey.key_id + 7
    )
    with pytest.raises(BadSignature):
        agree_as_initiator(alice, moved)


def test_stripped_pq_prekey_is_a_refused_downgrade() -> None:
    alice, store = _setup()
    with pytest.raises(DowngradeRefused):
        agree_as_initiator(alice, store.bundle(pq=False))
    hs = agree_as_initiator(alice, store.bundle(pq=False), require_pq=False)
    with pytest.raises(DowngradeRefused):
        agree_as_responder(store, hs.initial_message(b""))


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_keys_are_refused(point: bytes) -> None:
    with pytest.raises(InvalidKey):
        x25519(X25519KeyPair.generate().private, point)
    alice, store = _setup()
    # A correctly signed but low-order signed prekey still yields no session.
    spk_id = store.current_signed_prekey.key_id
    bad = dataclasses.replace(
        store.bundle(),
        signed_prekey=point,
        signed_prekey_signature=store.identity.sign(signed_prekey_message(spk_id, point)),
    )
    with pytest.raises(InvalidKey):
        agree_as_initiator(alice, bad)
    hs = agree_as_initiator(alice, store.bundle())
    msg = dataclasses.replace(hs.initial_message(b""), ephemeral_key=point)
    with pytest.raises(InvalidKey):
        agree_as_responder(store, msg)


def test_one_time_prekey_is_consumed_and_reuse_fails() -> None:
    alice, store = _setup()
    otk = next(iter(store.one_time_prekeys))
    session = initiate_session(alice, store.bundle(otk))
    first = session.encrypt(b"hello", conversation_id=CONV)
    _, msg = accept_session(store, first, conversation_id=CONV, now=0)
    assert msg.plaintext == b"hello"
    assert otk not in store.one_time_prekeys
    with pytest.raises(ReplayedMessage):
        accept_session(store, first, conversation_id=CONV, now=0)
    # Without the replay record the OTK's absence alone still refuses it.
    store.seen_base_keys = SeenBaseKeys()
    with pytest.raises(UnknownKey):
        accept_session(store, first, conversation_id=CONV, now=0)


def test_forged_initial_message_does_not_burn_the_one_time_prekey() -> None:
    alice, store = _setup()
    otk = next(iter(store.one_time_prekeys))
    mallory = initiate_session(IdentityKeyPair.generate(), store.bundle(otk))
    data = InitialMessage.decode_untrusted(mallory.encrypt(b"x", conversation_id=CONV))
    forged = dataclasses.replace(data, identity_key=alice.public).encode()
    with pytest.raises(DecryptionFailed):
        accept_session(store, forged, conversation_id=CONV, now=0)
    assert otk in store.one_time_prekeys


def test_initiator_repeats_handshake_until_the_first_reply() -> None:
    alice_id, store = _setup()
    alice = initiate_session(alice_id, store.bundle(next(iter(store.one_time_prekeys))))
    m1 = alice.encrypt(b"one", conversation_id=CONV)
    m2 = alice.encrypt(b"two", conversation_id=CONV)
    bob, first = accept_session(store, m1, conversation_id=CONV, now=0)
    assert first.plaintext == b"one"
    assert bob.decrypt(m2, conversation_id=CONV, now=0).plaintext == b"two"
    assert alice.awaiting_reply
    alice.decrypt(bob.encrypt(b"ack", conversation_id=CONV), conversation_id=CONV, now=0)
    assert not alice.awaiting_reply
    other = initiate_session(IdentityKeyPair.generate(), store.bundle())
    with pytest.raises(WrongMessageType):
        bob.decrypt(other.encrypt(b"x", conversation_id=CONV), conversation_id=CONV, now=0)


def test_upload_roundtrips_and_verifies() -> None:
    store = PreKeyStore.generate(IdentityKeyPair.generate())
    upload = store.upload(store.generate_one_time_prekeys(100))
    assert PreKeyUpload.decode_untrusted(upload.encode()) == upload
    forged = dataclasses.replace(upload, pq_prekey_signature=bytes(64))
    with pytest.raises(BadSignature):
        PreKeyUpload.decode_untrusted(forged.encode())


def test_prekey_store_restores_exactly() -> None:
    store = PreKeyStore.generate(IdentityKeyPair.generate(), 10)
    store.rotate_signed_prekey()
    blob = store.serialize()
    assert PreKeyStore.restore_untrusted(blob).serialize() == blob


def test_signed_prekey_rotation_keeps_recent_ones() -> None:
    store = PreKeyStore.generate(IdentityKeyPair.generate())
    first = store.current_signed_prekey.key_id
    for _ in range(5):
        store.rotate_signed_prekey()
    assert first not in store.signed_prekeys
    assert len(store.signed_prekeys) == 3
    assert isinstance(store.current_signed_prekey, SignedPreKey)


def test_copy_of_a_verified_bundle_with_a_swapped_key_is_verified_again() -> None:
    alice, store = _setup()
    verified = PreKeyBundle.decode_untrusted(store.bundle().encode())
    forged = dataclasses.replace(verified, signed_prekey=X25519KeyPair.generate().public)
    with pytest.raises(BadSignature):
        agree_as_initiator(alice, forged)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["signed_prekey_signature", "pq_prekey_signature"]), st.data())
def test_any_bit_flip_in_a_prekey_signature_is_refused(field: str, draw: st.DataObject) -> None:
    alice, store = _setup(0)
    bundle = store.bundle()
    sig = bytearray(getattr(bundle, field))
    sig[draw.draw(st.integers(0, 63))] ^= 1 << draw.draw(st.integers(0, 7))
    forged = dataclasses.replace(bundle, **{field: bytes(sig)})
    with pytest.raises(BadSignature):
        PreKeyBundle.decode_untrusted(forged.encode())
    with pytest.raises(BadSignature):
        agree_as_initiator(alice, forged)


def test_prekey_signatures_cover_the_directory_format() -> None:
    # The prekey directory (control/signatures.py) checks exactly these bytes on upload.
    store = PreKeyStore.generate(IdentityKeyPair.generate())
    spk, pq = store.current_signed_prekey, store.current_pq_prekey
    spk_bytes = (
        b"hushroom-v1 signed-prekey\x00" + spk.key_id.to_bytes(4, "big") + spk.key_pair.public
    )
    pq_bytes = b"hushroom-v1 pq-prekey\x00" + pq.key_id.to_bytes(4, "big") + pq.public
    ed25519_verify(store.identity.public, spk_bytes, spk.signature)
    ed25519_verify(store.identity.public, pq_bytes, pq.signature)


# --- one-time PQ prekeys ---------------------------------------------------------------


def _first_message(initiator: IdentityKeyPair, bundle: PreKeyBundle, text: bytes = b"hi") -> bytes:
    return initiate_session(initiator, bundle).encrypt(text, conversation_id=CONV)


def test_one_time_pq_prekey_is_used_once_and_the_last_resort_one_is_kept() -> None:
    bob = PreKeyStore.generate(IdentityKeyPair.generate(), 0, pq_one_time_prekeys=2)
    last_resort = bob.current_pq_prekey.key_id
    pq_id = next(iter(bob.pq_one_time_prekeys))
    bundle = PreKeyBundle.decode_untrusted(bob.bundle(pq_one_time_prekey_id=pq_id).encode())
    assert bundle.pq_prekey_one_time and bundle.pq_prekey_id == pq_id
    first = _first_message(IdentityKeyPair.generate(), bundle)
    assert InitialMessage.decode_untrusted(first).pq_prekey_id == pq_id
    session, msg = accept_session(bob, first, conversation_id=CONV, now=0)
    assert msg.plaintext == b"hi" and session.post_quantum
    assert pq_id not in bob.pq_one_time_prekeys  # taken after use
    # Even were the replay record lost, the one-time PQ key is gone.
    bob.seen_base_keys = SeenBaseKeys()
    with pytest.raises(UnknownKey):
        accept_session(bob, first, conversation_id=CONV, now=0)
    # The last-resort key serves any number of initiators and stays.
    for _ in range(2):
        msg_lr = _first_message(IdentityKeyPair.generate(), bob.bundle())
        assert accept_session(bob, msg_lr, conversation_id=CONV, now=0)[1].plaintext == b"hi"
    assert last_resort in bob.pq_prekeys


def test_a_server_cannot_pass_one_kind_of_pq_prekey_off_as_the_other() -> None:
    bob = PreKeyStore.generate(IdentityKeyPair.generate(), 0, pq_one_time_prekeys=1)
    pq_id = next(iter(bob.pq_one_time_prekeys))
    one_time = bob.bundle(pq_one_time_prekey_id=pq_id)
    as_last_resort = dataclasses.replace(one_time, pq_prekey_one_time=False)
    last_resort_as_one_time = dataclasses.replace(bob.bundle(), pq_prekey_one_time=True)
    for forged in (as_last_resort, last_resort_as_one_time):
        with pytest.raises(BadSignature):
            forged.verify()
        with pytest.raises(BadSignature):
            PreKeyBundle.decode_untrusted(forged.encode())


def test_upload_carries_signed_one_time_pq_prekeys_and_bounds_the_batch() -> None:
    bob = PreKeyStore.generate(IdentityKeyPair.generate(), 0)
    batch = bob.generate_pq_one_time_prekeys(3)
    upload = PreKeyUpload.decode_untrusted(bob.upload([], batch).encode())
    assert [(i, k) for i, k, _ in upload.pq_one_time_prekeys] == [
        (b.key_id, b.public) for b in batch
    ]
    forged = dataclasses.replace(
        upload, pq_one_time_prekeys=((batch[0].key_id, batch[1].public, batch[0].signature),)
    )
    with pytest.raises(BadSignature):
        PreKeyUpload.decode_untrusted(forged.encode())
    too_many = dataclasses.replace(upload, pq_one_time_prekeys=upload.pq_one_time_prekeys[:1] * 101)
    with pytest.raises(DecodeError):
        PreKeyUpload.decode_untrusted(too_many.encode())
    with pytest.raises(E2EEError):
        bob.generate_pq_one_time_prekeys(identity.MAX_PQ_ONE_TIME_PREKEYS_PER_UPLOAD + 1)


def test_a_device_holds_a_bounded_number_of_one_time_pq_prekeys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(identity, "MAX_PQ_ONE_TIME_PREKEYS_HELD", 4)
    bob = PreKeyStore.generate(IdentityKeyPair.generate(), 0, pq_one_time_prekeys=3)
    first = list(bob.pq_one_time_prekeys)
    bob.generate_pq_one_time_prekeys(3)
    assert len(bob.pq_one_time_prekeys) == 4 and first[0] not in bob.pq_one_time_prekeys


def test_key_ids_are_unique_over_every_kind_even_when_the_counter_wraps() -> None:
    bob = PreKeyStore.generate(IdentityKeyPair.generate(), 2, pq_one_time_prekeys=2)
    bob._next_id = identity.MAX_KEY_ID
    bob.generate_pq_one_time_prekeys(3)
    bob.generate_one_time_prekeys(3)
    held = [
        *bob.signed_prekeys,
        *bob.pq_prekeys,
        *bob.one_time_prekeys,
        *bob.pq_one_time_prekeys,
    ]
    assert len(held) == len(set(held))


def test_serialized_store_keeps_one_time_pq_prekeys_and_checks_them_on_use() -> None:
    bob = PreKeyStore.generate(IdentityKeyPair.generate(), 1, pq_one_time_prekeys=2)
    pq_id = next(iter(bob.pq_one_time_prekeys))
    first = _first_message(IdentityKeyPair.generate(), bob.bundle(pq_one_time_prekey_id=pq_id))
    restored = PreKeyStore.restore_untrusted(bob.serialize())
    assert restored.serialize() == bob.serialize()
    assert accept_session(restored, first, conversation_id=CONV, now=0)[1].plaintext == b"hi"
    # A stored one-time PQ key whose signature does not match its seed is refused on use.
    other = next(iter(restored.pq_one_time_prekeys.values()))
    fields = msgpack.unpackb(restored.serialize())
    fields[7] = [[other.key_id, other.seed, bytes(64)]]
    damaged = PreKeyStore.restore_untrusted(msgpack.packb(fields, use_bin_type=True))
    with pytest.raises(BadSignature):
        damaged.bundle(pq_one_time_prekey_id=other.key_id)


def test_a_store_serialized_before_one_time_pq_prekeys_still_loads() -> None:
    store = PreKeyStore.restore_untrusted(V1_PREKEY_STORE)
    assert store.identity.seed == bytes(range(32))
    assert (list(store.signed_prekeys), list(store.pq_prekeys)) == ([1], [2])
    assert list(store.one_time_prekeys) == [3] and not store.pq_one_time_prekeys
    assert len(store.seen_base_keys) == 0
    # It works as before (an initiator using its OTK), and saves in the new format.
    first = _first_message(IdentityKeyPair.generate(), store.bundle(3))
    assert accept_session(store, first, conversation_id=CONV, now=0)[1].plaintext == b"hi"
    again = PreKeyStore.restore_untrusted(store.serialize())
    assert msgpack.unpackb(store.serialize())[1] == 2 and len(again.seen_base_keys) == 1


def test_bundles_and_uploads_of_the_previous_version_still_decode() -> None:
    bob = PreKeyStore.generate(IdentityKeyPair.generate(), 1)
    otk = next(iter(bob.one_time_prekeys))
    v2 = msgpack.unpackb(bob.bundle(otk).encode())
    bundle = PreKeyBundle.decode_untrusted(msgpack.packb([v2[0], 1, *v2[2:11]]))
    assert bundle.pq_prekey_id == bob.current_pq_prekey.key_id and not bundle.pq_prekey_one_time
    up = msgpack.unpackb(bob.upload(list(bob.one_time_prekeys.values())).encode())
    assert PreKeyUpload.decode_untrusted(msgpack.packb([up[0], 1, *up[2:10]])).one_time_prekeys
    for wrong in ([v2[0], 1, *v2[2:12]], [v2[0], 2, *v2[2:11]]):
        with pytest.raises(DecodeError):
            PreKeyBundle.decode_untrusted(msgpack.packb(wrong))


# --- replayed initial messages ----------------------------------------------------------


def test_a_replayed_initial_message_without_one_time_keys_is_refused() -> None:
    # The server hands out a bundle with neither OTK nor one-time PQ key, then replays
    # the first message under a new envelope id, after the device saved and reloaded.
    bob = PreKeyStore.generate(IdentityKeyPair.generate(), 0)
    first = _first_message(IdentityKeyPair.generate(), bob.bundle(), b"pay 10")
    _, msg = accept_session(bob, first, conversation_id=CONV, now=0)
    assert msg.plaintext == b"pay 10"
    reloaded = PreKeyStore.restore_untrusted(bob.serialize())
    for store in (bob, reloaded):
        with pytest.raises(ReplayedMessage):
            accept_session(store, first, conversation_id=CONV, now=1)
        with pytest.raises(ReplayedMessage):
            agree_as_responder(store, InitialMessage.decode_untrusted(first))
    # Other initiators, and the same initiator with a new base key, are not affected.
    alice = IdentityKeyPair.generate()
    for _ in range(2):
        accept_session(reloaded, _first_message(alice, bob.bundle()), conversation_id=CONV, now=1)


def test_a_forged_initial_message_is_not_recorded() -> None:
    bob = PreKeyStore.generate(IdentityKeyPair.generate(), 0)
    alice = IdentityKeyPair.generate()
    genuine = InitialMessage.decode_untrusted(_first_message(alice, bob.bundle()))
    # Same identity and base key, payload not from Alice: fails, and does not block hers.
    mallory = InitialMessage.decode_untrusted(
        _first_message(IdentityKeyPair.generate(), bob.bundle())
    )
    forged = dataclasses.replace(genuine, payload=mallory.payload).encode()
    with pytest.raises(E2EEError):
        accept_session(bob, forged, conversation_id=CONV, now=0)
    assert len(bob.seen_base_keys) == 0
    accept_session(bob, genuine.encode(), conversation_id=CONV, now=0)


def test_the_replay_record_is_bounded_without_reopening_a_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(identity, "MAX_SEEN_BASE_KEYS", 4)
    bob = PreKeyStore.generate(IdentityKeyPair.generate(), 0)
    old_spk = bob.current_signed_prekey.key_id
    old = [_first_message(IdentityKeyPair.generate(), bob.bundle()) for _ in range(2)]
    for data in old:
        accept_session(bob, data, conversation_id=CONV, now=0)
    bob.rotate_signed_prekey()
    for _ in range(3):
        accept_session(
            bob,
            _first_message(IdentityKeyPair.generate(), bob.bundle()),
            conversation_id=CONV,
            now=0,
        )
    # Room for the fifth was made by dropping the old signed prekey with its record: its
    # messages cannot be replayed, for want of the key.
    assert old_spk not in bob.signed_prekeys and len(bob.seen_base_keys) == 3
    with pytest.raises(UnknownKey):
        accept_session(bob, old[0], conversation_id=CONV, now=0)
    accept_session(
        bob, _first_message(IdentityKeyPair.generate(), bob.bundle()), conversation_id=CONV, now=0
    )
    assert bob.replay_record_nearly_full
    # The newest signed prekey's record is full: new sessions wait for a rotation.
    with pytest.raises(TooManySessions):
        accept_session(
            bob,
            _first_message(IdentityKeyPair.generate(), bob.bundle()),
            conversation_id=CONV,
            now=0,
        )
    bob.rotate_signed_prekey()
    accept_session(
        bob, _first_message(IdentityKeyPair.generate(), bob.bundle()), conversation_id=CONV, now=0
    )
    restored = PreKeyStore.restore_untrusted(bob.serialize())
    assert len(restored.seen_base_keys) <= 4


def test_the_replay_record_decoder_refuses_malformed_records() -> None:
    bob = PreKeyStore.generate(IdentityKeyPair.generate(), 0)
    accept_session(
        bob, _first_message(IdentityKeyPair.generate(), bob.bundle()), conversation_id=CONV, now=0
    )
    fields = msgpack.unpackb(bob.serialize())
    spk_id, digests = fields[8][0]
    for bad in ([[spk_id, digests + b"x"]], [[spk_id + 1000, digests]], [[spk_id, digests]] * 2):
        fields[8] = bad
        with pytest.raises(DecodeError):
            PreKeyStore.restore_untrusted(msgpack.packb(fields, use_bin_type=True))
