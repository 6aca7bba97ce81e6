"""Device identity keys, signed prekeys, PQ signed prekeys, one-time prekeys and bundles.

A device identity is an Ed25519 key pair; its X25519 form (the birational map, computed by
libsodium) is the identity key of X3DH/PQXDH (Signal's X3DH §2.2 and PQXDH §2.2, with plain
Ed25519 signatures where Signal uses XEdDSA). Signed prekeys are X25519, PQ signed prekeys
are ML-KEM-1024 (FIPS 203); both are signed by the identity key. One-time prekeys are
unsigned X25519 keys with ids, published in batches.

Each signature covers a context label naming the key type, the prekey id (u32 big-endian)
and the raw public key — ``"hushroom-v1 signed-prekey" NUL ‖ id ‖ X25519 key`` and
``"hushroom-v1 pq-prekey" NUL ‖ id ‖ ML-KEM-1024 key``, the same bytes the prekey directory
checks on upload (both built by :mod:`contract.signing`). The label keeps these signatures
apart from every other use of the device key — sign-in challenges are signed by the same
key, so without it a server could get a chosen "prekey" signed as a challenge.

Wire structures (msgpack, ``[tag, version, ...]``) are decoded only by ``*_untrusted``
functions, which bound every field and verify every signature before returning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nacl.bindings as sodium
from cryptography.hazmat.primitives.asymmetric.mlkem import (
    MLKEM1024PrivateKey,
    MLKEM1024PublicKey,
)

from contract.signing import pq_prekey_message, signed_prekey_message
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
from e2ee.errors import DecodeError, E2EEError, InvalidKey, UnknownKey

__all__ = [
    "MAX_ONE_TIME_PREKEYS_PER_UPLOAD",
    "IdentityKeyPair",
    "OneTimePreKey",
    "PQSignedPreKey",
    "PreKeyBundle",
    "PreKeyStore",
    "PreKeyUpload",
    "SignedPreKey",
    "verify_pq_prekey_signature",
    "verify_signed_prekey_signature",
]

MAX_KEY_ID = 0xFFFFFFFF
MAX_ONE_TIME_PREKEYS_PER_UPLOAD = 100
# A device holds at most this many unused one-time prekeys; older ones are dropped first.
MAX_ONE_TIME_PREKEYS_HELD = 1000
# Signed prekeys are rotated; the previous ones are kept so in-flight initial messages
# still find their key.
MAX_SIGNED_PREKEYS_HELD = 3


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
    """Raise :class:`~e2ee.errors.BadSignature` unless the PQ signed prekey is signed."""
    ed25519_verify(identity_key, pq_prekey_message(key_id, public), signature)


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
    """An ML-KEM-1024 key pair (stored as its 64-byte seed) signed by the identity key."""

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


@dataclass(frozen=True, slots=True)
class OneTimePreKey:
    """An unsigned, single-use X25519 prekey."""

    key_id: int
    key_pair: X25519KeyPair


def _check_identity_key(value: object) -> bytes:
    key = _wire.get_bytes(value, "identity_key", size=ED25519_LEN)
    ed25519_to_x25519_public(key)  # rejects invalid and small-order points
    return key


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    """What an initiator fetches for one device: identity, signed prekeys and maybe an OTK.

    Instances from :meth:`decode_untrusted` have had every signature verified.
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
            verify_pq_prekey_signature(
                self.identity_key, self.pq_prekey_id, self.pq_prekey, self.pq_prekey_signature
            )
        object.__setattr__(self, "_verified", True)

    def encode(self) -> bytes:
        """Encode as msgpack ``[1, 1, ik, spk_id, spk, sig, pq_id, pq, pq_sig, otk_id, otk]``."""
        return _wire.pack(
            [
                _wire.TAG_PREKEY_BUNDLE,
                _wire.VERSION,
                self.identity_key,
                self.signed_prekey_id,
                self.signed_prekey,
                self.signed_prekey_signature,
                self.pq_prekey_id,
                self.pq_prekey,
                self.pq_prekey_signature,
                self.one_time_prekey_id,
                self.one_time_prekey,
            ]
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> PreKeyBundle:
        """Decode a bundle from the server and verify its signatures."""
        f = _wire.unpack_untrusted(
            data, _wire.TAG_PREKEY_BUNDLE, max_bytes=4096, min_fields=11, max_fields=11
        )
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
        )
        bundle.identity_x25519()  # rejects invalid and small-order identity keys
        bundle.verify()
        bundle.pq_public_key()  # FIPS 203 input check of the encapsulation key
        return bundle


