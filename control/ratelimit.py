"""Token-bucket rate limits keyed by session token hash or device, never by address."""

from __future__ import annotations

import time
from collections import OrderedDict

__all__ = ["RateLimiter"]


class RateLimiter:
    """Buckets of ``burst`` requests refilled at ``rate`` per second, one per key.

    Keys are opaque (a token hash, a device id, an endpoint name); the table is bounded and
    forgets the least recently used keys first, which only ever lets a client burst again.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()

    def acquire(self, key: object, cost: float = 1.0, now: float | None = None) -> float:
        """Take ``cost`` from ``key``'s bucket; return 0 on success, else seconds to wait."""
        now = time.monotonic() if now is None else now
        tokens, stamp = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
