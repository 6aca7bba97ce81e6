"""Quotas on what the relay holds for a device: no sender can fill a victim's disk or queue.

A device's queue may hold at most ``queue_max_envelopes`` envelopes and ``queue_max_bytes``
of ciphertext; of that, one sender (a user, whichever of their devices sent) may hold at
most ``sender_queue_max_envelopes`` and ``sender_queue_max_bytes``, so one sender cannot
take the whole queue and lock everyone else out. The counts are read from the store inside
the write that would queue more (writes are serialised), so they hold exactly; going over
refuses the whole send with :class:`~control.errors.QueueFull` (409 ``queue_full``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .config import ControlConfig
from .errors import QueueFull
from .store import schema as t

__all__ = ["EnvelopeQuota", "check_envelope_quota"]


@dataclass(frozen=True)
class EnvelopeQuota:
    """The limits one device's queue is held to."""

    device_envelopes: int
    device_bytes: int
    sender_envelopes: int
    sender_bytes: int

    @classmethod
    def from_config(cls, config: ControlConfig) -> EnvelopeQuota:
        """The quota ``config`` sets."""
        return cls(
            config.queue_max_envelopes,
            config.queue_max_bytes,
            config.sender_queue_max_envelopes,
            config.sender_queue_max_bytes,
        )


def check_envelope_quota(
    conn: Connection, sender_user: str, rows: Iterable[dict[str, Any]], quota: EnvelopeQuota
) -> None:
    """Refuse ``rows`` (envelopes about to be queued by ``sender_user``) if any target
    device's queue, or the sender's share of it, would go over ``quota``. One statement."""
    # Per target device: [envelopes, bytes] arriving now.
    incoming: dict[str, list[int]] = {}
    for row in rows:
        counts = incoming.setdefault(row["recipient_device_id"], [0, 0])
        counts[0] += 1
        counts[1] += len(row["ciphertext"])
    if not incoming:
        return
    env = t.envelopes
    size = sa.func.coalesce(sa.func.length(env.c.ciphertext), 0)
    mine = env.c.sender_user_id == sender_user
    held: dict[str, tuple[int, int, int, int]] = {
        device_id: (int(envelopes), int(nbytes), int(own), int(own_bytes))
        for device_id, envelopes, nbytes, own, own_bytes in conn.execute(
            sa.select(
                env.c.recipient_device_id,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(size), 0),
                sa.func.coalesce(sa.func.sum(sa.case((mine, 1), else_=0)), 0),
                sa.func.coalesce(sa.func.sum(sa.case((mine, size), else_=0)), 0),
            )
            .where(env.c.recipient_device_id.in_(sorted(incoming)))
            .group_by(env.c.recipient_device_id)
        )
    }
    for device_id, (count, nbytes) in sorted(incoming.items()):
        envelopes, total_bytes, own, own_bytes = held.get(device_id, (0, 0, 0, 0))
        totals = {
            "device_envelopes": envelopes + count,
            "device_bytes": total_bytes + nbytes,
            "sender_envelopes": own + count,
            "sender_bytes": own_bytes + nbytes,
        }
        for limit, total in totals.items():
            if total > getattr(quota, limit):
                raise QueueFull(
                    "the recipient device's queue is full"
                    if limit.startswith("device")
                    else "you have queued as much as one sender may for this device",
                    device_id=device_id,
                    limit=limit,
                )
