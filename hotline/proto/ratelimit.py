"""Bounded rate limiting for handshake screening: token buckets and recent-item sets.

Owns three small structures ``guard.py`` composes; none allocates per packet beyond a
bounded table, so a flood of distinct sources cannot grow memory:

* ``TokenBucket`` — ``rate`` tokens per second up to ``burst``; starts full. Time is
  the caller's ``now`` (a clock that steps back refills nothing).
* ``SourceBuckets`` — one bucket per key (a source address), at most ``capacity``
  keys, least recently used evicted first (as WireGuard's ratelimiter, which drops
  idle entries each second). Evicting a drained bucket hands its key a fresh burst, so
  a sender cycling through more than ``capacity`` addresses gains bursts; the global
  budget behind these buckets still caps what all of them together can spend.
* ``RecentSet`` — the last ``capacity`` keys seen, oldest forgotten first.
"""

from __future__ import annotations

from collections.abc import Hashable

from hotline.errors import LocalProtocolError


class TokenBucket:
    """``rate`` tokens per second, at most ``burst``; starts full."""

    __slots__ = ("_refilled_at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise LocalProtocolError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._refilled_at: float | None = None

    def ready(self, now: float) -> bool:
        """Refill for the time since the last call; True if a whole token is there."""
        if self._refilled_at is None:
            self._refilled_at = now
        elif now > self._refilled_at:
            self.tokens = min(self.burst, self.tokens + (now - self._refilled_at) * self.rate)
            self._refilled_at = now
        return self.tokens >= 1.0

    def take(self) -> None:
        """Spend one token (the caller saw ``ready`` return True)."""
        self.tokens -= 1.0

    def try_take(self, now: float) -> bool:
        """Spend one token if there is one; True if it was spent."""
        if not self.ready(now):
            return False
        self.take()
        return True


class SourceBuckets:
    """A ``TokenBucket`` per key, at most ``capacity`` of them (LRU)."""

    def __init__(self, rate: float, burst: float, capacity: int) -> None:
        if capacity < 1:
            raise LocalProtocolError("capacity must be >= 1")
        self._rate = rate
        self._burst = burst
        self._capacity = capacity
        self._buckets: dict[Hashable, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, key: Hashable) -> TokenBucket:
        """The bucket of ``key`` (a full new one if unknown), now the most recently used."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst)
            if len(self._buckets) >= self._capacity:
                del self._buckets[next(iter(self._buckets))]
        self._buckets[key] = bucket
        return bucket


class RecentSet:
    """The last ``capacity`` keys added; older ones are forgotten."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise LocalProtocolError("capacity must be >= 1")
        self._capacity = capacity
        self._keys: dict[Hashable, None] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: Hashable) -> None:
        """Remember ``key`` (as the newest), forgetting the oldest when full."""
        self._keys.pop(key, None)
        if len(self._keys) >= self._capacity:
            del self._keys[next(iter(self._keys))]
        self._keys[key] = None
