"""The garbage-collector policy of a serving process (and of the benchmark measuring it)."""

from __future__ import annotations

import gc

__all__ = ["GC_GEN0_THRESHOLD", "tune_gc"]

#: Container allocations between young-generation collections (CPython's default is 700).
GC_GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """Keep the cyclic garbage collector from pausing the event loop for long.

    A full collection walks every tracked object: with 1,000 gateway connections that is
    about 380,000 objects and 250 ms here, during which no frame is sent. CPython starts one
    whenever a quarter of the long-lived objects are new since the last; with the default
    young threshold of 700, the frames and tasks in flight during one channel fan-out are
    old enough to count, so a full collection came every few messages (measured: every
    third fan-out to 1,000 members). Freezing what exists after start-up (modules, the
    schema, the app: never garbage) takes it out of every later walk, and a young threshold
    of 10,000 lets in-flight objects die by reference counting before they are promoted.
    Cycles are still collected, only less often; memory held by uncollected cycles stays
    bounded by the thresholds.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
