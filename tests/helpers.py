"""Test helpers: two real Links joined by an in-memory network with a hand-set clock.

``LinkPair`` is our h11 ``ConnectionPair`` / aioquic ``transfer``: it moves packets
between two sans-IO ``Link`` objects over numbered paths, lets a test cut a path
(``blackhole``) and advances time by calling ``handle_timer`` at ``get_timer``. The
"daemon" part (sealing, committing) is played with in-memory lists, so link logic
can be tested deterministically without sockets, threads or a real clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from hotline.proto.events import Acked, Delivered, Event
from hotline.proto.identity import Identity
from hotline.proto.link import Link, LinkSettings, PathSpec, StreamState
from hotline.proto.sequencer import Sequencer

WALL0 = 1_750_000_000 * 10**9


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    """A deterministic rng(n) -> bytes for protocol objects."""
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


@dataclass
class End:
    """One side of a LinkPair: its Link, its sealer and what it 'committed'."""

    name: str
    identity: Identity
    link: Link
    sequencer: Sequencer
    delivered: list[bytes] = field(default_factory=list)
    acked: int = 0
    events: list[Event] = field(default_factory=list)


class LinkPair:
    """Two Links (``a`` and ``b``) over paths ``tcp`` (0) and ``udp`` (1)."""

    def __init__(self, seed: int = 1, settings: LinkSettings | None = None) -> None:
        self.now = 100.0
        self.settings = settings or LinkSettings()
        self.rng = random.Random(seed)
        ids = [Identity.from_seed(bytes([i]) * 32) for i in (1, 2)]
        specs = [PathSpec("tcp://peer:1", "tcp"), PathSpec("udp://peer:1", "udp")]
        self.cut: set[int] = set()
        # drop(src_name, path_id, packet) -> True drops that packet (targeted loss).
        self.drop: Callable[[str, int, bytes], bool] = lambda _s, _p, _b: False
        self.ends: list[End] = []
        for i, (me, them) in enumerate(((ids[0], ids[1]), (ids[1], ids[0]))):
            epoch = bytes([0xE0 + i]) * 16
            link = Link(
                me, them.public, specs, self.settings,
                StreamState(epoch, 0, (), None), seeded_rng(seed * 10 + i), self.now, WALL0,
            )
            seq = Sequencer(me, them.public, epoch, 0, bytes(32), self.settings.max_message)
            self.ends.append(End("ab"[i], me, link, seq))
        for end in self.ends:
            for path_id in range(len(specs)):
                end.link.path_connected(path_id, self.now)

    @property
    def a(self) -> End:
        return self.ends[0]

    @property
    def b(self) -> End:
        return self.ends[1]

    def send(self, end: End, *bodies: bytes) -> list[int]:
        """Seal and 'commit' messages at ``end`` and queue them on its link."""
        records = [end.sequencer.seal(b, "text/plain", WALL0) for b in bodies]
        end.link.queue_messages([(r.seq, r.raw, r.sig) for r in records], self.now)
        return [r.seq for r in records]

    def step(self) -> int:
        """Deliver every queued packet once (both directions); returns packets moved."""
        moved = 0
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            src.link.handle_timer(self.now)
            for path_id, packet in src.link.packets_to_send(self.now):
                if path_id in self.cut or self.drop(src.name, path_id, packet):
                    continue
                moved += 1
                dst.link.receive_untrusted(path_id, packet, self.now)
        for end in self.ends:
            self._apply_events(end)
        return moved

    def _apply_events(self, end: End) -> None:
        for event in end.link.next_events():
            end.events.append(event)
            if isinstance(event, Delivered):
                for m in event.messages:
                    end.delivered.append(m.envelope.body)
                last = event.messages[-1]
                end.link.on_inbox_committed(last.epoch, last.seq, self.now)
            elif isinstance(event, Acked):
                end.acked = max(end.acked, event.upto)

    def run(self, seconds: float, tick: float = 0.05) -> None:
        """Exchange packets while advancing the clock by ``tick`` up to ``seconds``."""
        end_at = self.now + seconds
        while self.now < end_at:
            while self.step():
                pass
            self.now = round(self.now + tick, 6)

    def settle(self, limit: float = 30.0) -> None:
        """Run until nothing moves for a heartbeat or ``limit`` seconds pass."""
        self.run(limit)
