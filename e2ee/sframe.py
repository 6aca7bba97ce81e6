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
from array import array
from collections.abc import Callable
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


def _header_layout(config: int) -> tuple[int, int, int, int, int, int, int]:
    """Where KID and CTR sit in a header with this config byte, read as one integer.

    Returns ``(header_length, kid_shift, kid_mask, kid_min, ctr_shift, ctr_mask, ctr_min)``:
    with ``value`` the big-endian integer of the whole header, the KID is
    ``value >> kid_shift & kid_mask``, the CTR likewise, and a value below its minimum
    was encoded with a needless leading zero byte (or in extended form while below 8).
    """
    klen = ((config >> 4) & 0x07) + 1 if config & 0x80 else 0
    clen = (config & 0x07) + 1 if config & 0x08 else 0
    if klen:
        kid_shift, kid_mask = 8 * clen, (1 << 8 * klen) - 1
        kid_min = 8 if klen == 1 else 1 << 8 * (klen - 1)
    else:
        kid_shift, kid_mask, kid_min = 8 * clen + 4, 0x07, 0
    if clen:
        ctr_shift, ctr_mask = 0, (1 << 8 * clen) - 1
        ctr_min = 8 if clen == 1 else 1 << 8 * (clen - 1)
    else:
        ctr_shift, ctr_mask, ctr_min = 8 * klen, 0x07, 0
    return 1 + klen + clen, kid_shift, kid_mask, kid_min, ctr_shift, ctr_mask, ctr_min


# int.from_bytes looked up on the class builds a bound method on every call; held once.
_int_from_bytes = int.from_bytes

# One entry per config byte: decoding a header is a table lookup and a single int.from_bytes
# instead of a branch and a slice per field (the receiver's per-frame hot path).
_HEADER_LAYOUTS = tuple(_header_layout(config) for config in range(256))


