"""Pairwise sessions: an X3DH/PQXDH handshake followed by the Double Ratchet.

This is the composition Signal describes in X3DH §3.3 and Double Ratchet §7.1 (and
PQXDH §3.3): the initiator sends its handshake fields in every message until the responder
first answers, so the responder can build the session from whichever message arrives
first. The responder consumes the one-time prekeys (X25519 and PQ) and records the
message's initiator identity key and base key only after the first ratchet message
authenticates, so a forged initial message cannot burn a key, and a replayed one fails —
because its one-time keys are gone, and in any case because it was recorded
(:class:`~e2ee.errors.ReplayedMessage`).
"""

from __future__ import annotations

from dataclasses import dataclass

from e2ee import _wire
from e2ee._primitives import ED25519_LEN, MLKEM1024_CIPHERTEXT_LEN, X25519_LEN
from e2ee.double_ratchet import (
    DecryptedMessage,
    DoubleRatchet,
    MessageType,
    RatchetLimits,
)
from e2ee.errors import DecodeError, InvalidKey, StateError, WrongMessageType
from e2ee.identity import MAX_KEY_ID, IdentityKeyPair, PreKeyBundle, PreKeyStore
from e2ee.x3dh import InitialMessage, agree_as_initiator, agree_as_responder

__all__ = ["Session", "accept_session", "initiate_session"]


@dataclass(frozen=True, slots=True)
class _PendingHandshake:
    ephemeral_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    pq_prekey_id: int | None
    kem_ciphertext: bytes | None


class Session:
    """A pairwise end-to-end session with one peer device."""

    __slots__ = (
        "_base_ephemeral",
        "_pending",
        "local_identity",
        "post_quantum",
        "ratchet",
        "remote_identity",
    )

    def __init__(
        self,
        ratchet: DoubleRatchet,
        *,
        local_identity: bytes,
        remote_identity: bytes,
        post_quantum: bool,
        pending: _PendingHandshake | None = None,
        base_ephemeral: bytes | None = None,
    ) -> None:
        self.ratchet = ratchet
        self.local_identity = local_identity
        self.remote_identity = remote_identity
        self.post_quantum = post_quantum
        self._pending = pending
        self._base_ephemeral = base_ephemeral

    @property
    def awaiting_reply(self) -> bool:
        """True while the initiator still attaches its handshake to every message."""
        return self._pending is not None

    def encrypt(
        self,
        plaintext: bytes,
        *,
        message_type: MessageType = MessageType.TEXT,
        conversation_id: bytes,
    ) -> bytes:
        """Encrypt for the peer: an initial message until the peer answers, then ratchet."""
        inner = self.ratchet.encrypt(
            plaintext, message_type=message_type, conversation_id=conversation_id
        )
        p = self._pending
        if p is None:
            return inner
        return InitialMessage(
            identity_key=self.local_identity,
            ephemeral_key=p.ephemeral_key,
            signed_prekey_id=p.signed_prekey_id,
            one_time_prekey_id=p.one_time_prekey_id,
            pq_prekey_id=p.pq_prekey_id,
            kem_ciphertext=p.kem_ciphertext,
            payload=inner,
        ).encode()

    def decrypt(self, data: bytes, *, conversation_id: bytes, now: float) -> DecryptedMessage:
        """Decrypt untrusted bytes from the peer (a ratchet or a repeated initial message)."""
        tag = _wire.peek_tag(data)
        if tag == _wire.TAG_INITIAL_MESSAGE:
            msg = InitialMessage.decode_untrusted(data)
            # Only the session this very handshake created may take it.
            if self._base_ephemeral is None or msg.ephemeral_key != self._base_ephemeral:
                raise WrongMessageType("initial message for a different session")
            if msg.identity_key != self.remote_identity:
                raise InvalidKey("initial message from a different identity")
            data = msg.payload
        elif tag != _wire.TAG_RATCHET_MESSAGE:
            raise WrongMessageType(f"structure {tag} is not a pairwise message")
        result = self.ratchet.decrypt(data, conversation_id=conversation_id, now=now)
        self._pending = None
        return result

    def serialize(self) -> bytes:
        """Encode the session (ratchet state and handshake bookkeeping)."""
        p = self._pending
        return _wire.pack(
            [
                _wire.TAG_SESSION,
                _wire.VERSION,
                self.ratchet.serialize(),
                self.local_identity,
                self.remote_identity,
                int(self.post_quantum),
                None
                if p is None
                else [
                    p.ephemeral_key,
                    p.signed_prekey_id,
                    p.one_time_prekey_id,
                    p.pq_prekey_id,
                    p.kem_ciphertext,
                ],
                self._base_ephemeral,
            ]
        )

    @classmethod
    def restore_untrusted(cls, data: bytes) -> Session:
        """Rebuild a session from :meth:`serialize` output, checking every field."""
        f = _wire.unpack_untrusted(
            data, _wire.TAG_SESSION, max_bytes=2 * 1024 * 1024, min_fields=8, max_fields=8
        )
        pending = None
        if f[6] is not None:
            p = _wire.get_list(f[6], "pending", max_len=5)
            if len(p) != 5:
                raise DecodeError("pending handshake must have 5 fields")
            pending = _PendingHandshake(
                ephemeral_key=_wire.get_bytes(p[0], "ephemeral_key", size=X25519_LEN),
                signed_prekey_id=_wire.get_int(p[1], "signed_prekey_id", 0, MAX_KEY_ID),
                one_time_prekey_id=_wire.get_opt_int(p[2], "one_time_prekey_id", 0, MAX_KEY_ID),
                pq_prekey_id=_wire.get_opt_int(p[3], "pq_prekey_id", 0, MAX_KEY_ID),
                kem_ciphertext=_wire.get_opt_bytes(
                    p[4], "kem_ciphertext", size=MLKEM1024_CIPHERTEXT_LEN
                ),
            )
        return cls(
            DoubleRatchet.restore_untrusted(_wire.get_bytes(f[2], "ratchet", max_len=1024 * 1024)),
            local_identity=_wire.get_bytes(f[3], "local_identity", size=ED25519_LEN),
            remote_identity=_wire.get_bytes(f[4], "remote_identity", size=ED25519_LEN),
            post_quantum=bool(_wire.get_int(f[5], "post_quantum", 0, 1)),
            pending=pending,
            base_ephemeral=_wire.get_opt_bytes(f[7], "base_ephemeral", size=X25519_LEN),
        )


