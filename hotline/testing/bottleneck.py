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
# whose buffer is ``queue`` packets deep. ``SerialQueue`` is the serialiser and FIFO
# alone; the fault proxy's ``rate``/``queue`` faults (faultproxy.py) run it in real
# time between real sockets, so both follow one model.
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


class SerialQueue:
    """A link's serialiser and the FIFO in front of it: when each packet is fully sent.

    Holds no limit itself: the caller looks at ``held``/``held_bytes`` and decides
    whether to drop (a router) or to wait (a TCP reader).
    """

    def __init__(self) -> None:
        self._busy_until = float("-inf")  # when the last admitted packet is serialised
        self._held: deque[tuple[float, int]] = deque()  # (serialised at, size), in order
        self._held_bytes = 0

    def held(self, now: float) -> int:
        """Packets waiting or on the wire at ``now``."""
        self._expire(now)
        return len(self._held)

    def held_bytes(self, now: float) -> int:
        """Bytes waiting or on the wire at ``now``."""
        self._expire(now)
        return self._held_bytes

    def next_departure(self) -> float | None:
        """When the oldest packet held is fully serialised (None if none is held)."""
        return self._held[0][0] if self._held else None

    def admit(self, size: int, now: float, rate: float) -> float:
        """Queue ``size`` bytes behind what is held; returns when they are fully sent
        at ``rate`` bits/s. ``now`` must not go back in time between calls."""
        done = max(now, self._busy_until) + size * 8 / rate
        self._busy_until = done
        self._held.append((done, size))
        self._held_bytes += size
        return done

    def _expire(self, now: float) -> None:
        while self._held and self._held[0][0] <= now:
            self._held_bytes -= self._held.popleft()[1]


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
        self._serialiser = SerialQueue()
        self._in_transit: deque[tuple[float, T, int]] = deque()  # (arrival, packet, size)

    def held(self, now: float) -> int:
        """Packets waiting or on the wire at ``now``."""
        return self._serialiser.held(now)

    def offer(self, packet: T, size: int, now: float) -> bool:
        """Put ``packet`` of ``size`` bytes on the link at ``now``; False if tail-dropped.

        ``now`` must not go back in time between calls.
        """
        self.stats.offered += 1
        if self.held(now) >= self.queue:
            self.stats.dropped += 1
            return False
        done = self._serialiser.admit(size, now, self.rate)
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
