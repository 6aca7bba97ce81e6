"""Registry of the SFU nodes dialled in over the internal link, and the link handler."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hushroom import node_link

if TYPE_CHECKING:
    from .node_rpc import NodeLink

__all__ = ["NodeInfo", "NodeRegistry"]

log = logging.getLogger("control.nodes")

#: A node whose last health report is older than this is not counted as healthy.
HEALTH_STALE_S = 3 * node_link.HEALTH_INTERVAL_S


@dataclass
class NodeInfo:
    """What the control plane knows about one connected SFU node."""

    node_id: str
    announce_ip: str
    workers: list[dict[str, Any]]
    capacity: dict[str, Any]
    last_health: float = field(default_factory=time.monotonic)
    #: The request/reply link to the node, once it is registered.
    link: NodeLink | None = None
    #: The node's latest ``stats`` event: ``{workers: [{transports, cpu_percent, ...}]}``.
    stats: dict[str, Any] = field(default_factory=dict)

    def healthy(self, now: float) -> bool:
        """True when the node reported recently and all of its workers are alive."""
        return (
            now - self.last_health <= HEALTH_STALE_S
            and bool(self.workers)
            and all(w.get("alive") is True for w in self.workers)
        )


class NodeRegistry:
    """In-memory set of connected nodes; nodes re-register after a control restart."""

    def __init__(self) -> None:
        self._nodes: dict[str, NodeInfo] = {}

    def register(self, info: NodeInfo) -> None:
        """Add or replace a node (a reconnecting node replaces its stale entry)."""
        self._nodes[info.node_id] = info

    def unregister(self, node_id: str, info: NodeInfo) -> None:
        """Forget ``node_id`` if ``info`` is still the registered entry."""
        if self._nodes.get(node_id) is info:
            del self._nodes[node_id]

    def get(self, node_id: str) -> NodeInfo | None:
        """The registered node ``node_id``, if any."""
        return self._nodes.get(node_id)

    def healthy(self, now: float | None = None) -> list[NodeInfo]:
        """Nodes that are connected, linked and report healthy workers."""
        now = time.monotonic() if now is None else now
        return [n for n in self._nodes.values() if n.link is not None and n.healthy(now)]

    def healthy_count(self) -> int:
        """Number of nodes that are connected and report healthy workers."""
        now = time.monotonic()
        return sum(1 for n in self._nodes.values() if n.healthy(now))


def parse_register_untrusted(data: dict[str, Any]) -> NodeInfo:
    """Validate a node's ``register`` payload (apart from its proof)."""
    node_id, announce_ip = data.get("node_id"), data.get("announce_ip")
    workers, capacity = data.get("workers"), data.get("capacity", {})
    if not isinstance(node_id, str) or not 1 <= len(node_id) <= 64:
        raise node_link.LinkProtocolError("node_id must be a string of 1-64 characters")
    if not isinstance(announce_ip, str) or len(announce_ip) > 64:
        raise node_link.LinkProtocolError("announce_ip must be a string")
    if not isinstance(capacity, dict):
        raise node_link.LinkProtocolError("capacity must be a map")
    return NodeInfo(node_id, announce_ip, parse_workers_untrusted(workers), capacity)


def parse_workers_untrusted(workers: object) -> list[dict[str, Any]]:
    """Validate a list of worker descriptions ``{index, port, alive, ...}``."""
    if not isinstance(workers, list) or len(workers) > 1024:
        raise node_link.LinkProtocolError("workers must be a list of at most 1024 entries")
    for worker in workers:
        if not isinstance(worker, dict):
            raise node_link.LinkProtocolError("each worker must be a map")
        port = worker.get("port")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise node_link.LinkProtocolError("worker port must be 1-65535")
        for key in ("cpu_percent", "rss_bytes"):
            value = worker.get(key, 0)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise node_link.LinkProtocolError(f"worker {key} must be a number")
    return workers
