"""Sender Keys: group messages for channels, as in Signal's and libsignal's group cipher.

Each member sending in a channel owns a sender key: a random key id, a chain key advanced
by the Double Ratchet's HMAC KDF_CK (message key = HMAC(ck, 0x01), next = HMAC(ck, 0x02)),
an iteration counter and an Ed25519 signing key. A message is ``key id, iteration,
ciphertext, signature``; the receiver verifies the signature before touching the chain, so
only the holder of the signing key (not every member holding the chain key) can author
messages. The AEAD is ChaCha20-Poly1305 with the single-use message key, as in
:mod:`e2ee.double_ratchet`, and the channel id, key id and iteration are bound into both
the signature and the AD, so a message cannot be moved to another channel.

Bounds follow libsignal: a jump of at most 25,000 iterations, at most 2,000 stored skipped
keys per sender key, at most 5 sender-key states per sender. A replayed iteration is
refused.

The distribution message (key id, iteration, chain key, signing public key) only ever
travels inside a pairwise session: :meth:`SenderKeyReceiver.process_distribution` accepts
only a :class:`~e2ee.double_ratchet.DecryptedMessage` of type SENDER_KEY_DISTRIBUTION, and
the pairwise AD binds the channel id as the conversation id. Sender keys have no future
secrecy, so :meth:`SenderKeySender.rotate` must be called whenever a member is removed
(:func:`rotate_after_removal`).
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass, field

import nacl.bindings as sodium

from e2ee import _wire
from e2ee._primitives import (
    ED25519_LEN,
    SIGNATURE_LEN,
    aead_open,
    aead_seal,
    ed25519_sign,
    ed25519_verify,
    random_bytes,
)
from e2ee.double_ratchet import MAX_PLAINTEXT, DecryptedMessage, MessageType
from e2ee.errors import (
    CounterExhausted,
    DecodeError,
    DuplicateMessage,
    E2EEError,
    TooManySkipped,
    UnknownKey,
    WrongMessageType,
)

__all__ = [
    "MAX_FORWARD_JUMP",
    "MAX_SENDER_KEY_STATES",
    "MAX_SKIPPED_SENDER_KEYS",
    "SenderKeyDistribution",
    "SenderKeyMessage",
    "SenderKeyReceiver",
    "SenderKeySender",
    "rotate_after_removal",
]

MAX_FORWARD_JUMP = 25_000
MAX_SKIPPED_SENDER_KEYS = 2_000
MAX_SENDER_KEY_STATES = 5
MAX_ITERATION = 0xFFFFFFFF
MAX_CHANNEL_ID = 255
_SIG_LABEL = b"hushroom sender key message v1\x00"
_AD_LABEL = b"hushroom sender key ad v1\x00"
_SENDER_STATE = 0
_RECEIVER_STATE = 1


def _check_channel(channel_id: bytes) -> None:
    if not isinstance(channel_id, bytes) or not 1 <= len(channel_id) <= MAX_CHANNEL_ID:
        raise E2EEError("channel id must be 1..255 bytes")


def _bound(channel_id: bytes, key_id: int, iteration: int) -> bytes:
    return bytes((len(channel_id),)) + channel_id + struct.pack(">II", key_id, iteration)


def _kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    return hmac.digest(chain_key, b"\x02", "sha256"), hmac.digest(chain_key, b"\x01", "sha256")


@dataclass(frozen=True, slots=True)
class SenderKeyMessage:
    """A channel message: key id, iteration, ciphertext and the sender's signature."""

    key_id: int
    iteration: int
    ciphertext: bytes
    signature: bytes

    def encode(self) -> bytes:
        """Encode as msgpack ``[6, 1, key_id, iteration, ciphertext, signature]``."""
        return _wire.pack(
            [
                _wire.TAG_SENDER_KEY_MESSAGE,
                _wire.VERSION,
                self.key_id,
                self.iteration,
                self.ciphertext,
                self.signature,
            ]
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> SenderKeyMessage:
        """Decode a channel message received from the network."""
        f = _wire.unpack_untrusted(
            data,
            _wire.TAG_SENDER_KEY_MESSAGE,
            max_bytes=MAX_PLAINTEXT + 256,
            max_items=8,
            min_fields=6,
            max_fields=6,
        )
        ct = _wire.get_bytes(f[4], "ciphertext", max_len=MAX_PLAINTEXT + 16)
        if len(ct) < 16:
            raise DecodeError("ciphertext shorter than the AEAD tag")
        return cls(
            key_id=_wire.get_int(f[2], "key_id", 0, 0xFFFFFFFF),
            iteration=_wire.get_int(f[3], "iteration", 0, MAX_ITERATION),
            ciphertext=ct,
            signature=_wire.get_bytes(f[5], "signature", size=SIGNATURE_LEN),
        )


@dataclass(frozen=True, slots=True)
class SenderKeyDistribution:
    """The state a receiver needs to follow one sender key from ``iteration`` on."""

    channel_id: bytes
    key_id: int
    iteration: int
    chain_key: bytes = field(repr=False)
    signing_key: bytes

    def encode(self) -> bytes:
        """Encode as msgpack ``[7, 1, channel_id, key_id, iteration, chain_key, signing_key]``."""
        return _wire.pack(
            [
                _wire.TAG_SENDER_KEY_DISTRIBUTION,
                _wire.VERSION,
                self.channel_id,
                self.key_id,
                self.iteration,
                self.chain_key,
                self.signing_key,
            ]
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> SenderKeyDistribution:
        """Decode a distribution message (normally the plaintext of a pairwise message)."""
        f = _wire.unpack_untrusted(
            data, _wire.TAG_SENDER_KEY_DISTRIBUTION, max_bytes=1024, min_fields=7, max_fields=7
        )
        channel = _wire.get_bytes(f[2], "channel_id", max_len=MAX_CHANNEL_ID)
        if not channel:
            raise DecodeError("empty channel id")
        signing_key = _wire.get_bytes(f[6], "signing_key", size=ED25519_LEN)
        try:
            valid = sodium.crypto_core_ed25519_is_valid_point(signing_key)
        except Exception:
            valid = False
        if not valid:
            raise DecodeError("signing key is not a valid Ed25519 point")
        return cls(
            channel_id=channel,
            key_id=_wire.get_int(f[3], "key_id", 0, 0xFFFFFFFF),
            iteration=_wire.get_int(f[4], "iteration", 0, MAX_ITERATION),
            chain_key=_wire.get_bytes(f[5], "chain_key", size=32),
            signing_key=signing_key,
        )


class SenderKeySender:
    """The sending side of one member's sender key in one channel."""

    def __init__(self, channel_id: bytes) -> None:
        _check_channel(channel_id)
        self.channel_id = channel_id
        self._new_key()

    def _new_key(self) -> None:
        self._install(int.from_bytes(random_bytes(4), "big"), 0, random_bytes(32), random_bytes(32))

    def _install(self, key_id: int, iteration: int, chain_key: bytes, signing_seed: bytes) -> None:
        self.key_id = key_id
        self.iteration = iteration
        self._chain_key = chain_key
        self._signing_seed = signing_seed
        public, secret = sodium.crypto_sign_seed_keypair(signing_seed)
        self.signing_public: bytes = public
        self._signing_secret: bytes = secret

    def serialize(self) -> bytes:
        """Encode the sending state (chain key and signing seed included) for storage."""
        return _wire.pack(
            [
                _wire.TAG_SENDER_KEY_STATE,
                _wire.VERSION,
                _SENDER_STATE,
                self.channel_id,
                self.key_id,
                self.iteration,
                self._chain_key,
                self._signing_seed,
            ]
        )

    @classmethod
    def restore_untrusted(cls, data: bytes) -> SenderKeySender:
        """Rebuild a sender from :meth:`serialize` output, checking every field."""
        f = _wire.unpack_untrusted(
            data, _wire.TAG_SENDER_KEY_STATE, max_bytes=1024, min_fields=8, max_fields=8
        )
        if f[2] != _SENDER_STATE or type(f[2]) is not int:
            raise DecodeError("not a sender-key sending state")
        channel = _wire.get_bytes(f[3], "channel_id", max_len=MAX_CHANNEL_ID)
        if not channel:
            raise DecodeError("empty channel id")
        sender = cls.__new__(cls)
        sender.channel_id = channel
        sender._install(
            _wire.get_int(f[4], "key_id", 0, 0xFFFFFFFF),
            _wire.get_int(f[5], "iteration", 0, MAX_ITERATION),
            _wire.get_bytes(f[6], "chain_key", size=32),
            _wire.get_bytes(f[7], "signing_seed", size=32),
        )
        return sender

    def distribution(self) -> SenderKeyDistribution:
        """The distribution for the current key at the current iteration.

        Send its :meth:`~SenderKeyDistribution.encode` output only through a pairwise
        :class:`~e2ee.session.Session` with ``message_type=SENDER_KEY_DISTRIBUTION`` and
        ``conversation_id=channel_id``.
        """
        return SenderKeyDistribution(
            self.channel_id, self.key_id, self.iteration, self._chain_key, self.signing_public
        )

    def rotate(self) -> SenderKeyDistribution:
        """Replace the key with a fresh one (new key id, chain and signing key)."""
        self._new_key()
        return self.distribution()

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt and sign one channel message; returns the encoded message."""
        if len(plaintext) > MAX_PLAINTEXT:
            raise E2EEError("plaintext too long")
        if self.iteration >= MAX_ITERATION:
            raise CounterExhausted("sender key exhausted; rotate")
        iteration = self.iteration
        self._chain_key, mk = _kdf_ck(self._chain_key)
        self.iteration = iteration + 1
        bound = _bound(self.channel_id, self.key_id, iteration)
        ct = aead_seal(mk, plaintext, _AD_LABEL + bound)
        sig = ed25519_sign(self._signing_secret, _SIG_LABEL + bound + ct)
        return SenderKeyMessage(self.key_id, iteration, ct, sig).encode()


class _ReceiverState:
    __slots__ = ("chain_key", "iteration", "signing_key", "skipped")

    def __init__(self, chain_key: bytes, iteration: int, signing_key: bytes) -> None:
        self.chain_key = chain_key
        self.iteration = iteration
        self.signing_key = signing_key
        self.skipped: dict[int, bytes] = {}


class SenderKeyReceiver:
    """The receiving side of one sender's keys in one channel (up to 5 key ids)."""

    def __init__(self, channel_id: bytes) -> None:
        _check_channel(channel_id)
        self.channel_id = channel_id
        self._states: dict[int, _ReceiverState] = {}

    def process_distribution(self, message: DecryptedMessage) -> None:
        """Install a sender key from an authenticated pairwise message.

        Only a :class:`DecryptedMessage` of type SENDER_KEY_DISTRIBUTION bound to this
        channel is accepted, so a distribution can never arrive outside a pairwise session.
        """
        if not isinstance(message, DecryptedMessage):
            raise WrongMessageType("a distribution must come out of a pairwise session")
        if message.message_type is not MessageType.SENDER_KEY_DISTRIBUTION:
            raise WrongMessageType(f"expected SENDER_KEY_DISTRIBUTION, got {message.message_type}")
        dist = SenderKeyDistribution.decode_untrusted(message.plaintext)
        if dist.channel_id != self.channel_id or message.conversation_id != self.channel_id:
            raise WrongMessageType("distribution for another channel")
        existing = self._states.get(dist.key_id)
        if existing is not None:
            if existing.signing_key != dist.signing_key:
                raise E2EEError("sender key id reused with a different signing key")
            # Never move a known key backwards: that would re-open consumed iterations.
            if dist.iteration >= existing.iteration:
                return
            raise DuplicateMessage("distribution older than the installed state")
        self._states[dist.key_id] = _ReceiverState(dist.chain_key, dist.iteration, dist.signing_key)
        while len(self._states) > MAX_SENDER_KEY_STATES:
            del self._states[next(iter(self._states))]

    def decrypt(self, data: bytes) -> bytes:
        """Verify and decrypt one channel message; the state changes only on success."""
        msg = SenderKeyMessage.decode_untrusted(data)
        state = self._states.get(msg.key_id)
        if state is None:
            raise UnknownKey(f"no sender key {msg.key_id}")
        bound = _bound(self.channel_id, msg.key_id, msg.iteration)
        ed25519_verify(state.signing_key, _SIG_LABEL + bound + msg.ciphertext, msg.signature)
        ad = _AD_LABEL + bound
        if msg.iteration < state.iteration:
            mk = state.skipped.get(msg.iteration)
            if mk is None:
                raise DuplicateMessage(f"iteration {msg.iteration} already received")
            plaintext = aead_open(mk, msg.ciphertext, ad)
            del state.skipped[msg.iteration]
            return plaintext
        jump = msg.iteration - state.iteration
        if jump > MAX_FORWARD_JUMP:
            raise TooManySkipped(f"sender key jump of {jump} iterations")
        chain = state.chain_key
        new_skipped: list[tuple[int, bytes]] = []
        for i in range(state.iteration, msg.iteration):
            chain, mk = _kdf_ck(chain)
            new_skipped.append((i, mk))
        chain, mk = _kdf_ck(chain)
        plaintext = aead_open(mk, msg.ciphertext, ad)
        state.chain_key = chain
        state.iteration = msg.iteration + 1
        state.skipped.update(new_skipped[-MAX_SKIPPED_SENDER_KEYS:])
        excess = len(state.skipped) - MAX_SKIPPED_SENDER_KEYS
        if excess > 0:
            for old in list(state.skipped)[:excess]:
                del state.skipped[old]
        # Most recently used state last, so eviction drops the least recent.
        self._states[msg.key_id] = self._states.pop(msg.key_id)
        return plaintext

    def serialize(self) -> bytes:
        """Encode every installed sender key (with its skipped message keys) for storage."""
        return _wire.pack(
            [
                _wire.TAG_SENDER_KEY_STATE,
                _wire.VERSION,
                _RECEIVER_STATE,
                self.channel_id,
                [
                    [key_id, st.iteration, st.chain_key, st.signing_key, list(st.skipped.items())]
                    for key_id, st in self._states.items()
                ],
            ]
        )

    @classmethod
    def restore_untrusted(cls, data: bytes) -> SenderKeyReceiver:
        """Rebuild a receiver from :meth:`serialize` output, checking every field."""
        f = _wire.unpack_untrusted(
            data,
            _wire.TAG_SENDER_KEY_STATE,
            max_bytes=MAX_SENDER_KEY_STATES * (MAX_SKIPPED_SENDER_KEYS * 48 + 256) + 512,
            max_items=MAX_SKIPPED_SENDER_KEYS,
            min_fields=5,
            max_fields=5,
        )
        if f[2] != _RECEIVER_STATE or type(f[2]) is not int:
            raise DecodeError("not a sender-key receiving state")
        channel = _wire.get_bytes(f[3], "channel_id", max_len=MAX_CHANNEL_ID)
        if not channel:
            raise DecodeError("empty channel id")
        receiver = cls(channel)
        for item in _wire.get_list(f[4], "states", max_len=MAX_SENDER_KEY_STATES):
            entry = _wire.get_list(item, "state", max_len=5)
            if len(entry) != 5:
                raise DecodeError("sender-key state must have 5 fields")
            state = _ReceiverState(
                _wire.get_bytes(entry[2], "chain_key", size=32),
                _wire.get_int(entry[1], "iteration", 0, MAX_ITERATION),
                _wire.get_bytes(entry[3], "signing_key", size=ED25519_LEN),
            )
            for pair in _wire.get_list(entry[4], "skipped", max_len=MAX_SKIPPED_SENDER_KEYS):
                kv = _wire.get_list(pair, "skipped key", max_len=2)
                if len(kv) != 2:
                    raise DecodeError("skipped key must be [iteration, key]")
                state.skipped[_wire.get_int(kv[0], "iteration", 0, MAX_ITERATION)] = (
                    _wire.get_bytes(kv[1], "message key", size=32)
                )
            receiver._states[_wire.get_int(entry[0], "key_id", 0, 0xFFFFFFFF)] = state
        return receiver

    def forget(self, key_id: int) -> None:
        """Drop a sender key (e.g. once its sender has rotated and the grace has passed)."""
        self._states.pop(key_id, None)


def rotate_after_removal(sender: SenderKeySender) -> SenderKeyDistribution:
    """Rotate ``sender``'s key because a member left; distribute the result to those left.

    Sender keys give no future secrecy: a removed member holding the old chain key could
    read every later message, so the key is replaced rather than ratcheted.
    """
    return sender.rotate()