def decode_header_untrusted(frame: bytes) -> tuple[int, int, int]:
    """Decode the SFrame header at the start of ``frame``: ``(kid, ctr, header_length)``.

    Non-minimal encodings are refused so that each (KID, CTR) has exactly one header.
    """
    if type(frame) is not bytes:
        if not isinstance(frame, bytes | bytearray | memoryview):
            raise DecodeError("SFrame frame must be bytes")
        # Bytes, so that indexing yields 0..255 whatever the buffer's item format.
        frame = bytes(frame[:MAX_HEADER_BYTES])
    if not frame:
        raise DecodeError("empty SFrame frame")
    hlen, kid_shift, kid_mask, kid_min, ctr_shift, ctr_mask, ctr_min = _HEADER_LAYOUTS[frame[0]]
    if len(frame) < hlen:
        raise DecodeError("truncated SFrame header")
    value = _int_from_bytes(frame[:hlen], "big")
    kid = value >> kid_shift & kid_mask
    if kid < kid_min:
        raise DecodeError("non-minimal SFrame KID encoding")
    ctr = value >> ctr_shift & ctr_mask
    if ctr < ctr_min:
        raise DecodeError("non-minimal SFrame CTR encoding")
    return kid, ctr, hlen


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
    """Derived key material for one (suite, base key, KID), with its cipher objects cached.

    ``seal_nonce(nonce, plaintext, aad)`` and ``open_nonce(nonce, ciphertext, aad)`` have
    the signature of ``AESGCM.encrypt``/``decrypt`` whatever the suite, so the per-frame
    paths make one call and no branch; for the GCM suites they are the AESGCM methods
    themselves, and ``open_nonce`` raises :class:`InvalidTag` like them.
    """

    __slots__ = ("_auth_key", "_enc_key", "_nt", "open_nonce", "salt", "seal_nonce", "suite")

    def __init__(self, suite: int, base_key: bytes, kid: int) -> None:
        cs = _suite(suite)
        key, salt = derive_key_and_salt(suite, base_key, kid)
        self.suite = cs
        self.salt = int.from_bytes(salt, "big")
        self._nt = cs.nt
        self._enc_key = key[: cs.nka]
        self._auth_key = key[cs.nka :]
        self.seal_nonce: Callable[[bytes, bytes, bytes], bytes]
        self.open_nonce: Callable[[bytes, bytes, bytes], bytes]
        if cs.gcm:
            gcm = AESGCM(key)
            self.seal_nonce, self.open_nonce = gcm.encrypt, gcm.decrypt
        else:
            self.seal_nonce, self.open_nonce = self._ctr_hmac_seal, self._ctr_hmac_open

    def _ctr_hmac_seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return _ctr_hmac_seal(self._enc_key, self._auth_key, self._nt, nonce, aad, plaintext)

    def _ctr_hmac_open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        return _ctr_hmac_open(self._enc_key, self._auth_key, self._nt, nonce, aad, ciphertext)

    def seal(self, ctr: int, aad: bytes, plaintext: bytes) -> bytes:
        return self.seal_nonce((self.salt ^ ctr).to_bytes(12, "big"), plaintext, aad)

    def open(self, ctr: int, aad: bytes, ciphertext: bytes) -> bytes:
        try:
            return self.open_nonce((self.salt ^ ctr).to_bytes(12, "big"), ciphertext, aad)
        except InvalidTag:
            raise DecryptionFailed("SFrame authentication failed") from None


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

    __slots__ = (
        "_ctr",
        "_header_base",
        "_header_end",
        "_header_len",
        "_salt",
        "_seal",
        "_small_headers",
        "kid",
        "suite",
    )

    def __init__(self, suite: int, base_key: bytes, kid: int, *, initial_ctr: int = 0) -> None:
        _check_kid_ctr(kid, initial_ctr)
        self.suite = suite
        self.kid = kid
        key = _FrameKey(suite, base_key, kid)
        # The bound encrypt (AESGCM.encrypt for the GCM suites) and the salt as an int are
        # held directly: this is the per-frame hot path.
        self._seal = key.seal_nonce
        self._salt = key.salt
        self._ctr = initial_ctr
        # CTR 0..7 sit in the config byte: their whole headers are precomputed.
        self._small_headers = tuple(encode_header(kid, ctr) for ctr in range(8))
        # From CTR 8 on, the header read as one big-endian integer is ``_header_base | ctr``
        # on ``_header_len`` bytes, for every CTR below ``_header_end`` (where the CTR field
        # gains a byte); _header_slow recomputes the three. End 0: nothing cached yet.
        self._header_base = 0
        self._header_len = 0
        self._header_end = 0

    @property
    def ctr(self) -> int:
        """The counter the next frame will carry."""
        return self._ctr

    def _header_slow(self, ctr: int) -> bytes:
        # The header of a CTR outside the cached layout; caches the layout of its length.
        if ctr < 8:
            return self._small_headers[ctr]
        if ctr > MAX_CTR:
            raise CounterExhausted("SFrame counter exhausted; rotate the key")
        header = encode_header(self.kid, ctr)
        ctr_bits = ((ctr.bit_length() + 7) >> 3) << 3
        self._header_base = int.from_bytes(header, "big") >> ctr_bits << ctr_bits
        self._header_len = len(header)
        self._header_end = 1 << ctr_bits
        return header

    def encrypt(self, plaintext: bytes, metadata: bytes = b"") -> bytes:
        """Encrypt one frame; ``metadata`` is authenticated but not carried in the output."""
        ctr = self._ctr
        if ctr < self._header_end:
            header = (self._header_base | ctr).to_bytes(self._header_len, "big")
        else:
            header = self._header_slow(ctr)
        if len(plaintext) > MAX_FRAME_BYTES:
            raise DecodeError("frame too large")
        if metadata:
            if len(metadata) > MAX_METADATA_BYTES:
                raise DecodeError("metadata too large")
            aad = header + metadata
        else:
            aad = header
        self._ctr = ctr + 1
        return header + self._seal((self._salt ^ ctr).to_bytes(12, "big"), plaintext, aad)


