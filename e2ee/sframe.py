"""SFrame: end-to-end encryption of media frames, RFC 9605.

Implements the header encoding (§4.3), key and salt derivation (§4.4.2), encryption and
decryption (§4.4.3–4.4.4) for all five cipher suites of §4.5 — AES-CTR with HMAC-SHA256
and 80/64/32-bit tags (§4.5.1) and AES-GCM (SHA-256 / SHA-512 KDF) — and the sender-key
ratchet of §5.1. The nonce is ``salt XOR CTR`` and the AAD is ``header || metadata``.

The stateless functions :func:`encrypt_frame` and :func:`decrypt_frame` derive keys on every
call and exist for tests and one-off use. Media paths use :class:`SFrameSender`, which owns
its counter and refuses to reuse or wrap it, and :class:`SFrameReceiver`, which looks keys
up by KID, rejects replays inside a sliding window and follows §5.1 ratchet steps.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from e2ee._primitives import hkdf_expand
from e2ee.errors import (
    CounterExhausted,
    DecodeError,
    DecryptionFailed,
    DuplicateMessage,
    E2EEError,
    UnknownKey,
    UnsupportedSuite,
)

__all__ = [
    "AES_128_CTR_HMAC_SHA256_32",
    "AES_128_CTR_HMAC_SHA256_64",
    "AES_128_CTR_HMAC_SHA256_80",
    "AES_128_GCM_SHA256_128",
    "AES_256_GCM_SHA512_128",
    "SUITES",
    "CipherSuite",
    "SFrameReceiver",
    "SFrameSender",
    "decode_header_untrusted",
    "decrypt_frame",
    "derive_key_and_salt",
    "encode_header",
    "encrypt_frame",
    "ratchet_base_key",
]

AES_128_CTR_HMAC_SHA256_80 = 0x0001
AES_128_CTR_HMAC_SHA256_64 = 0x0002
AES_128_CTR_HMAC_SHA256_32 = 0x0003
AES_128_GCM_SHA256_128 = 0x0004
AES_256_GCM_SHA512_128 = 0x0005

MAX_KID = (1 << 64) - 1
MAX_CTR = (1 << 64) - 1
# A media frame is at most a few hundred kilobytes (a 4K key frame); refusing anything
# larger bounds work done on hostile input and keeps AES-CTR far from its 2^32-block limit.
MAX_FRAME_BYTES = 1 << 20
MAX_METADATA_BYTES = 1 << 16
MAX_BASE_KEY_BYTES = 256
MAX_HEADER_BYTES = 17

_KEY_LABEL = b"SFrame 1.0 Secret key "
_SALT_LABEL = b"SFrame 1.0 Secret salt "
_RATCHET_LABEL = b"SFrame 1.0 Ratchet"


@dataclass(frozen=True, slots=True)
class CipherSuite:
    """Parameters of one RFC 9605 §4.5 cipher suite."""

    id: int
    name: str
    hash_name: str
    nh: int
    nk: int
    nka: int  # AES key length; for CTR+HMAC suites the rest of the Nk bytes is the auth key
    nn: int
    nt: int
    gcm: bool


SUITES: dict[int, CipherSuite] = {
    s.id: s
    for s in (
        CipherSuite(1, "AES_128_CTR_HMAC_SHA256_80", "sha256", 32, 48, 16, 12, 10, False),
        CipherSuite(2, "AES_128_CTR_HMAC_SHA256_64", "sha256", 32, 48, 16, 12, 8, False),
        CipherSuite(3, "AES_128_CTR_HMAC_SHA256_32", "sha256", 32, 48, 16, 12, 4, False),
        CipherSuite(4, "AES_128_GCM_SHA256_128", "sha256", 32, 16, 16, 12, 16, True),
        CipherSuite(5, "AES_256_GCM_SHA512_128", "sha512", 64, 32, 32, 12, 16, True),
    )
}


def _suite(suite: int) -> CipherSuite:
    try:
        return SUITES[suite]
    except (KeyError, TypeError):
        raise UnsupportedSuite(f"unsupported SFrame cipher suite {suite!r}") from None


def _check_kid_ctr(kid: int, ctr: int) -> None:
    if type(kid) is not int or not 0 <= kid <= MAX_KID:
        raise E2EEError("KID must be an integer in [0, 2^64)")
    if type(ctr) is not int or not 0 <= ctr <= MAX_CTR:
        raise CounterExhausted("CTR must be an integer in [0, 2^64)")


def encode_header(kid: int, ctr: int) -> bytes:
    """Encode an SFrame header (RFC 9605 §4.3): config byte ``X|K|Y|C``, then KID, CTR.

    Values below 8 sit in the config byte; larger ones follow in the minimal number of
    big-endian bytes, the 3-bit field holding that length minus one.
    """
    _check_kid_ctr(kid, ctr)
    if kid < 8:
        config = kid << 4
        kid_bytes = b""
    else:
        klen = (kid.bit_length() + 7) >> 3
        config = 0x80 | ((klen - 1) << 4)
        kid_bytes = kid.to_bytes(klen, "big")
    if ctr < 8:
        config |= ctr
        ctr_bytes = b""
    else:
        clen = (ctr.bit_length() + 7) >> 3
        config |= 0x08 | (clen - 1)
        ctr_bytes = ctr.to_bytes(clen, "big")
    return bytes((config,)) + kid_bytes + ctr_bytes


def decode_header_untrusted(frame: bytes) -> tuple[int, int, int]:
    """Decode the SFrame header at the start of ``frame``: ``(kid, ctr, header_length)``.

    Non-minimal encodings are refused so that each (KID, CTR) has exactly one header.
    """
    if not isinstance(frame, bytes | bytearray | memoryview) or len(frame) < 1:
        raise DecodeError("empty SFrame frame")
    config = frame[0]
    pos = 1
    if config & 0x80:
        klen = ((config >> 4) & 0x07) + 1
        if len(frame) < pos + klen:
            raise DecodeError("truncated SFrame KID")
        kid = int.from_bytes(frame[pos : pos + klen], "big")
        if kid < 8 or (klen > 1 and frame[pos] == 0):
            raise DecodeError("non-minimal SFrame KID encoding")
        pos += klen
    else:
        kid = (config >> 4) & 0x07
    if config & 0x08:
        clen = (config & 0x07) + 1
        if len(frame) < pos + clen:
            raise DecodeError("truncated SFrame CTR")
        ctr = int.from_bytes(frame[pos : pos + clen], "big")
        if ctr < 8 or (clen > 1 and frame[pos] == 0):
            raise DecodeError("non-minimal SFrame CTR encoding")
        pos += clen
    else:
        ctr = config & 0x07
    return kid, ctr, pos


def _check_base_key(base_key: bytes) -> None:
    if not isinstance(base_key, bytes) or not 1 <= len(base_key) <= MAX_BASE_KEY_BYTES:
        raise E2EEError("base key must be 1..256 bytes")


def derive_key_and_salt(suite: int, base_key: bytes, kid: int) -> tuple[bytes, bytes]:
    """RFC 9605 §4.4.2: ``(sframe_key, sframe_salt)`` for one KID."""
    cs = _suite(suite)
    _check_base_key(base_key)
    _check_kid_ctr(kid, 0)
    # HKDF-Extract with an empty salt is HMAC keyed with Nh zero bytes (RFC 5869 §2.2).
    secret = hmac.digest(b"", base_key, cs.hash_name)
    info_tail = kid.to_bytes(8, "big") + cs.id.to_bytes(2, "big")
    key = hkdf_expand(secret, _KEY_LABEL + info_tail, cs.nk, cs.hash_name)
    salt = hkdf_expand(secret, _SALT_LABEL + info_tail, cs.nn, cs.hash_name)
    return key, salt


def ratchet_base_key(suite: int, base_key: bytes) -> bytes:
    """RFC 9605 §5.1: the next base key, ``HKDF-Expand(HKDF-Extract("", k), label, Nh)``."""
    cs = _suite(suite)
    _check_base_key(base_key)
    secret = hmac.digest(b"", base_key, cs.hash_name)
    return hkdf_expand(secret, _RATCHET_LABEL, cs.nh, cs.hash_name)


class _FrameKey:
    """Derived key material for one (suite, base key, KID), with its cipher objects cached."""

    __slots__ = ("_auth_key", "_enc_key", "_nt", "gcm", "salt", "suite")

    def __init__(self, suite: int, base_key: bytes, kid: int) -> None:
        cs = _suite(suite)
        key, salt = derive_key_and_salt(suite, base_key, kid)
        self.suite = cs
        self.salt = int.from_bytes(salt, "big")
        self._nt = cs.nt
        self.gcm: AESGCM | None = AESGCM(key) if cs.gcm else None
        self._enc_key = key[: cs.nka]
        self._auth_key = key[cs.nka :]

    def seal(self, ctr: int, aad: bytes, plaintext: bytes) -> bytes:
        nonce = (self.salt ^ ctr).to_bytes(12, "big")
        if self.gcm is not None:
            return self.gcm.encrypt(nonce, plaintext, aad)
        return _ctr_hmac_seal(self._enc_key, self._auth_key, self._nt, nonce, aad, plaintext)

    def open(self, ctr: int, aad: bytes, ciphertext: bytes) -> bytes:
        nonce = (self.salt ^ ctr).to_bytes(12, "big")
        if self.gcm is not None:
            try:
                return self.gcm.decrypt(nonce, ciphertext, aad)
            except InvalidTag:
                raise DecryptionFailed("SFrame authentication failed") from None
        return _ctr_hmac_open(self._enc_key, self._auth_key, self._nt, nonce, aad, ciphertext)


def _ctr_hmac_tag(auth_key: bytes, nt: int, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
    # RFC 9605 §4.5.1 compute_tag: lengths first, so aad/ct boundaries are unambiguous.
    data = (
        len(aad).to_bytes(8, "big")
        + len(ct).to_bytes(8, "big")
        + nt.to_bytes(8, "big")
        + nonce
        + aad
        + ct
    )
    return hmac.digest(auth_key, data, "sha256")[:nt]


def _ctr_hmac_seal(
    enc_key: bytes, auth_key: bytes, nt: int, nonce: bytes, aad: bytes, plaintext: bytes
) -> bytes:
    # The AES-CTR initial counter block is the 96-bit nonce followed by a 32-bit zero.
    enc = Cipher(algorithms.AES(enc_key), modes.CTR(nonce + b"\x00\x00\x00\x00")).encryptor()
    ct = enc.update(plaintext) + enc.finalize()
    return ct + _ctr_hmac_tag(auth_key, nt, nonce, aad, ct)


def _ctr_hmac_open(
    enc_key: bytes, auth_key: bytes, nt: int, nonce: bytes, aad: bytes, ciphertext: bytes
) -> bytes:
    if len(ciphertext) < nt:
        raise DecryptionFailed("SFrame ciphertext shorter than its tag")
    ct, tag = ciphertext[:-nt], ciphertext[-nt:]
    if not hmac.compare_digest(_ctr_hmac_tag(auth_key, nt, nonce, aad, ct), tag):
        raise DecryptionFailed("SFrame authentication failed")
    dec = Cipher(algorithms.AES(enc_key), modes.CTR(nonce + b"\x00\x00\x00\x00")).decryptor()
    return dec.update(ct) + dec.finalize()


def _check_sizes(metadata: bytes, payload: bytes) -> None:
    if not isinstance(metadata, bytes | bytearray) or len(metadata) > MAX_METADATA_BYTES:
        raise DecodeError("metadata must be bytes of at most 64 KiB")
    if not isinstance(payload, bytes | bytearray | memoryview) or len(payload) > MAX_FRAME_BYTES:
        raise DecodeError("frame must be bytes of at most 1 MiB")


def encrypt_frame(
    suite: int, base_key: bytes, kid: int, ctr: int, metadata: bytes, plaintext: bytes
) -> bytes:
    """Encrypt one frame (RFC 9605 §4.4.3): returns ``header || ciphertext || tag``.

    Stateless: the caller guarantees a (base key, KID, CTR) triple is never used twice.
    """
    _check_sizes(metadata, plaintext)
    header = encode_header(kid, ctr)
    key = _FrameKey(suite, base_key, kid)
    return header + key.seal(ctr, header + metadata, plaintext)


def decrypt_frame(
    suite: int, base_key: bytes, frame: bytes, metadata: bytes
) -> tuple[int, int, bytes]:
    """Decrypt one frame (RFC 9605 §4.4.4): returns ``(kid, ctr, plaintext)``."""
    _check_sizes(metadata, frame)
    kid, ctr, hlen = decode_header_untrusted(frame)
    if len(frame) - hlen < _suite(suite).nt:
        raise DecryptionFailed("SFrame frame shorter than its tag")
    key = _FrameKey(suite, base_key, kid)
    frame = bytes(frame)
    return kid, ctr, key.open(ctr, frame[:hlen] + metadata, frame[hlen:])


class SFrameSender:
    """Encrypts a sender's frames under one base key and KID, owning the counter.

    The counter starts at ``initial_ctr`` and increases by one per frame; when it would
    pass 2^64 - 1 :class:`CounterExhausted` is raised and the sender must be replaced by one
    with a new key, so a (key, nonce) pair is never repeated.
    """

    __slots__ = ("_ctr", "_gcm", "_key", "_prefixes", "_salt", "kid", "suite")

    def __init__(self, suite: int, base_key: bytes, kid: int, *, initial_ctr: int = 0) -> None:
        _check_kid_ctr(kid, initial_ctr)
        self.suite = suite
        self.kid = kid
        self._key = _FrameKey(suite, base_key, kid)
        # The AES-GCM object and salt are held directly: this is the per-frame hot path.
        self._gcm = self._key.gcm
        self._salt = self._key.salt
        self._ctr = initial_ctr
        # Header prefixes by CTR length: index 0 holds the full headers of CTR 0..7,
        # index n (1..8) the config byte and KID for an n-byte CTR that follows.
        kid_header = encode_header(kid, 0)
        config, kid_bits = kid_header[0], kid_header[1:]
        self._prefixes: list[bytes] = [kid_header] + [
            bytes((config | 0x08 | (n - 1),)) + kid_bits for n in range(1, 9)
        ]

    @property
    def ctr(self) -> int:
        """The counter the next frame will carry."""
        return self._ctr

    def encrypt(self, plaintext: bytes, metadata: bytes = b"") -> bytes:
        """Encrypt one frame; ``metadata`` is authenticated but not carried in the output."""
        ctr = self._ctr
        if ctr < 8:
            header = bytes((self._prefixes[0][0] | ctr,)) + self._prefixes[0][1:]
        elif ctr > MAX_CTR:
            raise CounterExhausted("SFrame counter exhausted; rotate the key")
        else:
            clen = (ctr.bit_length() + 7) >> 3
            header = self._prefixes[clen] + ctr.to_bytes(clen, "big")
        if len(plaintext) > MAX_FRAME_BYTES or len(metadata) > MAX_METADATA_BYTES:
            raise DecodeError("frame or metadata too large")
        self._ctr = ctr + 1
        gcm = self._gcm
        if gcm is not None:
            return header + gcm.encrypt(
                (self._salt ^ ctr).to_bytes(12, "big"),
                plaintext,
                header + metadata if metadata else header,
            )
        return header + self._key.seal(ctr, header + metadata, plaintext)


class _ReplayWindow:
    """Sliding window of accepted counters (the SRTP replay-list scheme, RFC 3711 §3.3.2)."""

    __slots__ = ("full", "mask", "size", "top")

    def __init__(self, size: int) -> None:
        self.size = size
        self.full = (1 << size) - 1
        self.top = -1
        self.mask = 0

    def check(self, ctr: int) -> None:
        if ctr > self.top:
            return
        age = self.top - ctr
        if age >= self.size or (self.mask >> age) & 1:
            raise DuplicateMessage(f"SFrame counter {ctr} replayed or too old")

    def accept(self, ctr: int) -> None:
        if ctr > self.top:
            shift = ctr - self.top
            self.mask = ((self.mask << shift) | 1) & self.full
            self.top = ctr
        else:
            self.mask |= 1 << (self.top - ctr)


class _KidState(_ReplayWindow):
    """Receiver state of one KID: its key and replay window, flattened for the hot path."""

    __slots__ = ("decrypt", "key", "salt")

    def __init__(self, key: _FrameKey, window_size: int) -> None:
        super().__init__(window_size)
        self.key = key
        self.salt = key.salt
        self.decrypt = key.gcm.decrypt if key.gcm is not None else None


class _Generation:
    """Receiver state for one §5.1 key generation: the current ratchet step's key."""

    __slots__ = ("base_key", "key", "kid", "previous", "windows")

    def __init__(self, suite: int, base_key: bytes, kid: int) -> None:
        self.base_key = base_key
        self.kid = kid
        self.key = _FrameKey(suite, base_key, kid)
        # The key of the step before, kept so frames reordered across a ratchet still open.
        self.previous: tuple[int, _FrameKey] | None = None
        self.windows: dict[int, _ReplayWindow] = {}


