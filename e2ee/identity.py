"""Device identity keys, signed prekeys, PQ prekeys, one-time prekeys and bundles.

A device identity is an Ed25519 key pair; its X25519 form (the birational map, computed by
libsodium) is the identity key of X3DH/PQXDH (Signal's X3DH §2.2 and PQXDH §2.2, with plain
Ed25519 signatures where Signal uses XEdDSA). Signed prekeys are X25519, PQ prekeys are
ML-KEM-1024 (FIPS 203); both are signed by the identity key. One-time prekeys are unsigned
X25519 keys with ids, published in batches.

PQ prekeys come in two kinds, as Signal's Kyber prekeys do (PQXDH §2.2, §3.2): *one-time*
PQ prekeys, published in batches and each used for one session, and a *last-resort* PQ
prekey (:class:`PQSignedPreKey`, rotated like the signed prekey) that a bundle carries once
the one-time ones run out. A bundle carries exactly one PQ key, flagged with its kind; the
initial message names its id; the responder deletes a one-time PQ key once the first
message authenticates and keeps the last-resort one. Key ids come from one counter per
device and are never held twice at once, so an id alone says which key (and which kind) it
is.

Each signature covers a context label naming the key type, the prekey id (u32 big-endian)
and the raw public key — ``"hushroom-v1 signed-prekey" NUL ‖ id ‖ X25519 key``,
``"hushroom-v1 pq-prekey" NUL ‖ id ‖ ML-KEM-1024 key`` (last resort) and
``"hushroom-v1 pq-one-time-prekey" NUL ‖ id ‖ ML-KEM-1024 key``, the same bytes the prekey
directory checks on upload (all built by :mod:`contract.signing`). The label keeps these
signatures apart from every other use of the device key — sign-in challenges are signed by
the same key, so without it a server could get a chosen "prekey" signed as a challenge —
and makes the kind of a PQ key part of what is signed.

A responder also remembers which initial messages it accepted (:class:`SeenBaseKeys`): a
pre-key message whose initiator identity key and base key it has accepted before is a
replay and is refused, as libsignal refuses one that matches a session it holds.

Wire structures (msgpack, ``[tag, version, ...]``) are decoded only by ``*_untrusted``
functions, which bound every field and verify every signature before returning.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings as sodium
from cryptography.hazmat.primitives.asymmetric.mlkem import (
    MLKEM1024PrivateKey,
    MLKEM1024PublicKey,
)

from contract.signing import (
    pq_one_time_prekey_message,
    pq_prekey_message,
    signed_prekey_message,
)
from e2ee import _wire
from e2ee._primitives import (
    ED25519_LEN,
    MLKEM1024_PUBLIC_LEN,
    MLKEM1024_SEED_LEN,
    SIGNATURE_LEN,
    X25519_LEN,
    X25519KeyPair,
    ed25519_sign,
    ed25519_to_x25519_public,
    ed25519_verify,
    mlkem_private_from_seed,
    mlkem_public_from_bytes,
    random_bytes,
)
from e2ee.errors import (
    DecodeError,
    E2EEError,
    InvalidKey,
    ReplayedMessage,
    TooManySessions,
    UnknownKey,
)

__all__ = [
    "MAX_ONE_TIME_PREKEYS_PER_UPLOAD",
    "MAX_PQ_ONE_TIME_PREKEYS_HELD",
    "MAX_PQ_ONE_TIME_PREKEYS_PER_UPLOAD",
    "MAX_SEEN_BASE_KEYS",
    "IdentityKeyPair",
    "OneTimePreKey",
    "PQOneTimePreKey",
    "PQSignedPreKey",
    "PreKeyBundle",
    "PreKeyStore",
    "PreKeyUpload",
    "SeenBaseKeys",
    "SignedPreKey",
    "verify_pq_one_time_prekey_signature",
    "verify_pq_prekey_signature",
    "verify_signed_prekey_signature",
]

MAX_KEY_ID = 0xFFFFFFFF
MAX_ONE_TIME_PREKEYS_PER_UPLOAD = 100
# A device holds at most this many unused one-time prekeys; older ones are dropped first.
MAX_ONE_TIME_PREKEYS_HELD = 1000
# One-time PQ prekeys are 1,568-byte keys: a batch of 100 is ~165 KB on the wire (under the
# control plane's 256 KiB body limit). A directory should hold no more of them than the
# device does, or it hands out keys the device has already dropped.
MAX_PQ_ONE_TIME_PREKEYS_PER_UPLOAD = 100
MAX_PQ_ONE_TIME_PREKEYS_HELD = 200
# Signed prekeys are rotated; the previous ones are kept so in-flight initial messages
# still find their key.
MAX_SIGNED_PREKEYS_HELD = 3
# Accepted initial messages remembered (16 bytes each), over all signed prekeys held.
MAX_SEEN_BASE_KEYS = 8192
_SEEN_DIGEST_LEN = 16
# Serialized store versions: 1 had no one-time PQ prekeys and no replay record.
_STORE_V1 = 1
_STORE_V2 = 2
# Bundle and upload versions: 2 adds the PQ key's kind / the one-time PQ prekey batch.
_BUNDLE_V2 = 2


class IdentityKeyPair:
    """A device's long-term Ed25519 key pair, with its derived X25519 form."""

    __slots__ = ("_secret", "public", "seed", "x25519_private", "x25519_public")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise InvalidKey("identity seed must be 32 bytes")
        self.seed = seed
        public, secret = sodium.crypto_sign_seed_keypair(seed)
        self.public: bytes = public
        self._secret: bytes = secret
        self.x25519_private: bytes = sodium.crypto_sign_ed25519_sk_to_curve25519(secret)
        self.x25519_public: bytes = sodium.crypto_sign_ed25519_pk_to_curve25519(public)

    @classmethod
    def generate(cls) -> IdentityKeyPair:
        """Create a fresh identity."""
        return cls(random_bytes(32))

    def sign(self, message: bytes) -> bytes:
        """Sign ``message`` with the identity key (64-byte detached Ed25519 signature)."""
        return ed25519_sign(self._secret, message)

    def __repr__(self) -> str:
        return f"IdentityKeyPair(public={self.public.hex()})"