class _ReplayWindow:
    """Sliding window of accepted counters (the SFrame/SRTP replay list, RFC 3711 §3.3.2).

    A counter is refused if it is ``size`` or more below the highest accepted (``top``) or
    was accepted before. Slot ``ctr % size`` holds the last counter accepted into it; two
    counters inside one window never share a slot, so a counter inside the window was
    accepted iff its slot holds it. Accepting is one store, where a bit mask would need a
    shift, an or and an and on a ``size``-bit integer per frame.
    """

    __slots__ = ("seen", "size", "top")

    def __init__(self, size: int) -> None:
        self.size = size
        self.top = -1
        # MAX_CTR marks an empty slot: it can only be asked about once it is the top, that
        # is once it has been accepted.
        self.seen = array("Q", [MAX_CTR]) * size

    def check(self, ctr: int) -> None:
        if ctr <= self.top and (self.top - ctr >= self.size or self.seen[ctr % self.size] == ctr):
            raise DuplicateMessage(f"SFrame counter {ctr} replayed or too old")

    def accept(self, ctr: int) -> None:
        self.seen[ctr % self.size] = ctr
        if ctr > self.top:
            self.top = ctr


class _KidState(_ReplayWindow):
    """Receiver state of one KID: its key and replay window, flattened for the hot path."""

    __slots__ = ("open_nonce", "salt")

    def __init__(self, key: _FrameKey, window_size: int) -> None:
        super().__init__(window_size)
        self.salt = key.salt
        self.open_nonce = key.open_nonce


class _Generation:
    """Receiver state for one §5.1 key generation: the current ratchet step's key."""

    __slots__ = ("ahead", "base_key", "key", "kid", "previous", "windows")

    def __init__(self, suite: int, base_key: bytes, kid: int) -> None:
        self.base_key = base_key
        self.kid = kid
        self.key = _FrameKey(suite, base_key, kid)
        # Base keys of the steps after the current one, derived on demand: ahead[i] is i + 1
        # steps on. Kept so frames that fail to authenticate cost no ratchet work twice.
        self.ahead: list[bytes] = []
        # The key of the step before, kept so frames reordered across a ratchet still open.
        self.previous: tuple[int, _FrameKey] | None = None
        self.windows: dict[int, _ReplayWindow] = {}


