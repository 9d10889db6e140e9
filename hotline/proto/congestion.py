# hotline/proto/congestion.py — congestion control and pacing of one path. Sans-IO.
#
# Owns: how many bytes one path may have in flight (NewReno, RFC 9002 §7 and its
# Appendix B) and when the next packet may leave (a pacer, §7.7). Counts BYTES of
# whole packets as they go on the wire; knows nothing of messages or packet numbers —
# ``recovery.py`` decides which packets were acknowledged or lost and feeds them here.
#
# How it works:
#   * ``cwnd`` starts at the initial window (§7.2: 10 datagrams, 12,320 bytes for
#     1,232-byte datagrams). In slow start every acknowledged byte adds a byte (the
#     window doubles per round trip); from ``ssthresh`` on (congestion avoidance) it
#     grows one datagram per window acknowledged.
#   * A loss starts a recovery period (§7.3.2): ``ssthresh = cwnd / 2``, ``cwnd =
#     ssthresh`` (never below 2 datagrams), once: further losses of packets sent
#     before the period began, and acknowledgements of them, change nothing. The
#     period ends with the first acknowledgement of a packet sent after it began.
#   * Persistent congestion (§7.6, decided by ``recovery.py``) collapses ``cwnd`` to
#     the minimum window.
#   * The window grows only while it is used (§7.8): if at most half of it was in
#     flight since the previous acknowledgement, acknowledgements do not grow it, so
#     a path that idled on heartbeats does not claim a window it never tested.
#   * The pacer is a token bucket counted in bytes, filled at
#     ``gain * cwnd / smoothed_rtt`` (gain 2 in slow start, 1.25 after, as §7.7
#     suggests and Linux does) and holding at most a small burst (a quarter of the
#     window, 2..10 datagrams). A packet may leave while the bucket holds a full
#     datagram's worth: so a window is spread over the round trip instead of being
#     burst into the bottleneck's queue. Before
#     the first RTT sample there is no rate and the window alone limits sending.
"""NewReno congestion control (RFC 9002) with a pacer, for one path, in bytes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from hotline.errors import LocalProtocolError
from hotline.proto.packet import UDP_MAX_DATAGRAM

INITIAL_WINDOW_PACKETS = 10  # RFC 9002 §7.2 (capped at 14,720 bytes)
INITIAL_WINDOW_CAP = 14720
MINIMUM_WINDOW_PACKETS = 2  # §7.2
LOSS_REDUCTION_FACTOR = 0.5  # §7.3.2
SLOW_START_PACING_GAIN = 2.0  # §7.7: N above 1 so that RTT variation cannot starve the path
AVOIDANCE_PACING_GAIN = 1.25
MIN_BURST_PACKETS = 2
MAX_BURST_PACKETS = 10
_MIN_RTT_FOR_RATE = 1e-6
_PACING_TOLERANCE = 1e-9  # seconds: rounding must not leave a wake-up that allows nothing


class Sent(Protocol):
    """What the controller needs of a sent packet (``recovery.SentPacket`` is one)."""

    @property
    def size(self) -> int:
        """Bytes on the wire."""
        ...

    @property
    def sent_time(self) -> float:
        """When it left (the caller's monotonic seconds)."""
        ...


class Pacer:
    """A token bucket in bytes: when the next packet may leave (RFC 9002 §7.7).

    Args:
        max_datagram_size: a packet may leave once the bucket holds this many bytes.
    """

    def __init__(self, max_datagram_size: int) -> None:
        self.max_datagram_size = max_datagram_size
        self.rate: float | None = None  # bytes per second; None: not pacing
        self._burst = 0.0
        self._tokens = 0.0
        self._updated = 0.0

    def set_rate(self, rate: float, burst: int, now: float) -> None:
        """Fill at ``rate`` bytes/s from now on, holding at most ``burst`` bytes.

        The first rate starts with a full bucket.
        """
        if self.rate is None:
            self._tokens, self._updated = float(burst), now
        else:
            self._refill(now)
        self.rate, self._burst = rate, float(burst)
        self._tokens = min(self._tokens, self._burst)

    def on_packet_sent(self, size: int, now: float) -> None:
        """Take ``size`` bytes from the bucket."""
        if self.rate is not None:
            self._refill(now)
            self._tokens -= size

    def available(self, now: float) -> float:
        """Bytes that may leave now without waiting (``inf`` when not pacing)."""
        if self.rate is None:
            return float("inf")
        self._refill(now)
        return max(self._tokens, 0.0)

    def next_send_time(self, now: float) -> float | None:
        """None if a packet may leave now, else the time from which it may."""
        if self.rate is None:
            return None
        self._refill(now)
        wait = (self.max_datagram_size - self._tokens) / self.rate
        return None if wait <= _PACING_TOLERANCE else now + wait

    def _refill(self, now: float) -> None:
        assert self.rate is not None
        if now > self._updated:
            self._tokens = min(self._burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now


QUEUE_DELAY_TARGET = 1.0  # queueing delay, as a fraction of the base RTT, that is congestion
QUEUE_DELAY_FLOOR = 0.005  # seconds: below this, jitter, not a queue


class NewReno:
    """RFC 9002 NewReno congestion controller of one path, with its pacer.

    Args:
        max_datagram_size: the largest packet this path carries, in bytes; the
            windows are counted in multiples of it.

    The caller reports every congestion-controlled packet (``on_packet_sent``) and
    its fate (``on_packets_acked``/``on_packets_lost``; a path given up is replaced by
    a fresh controller); it sends only while ``can_send`` and
    ``next_send_time`` allow, waking at ``next_send_time`` when that is in the future.
    """

    def __init__(self, max_datagram_size: int = UDP_MAX_DATAGRAM) -> None:
        if max_datagram_size <= 0:
            raise LocalProtocolError("max_datagram_size must be positive")
        self.max_datagram_size = max_datagram_size
        self.initial_window = min(
            INITIAL_WINDOW_PACKETS * max_datagram_size,
            max(INITIAL_WINDOW_CAP, 2 * max_datagram_size),
        )
        self.minimum_window = MINIMUM_WINDOW_PACKETS * max_datagram_size
        self.cwnd = self.initial_window
        self.ssthresh: int | None = None  # None: still in the first slow start
        self.bytes_in_flight = 0
        self.pacer = Pacer(max_datagram_size)
        self._smoothed_rtt: float | None = None
        self._recovery_start: float | None = None
        self._avoidance_credit = 0  # bytes acked towards the next +1 datagram
        self._peak_in_flight = 0  # since the last acknowledgement

    # --- state --------------------------------------------------------------------

    @property
    def in_slow_start(self) -> bool:
        """True while the window doubles per round trip."""
        return self.ssthresh is None or self.cwnd < self.ssthresh

    def in_recovery(self, sent_time: float) -> bool:
        """True if a packet sent at ``sent_time`` belongs to the current recovery period."""
        return self._recovery_start is not None and sent_time <= self._recovery_start

    def available_window(self) -> int:
        """Bytes that may still be put in flight (0 when the window is full)."""
        return max(0, self.cwnd - self.bytes_in_flight)

    def can_send(self, size: int) -> bool:
        """True if a packet of ``size`` bytes fits in the window (pacing aside)."""
        return self.bytes_in_flight + size <= self.cwnd

    def next_send_time(self, now: float) -> float | None:
        """None if the pacer lets a packet leave now, else when it will."""
        return self.pacer.next_send_time(now)

    # --- inputs ---------------------------------------------------------------------

    def on_packet_sent(self, size: int, now: float) -> None:
        """A congestion-controlled packet of ``size`` bytes went on the wire at ``now``."""
        if size <= 0:
            raise LocalProtocolError("a sent packet has a positive size")
        self.bytes_in_flight += size
        self._peak_in_flight = max(self._peak_in_flight, self.bytes_in_flight)
        self.pacer.on_packet_sent(size, now)

    def on_rtt_sample(self, smoothed_rtt: float, now: float) -> None:
        """The path's smoothed RTT changed: re-derive the pacing rate."""
        self._smoothed_rtt = smoothed_rtt
        self._update_pacing(now)

    def on_delay(self, latest_rtt: float, min_rtt: float, now: float) -> None:
        """A fresh RTT sample against the path's minimum (delay-based ceiling).

        Loss-based NewReno fills a bottleneck's buffer before it backs off, and on a
        thin backup circuit a full buffer is seconds of queue that a FLASH would wait
        behind. So queueing delay is a congestion signal too (as in LEDBAT/Vegas): once
        it passes ``QUEUE_DELAY_TARGET`` of the base RTT the window is brought back to
        what fills the path without that queue; and slow start ends as soon as a queue
        starts to form (an eighth of the base RTT, as HyStart++), before it overshoots.
        """
        queued = latest_rtt - min_rtt
        if self.in_slow_start and queued > max(min_rtt / 8, QUEUE_DELAY_FLOOR):
            self.ssthresh = self.cwnd  # a queue is forming: leave slow start (HyStart)
        if queued <= max(QUEUE_DELAY_TARGET * min_rtt, QUEUE_DELAY_FLOOR):
            return
        ceiling = int(self.bytes_in_flight * (1 + QUEUE_DELAY_TARGET) * min_rtt / latest_rtt)
        if ceiling < self.cwnd:
            self.cwnd = max(ceiling, self.minimum_window)
            self._avoidance_credit = 0
            self._update_pacing(now)

    def on_packets_acked(self, packets: Iterable[Sent], now: float) -> None:
        """These packets were acknowledged: take them out of flight, grow the window."""
        used = 2 * self._peak_in_flight >= self.cwnd
        for packet in packets:
            self._remove(packet.size)
            if used and not self.in_recovery(packet.sent_time):
                self._grow(packet.size)
        self._peak_in_flight = self.bytes_in_flight
        self._update_pacing(now)

    def on_packets_lost(self, packets: Iterable[Sent], now: float) -> None:
        """These packets were declared lost: take them out of flight; one congestion
        event per recovery period (RFC 9002 §7.3.2, B.6)."""
        newest: float | None = None
        for packet in packets:
            self._remove(packet.size)
            newest = packet.sent_time if newest is None else max(newest, packet.sent_time)
        if newest is None or self.in_recovery(newest):
            return
        self._recovery_start = now
        self.ssthresh = max(int(self.cwnd * LOSS_REDUCTION_FACTOR), self.minimum_window)
        self.cwnd = self.ssthresh
        self._avoidance_credit = 0
        self._update_pacing(now)

    def on_persistent_congestion(self, now: float) -> None:
        """Every packet over a long span was lost (§7.6): back to the minimum window."""
        self.cwnd = self.minimum_window
        self._recovery_start = None
        self._avoidance_credit = 0
        self._update_pacing(now)

    # --- internals ------------------------------------------------------------------

    def _remove(self, size: int) -> None:
        if size > self.bytes_in_flight:
            raise LocalProtocolError("more bytes left flight than were sent")
        self.bytes_in_flight -= size

    def _grow(self, acked: int) -> None:
        if self.in_slow_start:
            self.cwnd += acked
            return
        self._avoidance_credit += acked
        if self._avoidance_credit >= self.cwnd:
            self._avoidance_credit -= self.cwnd
            self.cwnd += self.max_datagram_size

    def _update_pacing(self, now: float) -> None:
        if self._smoothed_rtt is None:
            return
        gain = SLOW_START_PACING_GAIN if self.in_slow_start else AVOIDANCE_PACING_GAIN
        rate = gain * self.cwnd / max(self._smoothed_rtt, _MIN_RTT_FOR_RATE)
        mds = self.max_datagram_size
        burst = min(max(self.cwnd // 4, MIN_BURST_PACKETS * mds), MAX_BURST_PACKETS * mds)
        self.pacer.set_rate(rate, burst, now)
