"""Session-token lookups with an in-process cache that revocation empties synchronously.

Every authenticated request resolves its bearer token to a session. Reading the ``sessions``
table for each one cost a database read and two thread hops per request (the profile of
the envelope bench put ``authenticate`` at 16 % of the event loop's time, before the
thread's own work). :class:`SessionCache` keeps ``SHA-256(token) -> (user, device, expiry)``
for recently used tokens, in memory only.

Revocation stays immediate because every revocation path (sign-out, device removal, account
deletion) publishes a :data:`SESSIONS_REVOKED` event on the bus after its commit and before
its 2xx, and the cache is a bus subscriber: :class:`~control.bus.LocalBus` calls it
synchronously inside ``publish``, so no request of this process can use the token once the
revoking call has returned. Expiry is checked against the cached expiry on every use.
The gateway hub subscribes to the same event and ends the gateway sessions of the revoked
token, device or user (control/gateway/hub.py), so an open WebSocket does not outlive its
token either.

A lookup that raced a revocation must not re-insert what was just revoked: the cache
counts revocations (``generation``), a lookup notes the count before its database read,
and its result is cached only if no revocation happened meanwhile.

Several control processes: the same event reaches every process's cache through the bus.
A cross-process bus must therefore deliver ``SESSIONS_REVOKED`` to every process before
``publish`` returns (for Redis: publish, then wait for each instance's acknowledgement), or
the deployment runs with ``--session-cache 0``, which turns the cache off.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import sqlalchemy as sa

from .bus import Event, InternalEvent
from .ids import now
from .store import Database
from .store import schema as t

__all__ = ["SESSIONS_REVOKED", "CachedSession", "SessionCache", "revoked"]

#: Bus event type of a revocation; no dispatch, but every token cache and every gateway hub
#: acts on it (the hub closes the named sessions' connections with 4020).
SESSIONS_REVOKED = InternalEvent.SESSIONS_REVOKED


@dataclass(frozen=True)
class CachedSession:
    """What a token resolves to: its session's user, device and expiry (epoch seconds)."""

    user_id: str
    device_id: str
    expires_at: int


def revoked(
    *, token_hash: bytes | None = None, device_id: str | None = None, user_id: str | None = None
) -> Event:
    """The bus event announcing that sessions of a token, a device or a user are gone."""
    data = {"token_hash": token_hash, "device_id": device_id, "user_id": user_id}
    return Event(SESSIONS_REVOKED, data)


class SessionCache:
    """Token hash → session for at most ``max_entries`` tokens (least recently used go first).

    ``max_entries == 0`` disables caching: every lookup reads the store.
    """

    def __init__(self, db: Database, max_entries: int) -> None:
        self._db = db
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, CachedSession] = OrderedDict()
        #: Revocations seen so far; a lookup racing one of them is not cached.
        self.generation = 0

    def __contains__(self, token_hash: object) -> bool:
        return token_hash in self._entries

    async def lookup(self, token_hash: bytes) -> CachedSession | None:
        """The live session of ``token_hash``, or None if unknown, expired or revoked."""
        at = now()
        hit = self._entries.get(token_hash)
        if hit is not None:
            if hit.expires_at > at:
                self._entries.move_to_end(token_hash)
                return hit
            del self._entries[token_hash]
        generation = self.generation
        s = t.sessions
        stmt = sa.select(s.c.user_id, s.c.device_id, s.c.expires_at).where(
            s.c.token_hash == token_hash, s.c.expires_at > at
        )
        row = await self._db.read(lambda conn: conn.execute(stmt).first())
        if row is None:
            return None
        session = CachedSession(row.user_id, row.device_id, int(row.expires_at))
        if self.max_entries and generation == self.generation:
            self._entries[token_hash] = session
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return session

    def on_event(self, event: Event) -> None:
        """Bus subscriber: forget every cached session a revocation names."""
        if event.type != SESSIONS_REVOKED:
            return
        self.generation += 1
        token_hash = event.data.get("token_hash")
        device_id = event.data.get("device_id")
        user_id = event.data.get("user_id")
        if token_hash is not None:
            self._entries.pop(token_hash, None)
        if device_id is not None or user_id is not None:
            # Device removal and account deletion are rare; a scan keeps the cache one dict.
            gone = [
                key
                for key, s in self._entries.items()
                if s.device_id == device_id or s.user_id == user_id
            ]
            for key in gone:
                del self._entries[key]
