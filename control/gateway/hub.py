"""The gateway hub: this process's live sessions, and delivery of bus events to them.

Delivery never blocks and never logs per event: each attached connection has a bounded
outbox; a connection too slow to drain it is cut (its session stays resumable, and RESUME
replays what it missed from the session's buffer).

Revocation reaches the hub as a bus event too (:data:`~control.sessions.SESSIONS_REVOKED`,
published by sign-out, device removal and account deletion wherever they ran), so every
process of a deployment ends the sessions it holds for the revoked token, device or user:
their connections close with 4020 and the sessions cannot be resumed.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from contract.gateway import Close

from ..bus import Event, EventBus
from ..sessions import SESSIONS_REVOKED
from .session import PENDING_LIMIT, GatewaySession, PendingConnections

__all__ = ["GatewayHub", "LiveSession"]

#: Frames queued for one connection before it counts as too slow.
OUTBOX_FRAMES = 4096

#: How the hub closes a connection: ``on_close(code, reason)``.
CloseCallback = Callable[[int, str], None]


@dataclass(eq=False)
class LiveSession:
    """A session, the token it was established with, and its connection (if any)."""

    core: GatewaySession
    token_hash: bytes
    outbox: trio.MemorySendChannel[bytes] | None = None
    #: The attached connection (its outbox channel), kept when a kick closes the outbox so
    #: that connection can still detach the session.
    connection: object | None = None
    detached_at: float | None = None
    #: Dispatches held until READY has been sent (they follow it, in order).
    held: list[tuple[str, bytes]] | None = field(default_factory=list)
    on_close: CloseCallback | None = None

    def push(self, event_type: str, packed: bytes) -> None:
        """Dispatch one event to this session (non-blocking)."""
        if self.held is not None:
            self.held.append((event_type, packed))
            return
        frame = self.core.dispatch(event_type, packed)
        if self.outbox is not None:
            try:
                self.outbox.send_nowait(frame)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self.kick()

    def release(self, ready_type: str, ready: bytes) -> None:
        """Send READY (or RESUMED) first, then whatever arrived while it was being built."""
        held, self.held = self.held or [], None
        self.push(ready_type, ready)
        for event_type, packed in held:
            self.push(event_type, packed)

    def kick(self, code: int = Close.UNKNOWN_ERROR, reason: str = "too slow, resume") -> None:
        """Close the attached connection with ``code``; the session itself stays."""
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close(code, reason)


class GatewayHub:
    """Sessions of this process by id, user, device and token; presence in memory only;
    the count of connections still waiting to identify."""

    def __init__(
        self, bus: EventBus, resume_window_s: float, pending_limit: int = PENDING_LIMIT
    ) -> None:
        self.resume_window_s = resume_window_s
        self.sessions: dict[str, LiveSession] = {}
        self._by_user: defaultdict[str, set[LiveSession]] = defaultdict(set)
        self._by_device: defaultdict[str, set[LiveSession]] = defaultdict(set)
        self._by_token: defaultdict[bytes, set[LiveSession]] = defaultdict(set)
        #: user id -> status for users with an attached connection (never stored).
        self.presence: dict[str, str] = {}
        #: Connections accepted but not yet identified.
        self.pending = PendingConnections(pending_limit)
        #: Detached sessions in detach order, so expiry never scans every session.
        self._detached: deque[tuple[float, LiveSession]] = deque()
        self._unsubscribe = bus.subscribe(self.deliver)

    def deliver(self, event: Event) -> None:
        """Dispatch ``event`` to the local sessions in its audience; act on revocations."""
        if event.type == SESSIONS_REVOKED:
            self.revoke(event.data)
            return
        targets: set[LiveSession] = set()
        for user_id in event.user_ids:
            found = self._by_user.get(user_id)
            if found:
                targets |= found
        for device_id in event.device_ids:
            found = self._by_device.get(device_id)
            if found:
                targets |= found
        if not targets:
            return
        packed = msgpack.packb(event.data, use_bin_type=True)
        for live in targets:
            live.push(event.type, packed)

    def revoke(self, revocation: dict[str, Any]) -> None:
        """End, for good, the sessions of the token, device or user a revocation names
        (see :func:`control.sessions.revoked`): close 4020, no RESUME."""
        ended: set[LiveSession] = set()
        for index, key in (
            (self._by_token, revocation.get("token_hash")),
            (self._by_device, revocation.get("device_id")),
            (self._by_user, revocation.get("user_id")),
        ):
            if key is not None:
                ended |= index.get(key, set())
        for live in ended:
            self.end(live, Close.SESSION_REVOKED, "session revoked")

    def end(self, live: LiveSession, code: int, reason: str) -> None:
        """Close the session's connection with ``code`` and forget the session."""
        live.kick(code, reason)
        self._remove(live)

    def create(self, core: GatewaySession, token_hash: bytes) -> LiveSession:
        """Register a new session established with the token of ``token_hash``; dispatches
        are held until :meth:`LiveSession.release`."""
        live = LiveSession(core, token_hash)
        self.sessions[core.session_id] = live
        self._by_user[core.user_id].add(live)
        self._by_device[core.device_id].add(live)
        self._by_token[token_hash].add(live)
        return live

    def attach(
        self,
        live: LiveSession,
        outbox: trio.MemorySendChannel[bytes],
        on_close: CloseCallback,
        token_hash: bytes,
    ) -> None:
        """Route the session's dispatches to a connection's outbox. ``token_hash`` is the
        token that connection authenticated with (RESUME may bring a newer one)."""
        if live.outbox is not None:
            live.kick(Close.UNKNOWN_ERROR, "resumed on another connection")
        if token_hash != live.token_hash:
            self._discard(self._by_token, live.token_hash, live)
            live.token_hash = token_hash
            self._by_token[token_hash].add(live)
        live.outbox, live.connection, live.on_close = outbox, outbox, on_close
        live.detached_at = None

    def detach(self, live: LiveSession, connection: object, now: float) -> None:
        """``connection`` is gone; keep the session resumable for the window, unless it has
        ended or another connection has taken it over since."""
        if live.connection is not connection or self.sessions.get(live.core.session_id) is not live:
            return
        live.outbox, live.connection, live.on_close = None, None, None
        live.detached_at = now
        self._detached.append((now, live))

    def online(self, user_id: str) -> bool:
        """True while the user has at least one attached connection here."""
        return any(s.outbox is not None for s in self._by_user.get(user_id, ()))

    def device_online(self, device_id: str) -> bool:
        """True while the device has at least one attached connection here."""
        return any(s.outbox is not None for s in self._by_device.get(device_id, ()))

    def expire(self, now: float) -> None:
        """Forget detached sessions older than the resume window."""
        while self._detached and now - self._detached[0][0] > self.resume_window_s:
            detached_at, live = self._detached.popleft()
            # A session resumed since (or detached again later) is not this entry's to end.
            if live.detached_at == detached_at:
                self._remove(live)

    def _remove(self, live: LiveSession) -> None:
        core = live.core
        if self.sessions.get(core.session_id) is live:
            del self.sessions[core.session_id]
        self._discard(self._by_user, core.user_id, live)
        self._discard(self._by_device, core.device_id, live)
        self._discard(self._by_token, live.token_hash, live)

    @staticmethod
    def _discard(index: defaultdict[Any, set[LiveSession]], key: Any, live: LiveSession) -> None:
        members = index.get(key)
        if members is not None:
            members.discard(live)
            if not members:
                del index[key]

    def connected_count(self) -> int:
        """Sessions with an attached connection."""
        return sum(1 for s in self.sessions.values() if s.outbox is not None)
