"""Receive-side bandwidth estimation: the delay-based half of Google Congestion Control.

draft-ietf-rmcat-gcc-02 §5, in the shape of WebRTC's ``RemoteBitrateEstimatorAbsSendTime``
(``InterArrival``, ``TrendlineEstimator``, ``AimdRateControl``): packets are grouped by
their abs-send-time into 5 ms bursts (§5.2); the variation of the inter-group delay feeds a
trendline filter, WebRTC's successor to the draft's Kalman filter (§5.3); an adaptive
threshold turns the trend into over-use, under-use or normal (§5.4); and an AIMD rate
controller (§5.5) turns that into the rate the publisher is told in REMB — cut to 0.85 of
the incoming bitrate on over-use, grown by 8 % a second (or additively near the last
congestion point) otherwise, and never raised past 1.5 × the incoming bitrate.

The estimator is sans-I/O and fed by the forwarding hot path, so :meth:`on_packet` does a
handful of attribute updates per packet and the filter work happens once per group.
"""

from __future__ import annotations

import math
from collections import deque
from enum import Enum

__all__ = [
    "MAX_INCOMING_BITRATE",
    "MIN_BITRATE",
    "BandwidthUsage",
    "RateControlState",
    "ReceiveSideEstimator",
]

#: The default ceiling of what a publisher is told (bit/s): per transport, and the REMB itself
#: when the publisher did not negotiate abs-send-time (no estimate).
MAX_INCOMING_BITRATE = 3_000_000
#: No estimate goes below this (bit/s): enough for Opus and a thumbnail video layer.
MIN_BITRATE = 30_000

# abs-send-time is 6.18 fixed-point seconds in 24 bits: it wraps every 64 s.
_AST_MASK = 0xFFFFFF
_AST_HALF = 0x800000
_AST_PER_SECOND = 1 << 18
# §5.2: packets sent within 5 ms of a group's first belong to that group.
_BURST_TICKS = int(0.005 * _AST_PER_SECOND)
_BURST_TIME = 0.005
# InterArrival: a send/arrival mismatch this large means a clock jump or a restarted
# sender, not congestion; start over rather than feed the filter nonsense.
_RESET_OFFSET = 3.0
_MAX_REORDERED = 3

# TrendlineEstimator (WebRTC defaults): window of groups, smoothing, gain on the slope.
_TREND_WINDOW = 20
_SMOOTHING = 0.9
_THRESHOLD_GAIN = 4.0
_MAX_DELTAS = 60
# §5.4 adaptive threshold (ms): gains up/down, bounds, and how long over-use must last.
_K_UP = 0.0087
_K_DOWN = 0.039
_THRESHOLD_MIN = 6.0
_THRESHOLD_MAX = 600.0
_THRESHOLD_INITIAL = 12.5
_MAX_ADAPT_STEP = 0.1
_OVERUSE_TIME = 0.01

# §5.5 rate control.
_BETA = 0.85
_INCREASE_PER_SECOND = 1.08
_RESPONSE_TIME = 0.3  # RTT + 100 ms, with the RTT unknown here taken as 200 ms
_MIN_ADDITIVE = 4000.0
_THROUGHPUT_HEADROOM = 1.5
_THROUGHPUT_SLACK = 10_000.0
# While over-use lasts, cut again only this often (WebRTC: once an RTT, at most 200 ms)
# unless the incoming rate fell below half the estimate: every group would otherwise cut
# again before the publisher has reacted to the last cut, and the estimate spiral down.
_REDUCE_INTERVAL = 0.2
# Incoming bitrate window (§5.5 "measured over a T seconds window", 0.5 ≤ T ≤ 1).
_RATE_WINDOW = 0.5
# Until over-use says otherwise, the first estimate waits for this much measured traffic,
# as WebRTC does: a publisher still ramping up is not told to stay where it is.
_INITIALIZATION_TIME = 5.0


class BandwidthUsage(Enum):
    """The over-use detector's output (§5.4)."""

    NORMAL = "normal"
    OVERUSING = "overusing"
    UNDERUSING = "underusing"


class RateControlState(Enum):
    """The AIMD rate controller's state (§5.5)."""

    HOLD = "hold"
    INCREASE = "increase"
    DECREASE = "decrease"


