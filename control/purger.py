"""The purger: enforces every retention rule of ``control.store.schema.RETENTION``.

One pass deletes expired challenges, sessions and invites, envelopes older than the
envelope TTL and channel messages older than their channel's retention. The trio task runs
a pass every ``purge_interval_s`` and logs only counts.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
import trio
from sqlalchemy.engine import Connection

from .ids import now
from .state import ControlState
from .store import schema as t

__all__ = ["purge_once", "run_purger"]

log = logging.getLogger("control.purger")


def purge_once(conn: Connection, at: int, envelope_ttl_s: int) -> dict[str, int]:
    """Delete everything past its retention at time ``at``; return counts per table."""
    counts: dict[str, int] = {}
    counts["challenges"] = conn.execute(
        sa.delete(t.challenges).where(t.challenges.c.expires_at <= at)
    ).rowcount
    counts["sessions"] = conn.execute(
        sa.delete(t.sessions).where(t.sessions.c.expires_at <= at)
    ).rowcount
    inv = t.invites
    counts["invites"] = conn.execute(
        sa.delete(inv).where(
            sa.or_(
                sa.and_(inv.c.expires_at.is_not(None), inv.c.expires_at <= at),
                sa.and_(inv.c.max_uses > 0, inv.c.uses >= inv.c.max_uses),
            )
        )
    ).rowcount
    counts["envelopes"] = conn.execute(
        sa.delete(t.envelopes).where(t.envelopes.c.created_at <= at - envelope_ttl_s)
    ).rowcount
    m, c = t.messages, t.channels
    expired = (
        sa.select(m.c.id)
        .join(c, c.c.id == m.c.channel_id)
        .where(m.c.created_at <= at - c.c.retention_days * 86400)
    )
    counts["messages"] = conn.execute(sa.delete(m).where(m.c.id.in_(expired))).rowcount
    return counts


async def run_purger(state: ControlState) -> None:
    """Run :func:`purge_once` forever at the configured interval (cancel to stop)."""
    while True:
        counts = await state.db.write(
            lambda conn: purge_once(conn, now(), state.config.envelope_ttl_s)
        )
        state.hub.expire(trio.current_time())
        if any(counts.values()):
            log.info("purged %s", ", ".join(f"{k}={v}" for k, v in counts.items() if v))
        await trio.sleep(state.config.purge_interval_s)
