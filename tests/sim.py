"""A deterministic simulated network driving two reliable-stream endpoints.

Each ``Endpoint`` is what a daemon holds for one link, minus the Noise layer: an
``OutgoingStream``, an ``IncomingStream`` and a REAL ``Store`` (SQLite in a temporary
directory). The ``Sim`` plays the daemon and the network, one event at a time, on a
simulated clock and with ``random.Random(seed)`` as the only source of chance, so a
seed replays a scenario exactly.

The daemon's rules, as the harness plays them:

* ``send``: sign, commit the envelope (``Store.apply``), and only then ``push`` it.
* a *turn* of an endpoint: feed it every packet due, commit what was accepted plus the
  new cumulative ack and receipts in one batch, call ``on_committed``, then send
  what the streams want to send (acks, receipts, DATA).
* a *crash* can happen between any two of those steps: the endpoint object and all
  its un-applied state are dropped and it is reopened from its store; both ends then
  exchange HELLOs, as after the new handshake a restart forces.
* a *wipe* deletes an endpoint's store before reopening: it comes back with a new
  epoch.

Faults: loss, duplication, delay (hence reordering), corruption and path switches
(``on_path_change`` on both ends, new latency, optionally the old path's packets
lost). The Noise AEAD would drop a corrupted packet, so corruption here only reaches
DATA frames — whose envelopes carry their own signature — and any other corrupted
frame is treated as dropped. HELLOs travel with the handshake, which the link
retries until it succeeds, so they are delivered (at once) in this model.

``Ledger`` records the truth as it happens — what each sender durably sent, each
acknowledgement it durably recorded, each batch each receiver durably delivered — and
``Sim.check`` asserts the properties against it and against both stores.
"""

from __future__ import annotations

import heapq
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hotline.errors import RemoteProtocolError
from hotline.proto.envelope import (
    ZERO_HASH,
    chain_hash,
    decode_envelope_untrusted,
    decode_receipt_untrusted,
    encode_envelope,
    encode_receipt,
    sign_envelope,
    sign_receipt,
    verify_envelope,
    verify_receipt,
)
from hotline.proto.frames import (
    Ack,
    Data,
    Frame,
    Hello,
    Receipt,
    decode_frame_untrusted,
    encode_frame,
)
from hotline.proto.identity import Identity, PublicKey
from hotline.proto.incoming import Accepted, IncomingStream, NewEpoch
from hotline.proto.outgoing import OutgoingStream
from hotline.store import Batch, InRecord, OutRecord, ReceiptRecord, Store

MAX_MESSAGE = 65536
T0 = 1_000.0
TS0 = 1_750_000_000 * 10**9


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
    sends: tuple[int, int] = (10, 10)  # messages A->B, B->A
    faults: Faults = field(default_factory=Faults)
    crashes: tuple[int, int] = (1, 1)  # crash-and-reopen count per side
    wipes: tuple[int, int] = (0, 0)  # store deletions per side
    path_switches: int = 1
    duration: float = 20.0  # the faulty phase; sends, crashes, wipes happen in it
    reorder_limit: int = 4096
    max_in_flight: int = 1024


@dataclass
class Ledger:
    """What really happened, kept outside the endpoints so it survives their crashes."""

    sent: dict[bytes, dict[int, bytes]] = field(default_factory=dict)  # epoch -> seq -> body
    acked: dict[bytes, int] = field(default_factory=dict)  # our epoch -> max durable ack
    delivered: dict[bytes, list[int]] = field(default_factory=dict)  # peer epoch -> seqs
    new_epochs: list[NewEpoch] = field(default_factory=list)
    wiped_epochs: list[bytes] = field(default_factory=list)  # our epochs lost in a wipe