class ReceiveSideEstimator:
    """A publisher's available bandwidth, estimated from when its packets arrive.

    Feed every arriving packet that carries abs-send-time to :meth:`on_packet`; ask
    :meth:`estimate` when building a REMB. Until there is an estimate — no traffic yet, or
    less than :data:`_INITIALIZATION_TIME` of it without over-use — the estimate is the
    configured maximum, the ceiling the SFU advertised before it estimated anything.
    """

    __slots__ = (
        "_accumulated",
        "_arrivals",
        "_capacity",
        "_capacity_var",
        "_first_arrival",
        "_first_rate_time",
        "_group_arrival",
        "_group_bytes",
        "_group_first_send",
        "_group_packets",
        "_group_send",
        "_history",
        "_last_change",
        "_last_decrease",
        "_last_sent",
        "_num_deltas",
        "_overuse_count",
        "_overuse_time",
        "_prev_arrival",
        "_prev_send",
        "_prev_trend",
        "_rate",
        "_reordered",
        "_send_ext",
        "_smoothed",
        "_state",
        "_threshold",
        "_threshold_time",
        "_window_bytes",
        "_window_packets",
        "initialized",
        "max_bitrate",
        "min_bitrate",
        "usage",
    )

    def __init__(self, max_bitrate: int, min_bitrate: int = MIN_BITRATE) -> None:
        if not 0 < min_bitrate <= max_bitrate:
            raise ValueError("need 0 < min_bitrate <= max_bitrate")
        self.max_bitrate = max_bitrate
        self.min_bitrate = min_bitrate
        self.usage = BandwidthUsage.NORMAL
        self.initialized = False
        self._rate = float(max_bitrate)
        self._state = RateControlState.HOLD
        self._last_change = -1.0
        self._last_decrease = -math.inf
        self._capacity = -1.0  # link capacity estimate (bit/s) from past over-use; <0: none
        self._capacity_var = 0.4
        # The packet stream: unwrapped send time, the open group, the previous group.
        self._last_sent = -1
        self._send_ext = 0
        self._reordered = 0
        self._group_first_send = -1
        self._group_send = 0
        self._group_arrival = 0.0
        self._group_bytes = 0
        self._group_packets = 0
        self._prev_send = -1
        self._prev_arrival = 0.0
        # Trendline filter.
        self._first_arrival = -1.0
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._num_deltas = 0
        self._history: deque[tuple[float, float]] = deque(maxlen=_TREND_WINDOW)
        self._prev_trend = 0.0
        # Over-use detector.
        self._threshold = _THRESHOLD_INITIAL
        self._threshold_time = -1.0
        self._overuse_time = 0.0
        self._overuse_count = 0
        # Incoming bitrate: closed groups (arrival, bytes, packets) within the window.
        self._arrivals: deque[tuple[float, int, int]] = deque()
        self._window_bytes = 0
        self._window_packets = 0
        self._first_rate_time = -1.0

    # -- per packet -------------------------------------------------------------------

    def on_packet(self, arrival: float, send_time: int, size: int) -> None:
        """Account one packet: ``arrival`` in seconds (monotonic), ``send_time`` the 24-bit
        abs-send-time from its header extension, ``size`` in bytes."""
        delta = (send_time - self._last_sent) & _AST_MASK
        if self._last_sent < 0:
            delta = 0
        elif delta >= _AST_HALF:
            # Sent before the newest packet seen: reordered. Its bytes still arrived.
            self._group_bytes += size
            self._group_packets += 1
            self._reordered += 1
            if self._reordered > _MAX_REORDERED:
                self._reset(send_time)
            return
        self._reordered = 0
        self._last_sent = send_time
        sent = self._send_ext + delta
        self._send_ext = sent
        if self._group_first_send < 0:
            self._group_first_send = sent
        elif sent - self._group_first_send > _BURST_TICKS and not self._in_burst(arrival, sent):
            self._close_group()
            self._group_first_send = sent
        self._group_send = sent
        self._group_arrival = arrival
        self._group_bytes += size
        self._group_packets += 1

    def _in_burst(self, arrival: float, sent: int) -> bool:
        """§5.2: a packet arriving within the burst time whose delay variation against the
        group is negative was queued behind it; it joins the group."""
        arrival_delta = arrival - self._group_arrival
        if arrival_delta > _BURST_TIME:
            return False
        return arrival_delta - (sent - self._group_send) / _AST_PER_SECOND < 0

    def _reset(self, send_time: int) -> None:
        """Forget the packet stream (not the rate): the sender's clock jumped."""
        self._last_sent = send_time
        self._reordered = 0
        self._group_first_send = -1
        self._group_bytes = 0
        self._group_packets = 0
        self._prev_send = -1
        self._first_arrival = -1.0
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._num_deltas = 0
        self._history.clear()
        self._prev_trend = 0.0

    # -- per group --------------------------------------------------------------------

    def _close_group(self) -> None:
        arrival = self._group_arrival
        self._account(arrival, self._group_bytes, self._group_packets)
        self._group_bytes = 0
        self._group_packets = 0
        if self._prev_send >= 0:
            send_delta = (self._group_send - self._prev_send) / _AST_PER_SECOND
            arrival_delta = arrival - self._prev_arrival
            if abs(arrival_delta - send_delta) > _RESET_OFFSET or arrival_delta < 0:
                self._reset(self._last_sent)
                return
            self._update_trend(arrival_delta - send_delta, arrival, send_delta)
            self._update_rate(arrival)
        self._prev_send = self._group_send
        self._prev_arrival = arrival

    def _account(self, arrival: float, size: int, packets: int) -> None:
        """Add a closed group to the incoming-bitrate window."""
        window = self._arrivals
        window.append((arrival, size, packets))
        self._window_bytes += size
        self._window_packets += packets
        while window and arrival - window[0][0] > _RATE_WINDOW:
            _, old_size, old_packets = window.popleft()
            self._window_bytes -= old_size
            self._window_packets -= old_packets
        if self._first_rate_time < 0:
            self._first_rate_time = arrival

    def incoming_bitrate(self) -> float | None:
        """Bits per second over the last window, or ``None`` before a window's worth."""
        window = self._arrivals
        if not window or window[-1][0] - self._first_rate_time < _RATE_WINDOW:
            return None
        first_arrival, first_bytes, _ = window[0]
        span = window[-1][0] - first_arrival
        if span <= 0:
            return None
        # The oldest group's bytes arrived before the span began.
        return 8.0 * (self._window_bytes - first_bytes) / span

    def _update_trend(self, delay_variation: float, arrival: float, send_delta: float) -> None:
        """Trendline filter (WebRTC's ``TrendlineEstimator``) and the §5.4 detector."""
        if self._first_arrival < 0:
            self._first_arrival = arrival
        self._num_deltas = min(self._num_deltas + 1, _MAX_DELTAS)
        self._accumulated += delay_variation * 1000.0
        self._smoothed = _SMOOTHING * self._smoothed + (1 - _SMOOTHING) * self._accumulated
        history = self._history
        history.append(((arrival - self._first_arrival) * 1000.0, self._smoothed))
        if len(history) < _TREND_WINDOW:
            return
        # Least-squares slope in one pass; x taken from the window's start so that the
        # sums stay small however long the stream has run.
        start = history[0][0]
        sum_x = sum_y = sum_xx = sum_xy = 0.0
        for x, y in history:
            x -= start
            sum_x += x
            sum_y += y
            sum_xx += x * x
            sum_xy += x * y
        denominator = _TREND_WINDOW * sum_xx - sum_x * sum_x
        if denominator > 0:
            slope = (_TREND_WINDOW * sum_xy - sum_x * sum_y) / denominator
        else:
            slope = self._prev_trend
        self._detect(slope, send_delta, arrival)
        self._prev_trend = slope

    def _detect(self, slope: float, send_delta: float, now: float) -> None:
        trend = self._num_deltas * slope * _THRESHOLD_GAIN
        threshold = self._threshold
        if trend > threshold:
            # Over-use only when it lasts and is not already receding.
            self._overuse_time += send_delta if self._overuse_count else send_delta / 2
            self._overuse_count += 1
            if (
                self._overuse_time > _OVERUSE_TIME
                and self._overuse_count > 1
                and slope >= self._prev_trend
            ):
                self._overuse_time = 0.0
                self._overuse_count = 0
                self.usage = BandwidthUsage.OVERUSING
        elif trend < -threshold:
            self._overuse_time = 0.0
            self._overuse_count = 0
            self.usage = BandwidthUsage.UNDERUSING
        else:
            self._overuse_time = 0.0
            self._overuse_count = 0
            self.usage = BandwidthUsage.NORMAL
        # §5.4: the threshold follows the trend, slowly up and faster down, so that a
        # competing TCP flow's queue does not starve us; outliers do not move it.
        magnitude = abs(trend)
        if self._threshold_time < 0:
            self._threshold_time = now
        if magnitude <= threshold + 15.0:
            gain = _K_DOWN if magnitude < threshold else _K_UP
            step = min(now - self._threshold_time, _MAX_ADAPT_STEP) * 1000.0
            threshold += gain * (magnitude - threshold) * step
            self._threshold = min(max(threshold, _THRESHOLD_MIN), _THRESHOLD_MAX)
        self._threshold_time = now

    def _update_rate(self, now: float) -> None:
        """§5.5 AIMD: a state machine driven by the detector, moving the estimate."""
        incoming = self.incoming_bitrate()
        usage = self.usage
        if not self.initialized:
            if incoming is None:
                return
            if usage is not BandwidthUsage.OVERUSING:
                if now - self._first_rate_time >= _INITIALIZATION_TIME:
                    self._rate = incoming
                    self.initialized = True
                    self._last_change = now
                return
        if usage is BandwidthUsage.OVERUSING:
            if (
                incoming is not None
                and now - self._last_decrease < _REDUCE_INTERVAL
                and incoming >= 0.5 * self._rate
            ):
                return  # the last cut has not reached the publisher yet
            self._state = RateControlState.DECREASE
        elif usage is BandwidthUsage.UNDERUSING:
            self._state = RateControlState.HOLD
        elif self._state == RateControlState.HOLD:
            self._state = RateControlState.INCREASE
            self._last_change = now
        elif self._state == RateControlState.DECREASE:
            self._state = RateControlState.HOLD
        rate = self._rate
        if self._state == RateControlState.INCREASE and incoming is not None:
            if self._capacity >= 0 and incoming > self._capacity + 3 * self._capacity_std():
                self._capacity = -1.0  # past the old congestion point: search again
            elapsed = min(now - self._last_change, 1.0) if self._last_change >= 0 else 0.0
            if self._capacity >= 0:
                mean_size = self._window_bytes / max(self._window_packets, 1)
                additive = max(_MIN_ADDITIVE, 8.0 * mean_size / _RESPONSE_TIME)
                rate += additive * elapsed
            else:
                rate += max(rate * (_INCREASE_PER_SECOND**elapsed - 1.0), 1000.0 * elapsed)
            limit = _THROUGHPUT_HEADROOM * incoming + _THROUGHPUT_SLACK
            if rate > limit:
                rate = max(self._rate, limit)
            self._last_change = now
        elif self._state == RateControlState.DECREASE and incoming is not None:
            decreased = _BETA * incoming
            if decreased > self._rate and self._capacity >= 0:
                decreased = _BETA * self._capacity
            rate = min(decreased, self._rate)
            self._update_capacity(incoming)
            self.initialized = True
            self._state = RateControlState.HOLD
            self._last_change = now
            self._last_decrease = now
        self._rate = min(max(rate, float(self.min_bitrate)), float(self.max_bitrate))

    def _capacity_std(self) -> float:
        """Standard deviation of the link capacity in bit/s (the variance is kept in kbit/s,
        normalised by the mean, as WebRTC's bounds of 0.4 to 2.5 assume)."""
        return 1000.0 * math.sqrt(self._capacity_var * self._capacity / 1000.0)

    def _update_capacity(self, incoming: float) -> None:
        """Running mean and normalised variance of the incoming rate at over-use (§5.5)."""
        if self._capacity >= 0 and incoming < self._capacity - 3 * self._capacity_std():
            self._capacity = -1.0  # far below the old point: the path changed
        if self._capacity < 0:
            self._capacity = incoming
        else:
            self._capacity = 0.95 * self._capacity + 0.05 * incoming
        error = (self._capacity - incoming) / 1000.0
        variance = 0.95 * self._capacity_var + 0.05 * error * error / max(
            self._capacity / 1000.0, 1e-3
        )
        self._capacity_var = min(max(variance, 0.4), 2.5)

    # -- per REMB ---------------------------------------------------------------------

    def estimate(self) -> int:
        """The available bandwidth in bit/s, within ``[min_bitrate, max_bitrate]``."""
        if not self.initialized:
            return self.max_bitrate
        return int(self._rate)
