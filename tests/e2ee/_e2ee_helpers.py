"""Shared builders for the e2ee tests."""

from __future__ import annotations

from e2ee import IdentityKeyPair, PreKeyStore, Session, accept_session, initiate_session
from e2ee.double_ratchet import DoubleRatchet, RatchetLimits
from e2ee.x3dh import agree_as_initiator, agree_as_responder

CONV = b"conversation-1"

# A prekey store serialized by the code before one-time PQ prekeys (format version 1):
# identity seed 00..1f, a signed prekey (id 1), a PQ prekey (id 2) and an OTK (id 3).
V1_PREKEY_STORE = bytes.fromhex(
    "970e01c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f04919301c4204e"
    "6df5eaf9cb932a51a7218daa79f014882581ede25d64a7fe2b86246203f24bc44077c2ba706f5a7c466b2320"
    "9372bef85689d97c636df2b8cb8f71b25ea504c534e03bb3fd8daa211f2989b6e292f96b94999fe9a515b9c7"
    "c124f3e82a1d67070c919302c4402de27e332ebfe1ca0923bc165945b3c2791b2fa022f792033847af36183c"
    "14ded60702863123d493b5ed02a6362349a11dd5dea6b0d93179a26b20800cd2bd19c4400104c0fd554140ae"
    "0475b5c142c8ddfb9fd33d87a036137e5a81d9a8963b2b94d6cf1a1e821317b0101f1ef6407e50c2be6f892d"
    "d638b10ed082df56b70b280f919203c420df420d52cda05d73b1adc509c96ed2453b7e3513a65c3ce7502015"
    "cc29d2ea4a"
)


def ratchet_pair(limits: RatchetLimits | None = None) -> tuple[DoubleRatchet, DoubleRatchet]:
    """Alice's and Bob's ratchets after a real PQXDH handshake (no network)."""
    alice_id, bob_id = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    store = PreKeyStore.generate(bob_id, 1)
    hs = agree_as_initiator(alice_id, store.bundle(next(iter(store.one_time_prekeys))))
    bob_secret = agree_as_responder(store, hs.initial_message(b""))
    a = hs.secret
    assert bob_secret.responder_ratchet_pair is not None
    alice = DoubleRatchet.initiator(
        a.shared_key, a.associated_data, a.responder_ratchet_public, limits
    )
    bob = DoubleRatchet.responder(
        bob_secret.shared_key, bob_secret.associated_data, bob_secret.responder_ratchet_pair, limits
    )
    return alice, bob


def session_pair() -> tuple[Session, Session, PreKeyStore]:
    """Established sessions (Bob has answered once)."""
    alice_id, bob_id = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    store = PreKeyStore.generate(bob_id, 2)
    alice = initiate_session(alice_id, store.bundle(next(iter(store.one_time_prekeys))))
    bob, first = accept_session(
        store, alice.encrypt(b"hi", conversation_id=CONV), conversation_id=CONV, now=0
    )
    assert first.plaintext == b"hi"
    alice.decrypt(bob.encrypt(b"hello", conversation_id=CONV), conversation_id=CONV, now=0)
    return alice, bob, store
