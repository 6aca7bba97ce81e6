"""Notices: what the user must be told outside the message flow.

A changed identity key, a message that failed authentication, a channel message that
cannot be read or whose author labels are not the owner of its key (``forged_author``), a
sender key from someone who cannot read its channel (``sender_key_refused``). They are
kept in the local store (the newest 200) until shown, so a notice raised by ``tail`` in
one process is shown by the next command in another.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from client.store import Store

__all__ = ["Notice", "Notices"]

#: Notices kept until shown; older ones are dropped.
MAX_NOTICES = 200


@dataclass(frozen=True)
class Notice:
    """Something the user must be told: a changed identity, a rejected message, ..."""

    kind: str
    text: str
    ts: float = field(default_factory=time.time)


class Notices:
    """The notices not yet shown, kept in the profile's store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def add(self, kind: str, text: str) -> None:
        """Keep a notice until :meth:`take` shows it."""
        notice = Notice(kind, text)
        raw = self._store.get("notices", "all", [])
        raw.append({"kind": notice.kind, "text": notice.text, "ts": notice.ts})
        self._store.put("notices", "all", raw[-MAX_NOTICES:])

    def take(self) -> list[Notice]:
        """Notices not yet shown (and forget them)."""
        raw = self._store.get("notices", "all", [])
        self._store.put("notices", "all", [])
        return [Notice(n["kind"], n["text"], n["ts"]) for n in raw]
