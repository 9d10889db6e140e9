# hotline/transport/backoff.py — capped exponential backoff with jitter (DESIGN §5).
#
# Owns: the delay schedule between re-dial attempts of a path. Pure: it reads no clock
# and sleeps nowhere; the caller sleeps ``next_delay()`` seconds. Randomness is injected
# (``rng`` returns a float in [0, 1)) so tests are deterministic.
#
# Schedule: the n-th delay (n = 0, 1, …) is ``min(maximum, initial * factor**n)``,
# multiplied by a jitter factor drawn uniformly from ``[1 - jitter, 1 + jitter]`` and
# capped again at ``maximum``. ``reset()`` starts over at ``initial`` (call it once a
# connection has proved itself, e.g. delivered a packet). Jitter keeps two symmetric
# daemons that lost their link at the same instant from re-dialling in lock-step.
"""Capped exponential backoff with jitter, for re-dialling paths."""

from __future__ import annotations

import random
from collections.abc import Callable

from hotline.errors import LocalProtocolError


class Backoff:
    """Delays between retries: exponential, capped, jittered.

    Args:
        initial: the first delay in seconds (> 0).
        maximum: the cap in seconds (>= initial).
        factor: growth per attempt (>= 1).
        jitter: relative spread in [0, 1): each delay is scaled by a factor drawn from
            ``[1 - jitter, 1 + jitter]``.
        rng: returns a float in [0, 1); defaults to ``random.random``.

    Raises:
        LocalProtocolError: on parameters outside those ranges.
    """

    def __init__(
        self,
        initial: float = 0.2,
        maximum: float = 10.0,
        factor: float = 2.0,
        jitter: float = 0.25,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not (initial > 0 and maximum >= initial and factor >= 1 and 0 <= jitter < 1):
            raise LocalProtocolError(
                f"bad backoff parameters: initial={initial} maximum={maximum} "
                f"factor={factor} jitter={jitter}"
            )
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rng = rng
        self._base = initial
        self.attempts = 0

    def next_delay(self) -> float:
        """Return the delay to wait before the next attempt, and advance the schedule."""
        base = self._base
        self._base = min(self.maximum, self._base * self.factor)
        self.attempts += 1
        spread = 1.0 + self.jitter * (2.0 * self._rng() - 1.0)
        return min(self.maximum, base * spread)

    def reset(self) -> None:
        """Start the schedule over at ``initial`` (the last attempt succeeded)."""
        self._base = self.initial
        self.attempts = 0