class SFrameReceiver:
    """Decrypts frames from many senders, looking keys up by KID (RFC 9605 §4.4.4, §5.1).

    With ``ratchet_bits`` R > 0 a KID is ``generation << R | step``: a key is installed for a
    generation, and a frame whose step is ahead of the stored one is opened with the
    ratcheted key; the ratchet is kept only if the frame authenticates, so a forged header
    cannot advance it. Each KID has a replay window of ``replay_window`` counters.

    A frame is opened before it is known to be genuine, so the work it can cause is bounded:
    a step more than ``max_ratchet_ahead`` ahead of the stored one is refused without any
    derivation (the sender has moved on further than ratcheting should be trusted to
    follow; it needs a new key), and the base keys derived for steps ahead are kept per
    generation, so forged frames naming them cost one key derivation each, not a chain.
    """

    def __init__(
        self,
        suite: int,
        *,
        ratchet_bits: int = 0,
        replay_window: int = 128,
        max_keys: int = 1024,
        max_ratchet_ahead: int = 16,
    ) -> None:
        _suite(suite)
        if not 0 <= ratchet_bits <= 16:
            raise E2EEError("ratchet_bits must be within 0..16")
        if not 1 <= max_ratchet_ahead <= 1024:
            raise E2EEError("max_ratchet_ahead must be within 1..1024")
        if not 1 <= replay_window <= 4096:
            raise E2EEError("replay_window must be within 1..4096")
        self.suite = suite
        self.ratchet_bits = ratchet_bits
        self._step_mask = (1 << ratchet_bits) - 1
        self._max_ahead = max_ratchet_ahead
        self._window_size = replay_window
        self._max_keys = max_keys
        self._generations: dict[int, _Generation] = {}
        # KID -> key and replay window when no ratcheting is configured (else always empty).
        self._plain: dict[int, _KidState] = {}
        # Config byte -> (state, KID, header length, CTR mask, CTR minimum) for the installed
        # KIDs below 8: their config byte alone names the key and the header layout, so
        # frames under such KIDs need neither KID decoding nor a dict lookup.
        self._small_kids: list[tuple[_KidState, int, int, int, int] | None] = [None] * 256

    def add_key(self, kid: int, base_key: bytes) -> None:
        """Install ``base_key`` for ``kid`` (with ratcheting: for its generation and step)."""
        _check_kid_ctr(kid, 0)
        if kid not in self._plain and len(self._generations) + len(self._plain) >= self._max_keys:
            raise E2EEError("too many SFrame keys installed")
        if self.ratchet_bits == 0:
            state = _KidState(_FrameKey(self.suite, base_key, kid), self._window_size)
            self._plain[kid] = state
            if kid < 8:
                for config in range(kid << 4, (kid + 1) << 4):
                    hlen, _, _, _, _, ctr_mask, ctr_min = _HEADER_LAYOUTS[config]
                    self._small_kids[config] = (state, kid, hlen, ctr_mask, ctr_min)
        else:
            self._generations[kid >> self.ratchet_bits] = _Generation(self.suite, base_key, kid)

    def remove_key(self, kid: int) -> None:
        """Forget the key for ``kid`` (with ratcheting: its whole generation)."""
        if self.ratchet_bits == 0:
            if self._plain.pop(kid, None) is not None and kid < 8:
                self._small_kids[kid << 4 : (kid + 1) << 4] = [None] * 16
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
        size = len(frame)
        if not 0 < size <= MAX_FRAME_BYTES:
            raise DecodeError("SFrame frame must be 1 byte to 1 MiB")
        state: _KidState | None
        small = self._small_kids[frame[0]]
        if small is not None:
            # decode_header_untrusted for a KID in the config byte, inlined (the CTR field
            # ends the header: no shift), since a call would cost as much as the decoding.
            state, kid, hlen, ctr_mask, ctr_min = small
            if size < hlen:
                raise DecodeError("truncated SFrame header")
            header = frame[:hlen]
            ctr = _int_from_bytes(header, "big") & ctr_mask
            if ctr < ctr_min:
                raise DecodeError("non-minimal SFrame CTR encoding")
        else:
            # decode_header_untrusted, inlined likewise.
            layout = _HEADER_LAYOUTS[frame[0]]
            hlen, kid_shift, kid_mask, kid_min, ctr_shift, ctr_mask, ctr_min = layout
            if size < hlen:
                raise DecodeError("truncated SFrame header")
            header = frame[:hlen]
            value = _int_from_bytes(header, "big")
            kid = value >> kid_shift & kid_mask
            if kid < kid_min:
                raise DecodeError("non-minimal SFrame KID encoding")
            ctr = value >> ctr_shift & ctr_mask
            if ctr < ctr_min:
                raise DecodeError("non-minimal SFrame CTR encoding")
            state = self._plain.get(kid)
        if metadata:
            if len(metadata) > MAX_METADATA_BYTES:
                raise DecodeError("metadata too large")
            aad = header + metadata
        else:
            aad = header
        if state is None:
            if self.ratchet_bits == 0:
                raise UnknownKey(f"no SFrame key for KID {kid}")
            return kid, ctr, self._decrypt_ratcheting(kid, ctr, aad, frame[hlen:])
        top = state.top
        if ctr <= top:
            state.check(ctr)
        try:
            plaintext = state.open_nonce((state.salt ^ ctr).to_bytes(12, "big"), frame[hlen:], aad)
        except InvalidTag:
            raise DecryptionFailed("SFrame authentication failed") from None
        # _ReplayWindow.accept, inlined.
        state.seen[ctr % state.size] = ctr
        if ctr > top:
            state.top = ctr
        return kid, ctr, plaintext

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
            if steps > self._max_ahead:
                raise UnknownKey(f"KID {kid} is {steps} ratchet steps ahead; a new key is needed")
            ahead = gen.ahead
            while len(ahead) < steps:
                ahead.append(ratchet_base_key(self.suite, ahead[-1] if ahead else gen.base_key))
            base_key = ahead[steps - 1]
            key = _FrameKey(self.suite, base_key, kid)
            plaintext = key.open(ctr, aad, body)
            gen.previous = (gen.kid, gen.key)
            gen.windows = {k: w for k, w in gen.windows.items() if k == gen.kid}
            gen.base_key, gen.key, gen.kid = base_key, key, kid
            del ahead[:steps]
        if window is None:
            window = gen.windows.setdefault(kid, _ReplayWindow(self._window_size))
        window.accept(ctr)
        return plaintext