class SFrameReceiver:
    """Decrypts frames from many senders, looking keys up by KID (RFC 9605 §4.4.4, §5.1).

    With ``ratchet_bits`` R > 0 a KID is ``generation << R | step``: a key is installed for a
    generation, and a frame whose step is ahead of the stored one is opened with the
    ratcheted key; the ratchet is kept only if the frame authenticates, so a forged header
    cannot advance it. Each KID has a replay window of ``replay_window`` counters.
    """

    def __init__(
        self,
        suite: int,
        *,
        ratchet_bits: int = 0,
        replay_window: int = 128,
        max_keys: int = 1024,
    ) -> None:
        _suite(suite)
        if not 0 <= ratchet_bits <= 16:
            raise E2EEError("ratchet_bits must be within 0..16")
        if not 1 <= replay_window <= 4096:
            raise E2EEError("replay_window must be within 1..4096")
        self.suite = suite
        self.ratchet_bits = ratchet_bits
        self._step_mask = (1 << ratchet_bits) - 1
        self._fast = ratchet_bits == 0
        self._window_size = replay_window
        self._max_keys = max_keys
        self._generations: dict[int, _Generation] = {}
        # Fast path when no ratcheting is configured: KID -> (key, replay window).
        self._plain: dict[int, _KidState] = {}

    def add_key(self, kid: int, base_key: bytes) -> None:
        """Install ``base_key`` for ``kid`` (with ratcheting: for its generation and step)."""
        _check_kid_ctr(kid, 0)
        if kid not in self._plain and len(self._generations) + len(self._plain) >= self._max_keys:
            raise E2EEError("too many SFrame keys installed")
        if self.ratchet_bits == 0:
            self._plain[kid] = _KidState(_FrameKey(self.suite, base_key, kid), self._window_size)
        else:
            self._generations[kid >> self.ratchet_bits] = _Generation(self.suite, base_key, kid)

    def remove_key(self, kid: int) -> None:
        """Forget the key for ``kid`` (with ratcheting: its whole generation)."""
        if self.ratchet_bits == 0:
            self._plain.pop(kid, None)
        else:
            self._generations.pop(kid >> self.ratchet_bits, None)

    def has_key(self, kid: int) -> bool:
        """Whether a key for ``kid`` (or its generation) is installed."""
        if self.ratchet_bits == 0:
            return kid in self._plain
        return (kid >> self.ratchet_bits) in self._generations

    def decrypt(self, frame: bytes, metadata: bytes = b"") -> tuple[int, int, bytes]:
        """Authenticate and decrypt one frame: returns ``(kid, ctr, plaintext)``."""
        if type(frame) is not bytes:
            frame = bytes(frame) if isinstance(frame, bytes | bytearray | memoryview) else b""
        if len(frame) > MAX_FRAME_BYTES or len(metadata) > MAX_METADATA_BYTES:
            raise DecodeError("frame or metadata too large")
        config = frame[0] if frame else 0x80
        if not config & 0x80 and self._fast:
            # Fast path: small KID in the config byte, no ratcheting (the common media case).
            kid = config >> 4
            if config & 0x08:
                hlen = (config & 0x07) + 2
                if len(frame) < hlen:
                    raise DecodeError("truncated SFrame CTR")
                ctr = int.from_bytes(frame[1:hlen], "big")
                if ctr < 8 or (hlen > 2 and frame[1] == 0):
                    raise DecodeError("non-minimal SFrame CTR encoding")
            else:
                ctr, hlen = config & 0x07, 1
            state = self._plain.get(kid)
            if state is None:
                raise UnknownKey(f"no SFrame key for KID {kid}")
            top = state.top
            if ctr <= top:
                state.check(ctr)
            decrypt = state.decrypt
            if decrypt is not None:
                try:
                    plaintext = decrypt(
                        (state.salt ^ ctr).to_bytes(12, "big"),
                        frame[hlen:],
                        frame[:hlen] + metadata if metadata else frame[:hlen],
                    )
                except InvalidTag:
                    raise DecryptionFailed("SFrame authentication failed") from None
            else:
                plaintext = state.key.open(ctr, frame[:hlen] + metadata, frame[hlen:])
            if ctr > top:
                state.mask = ((state.mask << (ctr - top)) | 1) & state.full
                state.top = ctr
            else:
                state.accept(ctr)
            return kid, ctr, plaintext
        kid, ctr, hlen = decode_header_untrusted(frame)
        header = frame[:hlen]
        if self.ratchet_bits == 0:
            state = self._plain.get(kid)
            if state is None:
                raise UnknownKey(f"no SFrame key for KID {kid}")
            state.check(ctr)
            plaintext = state.key.open(ctr, header + metadata, frame[hlen:])
            state.accept(ctr)
            return kid, ctr, plaintext
        return kid, ctr, self._decrypt_ratcheting(kid, ctr, header + metadata, frame[hlen:])

    def _decrypt_ratcheting(self, kid: int, ctr: int, aad: bytes, body: bytes) -> bytes:
        gen = self._generations.get(kid >> self.ratchet_bits)
        if gen is None:
            raise UnknownKey(f"no SFrame key generation for KID {kid}")
        window = gen.windows.get(kid)
        if window is not None:
            window.check(ctr)
        if kid == gen.kid:
            plaintext = gen.key.open(ctr, aad, body)
        elif gen.previous is not None and kid == gen.previous[0]:
            plaintext = gen.previous[1].open(ctr, aad, body)
        else:
            steps = ((kid & self._step_mask) - (gen.kid & self._step_mask)) & self._step_mask
            # Steps "behind" the current one (more than half the step space away) are late
            # frames of a retired key, not a ratchet forward: refuse them.
            if steps == 0 or steps > (self._step_mask + 1) // 2:
                raise UnknownKey(f"KID {kid} is not a forward ratchet step")
            base_key = gen.base_key
            for _ in range(steps):
                base_key = ratchet_base_key(self.suite, base_key)
            key = _FrameKey(self.suite, base_key, kid)
            plaintext = key.open(ctr, aad, body)
            gen.previous = (gen.kid, gen.key)
            gen.windows = {k: w for k, w in gen.windows.items() if k == gen.kid}
            gen.base_key, gen.key, gen.kid = base_key, key, kid
        if window is None:
            window = gen.windows.setdefault(kid, _ReplayWindow(self._window_size))
        window.accept(ctr)
        return plaintext
