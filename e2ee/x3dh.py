"""X3DH and PQXDH key agreement.

Implements Signal's "The X3DH Key Agreement Protocol" (rev. 1, §2–3) and "The PQXDH Key
Agreement Protocol" (rev. 3, §2–3) with X25519, SHA-256 and ML-KEM-1024:

* DH1 = DH(IK_A, SPK_B), DH2 = DH(EK_A, IK_B), DH3 = DH(EK_A, SPK_B), DH4 = DH(EK_A, OPK_B);
* SK = HKDF-SHA256(salt = 32 zero bytes, IKM = F || DH1 || DH2 || DH3 [|| DH4] [|| SS],
  info), F = 32 × 0xFF, SS the ML-KEM shared secret, info naming hushroom, curve and KEM;
* AD = Encode(IK_A) || Encode(IK_B).

Identity keys are Ed25519 (see :mod:`e2ee.identity`); the DH uses their X25519 form. Every
DH output is checked not to be all-zero (a low-order key). Signatures of the bundle are
verified before any secret is computed. The PQ prekey is the bundle's one-time PQ prekey
when it has one, else the last-resort one (PQXDH §3.2); the initial message names it by id.
The receiver consumes the one-time prekeys it used (X25519 and PQ), and refuses an initial
message whose initiator identity key and base key it accepted before (PQXDH §4.2 leaves
replay protection to the protocol above; libsignal refuses a pre-key message matching a
session it holds), so a replayed initial message fails even when it used no one-time key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from e2ee import _wire
from e2ee._primitives import (
    ED25519_LEN,
    MLKEM1024_CIPHERTEXT_LEN,
    X25519_LEN,
    X25519KeyPair,
    ed25519_to_x25519_public,
    encode_ed25519,
    hkdf,
    x25519,
)
from e2ee.errors import DecodeError, DowngradeRefused, InvalidKey
from e2ee.identity import MAX_KEY_ID, IdentityKeyPair, PreKeyBundle, PreKeyStore

__all__ = [
    "INFO_PQXDH",
    "INFO_X3DH",
    "AgreedSecret",
    "InitialMessage",
    "InitiatorHandshake",
    "agree_as_initiator",
    "agree_as_responder",
]

INFO_X3DH = b"hushroom_X25519_SHA-256"
INFO_PQXDH = b"hushroom_X25519_SHA-256_ML-KEM-1024"
_F = b"\xff" * 32
_SALT = bytes(32)
# An initial message carries the first ratchet message; bound it like any pairwise message.
MAX_INITIAL_PAYLOAD = 1024 * 1024 + 1024


@dataclass(frozen=True, slots=True)
class InitialMessage:
    """The initiator's first message: its keys, the prekeys used and the KEM ciphertext.

    ``payload`` is the first Double Ratchet message (see :mod:`e2ee.session`).
    """

    identity_key: bytes
    ephemeral_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    pq_prekey_id: int | None
    kem_ciphertext: bytes | None
    payload: bytes

    def encode(self) -> bytes:
        """Encode as msgpack ``[3, 1, ik, ek, spk_id, otk_id, pq_id, kem_ct, payload]``."""
        return _wire.pack(
            [
                _wire.TAG_INITIAL_MESSAGE,
                _wire.VERSION,
                self.identity_key,
                self.ephemeral_key,
                self.signed_prekey_id,
                self.one_time_prekey_id,
                self.pq_prekey_id,
                self.kem_ciphertext,
                self.payload,
            ]
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> InitialMessage:
        """Decode an initial message received from the network."""
        f = _wire.unpack_untrusted(
            data,
            _wire.TAG_INITIAL_MESSAGE,
            max_bytes=MAX_INITIAL_PAYLOAD + 4096,
            min_fields=9,
            max_fields=9,
        )
        pq_id = _wire.get_opt_int(f[6], "pq_prekey_id", 0, MAX_KEY_ID)
        kem_ct = _wire.get_opt_bytes(f[7], "kem_ciphertext", size=MLKEM1024_CIPHERTEXT_LEN)
        if (pq_id is None) != (kem_ct is None):
            raise DecodeError("PQ prekey id and KEM ciphertext must both be present or absent")
        return cls(
            identity_key=_wire.get_bytes(f[2], "identity_key", size=ED25519_LEN),
            ephemeral_key=_wire.get_bytes(f[3], "ephemeral_key", size=X25519_LEN),
            signed_prekey_id=_wire.get_int(f[4], "signed_prekey_id", 0, MAX_KEY_ID),
            one_time_prekey_id=_wire.get_opt_int(f[5], "one_time_prekey_id", 0, MAX_KEY_ID),
            pq_prekey_id=pq_id,
            kem_ciphertext=kem_ct,
            payload=_wire.get_bytes(f[8], "payload", max_len=MAX_INITIAL_PAYLOAD),
        )


@dataclass(frozen=True, slots=True)
class AgreedSecret:
    """Result of a handshake: SK, AD and what the Double Ratchet needs to start."""

    shared_key: bytes = field(repr=False)
    associated_data: bytes
    initiator_identity: bytes
    responder_identity: bytes
    # Initiator: the responder's signed prekey (its first ratchet public key).
    # Responder: the signed prekey pair (its first ratchet key pair).
    responder_ratchet_public: bytes
    responder_ratchet_pair: X25519KeyPair | None
    post_quantum: bool
    # Responder: whether the PQ key the message named is a one-time one (to consume once
    # the first message authenticates). Initiator: whether the bundle's was.
    pq_one_time: bool = False


def _kdf(km: bytes, post_quantum: bool) -> bytes:
    return hkdf(_SALT, _F + km, INFO_PQXDH if post_quantum else INFO_X3DH, 32)


def _associated_data(initiator_identity: bytes, responder_identity: bytes) -> bytes:
    return encode_ed25519(initiator_identity) + encode_ed25519(responder_identity)


@dataclass(frozen=True, slots=True)
class InitiatorHandshake:
    """The initiator's half: the agreed secret and the fields of its initial message."""

    secret: AgreedSecret
    ephemeral_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    pq_prekey_id: int | None
    kem_ciphertext: bytes | None

    def initial_message(self, payload: bytes) -> InitialMessage:
        """Wrap the first ratchet message ``payload`` into the initial message."""
        return InitialMessage(
            identity_key=self.secret.initiator_identity,
            ephemeral_key=self.ephemeral_key,
            signed_prekey_id=self.signed_prekey_id,
            one_time_prekey_id=self.one_time_prekey_id,
            pq_prekey_id=self.pq_prekey_id,
            kem_ciphertext=self.kem_ciphertext,
            payload=payload,
        )


