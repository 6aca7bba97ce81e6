"""A participant's media keys in one call, shared by aiortc's threads (no aiortc import,
so the SDK can hold keys without loading the media stack)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from client.voice.errors import MediaError
from e2ee.media import (
    Codec,
    MediaKey,
    MediaKeyReceiver,
    MediaKeySender,
    frame_sender_index,
    protect_frame,
    unprotect_frame,
)
from e2ee.sframe import AES_128_GCM_SHA256_128

__all__ = ["FrameKeys"]


class FrameKeys:
    """One participant's media keys in one call: its own sender key and everyone else's.

    Thread-safe, because aiortc encodes in an executor thread, opens frames on its event
    loop's thread, and keys arrive from wherever the SDK runs its pairwise sessions.
    ``clock`` gives the time the receiver's grace periods are measured in.
    """

    def __init__(
        self,
        own: MediaKeySender,
        others: MediaKeyReceiver,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if own.suite != others.suite:
            raise MediaError("own and received media keys use different suites")
        self._own = own
        self._others = others
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def create(
        cls,
        sender_index: int,
        *,
        suite: int = AES_128_GCM_SHA256_128,
        grace_seconds: float = 10.0,
    ) -> FrameKeys:
        """Fresh keys for a participant joining a call as ``sender_index``."""
        return cls(
            MediaKeySender(sender_index, suite),
            MediaKeyReceiver(suite, grace_seconds=grace_seconds),
        )

    @property
    def sender_index(self) -> int:
        """This participant's sender index (the high half of its KIDs)."""
        return self._own.sender_index

    def current_key(self) -> MediaKey:
        """Own current key, to give (inside a pairwise session) to the other participants."""
        with self._lock:
            return self._own.current_key()

    def on_member_joined(self) -> MediaKey:
        """Ratchet own key for a joiner (RFC 9605 §5.1); give the result to the joiner only."""
        with self._lock:
            return self._own.on_member_joined()

    def on_member_left(self) -> MediaKey:
        """Draw a fresh own key after a leave; give the result to everyone remaining."""
        with self._lock:
            return self._own.on_member_left()

    def install(self, key: MediaKey, *, user_id: str, device_id: str) -> None:
        """Install another participant's key, received through the pairwise session of
        ``user_id``'s device ``device_id`` (its sender index is bound to that device)."""
        with self._lock:
            self._others.install(key, user_id=user_id, device_id=device_id, now=self._clock())

    def remove_sender(self, sender_index: int) -> None:
        """Forget every key of a participant who left."""
        with self._lock:
            self._others.remove_sender(sender_index)

    def protect(self, codec: Codec, frame: bytes) -> bytes:
        """Seal one encoded frame under own current key."""
        with self._lock:
            return protect_frame(self._own.sframe, codec, frame)

    def open_untrusted(self, codec: Codec, data: bytes) -> tuple[int, bytes]:
        """Open a received frame: ``(sender_index, frame)``; raises :class:`E2EEError`.

        The sender index comes from the frame's KID, which the AEAD authenticated, so it
        says who encrypted the frame whatever stream the SFU delivered it on.
        """
        with self._lock:
            frame = unprotect_frame(self._others, codec, data, now=self._clock())
        return frame_sender_index(codec, data), frame
