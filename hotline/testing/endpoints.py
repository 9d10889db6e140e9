"""Endpoints without trio: what the runner does, done by hand, for tests and the simulator.

``Node`` is one end exactly as the daemon runs it — the product's ``Endpoint`` and a
REAL ``Store`` (SQLite) — with the runner's pumping done synchronously: ``poll`` and
then each store job executed in order and fed back (``store_done``/``store_failed``).
Nothing of the endpoint's rules is copied here. A test may hold jobs back (to play a
crash between a commit and its answer), crash the node (drop the endpoint and reopen
it from its store), wipe its store, or restore an older copy of it.

``NodePair`` joins two nodes over numbered paths (``tcp`` 0, ``udp`` 1) with a hand-set
clock, as h11's ``ConnectionPair``: packets move at once, a test can cut a path
(``cut``) or drop chosen packets (``drop``), and time moves by ``run(seconds)``.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hotline.errors import HotlineError
from hotline.proto.endpoint import Endpoint, EndpointSettings
from hotline.proto.envelope import ZERO_HASH
from hotline.proto.identity import Identity, PublicKey
from hotline.proto.lanes import LANES
from hotline.proto.link import LinkSettings, Outbound, PathSpec, Received
from hotline.proto.notices import Notice
from hotline.proto.records import Commit, InLane, OutLane, Resume, StoreJob
from hotline.proto.requests import EndpointRequest, Outcome
from hotline.proto.supervision import Alert
from hotline.store import Store

WALL0 = 1_750_000_000 * 10**9
RESUME_WINDOW = 2048
PATHS = (PathSpec("tcp://peer:1", "tcp"), PathSpec("udp://peer:1", "udp"))


def fresh_resume(epoch: bytes, handshake_ts: int = 0) -> Resume:
    """What a new, empty store resumes with (to build a bare ``Link`` in a test)."""
    out = tuple(OutLane(0, ZERO_HASH, 0, ZERO_HASH, ()) for _ in LANES)
    ins = tuple(InLane(0, ZERO_HASH) for _ in LANES)
    return Resume(epoch, out, None, ins, frozenset(), handshake_ts)


def seeded_rng(seed: int | float) -> Callable[[int], bytes]:
    """A deterministic rng(n) -> bytes for protocol objects."""
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


@dataclass
class Node:
    """One end: an ``Endpoint`` over a real ``Store``, pumped by hand (module header)."""

    name: str
    identity: Identity
    peer: PublicKey
    state_dir: Path
    settings: EndpointSettings
    rng: Callable[[int], bytes]
    now: float
    paths: Sequence[PathSpec] = PATHS
    replies: dict[int, Outcome] = field(default_factory=dict)
    notices: list[Notice] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    jobs: list[StoreJob] = field(default_factory=list)
    outbox: list[Outbound] = field(default_factory=list)  # packets not yet on the wire
    fail_commits: bool = False  # play a full disk: every commit raises
    # play an I/O error on the jobs it picks (e.g. reads of one epoch); None: none fail
    fail: Callable[[StoreJob], bool] | None = None

    def __post_init__(self) -> None:
        self._tokens = 0
        self.open(self.now)

    # --- lifecycle ----------------------------------------------------------------

    def open(self, now: float) -> None:
        """(Re)open from the store: every in-memory state is rebuilt from it."""
        self.store = Store.open(self.state_dir, self.identity.public.raw, self.peer.raw,
                                rng=self.rng)
        resume = self.store.resume(RESUME_WINDOW)
        self.endpoint = Endpoint(self.identity, self.peer, self.paths, self.settings, resume,
                                 self.rng, now, WALL0 + int(now * 1e9))
        for path_id in range(len(self.paths)):
            self.endpoint.path_connected(path_id, now)
        self.jobs = []
        self.outbox = []

    def crash(self, now: float) -> None:
        """Lose everything not committed (jobs held back included), restart from the store."""
        self.store.close()
        self.open(now)

    def wipe(self, now: float) -> None:
        """Lose the store itself: the restart creates a new one with a new epoch."""
        self.store.close()
        shutil.rmtree(self.state_dir)
        self.open(now)

    def copy_store(self, to: Path) -> None:
        """A backup of the store as it is now (``restore`` puts it back)."""
        shutil.copytree(self.state_dir, to)

    def restore(self, backup: Path, now: float) -> None:
        """Crash, and come back with an older copy of the store (a restored backup)."""
        self.store.close()
        shutil.rmtree(self.state_dir)
        shutil.copytree(backup, self.state_dir)
        self.open(now)

    # --- the runner's steps -------------------------------------------------------

    def call(self, request: EndpointRequest, conversation: object = None) -> int:
        """Hand a client request to the endpoint; its answer lands in ``replies[token]``."""
        self._tokens += 1
        self.endpoint.request(request, self._tokens, conversation, self.now)
        return self._tokens

    def receive(self, path_id: int, packet: bytes) -> Received:
        """A packet from the network."""
        return self.endpoint.packet(path_id, packet, self.now)

    def poll(self) -> None:
        """One ``poll``: record replies and notices, queue its jobs and its packets."""
        out = self.endpoint.poll(self.now)
        for token, outcome in out.replies:
            assert isinstance(token, int)
            self.replies[token] = outcome
        self.notices.extend(out.notices)
        self.alerts.extend(out.alerts)
        self.jobs.extend(out.jobs)
        self.outbox.extend(out.packets)

    def run_jobs(self, limit: int | None = None) -> int:
        """Execute queued store jobs in order (at most ``limit``) and feed the results back."""
        done = 0
        while self.jobs and (limit is None or done < limit):
            job = self.jobs.pop(0)
            try:
                if self.fail_commits and isinstance(job, Commit):
                    raise HotlineError("database or disk is full")
                if self.fail is not None and self.fail(job):
                    raise HotlineError("disk I/O error")
                result = self.store.execute(job)
            except HotlineError as err:
                self.endpoint.store_failed(job, str(err), self.now)
            else:
                self.endpoint.store_done(job, result, self.now)
            done += 1
        return done

    def turn(self) -> None:
        """poll and run jobs until the endpoint has nothing more to store."""
        self.poll()
        for _ in range(64):
            if not self.run_jobs():
                break
            self.poll()

    def take_packets(self) -> list[Outbound]:
        """The packets produced so far (the outbox is emptied)."""
        packets, self.outbox = self.outbox, []
        return packets

    def get_timer(self) -> float | None:
        """The endpoint's next deadline."""
        return self.endpoint.get_timer()