class Endpoint:
    """One end: both streams and a real store, with the daemon's commit discipline."""

    def __init__(
        self, name: str, identity: Identity, peer: PublicKey, state_dir: Path,
        scenario: Scenario, rng: random.Random,
    ) -> None:
        self.name = name
        self.identity = identity
        self.peer = peer
        self.state_dir = state_dir
        self.scenario = scenario
        self.rng = rng
        self.ledger = Ledger()
        self.dropped = 0
        self.open()

    # --- lifecycle ----------------------------------------------------------------

    def open(self) -> None:
        """(Re)open from the store: all in-memory state is rebuilt from it."""
        self.store = Store.open(
            self.state_dir, self.identity.public.raw, self.peer.raw, rng=self.rng.randbytes
        )
        unacked = [(r.seq, r.raw, r.sig) for r in self.store.unacked()]
        self.out = OutgoingStream(
            self.store.epoch, self.store.acked_upto(), unacked,
            max_in_flight=self.scenario.max_in_flight,
        )
        peer = self.store.peer_stream()
        state = None if peer is None else (peer.epoch, peer.delivered_upto, peer.chain)
        self.inc = IncomingStream(
            self.identity.public, self.peer, state,
            reorder_limit=self.scenario.reorder_limit, max_message=MAX_MESSAGE,
        )
        self.ledger.sent.setdefault(self.store.epoch, {})
        self.pending_in: list[Accepted] = []
        self.pending_ack: int | None = None
        self.pending_receipts: list[ReceiptRecord] = []

    def crash(self) -> None:
        """Lose everything not committed, then restart from the store."""
        self.store.close()
        self.open()

    def wipe(self) -> None:
        """Lose the store itself: the restart creates a new one with a new epoch."""
        self.ledger.wiped_epochs.append(self.store.epoch)
        self.ledger.delivered.clear()  # what we received is gone with the store
        self.store.close()
        shutil.rmtree(self.state_dir)
        self.open()

    def hello(self) -> Hello:
        """Our HELLO, as the link builds it after a handshake."""
        seen = self.inc.position()
        return Hello(
            self.out.epoch, self.out.base_seq(),
            None if seen is None else seen[0], 0 if seen is None else seen[1],
        )

    # --- the daemon's steps -------------------------------------------------------

    def sign(self, body: bytes, now: float) -> OutRecord:
        """Build and sign the next envelope (not yet durable)."""
        seq, prev = self.store.out_head()
        raw = encode_envelope(
            self.out.epoch, self.identity.public.raw, self.peer.raw, seq + 1,
            TS0 + int(now * 1e9), prev, "text/plain", body,
        )
        return OutRecord(seq + 1, raw, sign_envelope(self.identity, raw))

    def commit_send(self, record: OutRecord, body: bytes) -> None:
        """Make the message durable, record it as sent, then hand it to the stream."""
        self.store.apply(Batch(outgoing=[record]))
        self.ledger.sent[self.out.epoch][record.seq] = body
        self.out.push(record.seq, record.raw, record.sig)

    def receive(self, packet: bytes, now: float) -> None:
        """One frame from the network; bad input is counted and dropped."""
        try:
            self._on_frame(decode_frame_untrusted(packet, MAX_MESSAGE), now)
        except RemoteProtocolError:
            self.dropped += 1

    def receive_hello(self, hello: Hello, now: float) -> None:
        """The peer's HELLO (after a handshake)."""
        event = self.inc.on_hello(hello)
        if event is not None:
            self.ledger.new_epochs.append(event)
        self._record_ack(self.out.on_hello(hello, now))

    def commit(self, now: float) -> None:
        """One group commit of everything this turn produced, then ``on_committed``."""
        batch = Batch(
            incoming=[InRecord(a.epoch, a.seq, a.raw, a.sig) for a in self.pending_in],
            acked_upto=self.pending_ack, receipts=self.pending_receipts,
        )
        self.store.apply(batch)
        if self.pending_ack is not None:
            epoch = self.out.epoch
            self.ledger.acked[epoch] = max(self.ledger.acked.get(epoch, 0), self.pending_ack)
        for a in self.pending_in:
            self.ledger.delivered.setdefault(a.epoch, []).append(a.seq)
        if self.pending_in:
            last = self.pending_in[-1]
            self.inc.on_committed(last.epoch, last.seq, now)
        self.pending_in, self.pending_ack, self.pending_receipts = [], None, []

    def emit(self, now: float) -> list[Frame]:
        """Frames the streams want sent now."""
        frames: list[Frame] = []
        ack = self.inc.ack_due(now)
        if ack is not None:
            frames.append(ack)
        receipt = self.inc.receipt_due(now)
        if receipt is not None:
            frames.append(self._receipt(*receipt))
        frames.extend(self.out.frames_to_send(now, 256))
        return frames

    def get_timer(self) -> float | None:
        return self.out.get_timer()

    # --- internals ----------------------------------------------------------------

    def _on_frame(self, frame: Frame, now: float) -> None:
        if isinstance(frame, Data):
            self.pending_in.extend(self.inc.on_data_untrusted(frame, now))
        elif isinstance(frame, Ack):
            self._record_ack(self.out.on_ack(frame, now))
        elif isinstance(frame, Receipt):
            receipt = decode_receipt_untrusted(frame.raw)
            assert receipt.sender == self.identity.public.raw
            assert receipt.recipient == self.peer.raw
            verify_receipt(self.peer, frame.raw, frame.sig)
            self.pending_receipts.append(
                ReceiptRecord(self.out.epoch, receipt.upto, receipt.chain, frame.raw, frame.sig)
            )
        else:
            raise AssertionError(f"unexpected frame {frame!r}")

    def _record_ack(self, upto: int | None) -> None:
        if upto is not None:
            self.pending_ack = max(upto, self.pending_ack or 0)

    def _receipt(self, upto: int, chain: bytes) -> Receipt:
        raw = encode_receipt(self.peer.raw, self.identity.public.raw, upto, chain)
        return Receipt(raw, sign_receipt(self.identity, raw))


