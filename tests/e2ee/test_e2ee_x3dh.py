"""Identities, prekeys, bundles and the X3DH / PQXDH handshakes."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.signing import signed_prekey_message
from e2ee import (
    IdentityKeyPair,
    InitialMessage,
    PreKeyBundle,
    PreKeyStore,
    PreKeyUpload,
    accept_session,
    agree_as_initiator,
    agree_as_responder,
    initiate_session,
)
from e2ee._primitives import X25519KeyPair, ed25519_to_x25519_public, ed25519_verify, x25519
from e2ee.errors import (
    BadSignature,
    DecryptionFailed,
    DowngradeRefused,
    InvalidKey,
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