@dataclass(frozen=True, slots=True)
class PreKeyUpload:
    """What a device publishes: identity, signed prekey, PQ signed prekey and an OTK batch.

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

    def encode(self) -> bytes:
        """Encode as msgpack ``[2, 1, ik, spk_id, spk, sig, pq_id, pq, pq_sig, [[id, otk]...]]``."""
        return _wire.pack(
            [
                _wire.TAG_PREKEY_UPLOAD,
                _wire.VERSION,
                self.identity_key,
                self.signed_prekey_id,
                self.signed_prekey,
                self.signed_prekey_signature,
                self.pq_prekey_id,
                self.pq_prekey,
                self.pq_prekey_signature,
                [[i, k] for i, k in self.one_time_prekeys],
            ]
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> PreKeyUpload:
        """Decode an upload, bounding the OTK batch and verifying both signatures."""
        f = _wire.unpack_untrusted(
            data,
            _wire.TAG_PREKEY_UPLOAD,
            max_bytes=8192,
            max_items=MAX_ONE_TIME_PREKEYS_PER_UPLOAD,
            min_fields=10,
            max_fields=10,
        )
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
        upload = cls(
            identity_key=_check_identity_key(f[2]),
            signed_prekey_id=_wire.get_int(f[3], "signed_prekey_id", 0, MAX_KEY_ID),
            signed_prekey=_wire.get_bytes(f[4], "signed_prekey", size=X25519_LEN),
            signed_prekey_signature=_wire.get_bytes(f[5], "signature", size=SIGNATURE_LEN),
            pq_prekey_id=_wire.get_int(f[6], "pq_prekey_id", 0, MAX_KEY_ID),
            pq_prekey=_wire.get_bytes(f[7], "pq_prekey", size=MLKEM1024_PUBLIC_LEN),
            pq_prekey_signature=_wire.get_bytes(f[8], "pq_signature", size=SIGNATURE_LEN),
            one_time_prekeys=tuple(otks),
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
        return upload


class PreKeyStore:
    """A device's private prekey material: the receiving side of X3DH/PQXDH.

    One-time prekeys are removed by :meth:`take_one_time_prekey`, so each is used at most
    once; signed prekeys are kept for a few rotations so late initial messages still open.
    """

    def __init__(self, identity: IdentityKeyPair) -> None:
        self.identity = identity
        self.signed_prekeys: dict[int, SignedPreKey] = {}
        self.pq_prekeys: dict[int, PQSignedPreKey] = {}
        self.one_time_prekeys: dict[int, OneTimePreKey] = {}
        self._next_id = 1

    @classmethod
    def generate(cls, identity: IdentityKeyPair, one_time_prekeys: int = 0) -> PreKeyStore:
        """Create a store with a fresh signed prekey, PQ signed prekey and ``n`` OTKs."""
        store = cls(identity)
        store.rotate_signed_prekey()
        store.rotate_pq_prekey()
        store.generate_one_time_prekeys(one_time_prekeys)
        return store

    def _allocate_id(self) -> int:
        key_id = self._next_id
        self._next_id = key_id + 1 if key_id < MAX_KEY_ID else 1
        return key_id

    @property
    def current_signed_prekey(self) -> SignedPreKey:
        """The newest signed prekey (the one to publish)."""
        return self.signed_prekeys[max(self.signed_prekeys)]

    @property
    def current_pq_prekey(self) -> PQSignedPreKey:
        """The newest PQ signed prekey (the one to publish)."""
        return self.pq_prekeys[max(self.pq_prekeys)]

    def rotate_signed_prekey(self) -> SignedPreKey:
        """Create a new signed prekey, keeping the last few for in-flight messages."""
        spk = SignedPreKey.generate(self.identity, self._allocate_id())
        self.signed_prekeys[spk.key_id] = spk
        while len(self.signed_prekeys) > MAX_SIGNED_PREKEYS_HELD:
            del self.signed_prekeys[min(self.signed_prekeys)]
        return spk

    def rotate_pq_prekey(self) -> PQSignedPreKey:
        """Create a new PQ signed prekey, keeping the last few for in-flight messages."""
        pq = PQSignedPreKey.generate(self.identity, self._allocate_id())
        self.pq_prekeys[pq.key_id] = pq
        while len(self.pq_prekeys) > MAX_SIGNED_PREKEYS_HELD:
            del self.pq_prekeys[min(self.pq_prekeys)]
        return pq

    def generate_one_time_prekeys(self, count: int) -> list[OneTimePreKey]:
        """Create ``count`` one-time prekeys (at most one upload batch at a time)."""
        if not 0 <= count <= MAX_ONE_TIME_PREKEYS_PER_UPLOAD:
            raise E2EEError(f"OTK batch size must be 0..{MAX_ONE_TIME_PREKEYS_PER_UPLOAD}")
        batch = [OneTimePreKey(self._allocate_id(), X25519KeyPair.generate()) for _ in range(count)]
        for otk in batch:
            self.one_time_prekeys[otk.key_id] = otk
        while len(self.one_time_prekeys) > MAX_ONE_TIME_PREKEYS_HELD:
            del self.one_time_prekeys[next(iter(self.one_time_prekeys))]
        return batch

    def upload(self, one_time_prekeys: list[OneTimePreKey]) -> PreKeyUpload:
        """The upload message publishing the current signed prekeys and an OTK batch."""
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
        )

    def bundle(self, one_time_prekey_id: int | None = None, *, pq: bool = True) -> PreKeyBundle:
        """The bundle a directory would hand out for this device (used by tests and tools)."""
        spk = self.current_signed_prekey
        pq_key = self.current_pq_prekey if pq else None
        otk = self.one_time_prekeys[one_time_prekey_id] if one_time_prekey_id is not None else None
        return PreKeyBundle(
            identity_key=self.identity.public,
            signed_prekey_id=spk.key_id,
            signed_prekey=spk.key_pair.public,
            signed_prekey_signature=spk.signature,
            pq_prekey_id=pq_key.key_id if pq_key else None,
            pq_prekey=pq_key.public if pq_key else None,
            pq_prekey_signature=pq_key.signature if pq_key else None,
            one_time_prekey_id=otk.key_id if otk else None,
            one_time_prekey=otk.key_pair.public if otk else None,
        )

    def signed_prekey(self, key_id: int) -> SignedPreKey:
        """Look up a signed prekey by id."""
        try:
            return self.signed_prekeys[key_id]
        except KeyError:
            raise UnknownKey(f"no signed prekey {key_id}") from None

    def pq_prekey(self, key_id: int) -> PQSignedPreKey:
        """Look up a PQ signed prekey by id."""
        try:
            return self.pq_prekeys[key_id]
        except KeyError:
            raise UnknownKey(f"no PQ signed prekey {key_id}") from None

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

    def serialize(self) -> bytes:
        """Encode the whole store (private keys included) for backup or local storage."""
        return _wire.pack(
            [
                _wire.TAG_PREKEY_STORE,
                _wire.VERSION,
                self.identity.seed,
                self._next_id,
                [[s.key_id, s.key_pair.private, s.signature] for s in self.signed_prekeys.values()],
                [[p.key_id, p.seed, p.signature] for p in self.pq_prekeys.values()],
                [[o.key_id, o.key_pair.private] for o in self.one_time_prekeys.values()],
            ]
        )

    @classmethod
    def restore_untrusted(cls, data: bytes) -> PreKeyStore:
        """Rebuild a store from :meth:`serialize` output, checking every field."""
        f = _wire.unpack_untrusted(
            data,
            _wire.TAG_PREKEY_STORE,
            max_bytes=256 * 1024,
            max_items=MAX_ONE_TIME_PREKEYS_HELD,
            min_fields=7,
            max_fields=7,
        )
        store = cls(IdentityKeyPair(_wire.get_bytes(f[2], "identity_seed", size=32)))
        store._next_id = _wire.get_int(f[3], "next_id", 1, MAX_KEY_ID)
        for item in _triples(f[4], "signed_prekeys", MAX_SIGNED_PREKEYS_HELD, 3):
            key_id = _wire.get_int(item[0], "key_id", 0, MAX_KEY_ID)
            kp = X25519KeyPair.from_private(_wire.get_bytes(item[1], "private", size=32))
            sig = _wire.get_bytes(item[2], "signature", size=SIGNATURE_LEN)
            verify_signed_prekey_signature(store.identity.public, key_id, kp.public, sig)
            store.signed_prekeys[key_id] = SignedPreKey(key_id, kp, sig)
        for item in _triples(f[5], "pq_prekeys", MAX_SIGNED_PREKEYS_HELD, 3):
            key_id = _wire.get_int(item[0], "key_id", 0, MAX_KEY_ID)
            seed = _wire.get_bytes(item[1], "seed", size=MLKEM1024_SEED_LEN)
            private = mlkem_private_from_seed(seed)
            public = private.public_key().public_bytes_raw()
            sig = _wire.get_bytes(item[2], "signature", size=SIGNATURE_LEN)
            verify_pq_prekey_signature(store.identity.public, key_id, public, sig)
            store.pq_prekeys[key_id] = PQSignedPreKey(key_id, seed, public, sig, private)
        for item in _triples(f[6], "one_time_prekeys", MAX_ONE_TIME_PREKEYS_HELD, 2):
            key_id = _wire.get_int(item[0], "key_id", 0, MAX_KEY_ID)
            kp = X25519KeyPair.from_private(_wire.get_bytes(item[1], "private", size=32))
            store.one_time_prekeys[key_id] = OneTimePreKey(key_id, kp)
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