class NodePair:
    """Two nodes ``a`` and ``b`` over paths ``tcp`` (0) and ``udp`` (1) (module header)."""

    def __init__(self, root: Path, seed: int = 1, link: LinkSettings | None = None,
                 settings: EndpointSettings | None = None) -> None:
        self.now = 100.0
        base = settings or EndpointSettings()
        self.settings = base if link is None else EndpointSettings(
            link, base.peer_name, base.log_every, base.max_backlog)
        ids = [Identity.from_seed(bytes([i]) * 32) for i in (1, 2)]
        self.cut: set[int] = set()
        # drop(src_name, path_id, packet) -> True drops that packet (targeted loss).
        self.drop: Callable[[str, int, bytes], bool] = lambda _s, _p, _b: False
        self.nodes = [
            Node("ab"[i], ids[i], ids[1 - i].public, root / "ab"[i], self.settings,
                 seeded_rng(seed * 10 + i), self.now)
            for i in range(2)
        ]

    @property
    def a(self) -> Node:
        return self.nodes[0]

    @property
    def b(self) -> Node:
        return self.nodes[1]

    def step(self) -> int:
        """One turn of each node, its packets delivered at once; returns packets moved."""
        moved = 0
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            src.now = dst.now = self.now
            src.turn()
            for packet in src.take_packets():
                if packet.path_id in self.cut or self.drop(src.name, packet.path_id,
                                                           packet.packet):
                    continue
                moved += 1
                dst.receive(packet.path_id, packet.packet)
        return moved

    def run(self, seconds: float, tick: float = 0.05) -> None:
        """Exchange packets while advancing the clock by ``tick`` up to ``seconds``."""
        end_at = self.now + seconds
        while self.now < end_at:
            for _ in range(1000):
                if not self.step():
                    break
            self.now = round(self.now + tick, 6)

    def close(self) -> None:
        """Close both stores."""
        for node in self.nodes:
            node.store.close()
