"""Token-bucket rate limits keyed by session token hash, device or user, never by address.

Everything here is in memory, per process: a restart forgets it, and with several control
processes each enforces its own buckets (so a client spread over N processes gets up to N
times the allowance).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from .errors import RateLimited

__all__ = ["ClaimLimiter", "RateLimiter"]


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

    def tokens(self, key: object, now: float | None = None) -> float:
        """What ``key``'s bucket holds now (without taking anything)."""
        now = time.monotonic() if now is None else now
        tokens, stamp = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - stamp) * self.rate)

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


class ClaimLimiter:
    """How fast prekey bundles may be claimed, so nobody can drain anyone's one-time prekeys.

    Three buckets (Signal's answer to running out of one-time prekeys is a bundle with the
    signed prekey alone, so the last two never stop anyone from starting a session):

    - per claimer (user): claims; over it the claim is refused with ``429 rate_limited``;
    - per (claimer, target device): one-time prekeys taken; over it the bundle comes
      without one, so one account cannot drain a device however patiently it retries;
    - per target device: one-time prekeys taken by everyone; over it likewise, so many
      accounts together can take at most this rate and a device's keys last.

    Keys are user and device ids; a (claimer, device) pair is kept only as a keyed hash
    under a random per-process key, so the table does not list who contacts whom. Methods
    are thread-safe: :meth:`take_one_time_prekey` runs inside the store's write thread.
    """

    def __init__(
        self,
        claims_per_minute: float,
        claim_burst: int,
        pair_per_day: int,
        device_per_hour: int,
    ) -> None:
        self._claims = RateLimiter(claims_per_minute / 60, claim_burst)
        self._pairs = RateLimiter(pair_per_day / 86400, pair_per_day)
        self._devices = RateLimiter(device_per_hour / 3600, device_per_hour)
        self._pair_key = os.urandom(32)
        self._lock = threading.Lock()

    def admit(self, claimer: str) -> Callable[[str], bool]:
        """Count one claim by user ``claimer`` (:class:`RateLimited` over the limit); return
        the question the claim asks per device: may ``claimer`` take one of its one-time
        prekeys (:meth:`take_one_time_prekey`)?"""
        with self._lock:
            wait = self._claims.acquire(claimer)
        if wait:
            raise RateLimited("too many prekey claims", retry_after=round(wait, 3))
        return functools.partial(self.take_one_time_prekey, claimer)

    def take_one_time_prekey(self, claimer: str, device_id: str) -> bool:
        """Whether ``claimer`` may take one of ``device_id``'s one-time prekeys now (and if
        so, count it against both budgets)."""
        pair = hashlib.blake2b(
            f"{claimer}\x00{device_id}".encode(), key=self._pair_key, digest_size=16
        ).digest()
        with self._lock:
            now = time.monotonic()
            if self._pairs.tokens(pair, now) < 1 or self._devices.tokens(device_id, now) < 1:
                return False
            self._pairs.acquire(pair, now=now)
            self._devices.acquire(device_id, now=now)
            return True
