"""The Double Ratchet, per Signal's specification (rev. 1, 2016-11-20), §3 and §5.

* KDF_RK(rk, dh_out) = HKDF-SHA256(salt = rk, IKM = dh_out, info) → (rk', ck), §5.2;
* KDF_CK(ck): message key = HMAC-SHA256(ck, 0x01), next chain key = HMAC-SHA256(ck, 0x02);
* header = (DHs public key, PN, N), sent in clear;
* ENCRYPT(mk, plaintext, AD || header) is ChaCha20-Poly1305 (RFC 8439) keyed directly by the
  32-byte message key with a constant zero nonce. §5.2 allows a fixed nonce because every
  message key encrypts exactly one message. ChaCha20-Poly1305 rather than AES: it is
  constant-time in software on every client CPU (phones and old laptops without AES
  instructions), has a 256-bit key, and needs no separate MAC key or IV derivation, which
  keeps the per-message cost to two HMACs and one AEAD call.

Associated data binds, for every message: Encode(IK_initiator) || Encode(IK_responder)
(from X3DH/PQXDH), the message type, the conversation id, and the header. A message
therefore cannot be replayed into another conversation, nor accepted as another type, nor
have its header changed (the Wire and Matrix lessons).

Skipped message keys (§3.2's MKSKIPPED) are bounded three ways: at most ``max_skip`` per
jump, at most ``max_skipped_keys`` in total (oldest evicted first) and at most
``max_skipped_age`` seconds old. Decryption is transactional: state changes only once a
message has authenticated, so a forged or replayed message leaves the session untouched.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

from e2ee import _wire
from e2ee._primitives import X25519_LEN, X25519KeyPair, aead_open, aead_seal, hkdf, x25519
from e2ee.errors import (
    CounterExhausted,
    DecodeError,
    DuplicateMessage,
    E2EEError,
    StateError,
    TooManySkipped,
)

__all__ = [
    "MAX_CONVERSATION_ID",
    "MAX_PLAINTEXT",
    "DecryptedMessage",
    "DoubleRatchet",
    "MessageType",
    "RatchetLimits",
    "RatchetMessage",
]

MAX_PLAINTEXT = 1024 * 1024
MAX_CONVERSATION_ID = 255
MAX_COUNTER = 0xFFFFFFFF
_ROOT_INFO = b"hushroom_DoubleRatchet_root_v1"
_AEAD_OVERHEAD = 16
_MAX_MESSAGE_BYTES = MAX_PLAINTEXT + _AEAD_OVERHEAD + 128


class MessageType(IntEnum):
    """What a pairwise message carries; bound into the AD, so it cannot be relabelled."""

    TEXT = 1
    SENDER_KEY_DISTRIBUTION = 2
    MEDIA_KEY = 3
    DEVICE_SYNC = 4


@dataclass(frozen=True, slots=True)
class RatchetLimits:
    """Bounds on skipped message keys (defaults follow libsignal's limits)."""

    max_skip: int = 2000
    max_skipped_keys: int = 2000
    max_skipped_age: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_skip <= 100_000 or not 0 <= self.max_skipped_keys <= 100_000:
            raise E2EEError("ratchet limits out of range")
        if not self.max_skipped_age > 0:
            raise E2EEError("max_skipped_age must be positive")


@dataclass(frozen=True, slots=True)
class DecryptedMessage:
    """An authenticated pairwise plaintext, with the type and conversation it was bound to."""

    message_type: MessageType
    conversation_id: bytes
    # Kept out of repr() like key material: plaintext must never reach a log.
    plaintext: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RatchetMessage:
    """A Double Ratchet message: type, header (dh, pn, n) and AEAD ciphertext."""

    message_type: MessageType
    dh: bytes
    pn: int
    n: int
    ciphertext: bytes

    def encode(self) -> bytes:
        """Encode as msgpack ``[4, 1, type, dh, pn, n, ciphertext]``."""
        return msgpack.packb(
            [
                _wire.TAG_RATCHET_MESSAGE,
                _wire.VERSION,
                int(self.message_type),
                self.dh,
                self.pn,
                self.n,
                self.ciphertext,
            ],
            use_bin_type=True,
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> RatchetMessage:
        """Decode a ratchet message received from the network."""
        f = _wire.unpack_untrusted(
            data,
            _wire.TAG_RATCHET_MESSAGE,
            max_bytes=_MAX_MESSAGE_BYTES,
            max_items=8,
            min_fields=7,
            max_fields=7,
        )
        type_value = _wire.get_int(f[2], "message_type", 1, 255)
        try:
            message_type = MessageType(type_value)
        except ValueError:
            raise DecodeError(f"unknown message type {type_value}") from None
        ciphertext = _wire.get_bytes(f[6], "ciphertext", max_len=MAX_PLAINTEXT + _AEAD_OVERHEAD)
        if len(ciphertext) < _AEAD_OVERHEAD:
            raise DecodeError("ciphertext shorter than the AEAD tag")
        return cls(
            message_type=message_type,
            dh=_wire.get_bytes(f[3], "dh", size=X25519_LEN),
            pn=_wire.get_int(f[4], "pn", 0, MAX_COUNTER),
            n=_wire.get_int(f[5], "n", 0, MAX_COUNTER),
            ciphertext=ciphertext,
        )


def _kdf_rk(root_key: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    out = hkdf(root_key, dh_out, _ROOT_INFO, 64)
    return out[:32], out[32:]


def _kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    """Return (next chain key, message key)."""
    return hmac.digest(chain_key, b"\x02", "sha256"), hmac.digest(chain_key, b"\x01", "sha256")


def _check_conversation_id(conversation_id: bytes) -> None:
    if not isinstance(conversation_id, bytes) or len(conversation_id) > MAX_CONVERSATION_ID:
        raise E2EEError("conversation id must be bytes of at most 255")


class DoubleRatchet:
    """One side of a Double Ratchet session (§3), a pure state machine.

    Build one with :meth:`initiator` or :meth:`responder` from an X3DH/PQXDH result, or
    with :meth:`restore_untrusted` from :meth:`serialize` output.
    """

    __slots__ = (
        "_ad",
        "_ckr",
        "_cks",
        "_dhr",
        "_dhs",
        "_limits",
        "_nr",
        "_ns",
        "_pn",
        "_rk",
        "_skipped",
    )

    def __init__(
        self,
        *,
        associated_data: bytes,
        root_key: bytes,
        dhs: X25519KeyPair,
        dhr: bytes | None,
        cks: bytes | None,
        ckr: bytes | None,
        ns: int = 0,
        nr: int = 0,
        pn: int = 0,
        skipped: dict[tuple[bytes, int], tuple[bytes, float]] | None = None,
        limits: RatchetLimits | None = None,
    ) -> None:
        self._ad = associated_data
        self._rk = root_key
        self._dhs = dhs
        self._dhr = dhr
        self._cks = cks
        self._ckr = ckr
        self._ns = ns
        self._nr = nr
        self._pn = pn
        # Insertion order is age order, which makes "evict the oldest" a dict pop.
        self._skipped: dict[tuple[bytes, int], tuple[bytes, float]] = skipped or {}
        self._limits = limits or RatchetLimits()

    @classmethod
    def initiator(
        cls,
        shared_key: bytes,
        associated_data: bytes,
        responder_ratchet_public: bytes,
        limits: RatchetLimits | None = None,
    ) -> DoubleRatchet:
        """RatchetInitAlice (§3.3): the side that ran X3DH as initiator."""
        dhs = X25519KeyPair.generate()
        rk, cks = _kdf_rk(shared_key, x25519(dhs.private, responder_ratchet_public))
        return cls(
            associated_data=associated_data,
            root_key=rk,
            dhs=dhs,
            dhr=responder_ratchet_public,
            cks=cks,
            ckr=None,
            limits=limits,
        )

    @classmethod
    def responder(
        cls,
        shared_key: bytes,
        associated_data: bytes,
        ratchet_pair: X25519KeyPair,
        limits: RatchetLimits | None = None,
    ) -> DoubleRatchet:
        """RatchetInitBob (§3.3): the side whose signed prekey is the first ratchet key."""
        return cls(
            associated_data=associated_data,
            root_key=shared_key,
            dhs=ratchet_pair,
            dhr=None,
            cks=None,
            ckr=None,
            limits=limits,
        )

    @property
    def skipped_key_count(self) -> int:
        """How many skipped message keys are stored."""
        return len(self._skipped)

    @property
    def can_send(self) -> bool:
        """False only for a responder that has not yet received a message."""
        return self._cks is not None

    def _ad_for(
        self, message_type: int, conversation_id: bytes, dh: bytes, pn: int, n: int
    ) -> bytes:
        return b"".join(
            (
                self._ad,
                bytes((message_type, len(conversation_id))),
                conversation_id,
                dh,
                pn.to_bytes(4, "big"),
                n.to_bytes(4, "big"),
            )
        )

    def encrypt(
        self, plaintext: bytes, *, message_type: MessageType, conversation_id: bytes
    ) -> bytes:
        """RatchetEncrypt (§3.4): returns an encoded :class:`RatchetMessage`."""
        if self._cks is None:
            raise StateError("cannot send before the first message from the initiator")
        if len(plaintext) > MAX_PLAINTEXT:
            raise E2EEError("plaintext too long")
        _check_conversation_id(conversation_id)
        n = self._ns
        if n >= MAX_COUNTER:
            raise CounterExhausted("sending chain exhausted")
        try:
            message_type = MessageType(message_type)
        except ValueError:
            raise E2EEError(f"unknown message type {message_type!r}") from None
        self._cks, mk = _kdf_ck(self._cks)
        self._ns = n + 1
        dh = self._dhs.public
        ct = aead_seal(mk, plaintext, self._ad_for(message_type, conversation_id, dh, self._pn, n))
        return msgpack.packb(
            [_wire.TAG_RATCHET_MESSAGE, _wire.VERSION, int(message_type), dh, self._pn, n, ct],
            use_bin_type=True,
        )

    def decrypt(self, message: bytes, *, conversation_id: bytes, now: float) -> DecryptedMessage:
        """RatchetDecrypt (§3.5) of untrusted bytes; the state changes only on success.

        ``now`` (seconds, any epoch the caller keeps consistent) timestamps skipped keys and
        expires old ones.
        """
        _check_conversation_id(conversation_id)
        msg = RatchetMessage.decode_untrusted(message)
        return self.decrypt_message(msg, conversation_id=conversation_id, now=now)

    def decrypt_message(
        self, msg: RatchetMessage, *, conversation_id: bytes, now: float
    ) -> DecryptedMessage:
        """Like :meth:`decrypt` for an already decoded message."""
        self.purge_expired(now)
        ad = self._ad_for(msg.message_type, conversation_id, msg.dh, msg.pn, msg.n)
        slot = (msg.dh, msg.n)
        stored = self._skipped.get(slot)
        if stored is not None:
            plaintext = aead_open(stored[0], msg.ciphertext, ad)
            del self._skipped[slot]
            return DecryptedMessage(msg.message_type, conversation_id, plaintext)

        limits = self._limits
        new_skipped: list[tuple[tuple[bytes, int], bytes]] = []
        ratchet: tuple[bytes, X25519KeyPair, bytes] | None = None
        if msg.dh != self._dhr:
            # A new ratchet public key: first store the rest of the current receiving chain.
            if self._ckr is not None and self._dhr is not None:
                if msg.pn < self._nr:
                    pass  # nothing left to skip in the old chain
                elif msg.pn - self._nr > limits.max_skip:
                    raise TooManySkipped(f"would skip {msg.pn - self._nr} messages")
                else:
                    ck = self._ckr
                    for i in range(self._nr, msg.pn):
                        ck, mk = _kdf_ck(ck)
                        new_skipped.append(((self._dhr, i), mk))
            if msg.n > limits.max_skip:
                raise TooManySkipped(f"would skip {msg.n} messages")
            rk, chain = _kdf_rk(self._rk, x25519(self._dhs.private, msg.dh))
            new_dhs = X25519KeyPair.generate()
            rk, new_cks = _kdf_rk(rk, x25519(new_dhs.private, msg.dh))
            ratchet = (rk, new_dhs, new_cks)
            chain_n = 0
        else:
            if self._ckr is None:
                raise StateError("no receiving chain")
            chain = self._ckr
            chain_n = self._nr
            if msg.n < chain_n:
                raise DuplicateMessage(f"message {msg.n} already received or its key expired")
            if msg.n - chain_n > limits.max_skip:
                raise TooManySkipped(f"would skip {msg.n - chain_n} messages")
        for i in range(chain_n, msg.n):
            chain, mk = _kdf_ck(chain)
            new_skipped.append(((msg.dh, i), mk))
        chain, mk = _kdf_ck(chain)
        plaintext = aead_open(mk, msg.ciphertext, ad)

        # Authenticated: commit.
        if ratchet is not None:
            self._pn = self._ns
            self._ns = 0
            self._dhr = msg.dh
            self._rk, self._dhs, self._cks = ratchet
        self._ckr = chain
        self._nr = msg.n + 1
        for key_slot, key in new_skipped:
            self._skipped[key_slot] = (key, now)
        excess = len(self._skipped) - limits.max_skipped_keys
        if excess > 0:
            for old in list(self._skipped)[:excess]:
                del self._skipped[old]
        return DecryptedMessage(msg.message_type, conversation_id, plaintext)

    def purge_expired(self, now: float) -> None:
        """Delete skipped message keys older than ``max_skipped_age``."""
        if not self._skipped:
            return
        cutoff = now - self._limits.max_skipped_age
        for slot, (_, created) in list(self._skipped.items()):
            if created >= cutoff:
                break
            del self._skipped[slot]

    def serialize(self) -> bytes:
        """Encode the complete state; :meth:`restore_untrusted` rebuilds it exactly."""
        lim = self._limits
        return _wire.pack(
            [
                _wire.TAG_SESSION_STATE,
                _wire.VERSION,
                self._ad,
                self._rk,
                self._dhs.private,
                self._dhr,
                self._cks,
                self._ckr,
                self._ns,
                self._nr,
                self._pn,
                [[dh, n, mk, t] for (dh, n), (mk, t) in self._skipped.items()],
                [lim.max_skip, lim.max_skipped_keys, lim.max_skipped_age],
            ]
        )

    @classmethod
    def restore_untrusted(cls, data: bytes) -> DoubleRatchet:
        """Rebuild a session from :meth:`serialize` output, checking every field."""
        f = _wire.unpack_untrusted(
            data,
            _wire.TAG_SESSION_STATE,
            max_bytes=1024 * 1024,
            max_items=100_000,
            min_fields=13,
            max_fields=13,
        )
        lim_f = _wire.get_list(f[12], "limits", max_len=3)
        if len(lim_f) != 3:
            raise DecodeError("limits must have 3 fields")
        try:
            limits = RatchetLimits(
                _wire.get_int(lim_f[0], "max_skip", 0, 100_000),
                _wire.get_int(lim_f[1], "max_skipped_keys", 0, 100_000),
                _wire.get_float(lim_f[2], "max_skipped_age"),
            )
        except E2EEError as exc:
            raise DecodeError(str(exc)) from None
        skipped: dict[tuple[bytes, int], tuple[bytes, float]] = {}
        for item in _wire.get_list(f[11], "skipped", max_len=limits.max_skipped_keys):
            entry: list[Any] = _wire.get_list(item, "skipped key", max_len=4)
            if len(entry) != 4:
                raise DecodeError("skipped key must have 4 fields")
            slot = (
                _wire.get_bytes(entry[0], "dh", size=X25519_LEN),
                _wire.get_int(entry[1], "n", 0, MAX_COUNTER),
            )
            skipped[slot] = (
                _wire.get_bytes(entry[2], "mk", size=32),
                _wire.get_float(entry[3], "created"),
            )
        return cls(
            associated_data=_wire.get_bytes(f[2], "ad", max_len=256),
            root_key=_wire.get_bytes(f[3], "rk", size=32),
            dhs=X25519KeyPair.from_private(_wire.get_bytes(f[4], "dhs", size=32)),
            dhr=_wire.get_opt_bytes(f[5], "dhr", size=X25519_LEN),
            cks=_wire.get_opt_bytes(f[6], "cks", size=32),
            ckr=_wire.get_opt_bytes(f[7], "ckr", size=32),
            ns=_wire.get_int(f[8], "ns", 0, MAX_COUNTER),
            nr=_wire.get_int(f[9], "nr", 0, MAX_COUNTER),
            pn=_wire.get_int(f[10], "pn", 0, MAX_COUNTER),
            skipped=skipped,
            limits=limits,
        )
