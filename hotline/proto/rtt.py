"""One round-trip-time estimator (RFC 6298 §2), shared by heartbeats and retransmission.

``RttEstimator.sample(rtt)`` updates SRTT and RTTVAR (alpha = 1/8, beta = 1/4); ``rto`` is
SRTT + max(G, 4·RTTVAR) clamped to [``MIN_RTO``, ``MAX_RTO``] (initially 1 s), times
the §5.5 exponential backoff that ``back_off`` doubles and the next sample ends.
"""

from __future__ import annotations

INITIAL_RTO = 1.0
MIN_RTO = 0.2
MAX_RTO = 10.0
_CLOCK_GRANULARITY = 0.001
_MAX_BACKOFF = 64
_ALPHA = 1 / 8
_BETA = 1 / 4


class RttEstimator:
    """RFC 6298 smoothed RTT and RTO with exponential backoff."""

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.backoff = 1

    def sample(self, rtt: float) -> None:
        """Add a measurement (seconds; from a message sent once: Karn); ends any backoff."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
            self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt
        self.backoff = 1

    def back_off(self) -> None:
        """A retransmission timer fired: double the RTO (RFC 6298 §5.5), up to 64 times."""
        self.backoff = min(self.backoff * 2, _MAX_BACKOFF)

    @property
    def rto(self) -> float:
        """The current retransmission timeout, backoff included."""
        if self.srtt is None:
            base = INITIAL_RTO
        else:
            base = self.srtt + max(_CLOCK_GRANULARITY, 4 * self.rttvar)
        return min(MAX_RTO, max(MIN_RTO, base) * self.backoff)