def agree_as_initiator(
    identity: IdentityKeyPair, bundle: PreKeyBundle, *, require_pq: bool = True
) -> InitiatorHandshake:
    """Run the initiator's side (X3DH §3.3 / PQXDH §3.3) against a fetched bundle.

    The bundle's signatures are verified here as well, so a bundle built by hand cannot skip
    the check. With ``require_pq`` (the default) a bundle without a PQ prekey is refused: a
    server stripping it would otherwise downgrade the session to classical X3DH.
    """
    bundle.verify()
    if bundle.pq_prekey is None and require_pq:
        raise DowngradeRefused("bundle has no PQ signed prekey")
    ik_b = bundle.identity_x25519()
    ek = X25519KeyPair.generate()
    km = (
        x25519(identity.x25519_private, bundle.signed_prekey)
        + x25519(ek.private, ik_b)
        + x25519(ek.private, bundle.signed_prekey)
    )
    if bundle.one_time_prekey is not None:
        km += x25519(ek.private, bundle.one_time_prekey)
    kem_ct: bytes | None = None
    pq_public = bundle.pq_public_key()
    if pq_public is not None:
        shared, kem_ct = pq_public.encapsulate()
        km += shared
    post_quantum = kem_ct is not None
    secret = AgreedSecret(
        shared_key=_kdf(km, post_quantum),
        associated_data=_associated_data(identity.public, bundle.identity_key),
        initiator_identity=identity.public,
        responder_identity=bundle.identity_key,
        responder_ratchet_public=bundle.signed_prekey,
        responder_ratchet_pair=None,
        post_quantum=post_quantum,
        pq_one_time=post_quantum and bundle.pq_prekey_one_time,
    )
    return InitiatorHandshake(
        secret=secret,
        ephemeral_key=ek.public,
        signed_prekey_id=bundle.signed_prekey_id,
        one_time_prekey_id=bundle.one_time_prekey_id,
        pq_prekey_id=bundle.pq_prekey_id if post_quantum else None,
        kem_ciphertext=kem_ct,
    )


def agree_as_responder(
    store: PreKeyStore, message: InitialMessage, *, require_pq: bool = True
) -> AgreedSecret:
    """Run the responder's side (X3DH §3.4 / PQXDH §3.4).

    An initial message accepted before (same initiator identity key and base key) raises
    :class:`~e2ee.errors.ReplayedMessage` before any secret is computed. The one-time
    prekeys are only looked up here; :func:`e2ee.session.accept_session` removes them and
    records the message once its payload has authenticated, so a forged initial message
    can neither burn a key nor fill the replay record.
    """
    if message.kem_ciphertext is None and require_pq:
        raise DowngradeRefused("initial message without a KEM ciphertext")
    if (message.pq_prekey_id is None) != (message.kem_ciphertext is None):
        raise DecodeError("PQ prekey id and KEM ciphertext must both be present or absent")
    ik_a = ed25519_to_x25519_public(message.identity_key)
    if message.identity_key == store.identity.public:
        raise InvalidKey("initial message from our own identity key")
    store.check_not_replayed(message.identity_key, message.ephemeral_key)
    spk = store.signed_prekey(message.signed_prekey_id)
    store.check_room_for_session(spk.key_id)
    km = (
        x25519(spk.key_pair.private, ik_a)
        + x25519(store.identity.x25519_private, message.ephemeral_key)
        + x25519(spk.key_pair.private, message.ephemeral_key)
    )
    if message.one_time_prekey_id is not None:
        otk = store.peek_one_time_prekey(message.one_time_prekey_id)
        km += x25519(otk.key_pair.private, message.ephemeral_key)
    post_quantum = message.kem_ciphertext is not None
    pq_one_time = False
    if message.pq_prekey_id is not None and message.kem_ciphertext is not None:
        # Both present (checked above); the test narrows the types.
        pq_key, pq_one_time = store.pq_decapsulation_key(message.pq_prekey_id)
        try:
            km += pq_key.decapsulate(message.kem_ciphertext)
        except Exception:
            raise DecodeError("malformed ML-KEM ciphertext") from None
    return AgreedSecret(
        shared_key=_kdf(km, post_quantum),
        associated_data=_associated_data(message.identity_key, store.identity.public),
        initiator_identity=message.identity_key,
        responder_identity=store.identity.public,
        responder_ratchet_public=spk.key_pair.public,
        responder_ratchet_pair=spk.key_pair,
        post_quantum=post_quantum,
        pq_one_time=pq_one_time,
    )