def verify_signed_prekey_signature(
    identity_key: bytes, key_id: int, public: bytes, signature: bytes
) -> None:
    """Raise :class:`~e2ee.errors.BadSignature` unless the signed prekey is signed."""
    ed25519_verify(identity_key, signed_prekey_message(key_id, public), signature)


def verify_pq_prekey_signature(
    identity_key: bytes, key_id: int, public: bytes, signature: bytes
) -> None:
    """Raise :class:`~e2ee.errors.BadSignature` unless the PQ last-resort prekey is signed."""
    ed25519_verify(identity_key, pq_prekey_message(key_id, public), signature)


def verify_pq_one_time_prekey_signature(
    identity_key: bytes, key_id: int, public: bytes, signature: bytes
) -> None:
    """Raise :class:`~e2ee.errors.BadSignature` unless the one-time PQ prekey is signed."""
    ed25519_verify(identity_key, pq_one_time_prekey_message(key_id, public), signature)


@dataclass(frozen=True, slots=True)
class SignedPreKey:
    """A medium-term X25519 prekey signed by the identity key."""

    key_id: int
    key_pair: X25519KeyPair
    signature: bytes

    @classmethod
    def generate(cls, identity: IdentityKeyPair, key_id: int) -> SignedPreKey:
        """Create and sign a fresh signed prekey."""
        kp = X25519KeyPair.generate()
        return cls(key_id, kp, identity.sign(signed_prekey_message(key_id, kp.public)))


@dataclass(slots=True)
class PQSignedPreKey:
    """The PQ last-resort prekey: an ML-KEM-1024 key pair (stored as its 64-byte seed)
    signed by the identity key, used by every initiator while no one-time PQ key is left."""

    key_id: int
    seed: bytes = field(repr=False)
    public: bytes
    signature: bytes
    _private: MLKEM1024PrivateKey | None = field(default=None, repr=False, compare=False)

    @classmethod
    def generate(cls, identity: IdentityKeyPair, key_id: int) -> PQSignedPreKey:
        """Create and sign a fresh PQ signed prekey."""
        seed = random_bytes(MLKEM1024_SEED_LEN)
        private = mlkem_private_from_seed(seed)
        public = private.public_key().public_bytes_raw()
        return cls(key_id, seed, public, identity.sign(pq_prekey_message(key_id, public)), private)

    def private_key(self) -> MLKEM1024PrivateKey:
        """The decapsulation key (rebuilt from the seed once, then cached)."""
        if self._private is None:
            self._private = mlkem_private_from_seed(self.seed)
        return self._private


@dataclass(slots=True)
class PQOneTimePreKey:
    """A single-use ML-KEM-1024 prekey (Signal's one-time Kyber prekey), signed by the
    identity key under its own label.

    Only the 64-byte seed and the signature are stored; the key pair is rebuilt (and the
    signature checked against it) the first time the key is used, so a store holding
    hundreds of them loads without hundreds of key generations.
    """

    key_id: int
    seed: bytes = field(repr=False)
    signature: bytes
    _private: MLKEM1024PrivateKey | None = field(default=None, repr=False, compare=False)
    _public: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def generate(cls, identity: IdentityKeyPair, key_id: int) -> PQOneTimePreKey:
        """Create and sign a fresh one-time PQ prekey."""
        seed = random_bytes(MLKEM1024_SEED_LEN)
        private = mlkem_private_from_seed(seed)
        public = private.public_key().public_bytes_raw()
        signature = identity.sign(pq_one_time_prekey_message(key_id, public))
        return cls(key_id, seed, signature, private, public)

    @property
    def public(self) -> bytes:
        """The encapsulation key (1,568 bytes)."""
        if self._public is None:
            self._public = self.private_key().public_key().public_bytes_raw()
        return self._public

    def private_key(self) -> MLKEM1024PrivateKey:
        """The decapsulation key (rebuilt from the seed once, then cached)."""
        if self._private is None:
            self._private = mlkem_private_from_seed(self.seed)
        return self._private


@dataclass(slots=True)
class OneTimePreKey:
    """An unsigned, single-use X25519 prekey.

    Only the private scalar is stored; the public key is derived the first time it is
    needed (upload, or the one session it opens), so a store holding hundreds of them
    loads without hundreds of scalar multiplications. Any 32 bytes are a valid X25519
    private key (RFC 7748 clamps), so deriving later checks nothing less.
    """

    key_id: int
    private: bytes = field(repr=False)
    _key_pair: X25519KeyPair | None = field(default=None, repr=False, compare=False)

    @classmethod
    def generate(cls, key_id: int) -> OneTimePreKey:
        """Create a fresh one-time prekey."""
        pair = X25519KeyPair.generate()
        return cls(key_id, pair.private, pair)

    @property
    def key_pair(self) -> X25519KeyPair:
        """The key pair (derived from the private scalar once, then cached)."""
        if self._key_pair is None:
            self._key_pair = X25519KeyPair.from_private(self.private)
        return self._key_pair


