"""Media keys and codec-aware frame protection on top of SFrame (RFC 9605).

**Frames.** An SFU must read a few codec bytes to forward media (the Opus TOC byte, RFC 6716
§3.1; the VP8 frame tag and, on key frames, the start code and dimensions, RFC 6386 §9.1).
:func:`protect_frame` leaves exactly those bytes in clear — 1 for Opus, 10 for VP8 key
frames and 3 otherwise — and passes them to SFrame as metadata, so they are authenticated
(RFC 9605 §4.4.3: AAD = header || metadata) and cannot be altered in transit.

**Keys.** Each participant encrypts with its own base key (never shared between senders,
RFC 9605 §9.1). The KID is ``sender_index << 32 | generation``. When someone joins, the
sender ratchets (RFC 9605 §5.1) to the next generation and gives the joiner only the new
key, so the joiner cannot read what came before; when someone leaves, the sender draws a
fresh random key and distributes it to those remaining, so the leaver cannot follow. A
receiver can follow a join ratchet by itself, keeps the previous generation for a bounded
grace period (frames in flight), and tries exactly one key per frame: AES-GCM is not
key-committing, so guessing among keys is avoided (the DAVE lesson).

Keys travel in :class:`MediaKey` messages, only inside pairwise sessions
(``MessageType.MEDIA_KEY``). A receiver binds each sender index to the user and device whose
pairwise session delivered its first key, and refuses a key for that index from any other
device (:class:`~e2ee.errors.SenderIndexClaimed`): otherwise any participant could install
a key under someone else's index and have its frames shown as theirs. The binding ends when
the participant is removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from e2ee import _wire
from e2ee._primitives import random_bytes
from e2ee.double_ratchet import DecryptedMessage, MessageType
from e2ee.errors import (
    DecodeError,
    E2EEError,
    SenderIndexClaimed,
    StateError,
    UnknownKey,
    UnknownSender,
    WrongMessageType,
)
from e2ee.sframe import (
    AES_128_GCM_SHA256_128,
    SUITES,
    SFrameReceiver,
    SFrameSender,
    decode_header_untrusted,
    ratchet_base_key,
)

__all__ = [
    "GENERATION_BITS",
    "Codec",
    "MediaKey",
    "MediaKeyReceiver",
    "MediaKeySender",
    "clear_prefix_length",
    "frame_sender_index",
    "make_kid",
    "protect_frame",
    "split_kid",
    "unprotect_frame",
]

GENERATION_BITS = 32
MAX_GENERATION = (1 << GENERATION_BITS) - 1
MAX_SENDER_INDEX = (1 << 31) - 1
# How many join ratchets a receiver follows by itself before it needs a distributed key.
MAX_RATCHET_AHEAD = 16
# Generations kept per sender (current plus those still in their grace period).
MAX_GENERATIONS_HELD = 4


class Codec(Enum):
    """Codecs whose frames the helper knows how to split."""

    OPUS = "opus"
    VP8 = "vp8"


def clear_prefix_length(codec: Codec, frame: bytes) -> int:
    """How many leading bytes of ``frame`` stay in clear for the SFU."""
    if not frame:
        raise DecodeError("empty media frame")
    if codec is Codec.OPUS:
        return 1
    if codec is Codec.VP8:
        # RFC 6386 §9.1: bit 0 of the frame tag is 0 for a key frame.
        return 10 if frame[0] & 0x01 == 0 else 3
    raise E2EEError(f"unsupported codec {codec!r}")


def protect_frame(sender: SFrameSender, codec: Codec, frame: bytes) -> bytes:
    """Encrypt a media frame: ``clear codec bytes || SFrame(header || ct || tag)``."""
    n = clear_prefix_length(codec, frame)
    if len(frame) < n:
        raise DecodeError(f"{codec.value} frame shorter than its {n}-byte codec header")
    clear = frame[:n]
    return clear + sender.encrypt(frame[n:], clear)


def unprotect_frame(
    receiver: SFrameReceiver | MediaKeyReceiver,
    codec: Codec,
    data: bytes,
    *,
    now: float | None = None,
) -> bytes:
    """Inverse of :func:`protect_frame` for untrusted bytes; returns the whole frame.

    ``now`` is required with a :class:`MediaKeyReceiver` (it enforces grace periods).
    """
    n = clear_prefix_length(codec, data)
    if len(data) <= n:
        raise DecodeError("protected frame too short")
    clear = data[:n]
    if isinstance(receiver, MediaKeyReceiver):
        if now is None:
            raise StateError("a media key receiver needs the current time")
        _, _, plaintext = receiver.decrypt(data[n:], clear, now=now)
    else:
        _, _, plaintext = receiver.decrypt(data[n:], clear)
    return clear + plaintext


def frame_sender_index(codec: Codec, data: bytes) -> int:
    """The sender index in a protected frame's KID, read from its clear SFrame header
    (not authenticated: only :func:`unprotect_frame` succeeding says who sealed it)."""
    kid, _, _ = decode_header_untrusted(data[clear_prefix_length(codec, data) :])
    return split_kid(kid)[0]


def make_kid(sender_index: int, generation: int) -> int:
    """The SFrame KID of a sender's key generation."""
    if not 0 <= sender_index <= MAX_SENDER_INDEX or not 0 <= generation <= MAX_GENERATION:
        raise E2EEError("sender index or generation out of range")
    return (sender_index << GENERATION_BITS) | generation


