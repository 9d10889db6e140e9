"""A deterministic simulated network between two real endpoints, with crashes and accidents.

Each end is a ``Node`` (``endpoints.py``): the product's ``Endpoint`` — Noise sessions,
the Link, all four lanes, every durability rule — over a REAL ``Store`` (SQLite in a
temporary directory), pumped the way the runner pumps it. Nothing of the rules is
copied here. The ``Sim`` plays the network and the operator, one event at a time, on a
simulated clock, with ``random.Random(seed)`` as the only source of chance, so a seed
replays a scenario exactly.

What it throws at the pair, all chosen by the ``Scenario``:

* the network: loss, duplication, corruption (the AEAD drops it), delay and hence
  reordering, path switches (the old path's packets lost, new latency); packets of an
  old session keep arriving after a crash or a wipe — late ACKs and HELLOs included;
* crashes at any step of a turn: before a commit is executed, after it is executed but
  before the endpoint hears so, after the turn's packets left, or while a client
  request waits for its commit;
* a wiped store (a new epoch), a store restored from an older copy (at either end),
  a failing disk (commits refused for a while);
* optionally a hostile peer: frames sealed with the real session keys that re-announce
  old or random epochs with huge seqs, ACKs for seqs never sent, bogus receipts.

``Sim.check`` then asserts, from the clients' replies and both stores: ``verify`` passes
at both ends (every signature, chain link, receipt; gaps only where recorded); every
message a client was told was stored reached the other end's inbox (or was lost with
the receiver's own wiped or restored store, and is then recorded as such); each lane of
each epoch was delivered once and in order; no direction is left with a backlog.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hotline.proto.endpoint import EndpointSettings
from hotline.proto.envelope import decode_envelope_untrusted
from hotline.proto.frames import Ack, Frame, Hello, Position, Receipt, encode_frame
from hotline.proto.identity import Identity
from hotline.proto.lanes import LANES
from hotline.proto.link import LinkSettings
from hotline.proto.records import Commit
from hotline.proto.requests import SendRequest, Stored
from hotline.testing.endpoints import Node, seeded_rng
from hotline.verify import verify_store

T0 = 1_000.0
_MAX_STEPS_AT_ONE_INSTANT = 2_000


@dataclass(frozen=True)
class Faults:
    """Per-packet fault probabilities and the latency range (seconds)."""

    loss: float = 0.0
    dup: float = 0.0
    corrupt: float = 0.0
    delay: tuple[float, float] = (0.01, 0.05)


@dataclass
class Scenario:
    """Everything that varies between runs; the rest follows from ``seed``."""

    seed: int
    sends: tuple[int, int] = (10, 10)  # client requests a->b, b->a
    faults: Faults = field(default_factory=Faults)
    crashes: tuple[int, int] = (1, 1)  # crash-and-reopen count per side
    wipes: tuple[int, int] = (0, 0)  # store deletions per side
    restores: tuple[int, int] = (0, 0)  # stores restored from an older copy, per side
    disk_full: tuple[int, int] = (0, 0)  # spells of refused commits, per side
    hostile: tuple[int, int] = (0, 0)  # bursts of hostile frames FROM each side
    path_switches: int = 1
    duration: float = 20.0  # the faulty phase; actions happen in it
    reorder_limit: int = 4096
    max_in_flight: int = 1024


@dataclass
class Ledger:
    """What clients were told, kept outside the nodes so it survives their crashes."""

    stored: dict[bytes, tuple[bytes, int, int]] = field(default_factory=dict)  # body -> id
    stored_at: dict[bytes, float] = field(default_factory=dict)
    # bodies the receiver may lack: acknowledged to a store of it that was then lost
    excused: set[bytes] = field(default_factory=set)
    forked: bool = False  # a sender's store went back in time: re-sent copies are allowed


# Where a scheduled crash strikes in the node's next turn.
CRASH_POINTS = ("before_commit", "after_commit", "after_emit", "during_send")


class Sim:
    """Runs a ``Scenario`` between nodes ``a`` and ``b`` in ``base_dir``."""

    def __init__(self, scenario: Scenario, base_dir: Path) -> None:
        self.sc = scenario
        self.base = base_dir
        self.rng = random.Random(scenario.seed)
        self.now = T0
        ids = {"a": Identity.from_seed(b"\xaa" * 32), "b": Identity.from_seed(b"\xbb" * 32)}
        settings = EndpointSettings(link=LinkSettings(
            reorder_limit=scenario.reorder_limit, max_in_flight=scenario.max_in_flight))
        self.nodes = {
            name: Node(name, ids[name], ids[other].public, base_dir / name, settings,
                       seeded_rng(self.rng.random()), self.now)
            for name, other in (("a", "b"), ("b", "a"))
        }
        self.ledgers = {"a": Ledger(), "b": Ledger()}  # by sender
        self.latency = scenario.faults.delay
        self.faults = scenario.faults
        self._queue: list[tuple[float, int, str, int, bytes]] = []
        self._counter = 0
        self.crash_at: dict[str, str | None] = {"a": None, "b": None}
        self.crashes = {"a": 0, "b": 0}
        self._waiting: dict[str, list[tuple[int, tuple[bytes, ...], int]]] = {"a": [], "b": []}
        self._backups: dict[str, list[tuple[Path, float]]] = {"a": [], "b": []}
        self._backups_taken = 0
        self._full_until = {"a": 0.0, "b": 0.0}
        self.hostile_frames = 0
        self._stuck = 0
        self.actions = self._schedule()

    def _schedule(self) -> list[tuple[float, int, str, str]]:
        """(time, tiebreak, side, action) for every scheduled action."""
        sc, r = self.sc, self.rng
        acts: list[tuple[float, int, str, str]] = []

        def at() -> float:
            return T0 + r.uniform(0, sc.duration)

        for i, side in enumerate("ab"):
            for action, count in (("send", sc.sends[i]), ("crash", sc.crashes[i]),
                                  ("wipe", sc.wipes[i]), ("diskfull", sc.disk_full[i]),
                                  ("hostile", sc.hostile[i])):
                acts += [(at(), len(acts), side, action) for _ in range(count)]
            for _ in range(sc.restores[i]):
                backup_at = at()
                acts.append((backup_at, len(acts), side, "backup"))
                acts.append((r.uniform(backup_at, T0 + sc.duration), len(acts), side,
                             "restore"))
        acts += [(at(), len(acts), "ab", "path") for _ in range(sc.path_switches)]
        heapq.heapify(acts)
        return acts

    # --- the loop -----------------------------------------------------------------

    def run(self, max_time: float = 2_000.0) -> None:
        """Run the faulty phase, then a quiet one until everything is acknowledged."""
        while self.actions:
            self.step()
        self.faults = Faults(delay=self.latency)
        for side, point in self.crash_at.items():
            if point is not None:  # its crash point never came: crash now
                self._crash(side)
        while not self.settled():
            if self.now > T0 + max_time:
                raise AssertionError(f"seed {self.sc.seed}: no progress by t={self.now:.1f}")
            self.step()

    def settled(self) -> bool:
        """Nothing waiting, every lane of both ends acknowledged (heartbeats never stop,
        so the network itself is never empty)."""
        if any(self._waiting.values()):
            return False
        for side, node in self.nodes.items():
            ep = node.endpoint
            if node.jobs or not ep.idle:
                return False
            if not self.sc.hostile[side == "b"] and any(s.backlog for s in ep.link.outgoing):
                return False
            if ep._carry:
                return False
        return True

    def step(self) -> None:
        """Advance to the next event and handle everything due then.

        Raises:
            AssertionError: time stopped moving — some deadline is never acted on, which
                in the daemon would be a core spinning at 100% (the timer invariant).
        """
        times = [self._queue[0][0]] if self._queue else []
        times += [t for t in (n.get_timer() for n in self.nodes.values()) if t is not None]
        if self.actions:
            times.append(self.actions[0][0])
        now = max(self.now, min(times, default=self.now + 1.0))
        self._stuck = self._stuck + 1 if now == self.now else 0
        if self._stuck > _MAX_STEPS_AT_ONE_INSTANT:
            timers = {name: n.get_timer() for name, n in self.nodes.items()}
            raise AssertionError(f"seed {self.sc.seed}: time stuck at {now} ({timers})")
        self.now = now
        while self.actions and self.actions[0][0] <= self.now:
            _, _, side, action = heapq.heappop(self.actions)
            self.act(side, action)
        inbound: dict[str, list[tuple[int, bytes]]] = {"a": [], "b": []}
        while self._queue and self._queue[0][0] <= self.now:
            _, _, dst, path_id, packet = heapq.heappop(self._queue)
            inbound[dst].append((path_id, packet))
        for name in "ab":
            self.turn(name, inbound[name])

    def turn(self, side: str, packets: list[tuple[int, bytes]]) -> None:
        """One runner turn of ``side``, with its crash point if one is due."""
        node = self.nodes[side]
        node.now = self.now
        node.fail_commits = self.now < self._full_until[side]
        for path_id, packet in packets:
            node.receive(path_id, packet)
        node.poll()
        point = self.crash_at[side]
        if point == "before_commit" and any(isinstance(j, Commit) for j in node.jobs):
            self._crash(side)
            return
        if point == "after_commit" and any(isinstance(j, Commit) for j in node.jobs):
            for job in list(node.jobs):
                if isinstance(job, Commit):
                    node.store.execute(job)  # durable, but the endpoint never hears
                    break
            self._crash(side)
            return
        for _ in range(64):
            if not node.run_jobs():
                break
            node.poll()
        self._collect(side)
        self._emit(side)
        if point == "after_emit" and packets:
            self._crash(side)

    def _emit(self, side: str) -> None:
        other = "b" if side == "a" else "a"
        for packet in self.nodes[side].take_packets():
            self.send_packet(other, packet.path_id, packet.packet)

    def send_packet(self, dst: str, path_id: int, packet: bytes) -> None:
        """Put one packet on the wire, with the scenario's faults."""
        f, r = self.faults, self.rng
        if r.random() < f.loss:
            return
        for _ in range(2 if r.random() < f.dup else 1):
            copy = packet
            if r.random() < f.corrupt:
                buf = bytearray(packet)
                buf[r.randrange(len(buf))] ^= r.randint(1, 255)
                copy = bytes(buf)
            self._counter += 1
            at = self.now + r.uniform(*self.latency)
            heapq.heappush(self._queue, (at, self._counter, dst, path_id, copy))

    # --- actions ------------------------------------------------------------------

    def act(self, side: str, action: str) -> None:
        """Carry out one scheduled action."""
        if action == "send":
            self.send(side)
        elif action == "crash":
            self.crash_at[side] = self.rng.choice(CRASH_POINTS)
        elif action == "wipe":
            self._lost_receiver_store(side)
            self._lost_sender_store(side, since=-1.0)
            self.nodes[side].wipe(self.now)
        elif action == "backup":
            self._backups_taken += 1
            backup = self.base / f"backup-{side}-{self._backups_taken}"
            self.nodes[side].copy_store(backup)
            self._backups[side].append((backup, self.now))
        elif action == "restore":
            backup, taken_at = self._backups[side].pop(0)
            self._lost_receiver_store(side)
            self._lost_sender_store(side, since=taken_at)
            self.ledgers[side].forked = True
            self.nodes[side].restore(backup, self.now)
        elif action == "diskfull":
            self._full_until[side] = self.now + self.rng.uniform(0.1, 3.0)
        elif action == "hostile":
            self.hostile(side)
        elif action == "path":
            if self.rng.random() < 0.5:
                self._queue.clear()
            lo = self.rng.uniform(0.001, 0.2)
            self.latency = (lo, lo + self.rng.uniform(0.0, 0.3))

    def send(self, side: str) -> None:
        """A client request: 1-3 messages in a random lane."""
        node = self.nodes[side]
        count = self.rng.randint(1, 3)
        bodies = tuple(f"{side} {self.rng.randrange(10**12)}".encode() for _ in range(count))
        lane = self.rng.choice(LANES)
        token = node.call(SendRequest("text/plain", bodies, lane))
        self._waiting[side].append((token, bodies, lane))
        if self.crash_at[side] == "during_send":
            self._crash(side)

    def _collect(self, side: str) -> None:
        """Record every send the client was told went in."""
        node, ledger = self.nodes[side], self.ledgers[side]
        still = []
        for token, bodies, lane in self._waiting[side]:
            outcome = node.replies.pop(token, None)
            if outcome is None:
                still.append((token, bodies, lane))
            elif isinstance(outcome, Stored):
                epoch = node.endpoint.link.epoch
                for body, (id_lane, seq) in zip(bodies, outcome.ids, strict=True):
                    ledger.stored[body] = (epoch, id_lane, seq)
                    ledger.stored_at[body] = self.now
        self._waiting[side] = still

    def _crash(self, side: str) -> None:
        self.crash_at[side] = None
        self.crashes[side] += 1
        self._waiting[side] = []  # their clients got no answer: nothing was promised
        self.nodes[side].crash(self.now)

    def _lost_receiver_store(self, side: str) -> None:
        """``side`` loses (part of) its store: what it had stored may be gone for good
        (it may have acknowledged it, and the sender freed it, even with the ack still
        in flight). Anything it had NOT stored must still arrive."""
        sender = "b" if side == "a" else "a"
        store = self.nodes[side].store
        self.ledgers[sender].excused.update(
            decode_envelope_untrusted(e.raw, len(e.raw)).body
            for e in store.inbox_after(0, 10**9))

    def _lost_sender_store(self, side: str, since: float) -> None:
        """``side`` loses its outbox as of ``since`` (a wipe: everything; a restore:
        what it stored after the backup). Those messages arrive only if they already
        had; everything older it still holds, and must still deliver."""
        ledger = self.ledgers[side]
        ledger.excused.update(b for b, at in ledger.stored_at.items() if at > since)

    def hostile(self, side: str) -> None:
        """``side`` turns hostile for a moment: frames sealed with its real session keys."""
        link = self.nodes[side].endpoint.link
        if not link.sessions.can_send():
            return
        r = self.rng
        epoch = link.epoch
        lanes = tuple(r.randrange(2**40) for _ in LANES)
        zeros = tuple(Position(0, bytes(32)) for _ in LANES)
        frames: list[Frame] = [
            Hello(r.randbytes(16), lanes, None, zeros),
            Hello(epoch, lanes, epoch, zeros),
            Ack(epoch, r.choice(LANES), r.randrange(2**40), r.randbytes(32), (), 1),
            Receipt(r.randbytes(120), r.randbytes(64)),
        ]
        other = "b" if side == "a" else "a"
        for frame in r.sample(frames, k=r.randint(1, len(frames))):
            packet = link.sessions.seal(b"\x00" + encode_frame(frame))
            self.send_packet(other, 0, packet)
            self.hostile_frames += 1

    # --- the properties -----------------------------------------------------------

    def check(self) -> None:
        """Assert every property against the ledgers and both stores."""
        for sender, receiver in (("a", "b"), ("b", "a")):
            self._check_direction(sender, receiver)
        for node in self.nodes.values():
            report = verify_store(node.store, node.identity.public, node.peer)
            assert report.ok, (self.sc.seed, report.problem_lines())

    def _check_direction(self, sender: str, receiver: str) -> None:
        seed, ledger = self.sc.seed, self.ledgers[sender]
        store = self.nodes[receiver].store
        got: Counter[bytes] = Counter()
        for entry in store.inbox_after(0, 10**9):
            got[decode_envelope_untrusted(entry.raw, len(entry.raw)).body] += 1
        if not any(self.sc.hostile):
            for body in ledger.stored:
                assert got[body] >= 1 or body in ledger.excused, (seed, "lost", body)
        forked = ledger.forked or any(  # a fork re-sends what was unacknowledged
            n.kind == "epoch" and n.fields.get("change") == "our store went back in time"
            for n in self.nodes[sender].notices)
        if not forked:
            assert max(got.values(), default=1) == 1, (seed, "delivered twice")

    def close(self) -> None:
        """Close both stores."""
        for node in self.nodes.values():
            node.store.close()
