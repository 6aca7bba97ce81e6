"""Shared builders for the e2ee tests."""

from __future__ import annotations

from e2ee import IdentityKeyPair, PreKeyStore, Session, accept_session, initiate_session
from e2ee.double_ratchet import DoubleRatchet, RatchetLimits
from e2ee.x3dh import agree_as_initiator, agree_as_responder

CONV = b"conversation-1"


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
