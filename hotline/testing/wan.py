"""Two real endpoints over a simulated thin backup circuit, in simulated time.

``WanRun`` joins two ``Node``s (the product's Endpoint over real stores, endpoints.py)
with their TCP path cut and their UDP path through a ``Bottleneck`` in each direction
(bottleneck.py: rate, FIFO with tail drop, delay) — a satellite or radio link after a
failover. Time jumps from event to event (the next arrival, the next deadline), so a
minute of a 1 Mbit/s circuit runs in seconds and every run is the same.

It measures what issue 12 asks of congestion control: goodput against the rate limit,
retransmitted DATA against messages, and how long a FLASH sent behind a routine
backlog takes to be acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hotline.proto.lanes import FLASH, ROUTINE
from hotline.proto.link import Outbound
from hotline.proto.requests import SendRequest, Stored
from hotline.testing.bottleneck import Bottleneck
from hotline.testing.endpoints import NodePair

TCP, UDP = 0, 1


@dataclass(frozen=True)
class WanResult:
    """What one run measured (simulated seconds)."""

    messages: int
    seconds: float  # first send to last acknowledgement
    goodput_bits: float  # signed message (envelope) bytes delivered per second, in bits
    wire_bits: float  # every byte the circuit delivered a->b per second, in bits
    resent: int  # DATA frames sent again (retransmissions)
    flash_ack_s: float | None  # send to acknowledgement of the FLASH, if one was sent
    dropped: int  # packets tail-dropped by the bottleneck


class WanRun:
    """A NodePair over a bottleneck; see the module header."""

    def __init__(self, root: Path, rate: float, delay: float, queue: int) -> None:
        self.pair = NodePair(root)
        self.links = {name: Bottleneck[Outbound](rate, delay, queue) for name in "ab"}

    def run(self, messages: int, body: int, flash_after: float | None = None,
            limit: float = 3600.0) -> WanResult:
        """Send ``messages`` routine messages of ``body`` bytes a->b (and a FLASH
        ``flash_after`` seconds after the start, if given); run until all are acked."""
        pair, a = self.pair, self.pair.a
        self._settle()
        start = pair.now
        a.call(SendRequest("text/plain", tuple(b"%0*d" % (body, i) for i in range(messages))))
        flash_token = flash_sent = flash_acked = None
        while self._acked(ROUTINE) < messages or (flash_token is not None
                                                  and flash_acked is None):
            if flash_after is not None and flash_token is None \
                    and pair.now >= start + flash_after:
                flash_token, flash_sent = a.call(SendRequest("text/plain", (b"FLASH",),
                                                             FLASH)), pair.now
            if flash_token is not None and flash_acked is None and self._acked(FLASH) >= 1:
                flash_acked = pair.now
            if pair.now > start + limit:
                raise AssertionError(f"not done after {limit} simulated seconds")
            self._step()
        assert isinstance(a.replies.get(1), Stored)
        seconds = pair.now - start
        stats = self.links["a"].stats
        envelope = len(a.store.get_outgoing(ROUTINE, 1).raw)  # type: ignore[union-attr]
        return WanResult(
            messages, seconds, messages * envelope * 8 / seconds,
            stats.bytes_delivered * 8 / seconds,
            a.endpoint.link.outgoing[ROUTINE].retransmissions,
            None if flash_sent is None or flash_acked is None else flash_acked - flash_sent,
            stats.dropped)

    def _acked(self, lane: int) -> int:
        return self.pair.a.endpoint.link.outgoing[lane].acked_upto

    def _settle(self) -> None:
        """Bring the link up, then fail TCP over to the circuit."""
        pair = self.pair
        pair.run(2.0)
        pair.cut.add(TCP)
        for _ in range(200):
            self._step()
            if pair.a.endpoint.link.primary == UDP and pair.b.endpoint.link.primary == UDP:
                return
        raise AssertionError("the UDP path did not become primary")

    def _step(self) -> None:
        pair = self.pair
        for src, dst in ((pair.a, pair.b), (pair.b, pair.a)):
            src.now = dst.now = pair.now
            src.turn()
            for packet in src.take_packets():
                if packet.path_id == TCP:
                    continue  # black-holed
                self.links[src.name].offer(packet, len(packet.packet), pair.now)
        for name, link in self.links.items():
            dst = pair.b if name == "a" else pair.a
            for packet in link.receive(pair.now):
                dst.now = pair.now
                dst.receive(packet.path_id, packet.packet)
        times = [t for t in (link.next_arrival() for link in self.links.values()) if t]
        times += [t for t in (n.get_timer() for n in pair.nodes) if t is not None]
        pair.now = max(pair.now + 1e-6, min(times, default=pair.now + 0.01))

    def close(self) -> None:
        """Close both stores."""
        self.pair.close()
