"""The gateway hub: this process's live sessions, and delivery of bus events to them.

Delivery never blocks and never logs per event: each attached connection has a bounded
outbox; a connection too slow to drain it is cut (its session stays resumable, and RESUME
replays what it missed from the session's buffer).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import trio

from ..bus import Event, LocalBus
from .session import GatewaySession

__all__ = ["GatewayHub", "LiveSession"]

#: Frames queued for one connection before it counts as too slow.
OUTBOX_FRAMES = 4096


@dataclass(eq=False)
class LiveSession:
    """A session and the connection currently attached to it (if any)."""

    core: GatewaySession
    outbox: trio.MemorySendChannel[bytes] | None = None
    detached_at: float | None = None
    #: Dispatches held until READY has been sent (they follow it, in order).
    held: list[tuple[str, bytes]] | None = field(default_factory=list)
    on_kick: Callable[[], None] | None = None

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

    def kick(self) -> None:
        """Cut the attached connection; the session stays resumable."""
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        if self.on_kick is not None:
            self.on_kick()


class GatewayHub:
    """Sessions of this process by id, user and device; presence in memory only."""

    def __init__(self, bus: LocalBus, resume_window_s: float) -> None:
        self.resume_window_s = resume_window_s
        self.sessions: dict[str, LiveSession] = {}
        self._by_user: defaultdict[str, set[LiveSession]] = defaultdict(set)
        self._by_device: defaultdict[str, set[LiveSession]] = defaultdict(set)
        #: user id -> status for users with an attached connection (never stored).
        self.presence: dict[str, str] = {}
        #: Detached sessions in detach order, so expiry never scans every session.
        self._detached: deque[tuple[float, LiveSession]] = deque()
        self._unsubscribe = bus.subscribe(self.deliver)

    def deliver(self, event: Event) -> None:
        """Dispatch ``event`` to the local sessions in its audience."""
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

    def create(self, core: GatewaySession) -> LiveSession:
        """Register a new session; dispatches are held until :meth:`LiveSession.release`."""
        live = LiveSession(core)
        self.sessions[core.session_id] = live
        self._by_user[core.user_id].add(live)
        self._by_device[core.device_id].add(live)
        return live

    def attach(
        self, live: LiveSession, outbox: trio.MemorySendChannel[bytes], on_kick: Callable[[], None]
    ) -> None:
        """Route the session's dispatches to a connection's outbox."""
        if live.outbox is not None:
            live.kick()
        live.outbox, live.on_kick, live.detached_at = outbox, on_kick, None

    def detach(self, live: LiveSession, now: float) -> None:
        """The connection is gone; keep the session resumable for the window."""
        live.outbox, live.on_kick = None, None
        live.detached_at = now
        self._detached.append((now, live))

    def online(self, user_id: str) -> bool:
        """True while the user has at least one attached connection here."""
        return any(s.outbox is not None for s in self._by_user.get(user_id, ()))

    def expire(self, now: float) -> None:
        """Forget detached sessions older than the resume window."""
        while self._detached and now - self._detached[0][0] > self.resume_window_s:
            detached_at, live = self._detached.popleft()
            # A session resumed since (or detached again later) is not this entry's to end.
            if live.detached_at == detached_at:
                self._remove(live)

    def drop_device(self, device_id: str) -> None:
        """A device was removed: end its sessions for good (no resume)."""
        for live in list(self._by_device.get(device_id, ())):
            live.kick()
            self._remove(live)

    def drop_user(self, user_id: str) -> None:
        """An account was deleted: end all of its sessions."""
        for live in list(self._by_user.get(user_id, ())):
            live.kick()
            self._remove(live)
        self.presence.pop(user_id, None)

    def _remove(self, live: LiveSession) -> None:
        core = live.core
        self.sessions.pop(core.session_id, None)
        for index, key in ((self._by_user, core.user_id), (self._by_device, core.device_id)):
            members = index.get(key)
            if members is not None:
                members.discard(live)
                if not members:
                    del index[key]

    def connected_count(self) -> int:
        """Sessions with an attached connection."""
        return sum(1 for s in self.sessions.values() if s.outbox is not None)
