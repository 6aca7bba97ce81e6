"""What the load tester measures, sans I/O: the clear content of a synthetic media frame,
per-receiver statistics inside a measurement window, and the summary the report holds.

A synthetic frame is an Opus-sized frame whose bytes after the TOC byte (the byte SFrame
leaves in clear for Opus, ``e2ee.media.clear_prefix_length``) start with
:data:`STAMP`: the sending participant's number, its sequence number and its send time
(``time.monotonic_ns()`` of the harness process). The stamp is inside the SFrame
ciphertext, so the SFU cannot read or alter it, and a receiver learns it only by
decrypting — every figure below is about frames that were decrypted.

The measurement window is ``[start, end)`` in send time: a frame counts when it was *sent*
inside the window, so every receiver expects exactly the frames that the senders it consumes
(:attr:`ReceiverStats.expects`) sent inside it, and a frame sent inside and arriving after
the window closed (plus a drain) is lost.
"""

from __future__ import annotations

import math
import struct
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "COMFORT_BYTES",
    "FRAME_BYTES",
    "STAMP",
    "TOC",
    "ReceiverStats",
    "Window",
    "bump",
    "frame_bytes",
    "loss_pct",
    "percentiles",
    "read_stamp_untrusted",
]

#: ``!IIQ``: participant number, sequence number, send time (monotonic ns).
STAMP = struct.Struct("!IIQ")
#: Opus TOC byte: configuration 15 (hybrid fullband, 20 ms), mono, one frame (RFC 6716 §3.1).
TOC = 0x78
#: An Opus frame of 20 ms at 32 kbit/s (a typical voice bitrate) is 80 bytes.
FRAME_BYTES = 80
#: A DTX comfort-noise update: a TOC byte and the stamp (Opus DTX sends one every 400 ms).
COMFORT_BYTES = 1 + STAMP.size
_PAD = bytes(FRAME_BYTES)


def frame_bytes(sender: int, seq: int, sent_ns: int, *, comfort: bool = False) -> bytes:
    """The clear frame: TOC byte, stamp, and padding up to the frame size."""
    head = bytes([TOC]) + STAMP.pack(sender, seq, sent_ns)
    return head if comfort else head + _PAD[len(head) :]


def read_stamp_untrusted(frame: bytes) -> tuple[int, int, int]:
    """``(sender, seq, sent_ns)`` of a decrypted frame; ``ValueError`` if it is too short."""
    if len(frame) < COMFORT_BYTES:
        raise ValueError("frame shorter than its stamp")
    sender, seq, sent_ns = STAMP.unpack_from(frame, 1)
    return sender, seq, sent_ns


@dataclass
class Window:
    """The measurement window in send time (ns); closed until :meth:`open` is called."""

    start_ns: float = math.inf
    end_ns: float = math.inf

    def open(self, start_ns: int, end_ns: int) -> None:
        """Measure frames sent in ``[start_ns, end_ns)``."""
        self.start_ns, self.end_ns = start_ns, end_ns

    def holds(self, sent_ns: int) -> bool:
        """Whether a frame sent at ``sent_ns`` counts."""
        return self.start_ns <= sent_ns < self.end_ns

    def second(self, sent_ns: int) -> int:
        """Which second of the window a frame sent at ``sent_ns`` (inside it) belongs to."""
        return int((sent_ns - self.start_ns) // 1_000_000_000)

    @property
    def seconds(self) -> float:
        """Length of the window."""
        return (self.end_ns - self.start_ns) / 1e9


@dataclass
class _Stream:
    """What one receiver got from one sender inside the window."""

    seqs: set[int] = field(default_factory=set)
    last_sent: int = 0
    last_arrived: int = 0
    jitter_ns: float = 0.0


class ReceiverStats:
    """One participant's view of the window: unique frames per sender, duplicates, one-way
    latency of every unique frame, and RFC 3550 §6.4.1 interarrival jitter per sender
    (computed from send and arrival times, both on the harness's clock)."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.streams: dict[int, _Stream] = {}
        self.latencies_ms = array("d")
        #: The window second each latency's frame was sent in (parallel to latencies_ms).
        self.latency_seconds = array("I")
        #: Unique frames received, by the window second they were sent in.
        self.per_second: list[int] = []
        self.duplicates = 0
        #: Frames from a sender whose key had not reached this receiver yet (media outran
        #: its key): dropped as a client drops them, never an error; inside the window
        #: they show as loss.
        self.before_key = 0
        self.first_media_ns: int | None = None
        self.frames = 0
        #: Senders heard from at all (inside the window or not).
        self.heard: set[int] = set()
        #: The senders this receiver consumes, fixed when the window opens: frames from
        #: others inside the window are counted in :attr:`unexpected`, not as received.
        self.expects: frozenset[int] | None = None
        self.unexpected = 0

    def record(self, sender: int, seq: int, sent_ns: int, arrived_ns: int) -> None:
        """One decrypted frame."""
        self.frames += 1
        self.heard.add(sender)
        if self.first_media_ns is None:
            self.first_media_ns = arrived_ns
        if not self.window.holds(sent_ns):
            return
        if self.expects is not None and sender not in self.expects:
            self.unexpected += 1
            return
        stream = self.streams.get(sender)
        if stream is None:
            stream = self.streams[sender] = _Stream()
        if seq in stream.seqs:
            self.duplicates += 1
            return
        stream.seqs.add(seq)
        self.latencies_ms.append((arrived_ns - sent_ns) / 1e6)
        second = self.window.second(sent_ns)
        self.latency_seconds.append(second)
        bump(self.per_second, second)
        if stream.last_arrived:
            transit_change = (arrived_ns - stream.last_arrived) - (sent_ns - stream.last_sent)
            stream.jitter_ns += (abs(transit_change) - stream.jitter_ns) / 16
        stream.last_sent, stream.last_arrived = sent_ns, arrived_ns

    def duplicate(self) -> None:
        """A frame the SFrame replay window refused (the same frame delivered again)."""
        self.duplicates += 1

    @property
    def received(self) -> int:
        """Unique frames sent inside the window that arrived."""
        return sum(len(s.seqs) for s in self.streams.values())

    def jitter_ms(self) -> float:
        """Mean over senders of the RFC 3550 jitter estimate at the end of the window."""
        if not self.streams:
            return 0.0
        return sum(s.jitter_ns for s in self.streams.values()) / len(self.streams) / 1e6

    def summary(self, expected: int) -> dict[str, Any]:
        """This receiver's row of the report."""
        received = self.received
        return {
            "expected": expected,
            "received": received,
            "loss_pct": loss_pct(expected, received),
            "duplicates": self.duplicates,
            "before_key": self.before_key,
            "latency_ms": percentiles(self.latencies_ms),
            "jitter_ms": round(self.jitter_ms(), 3),
            "decrypted": self.frames,
        }


def bump(counts: list[int], index: int) -> None:
    """``counts[index] += 1``, growing the list as needed."""
    if index >= len(counts):
        counts.extend([0] * (index + 1 - len(counts)))
    counts[index] += 1


def loss_pct(expected: int, received: int) -> float:
    """Percentage of ``expected`` frames that did not arrive (rounded)."""
    return round(100.0 * max(0, expected - received) / expected, 4) if expected else 0.0


def percentiles(values: Any) -> dict[str, float | None]:
    """p50, p95, p99 and max of ``values`` (ms, rounded to µs); ``None`` when empty."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(data, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(data.max()), 3),
    }