def initiate_session(
    identity: IdentityKeyPair,
    bundle: PreKeyBundle,
    *,
    require_pq: bool = True,
    limits: RatchetLimits | None = None,
) -> Session:
    """Start a session with the device described by ``bundle`` (PQXDH unless allowed not)."""
    hs = agree_as_initiator(identity, bundle, require_pq=require_pq)
    s = hs.secret
    ratchet = DoubleRatchet.initiator(
        s.shared_key, s.associated_data, s.responder_ratchet_public, limits
    )
    return Session(
        ratchet,
        local_identity=identity.public,
        remote_identity=bundle.identity_key,
        post_quantum=s.post_quantum,
        pending=_PendingHandshake(
            hs.ephemeral_key,
            hs.signed_prekey_id,
            hs.one_time_prekey_id,
            hs.pq_prekey_id,
            hs.kem_ciphertext,
        ),
    )


def accept_session(
    store: PreKeyStore,
    data: bytes,
    *,
    conversation_id: bytes,
    now: float,
    require_pq: bool = True,
    limits: RatchetLimits | None = None,
) -> tuple[Session, DecryptedMessage]:
    """Build the responder's session from an initial message and decrypt its payload.

    Once the payload authenticates, the one-time prekey and one-time PQ prekey named by the
    message are deleted from ``store`` (the last-resort PQ prekey is kept) and the message
    is recorded in ``store.seen_base_keys``; the caller persists ``store`` with the new
    session. The same initial message again raises :class:`~e2ee.errors.ReplayedMessage`.
    """
    msg = InitialMessage.decode_untrusted(data)
    s = agree_as_responder(store, msg, require_pq=require_pq)
    pair = s.responder_ratchet_pair
    if pair is None:  # agree_as_responder always sets it; checked for the type system
        raise StateError("responder handshake without a ratchet key pair")
    ratchet = DoubleRatchet.responder(s.shared_key, s.associated_data, pair, limits)
    first = ratchet.decrypt(msg.payload, conversation_id=conversation_id, now=now)
    if msg.one_time_prekey_id is not None:
        store.take_one_time_prekey(msg.one_time_prekey_id)
    if s.pq_one_time and msg.pq_prekey_id is not None:
        store.take_pq_one_time_prekey(msg.pq_prekey_id)
    store.record_accepted(msg.signed_prekey_id, msg.identity_key, msg.ephemeral_key)
    session = Session(
        ratchet,
        local_identity=store.identity.public,
        remote_identity=msg.identity_key,
        post_quantum=s.post_quantum,
        base_ephemeral=msg.ephemeral_key,
    )
    return session, first