class SeenBaseKeys:
    """The initial messages a responder accepted, while a replay of them could still open.

    An initial message is named by its initiator's identity key and base (ephemeral) key;
    a 16-byte digest of the pair is kept under the signed prekey the message used. A replay
    needs that signed prekey (every PQXDH secret includes DH with it), so the record of a
    signed prekey is dropped when the prekey is: nothing older need be remembered. The
    record is bounded by :data:`MAX_SEEN_BASE_KEYS`; when it is full, the oldest signed
    prekey other than the newest is dropped with its record, so every prekey still held
    keeps its whole record and the bound never reopens a replay.
    """

    __slots__ = ("_by_prekey", "_count")

    def __init__(self) -> None:
        self._by_prekey: dict[int, set[bytes]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @staticmethod
    def _digest(identity_key: bytes, base_key: bytes) -> bytes:
        return hashlib.sha256(b"hushroom-v1 base-key\x00" + identity_key + base_key).digest()[
            :_SEEN_DIGEST_LEN
        ]

    def seen(self, identity_key: bytes, base_key: bytes) -> bool:
        """Whether an initial message with this identity key and base key was accepted."""
        digest = self._digest(identity_key, base_key)
        return any(digest in entries for entries in self._by_prekey.values())

    def count_for(self, signed_prekey_id: int) -> int:
        """How many accepted initial messages used ``signed_prekey_id``."""
        return len(self._by_prekey.get(signed_prekey_id, ()))

    def add(self, signed_prekey_id: int, identity_key: bytes, base_key: bytes) -> None:
        """Remember an accepted initial message (the caller keeps the bound)."""
        entries = self._by_prekey.setdefault(signed_prekey_id, set())
        digest = self._digest(identity_key, base_key)
        if digest not in entries:
            entries.add(digest)
            self._count += 1

    def forget_prekey(self, signed_prekey_id: int) -> None:
        """Drop the record of a signed prekey that is no longer held."""
        self._count -= len(self._by_prekey.pop(signed_prekey_id, ()))

    def prekey_ids(self) -> list[int]:
        """The signed prekeys with a record."""
        return list(self._by_prekey)

    def encode_fields(self) -> list[list[Any]]:
        """``[[signed prekey id, digests concatenated], ...]`` for the store's serialization."""
        return [[key_id, b"".join(sorted(d))] for key_id, d in self._by_prekey.items()]

    @classmethod
    def decode_fields_untrusted(cls, value: object) -> SeenBaseKeys:
        """Inverse of :meth:`encode_fields`, bounded by :data:`MAX_SEEN_BASE_KEYS`."""
        seen = cls()
        for item in _triples(value, "seen_base_keys", MAX_SIGNED_PREKEYS_HELD, 2):
            key_id = _wire.get_int(item[0], "signed_prekey_id", 0, MAX_KEY_ID)
            blob = _wire.get_bytes(
                item[1], "base_key_digests", max_len=MAX_SEEN_BASE_KEYS * _SEEN_DIGEST_LEN
            )
            if len(blob) % _SEEN_DIGEST_LEN or key_id in seen._by_prekey:
                raise DecodeError("malformed replay record")
            entries = {
                blob[i : i + _SEEN_DIGEST_LEN] for i in range(0, len(blob), _SEEN_DIGEST_LEN)
            }
            seen._by_prekey[key_id] = entries
            seen._count += len(entries)
        if seen._count > MAX_SEEN_BASE_KEYS:
            raise DecodeError("replay record over its bound")
        return seen


def _check_identity_key(value: object) -> bytes:
    key = _wire.get_bytes(value, "identity_key", size=ED25519_LEN)
    ed25519_to_x25519_public(key)  # rejects invalid and small-order points
    return key


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    """What an initiator fetches for one device: identity, signed prekey, one PQ prekey
    and maybe an OTK.

    The PQ prekey is one-time when ``pq_prekey_one_time`` is set, else the last-resort
    one; the flag chooses the label its signature is checked under, so a server cannot
    pass one kind off as the other. Instances from :meth:`decode_untrusted` have had every
    signature verified.
    """

    identity_key: bytes
    signed_prekey_id: int
    signed_prekey: bytes
    signed_prekey_signature: bytes
    pq_prekey_id: int | None = None
    pq_prekey: bytes | None = None
    pq_prekey_signature: bytes | None = None
    one_time_prekey_id: int | None = None
    one_time_prekey: bytes | None = None
    pq_prekey_one_time: bool = False
    # Set only by verify(). init=False keeps them out of dataclasses.replace(), so a copy
    # with any field changed is verified again.
    _verified: bool = field(default=False, init=False, repr=False, compare=False)
    _identity_x25519: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _pq_public: MLKEM1024PublicKey | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def identity_x25519(self) -> bytes:
        """The X25519 form of the identity key (checked to be a valid, non-small-order point)."""
        cached = self._identity_x25519
        if cached is None:
            cached = ed25519_to_x25519_public(self.identity_key)
            object.__setattr__(self, "_identity_x25519", cached)
        return cached

    def pq_public_key(self) -> MLKEM1024PublicKey | None:
        """The loaded ML-KEM-1024 encapsulation key, if the bundle has one."""
        if self.pq_prekey is None:
            return None
        cached = self._pq_public
        if cached is None:
            cached = mlkem_public_from_bytes(self.pq_prekey)
            object.__setattr__(self, "_pq_public", cached)
        return cached

    def verify(self) -> None:
        """Verify the signatures; raise :class:`~e2ee.errors.BadSignature` otherwise.

        A successful verification is remembered on this (immutable) instance.
        """
        if self._verified:
            return
        verify_signed_prekey_signature(
            self.identity_key,
            self.signed_prekey_id,
            self.signed_prekey,
            self.signed_prekey_signature,
        )
        if self.pq_prekey is not None:
            if self.pq_prekey_id is None or self.pq_prekey_signature is None:
                raise DecodeError("PQ prekey without id or signature")
            verify = (
                verify_pq_one_time_prekey_signature
                if self.pq_prekey_one_time
                else verify_pq_prekey_signature
            )
            verify(self.identity_key, self.pq_prekey_id, self.pq_prekey, self.pq_prekey_signature)
        elif self.pq_prekey_one_time:
            raise DecodeError("one-time flag without a PQ prekey")
        object.__setattr__(self, "_verified", True)

    def encode(self) -> bytes:
        """Encode as msgpack
        ``[1, 2, ik, spk_id, spk, sig, pq_id, pq, pq_sig, otk_id, otk, pq_one_time]``.

        Version 1 (read, no longer written) lacks the last field: its PQ key is last-resort.
        """
        return _wire.pack(
            [
                _wire.TAG_PREKEY_BUNDLE,
                _BUNDLE_V2,
                self.identity_key,
                self.signed_prekey_id,
                self.signed_prekey,
                self.signed_prekey_signature,
                self.pq_prekey_id,
                self.pq_prekey,
                self.pq_prekey_signature,
                self.one_time_prekey_id,
                self.one_time_prekey,
                int(self.pq_prekey_one_time),
            ]
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> PreKeyBundle:
        """Decode a bundle from the server and verify its signatures."""
        f = _wire.unpack_untrusted(
            data,
            _wire.TAG_PREKEY_BUNDLE,
            max_bytes=4096,
            min_fields=11,
            max_fields=12,
            versions=(_wire.VERSION, _BUNDLE_V2),
        )
        if len(f) != (12 if f[1] == _BUNDLE_V2 else 11):
            raise DecodeError("wrong number of bundle fields for its version")
        one_time = len(f) == 12 and bool(_wire.get_int(f[11], "pq_prekey_one_time", 0, 1))
        pq_id = _wire.get_opt_int(f[6], "pq_prekey_id", 0, MAX_KEY_ID)
        pq = _wire.get_opt_bytes(f[7], "pq_prekey", size=MLKEM1024_PUBLIC_LEN)
        pq_sig = _wire.get_opt_bytes(f[8], "pq_prekey_signature", size=SIGNATURE_LEN)
        if not (pq_id is None) == (pq is None) == (pq_sig is None):
            raise DecodeError("PQ prekey fields must be all present or all absent")
        otk_id = _wire.get_opt_int(f[9], "one_time_prekey_id", 0, MAX_KEY_ID)
        otk = _wire.get_opt_bytes(f[10], "one_time_prekey", size=X25519_LEN)
        if (otk_id is None) != (otk is None):
            raise DecodeError("one-time prekey id and key must both be present or absent")
        bundle = cls(
            identity_key=_wire.get_bytes(f[2], "identity_key", size=ED25519_LEN),
            signed_prekey_id=_wire.get_int(f[3], "signed_prekey_id", 0, MAX_KEY_ID),
            signed_prekey=_wire.get_bytes(f[4], "signed_prekey", size=X25519_LEN),
            signed_prekey_signature=_wire.get_bytes(f[5], "signature", size=SIGNATURE_LEN),
            pq_prekey_id=pq_id,
            pq_prekey=pq,
            pq_prekey_signature=pq_sig,
            one_time_prekey_id=otk_id,
            one_time_prekey=otk,
            pq_prekey_one_time=one_time,
        )
        bundle.identity_x25519()  # rejects invalid and small-order identity keys
        bundle.verify()
        bundle.pq_public_key()  # FIPS 203 input check of the encapsulation key
        return bundle


@dataclass(frozen=True, slots=True)
class PreKeyUpload:
    """What a device publishes: identity, signed prekey, PQ last-resort prekey, an OTK batch
    and a batch of one-time PQ prekeys (``(id, key, signature)`` each).

    The directory calls :meth:`decode_untrusted` to check the signatures on upload.
    """

    identity_key: bytes
    signed_prekey_id: int
    signed_prekey: bytes
    signed_prekey_signature: bytes
    pq_prekey_id: int
    pq_prekey: bytes
    pq_prekey_signature: bytes
    one_time_prekeys: tuple[tuple[int, bytes], ...]
    pq_one_time_prekeys: tuple[tuple[int, bytes, bytes], ...] = ()

    def encode(self) -> bytes:
        """Encode as msgpack
        ``[2, 2, ik, spk_id, spk, sig, pq_id, pq, pq_sig, [[id, otk]...], [[id, pq, sig]...]]``.

        Version 1 (read, no longer written) has no one-time PQ prekey batch.
        """
        return _wire.pack(
            [
                _wire.TAG_PREKEY_UPLOAD,
                _BUNDLE_V2,
                self.identity_key,
                self.signed_prekey_id,
                self.signed_prekey,
                self.signed_prekey_signature,
                self.pq_prekey_id,
                self.pq_prekey,
                self.pq_prekey_signature,
                [[i, k] for i, k in self.one_time_prekeys],
                [[i, k, s] for i, k, s in self.pq_one_time_prekeys],
            ]
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> PreKeyUpload:
        """Decode an upload, bounding both batches and verifying every signature."""
        f = _wire.unpack_untrusted(
            data,
            _wire.TAG_PREKEY_UPLOAD,
            max_bytes=8192 + MAX_PQ_ONE_TIME_PREKEYS_PER_UPLOAD * 1700,
            max_items=max(MAX_ONE_TIME_PREKEYS_PER_UPLOAD, MAX_PQ_ONE_TIME_PREKEYS_PER_UPLOAD),
            min_fields=10,
            max_fields=11,
            versions=(_wire.VERSION, _BUNDLE_V2),
        )
        if len(f) != (11 if f[1] == _BUNDLE_V2 else 10):
            raise DecodeError("wrong number of upload fields for its version")
        otks: list[tuple[int, bytes]] = []
        seen: set[int] = set()
        for item in _wire.get_list(
            f[9], "one_time_prekeys", max_len=MAX_ONE_TIME_PREKEYS_PER_UPLOAD
        ):
            pair = _wire.get_list(item, "one_time_prekey", max_len=2)
            if len(pair) != 2:
                raise DecodeError("one-time prekey must be [id, key]")
            key_id = _wire.get_int(pair[0], "one_time_prekey_id", 0, MAX_KEY_ID)
            if key_id in seen:
                raise DecodeError("duplicate one-time prekey id")
            seen.add(key_id)
            otks.append((key_id, _wire.get_bytes(pair[1], "one_time_prekey", size=X25519_LEN)))
        pq_otks: list[tuple[int, bytes, bytes]] = []
        raw_pq = f[10] if len(f) == 11 else []
        for item in _triples(raw_pq, "pq_one_time_prekeys", MAX_PQ_ONE_TIME_PREKEYS_PER_UPLOAD, 3):
            key_id = _wire.get_int(item[0], "pq_one_time_prekey_id", 0, MAX_KEY_ID)
            if key_id in seen:
                raise DecodeError("duplicate prekey id")
            seen.add(key_id)
            pq_otks.append(
                (
                    key_id,
                    _wire.get_bytes(item[1], "pq_one_time_prekey", size=MLKEM1024_PUBLIC_LEN),
                    _wire.get_bytes(item[2], "pq_one_time_signature", size=SIGNATURE_LEN),
                )
            )
        upload = cls(
            identity_key=_check_identity_key(f[2]),
            signed_prekey_id=_wire.get_int(f[3], "signed_prekey_id", 0, MAX_KEY_ID),
            signed_prekey=_wire.get_bytes(f[4], "signed_prekey", size=X25519_LEN),
            signed_prekey_signature=_wire.get_bytes(f[5], "signature", size=SIGNATURE_LEN),
            pq_prekey_id=_wire.get_int(f[6], "pq_prekey_id", 0, MAX_KEY_ID),
            pq_prekey=_wire.get_bytes(f[7], "pq_prekey", size=MLKEM1024_PUBLIC_LEN),
            pq_prekey_signature=_wire.get_bytes(f[8], "pq_signature", size=SIGNATURE_LEN),
            one_time_prekeys=tuple(otks),
            pq_one_time_prekeys=tuple(pq_otks),
        )
        verify_signed_prekey_signature(
            upload.identity_key,
            upload.signed_prekey_id,
            upload.signed_prekey,
            upload.signed_prekey_signature,
        )
        verify_pq_prekey_signature(
            upload.identity_key, upload.pq_prekey_id, upload.pq_prekey, upload.pq_prekey_signature
        )
        mlkem_public_from_bytes(upload.pq_prekey)
        for key_id, public, signature in upload.pq_one_time_prekeys:
            verify_pq_one_time_prekey_signature(upload.identity_key, key_id, public, signature)
            mlkem_public_from_bytes(public)
        return upload


class PreKeyStore:
    """A device's private prekey material: the receiving side of X3DH/PQXDH.

    One-time prekeys (X25519 and PQ) are removed once used, so each opens at most one
    session; signed and PQ last-resort prekeys are kept for a few rotations so late initial
    messages still open; :attr:`seen_base_keys` refuses a second acceptance of an initial
    message while its signed prekey is held.
    """

    def __init__(self, identity: IdentityKeyPair) -> None:
        self.identity = identity
        self.signed_prekeys: dict[int, SignedPreKey] = {}
        self.pq_prekeys: dict[int, PQSignedPreKey] = {}
        self.one_time_prekeys: dict[int, OneTimePreKey] = {}
        self.pq_one_time_prekeys: dict[int, PQOneTimePreKey] = {}
        self.seen_base_keys = SeenBaseKeys()
        self._next_id = 1

    @classmethod
    def generate(
        cls, identity: IdentityKeyPair, one_time_prekeys: int = 0, pq_one_time_prekeys: int = 0
    ) -> PreKeyStore:
        """Create a store with a fresh signed prekey, PQ last-resort prekey and batches of
        ``one_time_prekeys`` OTKs and ``pq_one_time_prekeys`` one-time PQ prekeys."""
        store = cls(identity)
        store.rotate_signed_prekey()
        store.rotate_pq_prekey()
        store.generate_one_time_prekeys(one_time_prekeys)
        store.generate_pq_one_time_prekeys(pq_one_time_prekeys)
        return store

    def _allocate_id(self) -> int:
        # Ids are unique over every key held, of every kind, also once the counter wraps:
        # an initial message names a PQ key by id alone.
        while True:
            key_id = self._next_id
            self._next_id = key_id + 1 if key_id < MAX_KEY_ID else 1
            if not (
                key_id in self.signed_prekeys
                or key_id in self.pq_prekeys
                or key_id in self.one_time_prekeys
                or key_id in self.pq_one_time_prekeys
            ):
                return key_id

    @property
    def current_signed_prekey(self) -> SignedPreKey:
        """The newest signed prekey (the one to publish)."""
        return self.signed_prekeys[max(self.signed_prekeys)]

    @property
    def current_pq_prekey(self) -> PQSignedPreKey:
        """The newest PQ last-resort prekey (the one to publish)."""
        return self.pq_prekeys[max(self.pq_prekeys)]

    def _drop_signed_prekey(self, key_id: int) -> None:
        del self.signed_prekeys[key_id]
        self.seen_base_keys.forget_prekey(key_id)

    def rotate_signed_prekey(self) -> SignedPreKey:
        """Create a new signed prekey, keeping the last few for in-flight messages."""
        spk = SignedPreKey.generate(self.identity, self._allocate_id())
        self.signed_prekeys[spk.key_id] = spk
        while len(self.signed_prekeys) > MAX_SIGNED_PREKEYS_HELD:
            self._drop_signed_prekey(min(self.signed_prekeys))
        return spk

    def rotate_pq_prekey(self) -> PQSignedPreKey:
        """Create a new PQ last-resort prekey, keeping the last few for in-flight messages."""
        pq = PQSignedPreKey.generate(self.identity, self._allocate_id())
        self.pq_prekeys[pq.key_id] = pq
        while len(self.pq_prekeys) > MAX_SIGNED_PREKEYS_HELD:
            del self.pq_prekeys[min(self.pq_prekeys)]
        return pq

    def generate_one_time_prekeys(self, count: int) -> list[OneTimePreKey]:
        """Create ``count`` one-time prekeys (at most one upload batch at a time)."""
        if not 0 <= count <= MAX_ONE_TIME_PREKEYS_PER_UPLOAD:
            raise E2EEError(f"OTK batch size must be 0..{MAX_ONE_TIME_PREKEYS_PER_UPLOAD}")
        batch = [OneTimePreKey.generate(self._allocate_id()) for _ in range(count)]
        for otk in batch:
            self.one_time_prekeys[otk.key_id] = otk
        while len(self.one_time_prekeys) > MAX_ONE_TIME_PREKEYS_HELD:
            del self.one_time_prekeys[next(iter(self.one_time_prekeys))]
        return batch

    def generate_pq_one_time_prekeys(self, count: int) -> list[PQOneTimePreKey]:
        """Create ``count`` signed one-time PQ prekeys (at most one upload batch at a time).

        At most :data:`MAX_PQ_ONE_TIME_PREKEYS_HELD` are kept; the oldest go first.
        """
        if not 0 <= count <= MAX_PQ_ONE_TIME_PREKEYS_PER_UPLOAD:
            raise E2EEError(
                f"PQ one-time prekey batch size must be 0..{MAX_PQ_ONE_TIME_PREKEYS_PER_UPLOAD}"
            )
        batch = [PQOneTimePreKey.generate(self.identity, self._allocate_id()) for _ in range(count)]
        for key in batch:
            self.pq_one_time_prekeys[key.key_id] = key
        while len(self.pq_one_time_prekeys) > MAX_PQ_ONE_TIME_PREKEYS_HELD:
            del self.pq_one_time_prekeys[next(iter(self.pq_one_time_prekeys))]
        return batch

    def upload(
        self,
        one_time_prekeys: list[OneTimePreKey],
        pq_one_time_prekeys: list[PQOneTimePreKey] | None = None,
    ) -> PreKeyUpload:
        """The upload message publishing the current signed prekeys and the given batches."""
        spk, pq = self.current_signed_prekey, self.current_pq_prekey
        return PreKeyUpload(
            identity_key=self.identity.public,
            signed_prekey_id=spk.key_id,
            signed_prekey=spk.key_pair.public,
            signed_prekey_signature=spk.signature,
            pq_prekey_id=pq.key_id,
            pq_prekey=pq.public,
            pq_prekey_signature=pq.signature,
            one_time_prekeys=tuple((o.key_id, o.key_pair.public) for o in one_time_prekeys),
            pq_one_time_prekeys=tuple(
                (k.key_id, k.public, k.signature) for k in pq_one_time_prekeys or ()
            ),
        )

    def bundle(
        self,
        one_time_prekey_id: int | None = None,
        *,
        pq: bool = True,
        pq_one_time_prekey_id: int | None = None,
    ) -> PreKeyBundle:
        """The bundle a directory would hand out for this device (used by tests and tools):
        with ``pq_one_time_prekey_id`` it carries that one-time PQ key, else (with ``pq``)
        the last-resort one."""
        spk = self.current_signed_prekey
        otk = self.one_time_prekeys[one_time_prekey_id] if one_time_prekey_id is not None else None
        pq_id: int | None = None
        pq_public: bytes | None = None
        pq_signature: bytes | None = None
        if pq_one_time_prekey_id is not None:
            one = self.peek_pq_one_time_prekey(pq_one_time_prekey_id)
            pq_id, pq_public, pq_signature = one.key_id, one.public, one.signature
        elif pq:
            last = self.current_pq_prekey
            pq_id, pq_public, pq_signature = last.key_id, last.public, last.signature
        return PreKeyBundle(
            identity_key=self.identity.public,
            signed_prekey_id=spk.key_id,
            signed_prekey=spk.key_pair.public,
            signed_prekey_signature=spk.signature,
            pq_prekey_id=pq_id,
            pq_prekey=pq_public,
            pq_prekey_signature=pq_signature,
            one_time_prekey_id=otk.key_id if otk else None,
            one_time_prekey=otk.key_pair.public if otk else None,
            pq_prekey_one_time=pq_one_time_prekey_id is not None,
        )

    def signed_prekey(self, key_id: int) -> SignedPreKey:
        """Look up a signed prekey by id."""
        try:
            return self.signed_prekeys[key_id]
        except KeyError:
            raise UnknownKey(f"no signed prekey {key_id}") from None

    def pq_prekey(self, key_id: int) -> PQSignedPreKey:
        """Look up a PQ last-resort prekey by id."""
        try:
            return self.pq_prekeys[key_id]
        except KeyError:
            raise UnknownKey(f"no PQ signed prekey {key_id}") from None

    def peek_pq_one_time_prekey(self, key_id: int) -> PQOneTimePreKey:
        """Look up a one-time PQ prekey without consuming it; its signature is checked
        against the key rebuilt from the stored seed (once, when first rebuilt)."""
        try:
            key = self.pq_one_time_prekeys[key_id]
        except KeyError:
            raise UnknownKey(f"one-time PQ prekey {key_id} unknown or already used") from None
        if key._public is None:
            verify_pq_one_time_prekey_signature(
                self.identity.public, key.key_id, key.public, key.signature
            )
        return key

    def take_pq_one_time_prekey(self, key_id: int) -> PQOneTimePreKey:
        """Remove and return a one-time PQ prekey; a second call for the same id fails."""
        key = self.peek_pq_one_time_prekey(key_id)
        del self.pq_one_time_prekeys[key_id]
        return key

    def pq_decapsulation_key(self, key_id: int) -> tuple[MLKEM1024PrivateKey, bool]:
        """The ML-KEM key an initial message names: ``(key, one_time)``. Ids are unique
        over both kinds, so the id says which kind it is."""
        if key_id in self.pq_one_time_prekeys:
            return self.peek_pq_one_time_prekey(key_id).private_key(), True
        return self.pq_prekey(key_id).private_key(), False

    def peek_one_time_prekey(self, key_id: int) -> OneTimePreKey:
        """Look up a one-time prekey without consuming it."""
        try:
            return self.one_time_prekeys[key_id]
        except KeyError:
            raise UnknownKey(f"one-time prekey {key_id} unknown or already used") from None

    def take_one_time_prekey(self, key_id: int) -> OneTimePreKey:
        """Remove and return a one-time prekey; a second call for the same id fails."""
        otk = self.peek_one_time_prekey(key_id)
        del self.one_time_prekeys[key_id]
        return otk

    # --- replayed initial messages ---------------------------------------------------

    def check_not_replayed(self, identity_key: bytes, base_key: bytes) -> None:
        """Raise :class:`~e2ee.errors.ReplayedMessage` if an initial message with this
        initiator identity key and base key was accepted before."""
        if self.seen_base_keys.seen(identity_key, base_key):
            raise ReplayedMessage("an initial message accepted before (a replay)")

    def check_room_for_session(self, signed_prekey_id: int) -> None:
        """Raise :class:`~e2ee.errors.TooManySessions` if accepting another initial message
        under ``signed_prekey_id`` could not be recorded without forgetting one whose
        signed prekey is still held."""
        seen = self.seen_base_keys
        if len(seen) < MAX_SEEN_BASE_KEYS:
            return
        # Room is made by dropping older signed prekeys; the newest (still published) and
        # the one this message uses are kept, so their records must leave room by themselves.
        newest = max(self.signed_prekeys)
        kept = seen.count_for(newest)
        if signed_prekey_id != newest:
            kept += seen.count_for(signed_prekey_id)
        if kept >= MAX_SEEN_BASE_KEYS:
            raise TooManySessions(
                "the signed prekeys in use have opened as many sessions as can be "
                "remembered; rotate the signed prekey"
            )

    def record_accepted(self, signed_prekey_id: int, identity_key: bytes, base_key: bytes) -> None:
        """Remember an authenticated initial message (after :meth:`check_room_for_session`).

        When the record is full, the oldest signed prekey other than the newest one and
        ``signed_prekey_id`` is dropped with its record first: replays under it then fail
        for want of the key.
        """
        self.check_room_for_session(signed_prekey_id)
        seen = self.seen_base_keys
        newest = max(self.signed_prekeys)
        while len(seen) >= MAX_SEEN_BASE_KEYS:
            oldest = min(k for k in seen.prekey_ids() if k not in (newest, signed_prekey_id))
            self._drop_signed_prekey(oldest)
        seen.add(signed_prekey_id, identity_key, base_key)

    @property
    def replay_record_nearly_full(self) -> bool:
        """True once the newest signed prekey's record is three quarters full: time to
        rotate the signed prekey early (see :class:`SeenBaseKeys`)."""
        return self.seen_base_keys.count_for(max(self.signed_prekeys)) >= (
            MAX_SEEN_BASE_KEYS * 3 // 4
        )

    # --- serialization ---------------------------------------------------------------

    def serialize(self) -> bytes:
        """Encode the whole store (private keys included) for backup or local storage:
        ``[14, 2, seed, next_id, [spk...], [pq...], [otk...], [pq_otk...], [seen...]]``."""
        return _wire.pack(
            [
                _wire.TAG_PREKEY_STORE,
                _STORE_V2,
                self.identity.seed,
                self._next_id,
                [[s.key_id, s.key_pair.private, s.signature] for s in self.signed_prekeys.values()],
                [[p.key_id, p.seed, p.signature] for p in self.pq_prekeys.values()],
                [[o.key_id, o.private] for o in self.one_time_prekeys.values()],
                [[k.key_id, k.seed, k.signature] for k in self.pq_one_time_prekeys.values()],
                self.seen_base_keys.encode_fields(),
            ]
        )

    @classmethod
    def restore_untrusted(cls, data: bytes) -> PreKeyStore:
        """Rebuild a store from :meth:`serialize` output, checking every field.

        Version 1 stores (before one-time PQ prekeys and the replay record) load with
        neither.
        """
        f = _wire.unpack_untrusted(
            data,
            _wire.TAG_PREKEY_STORE,
            max_bytes=512 * 1024,
            max_items=MAX_ONE_TIME_PREKEYS_HELD,
            min_fields=7,
            max_fields=9,
            versions=(_STORE_V1, _STORE_V2),
        )
        if len(f) != (9 if f[1] == _STORE_V2 else 7):
            raise DecodeError("wrong number of prekey store fields for its version")
        store = cls(IdentityKeyPair(_wire.get_bytes(f[2], "identity_seed", size=32)))
        store._next_id = _wire.get_int(f[3], "next_id", 1, MAX_KEY_ID)
        ids: set[int] = set()

        def new_id(value: object) -> int:
            key_id = _wire.get_int(value, "key_id", 0, MAX_KEY_ID)
            if key_id in ids:
                raise DecodeError("prekey store holds two keys under one id")
            ids.add(key_id)
            return key_id

        for item in _triples(f[4], "signed_prekeys", MAX_SIGNED_PREKEYS_HELD, 3):
            key_id = new_id(item[0])
            kp = X25519KeyPair.from_private(_wire.get_bytes(item[1], "private", size=32))
            sig = _wire.get_bytes(item[2], "signature", size=SIGNATURE_LEN)
            verify_signed_prekey_signature(store.identity.public, key_id, kp.public, sig)
            store.signed_prekeys[key_id] = SignedPreKey(key_id, kp, sig)
        for item in _triples(f[5], "pq_prekeys", MAX_SIGNED_PREKEYS_HELD, 3):
            key_id = new_id(item[0])
            seed = _wire.get_bytes(item[1], "seed", size=MLKEM1024_SEED_LEN)
            private = mlkem_private_from_seed(seed)
            public = private.public_key().public_bytes_raw()
            sig = _wire.get_bytes(item[2], "signature", size=SIGNATURE_LEN)
            verify_pq_prekey_signature(store.identity.public, key_id, public, sig)
            store.pq_prekeys[key_id] = PQSignedPreKey(key_id, seed, public, sig, private)
        for item in _triples(f[6], "one_time_prekeys", MAX_ONE_TIME_PREKEYS_HELD, 2):
            key_id = new_id(item[0])
            scalar = _wire.get_bytes(item[1], "private", size=32)
            store.one_time_prekeys[key_id] = OneTimePreKey(key_id, scalar)
        if len(f) == 9:
            for item in _triples(f[7], "pq_one_time_prekeys", MAX_PQ_ONE_TIME_PREKEYS_HELD, 3):
                key_id = new_id(item[0])
                seed = _wire.get_bytes(item[1], "seed", size=MLKEM1024_SEED_LEN)
                sig = _wire.get_bytes(item[2], "signature", size=SIGNATURE_LEN)
                # Checked against the rebuilt key when first used (peek_pq_one_time_prekey).
                store.pq_one_time_prekeys[key_id] = PQOneTimePreKey(key_id, seed, sig)
            store.seen_base_keys = SeenBaseKeys.decode_fields_untrusted(f[8])
            if not set(store.seen_base_keys.prekey_ids()) <= set(store.signed_prekeys):
                raise DecodeError("replay record for a signed prekey not held")
        if not store.signed_prekeys or not store.pq_prekeys:
            raise DecodeError("prekey store without signed prekeys")
        return store


def _triples(value: Any, name: str, max_len: int, width: int) -> list[list[Any]]:
    items = _wire.get_list(value, name, max_len=max_len)
    out = []
    for item in items:
        entry = _wire.get_list(item, name, max_len=width)
        if len(entry) != width:
            raise DecodeError(f"{name}: entries must have {width} fields")
        out.append(entry)
    return out