def split_kid(kid: int) -> tuple[int, int]:
    """``(sender_index, generation)`` of a KID."""
    return kid >> GENERATION_BITS, kid & MAX_GENERATION


@dataclass(frozen=True, slots=True)
class MediaKey:
    """One sender's SFrame base key for one generation, as distributed to receivers."""

    suite: int
    sender_index: int
    generation: int
    base_key: bytes = field(repr=False)

    @property
    def kid(self) -> int:
        """The SFrame KID frames under this key carry."""
        return make_kid(self.sender_index, self.generation)

    def encode(self) -> bytes:
        """Encode as msgpack ``[9, 1, suite, sender_index, generation, base_key]``."""
        return _wire.pack(
            [
                _wire.TAG_MEDIA_KEY,
                _wire.VERSION,
                self.suite,
                self.sender_index,
                self.generation,
                self.base_key,
            ]
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> MediaKey:
        """Decode a media key message."""
        f = _wire.unpack_untrusted(
            data, _wire.TAG_MEDIA_KEY, max_bytes=256, min_fields=6, max_fields=6
        )
        suite = _wire.get_int(f[2], "suite", 1, 0xFFFF)
        if suite not in SUITES:
            raise DecodeError(f"unsupported SFrame suite {suite}")
        return cls(
            suite=suite,
            sender_index=_wire.get_int(f[3], "sender_index", 0, MAX_SENDER_INDEX),
            generation=_wire.get_int(f[4], "generation", 0, MAX_GENERATION),
            base_key=_wire.get_bytes(f[5], "base_key", size=SUITES[suite].nh),
        )

    @classmethod
    def from_pairwise(cls, message: DecryptedMessage) -> MediaKey:
        """Decode a media key from an authenticated pairwise message of type MEDIA_KEY."""
        if not isinstance(message, DecryptedMessage):
            raise WrongMessageType("a media key must come out of a pairwise session")
        if message.message_type is not MessageType.MEDIA_KEY:
            raise WrongMessageType(f"expected MEDIA_KEY, got {message.message_type}")
        return cls.decode_untrusted(message.plaintext)


class MediaKeySender:
    """A participant's own media key: ratchets on join, replaced on leave."""

    def __init__(self, sender_index: int, suite: int = AES_128_GCM_SHA256_128) -> None:
        if suite not in SUITES:
            raise E2EEError(f"unsupported SFrame suite {suite}")
        make_kid(sender_index, 0)
        self.suite = suite
        self.sender_index = sender_index
        self.generation = 0
        self._base_key = random_bytes(SUITES[suite].nh)
        self.sframe = SFrameSender(suite, self._base_key, self.kid)

    @property
    def kid(self) -> int:
        """KID of the current generation."""
        return make_kid(self.sender_index, self.generation)

    def current_key(self) -> MediaKey:
        """The current key, to send (inside a pairwise session) to a receiver."""
        return MediaKey(self.suite, self.sender_index, self.generation, self._base_key)

    def _advance(self, base_key: bytes) -> MediaKey:
        if self.generation >= MAX_GENERATION:
            raise StateError("media key generations exhausted")
        self.generation += 1
        self._base_key = base_key
        self.sframe = SFrameSender(self.suite, base_key, self.kid)
        return self.current_key()

    def on_member_joined(self) -> MediaKey:
        """Ratchet forward (RFC 9605 §5.1); send the result to the joiner only."""
        return self._advance(ratchet_base_key(self.suite, self._base_key))

    def on_member_left(self) -> MediaKey:
        """Draw a fresh key; send the result to every remaining member."""
        return self._advance(random_bytes(SUITES[self.suite].nh))


class _SenderKeys:
    __slots__ = ("base_key", "expiry", "latest")

    def __init__(self, generation: int, base_key: bytes) -> None:
        self.latest = generation
        self.base_key = base_key
        # generation -> time after which it is dropped (None: current, no expiry yet)
        self.expiry: dict[int, float | None] = {generation: None}


class MediaKeyReceiver:
    """Keys of every other participant, looked up by KID; one key tried per frame.

    A generation past its grace period is removed from the SFrame receiver before any frame
    is opened at or after that time, so the per-frame cost of enforcing grace periods is one
    comparison with the earliest pending expiry.
    """

    def __init__(self, suite: int = AES_128_GCM_SHA256_128, *, grace_seconds: float = 10.0) -> None:
        if not 0 <= grace_seconds <= 600:
            raise E2EEError("grace period must be within 0..600 seconds")
        self.suite = suite
        self.grace_seconds = grace_seconds
        # Room for every generation held of up to 1024 participants.
        self._sframe = SFrameReceiver(suite, max_keys=MAX_GENERATIONS_HELD * 1024)
        self._senders: dict[int, _SenderKeys] = {}
        # sender index -> (user id, device id) of the pairwise session that delivered its
        # first key; only that device may give keys for the index until it is removed.
        self._owners: dict[int, tuple[str, str]] = {}
        # The earliest expiry of any held generation (inf: none is in its grace period).
        self._next_expiry = math.inf

    def install(self, key: MediaKey, *, user_id: str, device_id: str, now: float) -> None:
        """Install a distributed key; an older generation gets its grace period.

        ``user_id`` and ``device_id`` name the peer of the authenticated pairwise session
        the key came out of (never a claim inside the key). The first key for a sender
        index binds the index to that device; a key for it from another device raises
        :class:`~e2ee.errors.SenderIndexClaimed` and changes nothing.
        """
        if key.suite != self.suite:
            raise E2EEError("media key for another cipher suite")
        owner = (user_id, device_id)
        bound = self._owners.get(key.sender_index)
        if bound is not None and bound != owner:
            raise SenderIndexClaimed(
                f"media sender index {key.sender_index} belongs to another device"
            )
        state = self._senders.get(key.sender_index)
        if state is None:
            self._sframe.add_key(key.kid, key.base_key)  # may refuse: too many keys
            self._senders[key.sender_index] = _SenderKeys(key.generation, key.base_key)
            self._owners[key.sender_index] = owner
            return
        if key.generation in state.expiry:
            return  # already known (distributed or followed by ratchet)
        if key.generation < state.latest:
            # Late delivery of an older generation: usable only through its grace period.
            self._set_expiry(state, key.generation, now + self.grace_seconds)
            self._sframe.add_key(key.kid, key.base_key)
        else:
            self._supersede(key.sender_index, state, key.generation, key.base_key, now)
            self._sframe.add_key(key.kid, key.base_key)
        self._prune(key.sender_index, state, now)

    def _set_expiry(self, state: _SenderKeys, generation: int, expiry: float) -> None:
        state.expiry[generation] = expiry
        self._next_expiry = min(self._next_expiry, expiry)

    def _supersede(
        self, index: int, state: _SenderKeys, generation: int, base_key: bytes, now: float
    ) -> None:
        for gen, exp in state.expiry.items():
            if exp is None:
                self._set_expiry(state, gen, now + self.grace_seconds)
        state.expiry[generation] = None
        state.latest = generation
        state.base_key = base_key

    def _prune(self, index: int, state: _SenderKeys, now: float) -> None:
        for gen, exp in list(state.expiry.items()):
            if exp is not None and exp < now:
                del state.expiry[gen]
                self._sframe.remove_key(make_kid(index, gen))
        while len(state.expiry) > MAX_GENERATIONS_HELD:
            oldest = min(state.expiry)
            del state.expiry[oldest]
            self._sframe.remove_key(make_kid(index, oldest))

    def _prune_expired(self, now: float) -> None:
        next_expiry = math.inf
        for index, state in self._senders.items():
            self._prune(index, state, now)
            for exp in state.expiry.values():
                if exp is not None:
                    next_expiry = min(next_expiry, exp)
        self._next_expiry = next_expiry

    def owner(self, sender_index: int) -> tuple[str, str] | None:
        """``(user id, device id)`` a sender index is bound to, or None if it is free."""
        return self._owners.get(sender_index)

    def remove_sender(self, sender_index: int) -> None:
        """Forget every key of a participant who left, and free its sender index."""
        self._owners.pop(sender_index, None)
        state = self._senders.pop(sender_index, None)
        if state is not None:
            for gen in state.expiry:
                self._sframe.remove_key(make_kid(sender_index, gen))

    def decrypt(self, frame: bytes, metadata: bytes = b"", *, now: float) -> tuple[int, int, bytes]:
        """Decrypt an SFrame frame from any known sender: ``(kid, ctr, plaintext)``."""
        if self._next_expiry < now:
            self._prune_expired(now)
        try:
            return self._sframe.decrypt(frame, metadata)
        except UnknownKey:
            pass
        # No key for this KID: an expired generation, an unknown sender, or a generation
        # the sender reached by join ratchets that this receiver can follow by itself.
        kid, _, _ = decode_header_untrusted(frame)
        index, generation = split_kid(kid)
        state = self._senders.get(index)
        if state is None:
            raise UnknownSender(f"no media key for sender {index}")
        ahead = generation - state.latest
        if ahead <= 0:
            raise UnknownKey(f"generation {generation} of sender {index} is not held (expired?)")
        if ahead > MAX_RATCHET_AHEAD:
            raise UnknownKey(f"generation {generation} of sender {index} is too far ahead")
        # Follow the sender's join ratchets; keep the result only if the frame opens.
        base_key = state.base_key
        for _ in range(ahead):
            base_key = ratchet_base_key(self.suite, base_key)
        self._sframe.add_key(kid, base_key)
        try:
            result = self._sframe.decrypt(frame, metadata)
        except E2EEError:
            self._sframe.remove_key(kid)
            raise
        # The key is already installed, with the frame just opened in its replay window:
        # installing it again would empty the window and let that frame in a second time.
        self._supersede(index, state, generation, base_key, now)
        self._prune(index, state, now)
        return result