class Network:
    """Packets in flight, delivered in time order (ties in send order)."""

    def __init__(self, rng: random.Random, faults: Faults) -> None:
        self.rng = rng
        self.faults = faults
        self.latency = faults.delay
        self._queue: list[tuple[float, int, str, bytes]] = []
        self._counter = 0
        self.corrupted = 0

    def send(self, dst: str, frame: Frame, now: float) -> None:
        f, r = self.faults, self.rng
        packet = encode_frame(frame)
        if r.random() < f.loss:
            return
        for _ in range(2 if r.random() < f.dup else 1):
            copy = packet
            if r.random() < f.corrupt:
                if not isinstance(frame, Data):
                    continue  # the AEAD would drop it
                copy = self._corrupt(packet)
            self._counter += 1
            at = now + r.uniform(*self.latency)
            heapq.heappush(self._queue, (at, self._counter, dst, copy))

    def _corrupt(self, packet: bytes) -> bytes:
        self.corrupted += 1
        buf = bytearray(packet)
        for _ in range(self.rng.randint(1, 3)):
            buf[self.rng.randrange(len(buf))] ^= self.rng.randint(1, 255)
        return bytes(buf)

    def next_time(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def pop_due(self, now: float) -> Iterator[tuple[str, bytes]]:
        while self._queue and self._queue[0][0] <= now:
            _, _, dst, packet = heapq.heappop(self._queue)
            yield dst, packet

    def cut(self) -> None:
        """The old path died with everything on it."""
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


# Where a scheduled crash strikes in the endpoint's next turn (or send).
CRASH_POINTS = ("before_commit", "after_commit", "after_emit", "during_send")


class Sim:
    """Runs a ``Scenario`` between endpoints ``a`` and ``b`` in ``base_dir``."""

    def __init__(self, scenario: Scenario, base_dir: Path) -> None:
        self.sc = scenario
        self.rng = random.Random(scenario.seed)
        ids = {"a": Identity.from_seed(b"\xaa" * 32), "b": Identity.from_seed(b"\xbb" * 32)}
        self.ends = {
            name: Endpoint(
                name, ids[name], ids[other].public, base_dir / name, scenario,
                random.Random(self.rng.random()),
            )
            for name, other in (("a", "b"), ("b", "a"))
        }
        self.net = Network(self.rng, scenario.faults)
        self.now = T0
        self.crash_at: dict[str, str | None] = {"a": None, "b": None}
        self.crashes = {"a": 0, "b": 0}
        self.actions = self._schedule()
        self.handshake()

    def _schedule(self) -> list[tuple[float, int, str, str]]:
        """(time, tiebreak, side, action) for every send, crash, wipe and path switch."""
        sc, r = self.sc, self.rng
        acts: list[tuple[float, int, str, str]] = []

        def at() -> float:
            return T0 + r.uniform(0, sc.duration)

        for i, side in enumerate("ab"):
            acts += [(at(), len(acts), side, "send") for _ in range(sc.sends[i])]
            acts += [(at(), len(acts), side, "crash") for _ in range(sc.crashes[i])]
            acts += [(at(), len(acts), side, "wipe") for _ in range(sc.wipes[i])]
        acts += [(at(), len(acts), "ab", "path") for _ in range(sc.path_switches)]
        heapq.heapify(acts)
        return acts

    # --- the loop -----------------------------------------------------------------

    def run(self, max_time: float = 1_000.0) -> None:
        """Run the faulty phase, then a quiet one until everything is acknowledged."""
        while self.actions or self.now < T0 + self.sc.duration:
            if not self.step(T0 + self.sc.duration):
                break
        self.net.faults = Faults(delay=self.net.latency)
        for side, point in self.crash_at.items():
            if point is not None:  # its crash point never came: crash now
                self._crash_here(side, point)
        while not self.settled():
            if self.now > T0 + max_time or not self.step(T0 + max_time):
                raise AssertionError(f"seed {self.sc.seed}: no progress by t={self.now:.1f}")

    def settled(self) -> bool:
        return not self.net and all(
            e.out.backlog == 0 and not e.pending_in for e in self.ends.values()
        )

    def step(self, horizon: float) -> bool:
        """Advance to the next event and handle everything due then."""
        times = [t for t in (self.net.next_time(), *self._timers()) if t is not None]
        if self.actions:
            times.append(self.actions[0][0])
        if not times:
            return False
        self.now = max(self.now, min(times))
        while self.actions and self.actions[0][0] <= self.now:
            _, _, side, action = heapq.heappop(self.actions)
            self.act(side, action)
        inbound: dict[str, list[bytes]] = {"a": [], "b": []}
        for dst, packet in self.net.pop_due(self.now):
            inbound[dst].append(packet)
        for name, end in self.ends.items():
            timer = end.get_timer()
            if timer is not None and timer <= self.now:
                end.out.handle_timer(self.now)
            self.turn(name, inbound[name])
        return True

    def _timers(self) -> list[float | None]:
        return [e.get_timer() for e in self.ends.values()]

    def act(self, side: str, action: str) -> None:
        if action == "send":
            self.send(side)
        elif action == "crash":
            self.crash_at[side] = self.rng.choice(CRASH_POINTS)
        elif action == "wipe":
            # The new session's keys make every packet in flight undecryptable (the old
            # session stops decrypting once the new one is confirmed, before HELLO).
            self.net.cut()
            self.ends[side].wipe()
            self.handshake()
        elif action == "path":
            if self.rng.random() < 0.5:
                self.net.cut()
            lo = self.rng.uniform(0.001, 0.2)
            self.net.latency = (lo, lo + self.rng.uniform(0.0, 0.3))
            for end in self.ends.values():
                end.out.on_path_change(self.now)

    def send(self, side: str) -> None:
        end = self.ends[side]
        body = f"{side} {self.rng.randrange(10**9)}".encode()
        record = end.sign(body, self.now)
        if self._crash_here(side, "during_send"):
            return  # signed, never committed: the client got no answer
        end.commit_send(record, body)

    def turn(self, side: str, packets: list[bytes]) -> None:
        end = self.ends[side]
        other = "b" if side == "a" else "a"
        if not packets and not end.pending_in:
            self._emit(end, other)  # timers only; crashes wait for a turn with input
            return
        for packet in packets:
            end.receive(packet, self.now)
        if packets and self.rng.random() < 0.5:
            # The runner may pump packets out before the store commit returns: any ACK
            # sent now must cover only what is already durable.
            self._emit(end, other)
        if self._crash_here(side, "before_commit"):
            return
        end.commit(self.now)
        if self._crash_here(side, "after_commit"):
            return
        self._emit(end, other)
        self._crash_here(side, "after_emit")

    def _emit(self, end: Endpoint, other: str) -> None:
        for frame in end.emit(self.now):
            self.net.send(other, frame, self.now)

    def _crash_here(self, side: str, point: str) -> bool:
        if self.crash_at[side] != point:
            return False
        self.crash_at[side] = None
        self.crashes[side] += 1
        self.ends[side].crash()
        self.handshake()
        return True

    def handshake(self) -> None:
        """A new session: both ends exchange HELLOs, commit what they imply, and send."""
        a, b = self.ends["a"], self.ends["b"]
        hello_a, hello_b = a.hello(), b.hello()
        a.receive_hello(hello_b, self.now)
        b.receive_hello(hello_a, self.now)
        for name, end in self.ends.items():
            end.commit(self.now)
            self._emit(end, "b" if name == "a" else "a")

    # --- the properties -----------------------------------------------------------

    def check(self) -> None:
        """Assert every property against the ledgers and the stores."""
        for sender, receiver in (("a", "b"), ("b", "a")):
            self._check_direction(self.ends[sender], self.ends[receiver])

    def _check_direction(self, snd: Endpoint, rcv: Endpoint) -> None:
        seed = self.sc.seed
        current = snd.out.epoch
        # everything durably sent in the current epoch was delivered and acknowledged
        assert snd.store.acked_upto() == max(snd.ledger.sent[current], default=0), seed
        joined = {e.epoch: e.base_seq for e in rcv.ledger.new_epochs}
        for epoch, seqs in rcv.ledger.delivered.items():
            # exactly once, in order: every commit continued where the last one stopped
            first = joined.get(epoch, 1)
            assert seqs == list(range(first, first + len(seqs))), (seed, seqs)
        for epoch, sent in snd.ledger.sent.items():
            lost_with_receiver = 0 if epoch not in joined else joined[epoch] - 1
            acked = snd.ledger.acked.get(epoch, 0)
            must_have = sent if epoch == current else {
                s: b for s, b in sent.items() if s <= acked
            }
            self._check_stored(rcv, epoch, must_have, lost_with_receiver, seed)
        self._check_chain(rcv, snd.identity.public, seed)
        # the receiver announced every epoch it switched to (a wiped sender's new epoch)
        for epoch in snd.ledger.sent:
            if epoch != next(iter(snd.ledger.sent)) and snd.ledger.sent[epoch]:
                assert epoch in joined, seed
        # receipts name our own chain
        for receipt in snd.store.iter_receipts():
            if receipt.epoch == current:
                record = snd.store.get_outgoing(receipt.upto)
                assert record is not None
                assert chain_hash(record.raw) == receipt.chain, seed

    def _check_stored(
        self, rcv: Endpoint, epoch: bytes, must_have: dict[int, bytes], floor: int, seed: int,
    ) -> None:
        for seq, body in must_have.items():
            if seq <= floor:
                continue  # acknowledged to a receiver store that was then wiped
            record = rcv.store.get_incoming(seq, epoch)
            assert record is not None, (seed, "lost", seq)
            env = decode_envelope_untrusted(record.raw, MAX_MESSAGE)
            assert (env.epoch, env.seq, env.body) == (epoch, seq, body), seed

    def _check_chain(self, rcv: Endpoint, sender: PublicKey, seed: int) -> None:
        prev: dict[bytes, tuple[int, bytes]] = {}
        for record in rcv.store.iter_incoming():
            verify_envelope(sender, record.raw, record.sig)
            env = decode_envelope_untrusted(record.raw, MAX_MESSAGE)
            last = prev.get(record.epoch)
            if last is None:
                assert env.seq != 1 or env.prev == ZERO_HASH, seed
            elif last[0] + 1 == env.seq:
                assert env.prev == last[1], (seed, "chain", env.seq)
            prev[record.epoch] = (env.seq, chain_hash(record.raw))

    def close(self) -> None:
        for end in self.ends.values():
            end.store.close()
