# hotline/testing/bottleneck.py — a deterministic model of a bottleneck link, for tests.
#
# Owns: what a rate-limited link with a bounded FIFO queue and a propagation delay does
# to packets, in simulated time that the caller drives by hand (no clock, no event
# loop, no randomness): the same inputs always give the same deliveries.
#
# How it works: packets are serialised one after another at ``rate`` bits/s. A packet
# offered at ``now`` starts when the link has finished the ones before it (or at once
# if idle) and is fully sent ``size * 8 / rate`` later; it arrives ``delay`` seconds
# after that. The queue holds the packets offered but not yet fully serialised, the
# one on the wire included; a packet offered while ``queue`` packets are held is
# dropped (tail drop), so drops follow from queueing delay exactly as at a router
# whose buffer is ``queue`` packets deep. The fault proxy's ``rate``/``queue`` faults
# (faultproxy.py) implement the same model with real time and real sockets.
"""A hand-driven bottleneck link model: rate, FIFO queue with tail drop, delay."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class BottleneckStats:
    """Counts of what the link did."""

    offered: int = 0
    dropped: int = 0
    delivered: int = 0
    bytes_delivered: int = 0


class Bottleneck(Generic[T]):
    """One direction of a link: ``offer`` packets, ``receive`` what has arrived.

    Args:
        rate: bits per second the link serialises.
        delay: one-way propagation delay in seconds, added after serialisation.
        queue: packets the link may hold (waiting or on the wire) before tail drop.
    """

    def __init__(self, rate: float, delay: float, queue: int) -> None:
        if rate <= 0 or delay < 0 or queue < 1:
            raise ValueError("rate > 0, delay >= 0 and queue >= 1 are required")
        self.rate = rate
        self.delay = delay
        self.queue = queue
        self.stats = BottleneckStats()
        self._busy_until = 0.0  # when the last accepted packet is fully serialised
        self._serialised_at: deque[float] = deque()  # of the packets held, in order
        self._in_transit: deque[tuple[float, T, int]] = deque()  # (arrival, packet, size)

    def held(self, now: float) -> int:
        """Packets waiting or on the wire at ``now``."""
        while self._serialised_at and self._serialised_at[0] <= now:
            self._serialised_at.popleft()
        return len(self._serialised_at)

    def offer(self, packet: T, size: int, now: float) -> bool:
        """Put ``packet`` of ``size`` bytes on the link at ``now``; False if tail-dropped.

        ``now`` must not go back in time between calls.
        """
        self.stats.offered += 1
        if self.held(now) >= self.queue:
            self.stats.dropped += 1
            return False
        done = max(now, self._busy_until) + size * 8 / self.rate
        self._busy_until = done
        self._serialised_at.append(done)
        self._in_transit.append((done + self.delay, packet, size))
        return True

    def next_arrival(self) -> float | None:
        """When the next packet arrives at the far end (None if none is on its way)."""
        return self._in_transit[0][0] if self._in_transit else None

    def receive(self, now: float) -> list[T]:
        """The packets that have arrived by ``now``, in order."""
        out: list[T] = []
        while self._in_transit and self._in_transit[0][0] <= now:
            _, packet, size = self._in_transit.popleft()
            self.stats.delivered += 1
            self.stats.bytes_delivered += size
            out.append(packet)
        return out
