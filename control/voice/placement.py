"""Where a voice channel's router goes: the healthy SFU node with the least reported load.

Control picks the node; the node then puts the router on its least-loaded worker
(``router.create``, docs/sfu.md). A node's load is what it reports — transports per worker
from its ``stats`` event, CPU from its health reports — and, since reports lag by up to
five seconds, never less than the transports this process has placed on it since (two per
participant), so a burst of joins does not all land on the node that looked idle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["NodeLoad", "choose_node", "node_load"]

#: Transports one participant holds (send and receive).
TRANSPORTS_PER_PARTICIPANT = 2


@dataclass(frozen=True)
class NodeLoad:
    """One candidate node's load as placement weighs it."""

    node_id: str
    workers: int
    transports: int
    cpu_percent: float

    @property
    def key(self) -> tuple[float, float, str]:
        """Sort key: transports per worker, then mean CPU per worker, then id (stable)."""
        per_worker = max(self.workers, 1)
        return (self.transports / per_worker, self.cpu_percent / per_worker, self.node_id)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def node_load(
    node_id: str,
    health_workers: list[dict[str, Any]],
    stats: dict[str, Any],
    participants_placed: int,
) -> NodeLoad:
    """Combine a node's health report, its latest stats and this process's placements."""
    reported = stats.get("workers")
    transports = 0.0
    if isinstance(reported, list):
        transports = sum(_number(w.get("transports")) for w in reported if isinstance(w, dict))
    placed = participants_placed * TRANSPORTS_PER_PARTICIPANT
    cpu = sum(_number(w.get("cpu_percent")) for w in health_workers)
    return NodeLoad(node_id, len(health_workers), int(max(transports, placed)), cpu)


def choose_node(
    candidates: Iterable[NodeLoad], exclude: frozenset[str] = frozenset()
) -> str | None:
    """The least-loaded candidate not in ``exclude``, or None when there is none."""
    eligible = [c for c in candidates if c.node_id not in exclude]
    if not eligible:
        return None
    return min(eligible, key=lambda c: c.key).node_id
