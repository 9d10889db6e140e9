"""Per-path liveness: PING/PONG, smoothed RTT, clock skew, and the up/down deadline.

Theory of operation (DESIGN §5). Every path of a link has one ``PathHealth``. While
the link has a usable session, each path sends a PING every ``heartbeat`` seconds;
the peer answers PONG on the same path with its wall clock. From the PONG we get a
round-trip time (monotonic: the send instant is remembered by ping id, never trusted
from the wire) smoothed as RFC 6298 does, and a clock offset
``their_wall - (our_wall_at_send + rtt/2)`` (``rtt.py`` does the smoothing).

A path is *up* from the first authenticated packet that arrives on it and goes *down*
when nothing authenticated has arrived for ``dead_after`` seconds. Hooks are named
after when they fire (``on_authenticated_received``), as wireguard-go's timers are.
Nothing here reads a clock: ``now`` (monotonic seconds) and wall-clock nanoseconds
come in as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hotline.proto.frames import Ping, Pong
from hotline.proto.rtt import RttEstimator

# Pings remembered for RTT matching; older ones are forgotten (their PONG is ignored).
_MAX_OUTSTANDING_PINGS = 16


@dataclass
class PathHealth:
    """Liveness and RTT state of one path. Mutable; owned by the Link."""

    path_id: int
    url: str
    heartbeat: float
    dead_after: float
    connected: bool = False
    up: bool = False
    last_heard: float | None = None
    rtt: RttEstimator = field(default_factory=RttEstimator)
    skew_ns: int | None = None
    next_ping_at: float | None = None

    def __post_init__(self) -> None:
        self._next_ping_id = 1
        self._outstanding: dict[int, tuple[float, int]] = {}

    # --- hooks --------------------------------------------------------------------

    def on_authenticated_received(self, now: float) -> bool:
        """Call when an authenticated packet arrived here. Returns True if it just went up."""
        self.last_heard = now
        if self.up:
            return False
        self.up = True
        return True

    def on_connected(self, now: float) -> None:
        """Call when the transport reports the path usable (TCP connected, UDP bound)."""
        self.connected = True
        self.next_ping_at = now

    def on_disconnected(self) -> bool:
        """Call when the transport lost the path. Returns True if it was up."""
        self.connected = False
        self.next_ping_at = None
        return self._go_down()

    def on_pong(self, pong: Pong, now: float) -> None:
        """Update RTT (RFC 6298 smoothing) and skew from a PONG that matches one of our PINGs."""
        sent = self._outstanding.pop(pong.ping_id, None)
        if sent is None:
            return
        sent_mono, sent_wall_ns = sent
        rtt = max(now - sent_mono, 0.0)
        self.rtt.sample(rtt)
        self.skew_ns = pong.their_wall_ns - (sent_wall_ns + int(rtt * 1e9 / 2))

    # --- timers -------------------------------------------------------------------

    def ping_due(self, now: float, wall_ns: int) -> Ping | None:
        """A PING to send now, or None. Remembers its send time for the PONG."""
        if not self.connected or self.next_ping_at is None or now < self.next_ping_at:
            return None
        self.next_ping_at = now + self.heartbeat
        ping_id = self._next_ping_id
        self._next_ping_id += 1
        self._outstanding[ping_id] = (now, wall_ns)
        if len(self._outstanding) > _MAX_OUTSTANDING_PINGS:
            del self._outstanding[min(self._outstanding)]
        return Ping(ping_id, wall_ns)

    def check_dead(self, now: float) -> bool:
        """Returns True if the path just went down (nothing heard for ``dead_after``)."""
        if self.up and self.last_heard is not None and now >= self.last_heard + self.dead_after:
            return self._go_down()
        return False

    def get_timer(self, pinging: bool) -> float | None:
        """The earliest instant this path needs ``ping_due``/``check_dead`` called.

        Args:
            pinging: whether PINGs can go out now (a session to send with); without one
                only the dead-path deadline counts, so a missed ping never busy-loops.
        """
        deadlines = [self.next_ping_at] if pinging and self.next_ping_at is not None else []
        if self.up and self.last_heard is not None:
            deadlines.append(self.last_heard + self.dead_after)
        return min(deadlines, default=None)

    def last_heard_age(self, now: float) -> float | None:
        """Seconds since the last authenticated packet, or None if never."""
        return None if self.last_heard is None else max(now - self.last_heard, 0.0)

    def rtt_ms(self) -> float | None:
        """Smoothed RTT in milliseconds, or None before the first PONG."""
        srtt = self.rtt.srtt
        return None if srtt is None else srtt * 1000

    def _go_down(self) -> bool:
        was_up = self.up
        self.up = False
        self._outstanding.clear()
        return was_up


def make_pong(ping: Ping, wall_ns: int) -> Pong:
    """Our answer to a peer's PING: echo its id and send time, add our wall clock."""
    return Pong(ping.ping_id, ping.sent_wall_ns, wall_ns)
