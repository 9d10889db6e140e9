"""The sender half of one lane of the reliable message stream (DESIGN §4, §4b). Sans-IO.

The receiver half is ``incoming.py``; ``endpoint.py`` keeps the durability rule between
them and the store: **a message is pushed only after it is durable, and acknowledged
only after it is durable** — so an ACK is a promise that survives a crash of either end.

``OutgoingStream`` (one per precedence lane). Messages are sent in seq order, new ones
no further than the peer's advertised ``window`` beyond its ack and at most
``max_in_flight`` unacknowledged at once. Each sent message carries a retransmission
deadline ``sent_at + RTO``; the in-flight set is kept in send-time order, so the
earliest deadline is its first entry and ``get_timer`` is O(1). The RTO is RFC 6298
(``rtt.py``), sampled only on messages never sent twice (Karn's rule). Selective
ranges in an ACK mark messages as held by the receiver so they are not resent; they
are not freed, since the receiver's reorder buffer is not durable. A path change or a
HELLO makes every unacked message due at once (magic-wormhole's ``outbound.py``).

**Backlog bounded by disk, not memory.** Only a window of the unacknowledged messages
is in memory (at most ``memory_limit`` messages and ``memory_bytes``); ``head`` is the
last durable seq, which may lie beyond the loaded ones. ``read_wanted`` says when to
read the next stretch from the store; ``on_read`` appends it. A message pushed while
the stream is behind (not everything durable is loaded) stays on disk until read.

**Acks name bytes, not only seqs.** Every ACK and HELLO carries the chain hash of the
envelope at its ``upto``. A message is freed only when that hash equals ours: then the
receiver holds exactly our bytes up to there (it is a hash chain). A mismatch, or an
``upto`` above our head, means our store went back in time (restored from a backup)
and reused seqs — ``on_ack`` answers ``Fork`` and frees nothing. An ``upto`` between
the loaded window and our head answers ``NeedChain``: the endpoint reads our chain
hash there from the store and calls ``on_chain``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hotline.errors import LocalProtocolError
from hotline.proto.envelope import ZERO_HASH
from hotline.proto.frames import Ack, Data, Position
from hotline.proto.records import OutRecord
from hotline.proto.rtt import RttEstimator

DEFAULT_MAX_IN_FLIGHT = 1024
DEFAULT_MEMORY_LIMIT = 2 * DEFAULT_MAX_IN_FLIGHT
DEFAULT_MEMORY_BYTES = 16 * 1024 * 1024
_NO_SAMPLE = float("-inf")


@dataclass(frozen=True, slots=True)
class Advanced:
    """The cumulative ack moved to ``upto`` (chain ``chain``): record it durably."""

    upto: int
    chain: bytes


@dataclass(frozen=True, slots=True)
class Fork:
    """The peer holds other bytes than ours (or more seqs than we stored): our store
    went back in time. ``peer_upto`` is what the peer claims, ``head`` what we hold."""

    peer_upto: int
    head: int
    reason: str


@dataclass(frozen=True, slots=True)
class NeedChain:
    """Check ``upto``/``chain`` against our stored chain hash at ``upto`` (not loaded)."""

    upto: int
    chain: bytes


@dataclass(frozen=True, slots=True)
class PeerLost:
    """The peer's HELLO says it holds less than it acknowledged: its store went back in
    time and seqs ``first..last`` of ours are gone from it (we freed them already)."""

    first: int
    last: int


AckOutcome = Advanced | Fork | NeedChain | PeerLost | None


class _Pending:
    """One unacknowledged outgoing message in memory."""

    __slots__ = ("chain", "frame", "retransmitted")

    def __init__(self, frame: Data, chain: bytes) -> None:
        self.frame = frame
        self.chain = chain
        self.retransmitted = False


class OutgoingStream:
    """Sender half of one lane (see the module header).

    Invariants: in memory are exactly seqs ``acked_upto + 1 .. loaded_upto``;
    ``loaded_upto <= head``; a sent message is either in flight (``_timers``, send-time
    order) or due again (``_retx``); ``_sacked`` ⊆ ``_timers``; seqs ``>= _next_new``
    were never sent.
    """

    def __init__(
        self,
        epoch: bytes,
        lane: int,
        *,
        acked: Position,
        head: int,
        loaded: Sequence[OutRecord] = (),
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        initial_window: int = DEFAULT_MAX_IN_FLIGHT,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> None:
        """Resume a lane from the store.

        Args:
            epoch: our stream's epoch (16 bytes). lane: 0 (flash) … 3 (routine).
            acked: the peer's cumulative ack as stored, with the chain hash there.
            head: the last seq stored in this lane (``acked.upto <= head``).
            loaded: the first stored messages above ``acked.upto`` (the rest is read
                later, see ``read_wanted``).
            max_in_flight: most messages sent and not yet acknowledged at once.
            initial_window: the peer's window assumed until its first ACK.
            memory_limit, memory_bytes: most messages/bytes of the backlog in memory.

        Raises:
            LocalProtocolError: ``loaded`` does not continue ``acked.upto`` or passes
                ``head``.
        """
        if head < acked.upto:
            raise LocalProtocolError(f"head {head} below the stored ack {acked.upto}")
        self.epoch = epoch
        self.lane = lane
        self.acked_upto = acked.upto
        self.acked_chain = acked.chain
        self.head = head
        self.max_in_flight = max(1, max_in_flight)
        self.memory_limit = max(self.max_in_flight, memory_limit)
        self.memory_bytes = memory_bytes
        self._peer_window = initial_window
        self._msgs: dict[int, _Pending] = {}
        self._bytes = 0
        self.loaded_upto = acked.upto
        self._reading = False
        self._next_new = acked.upto + 1
        self._timers: dict[int, float] = {}  # seq -> sent_at, oldest first
        self._retx: set[int] = set()
        self._sacked: set[int] = set()
        self._pending_check: Position | None = None
        self._rtt = RttEstimator()
        self.retransmissions = 0  # DATA frames handed out again (since start-up)
        # Raised by the link while the data path has its own loss detection (RFC 9002):
        # then this timer is only a backstop, not a second, jumpier loss detector.
        self.rto_floor = 0.0
        self._load(loaded)

    # --- state --------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Messages stored and not yet cumulatively acknowledged (memory or disk)."""
        return self.head - self.acked_upto

    @property
    def in_memory(self) -> int:
        """Unacknowledged messages held in memory."""
        return len(self._msgs)

    @property
    def in_flight(self) -> int:
        """Messages sent, not acknowledged, not known held by the receiver, not timed out."""
        return len(self._timers) - len(self._sacked)

    @property
    def rto(self) -> float:
        """Current retransmission timeout in seconds (at least ``rto_floor``)."""
        return max(self._rtt.rto, self.rto_floor)

    @property
    def srtt(self) -> float | None:
        """Smoothed round-trip time of acknowledged messages (None before a sample)."""
        return self._rtt.srtt

    def base_seq(self) -> int:
        """For our HELLO: the lowest unacked seq, or the next seq when all are acked."""
        return self.acked_upto + 1

    def has_due(self) -> bool:
        """Whether ``frames_to_send`` would return something now."""
        return bool(self._retx) or self._can_send_new()

    def next_frame_size(self) -> int | None:
        """Bytes of envelope and signature of the frame ``frames_to_send`` gives next."""
        if self._retx:
            frame = self._msgs[min(self._retx)].frame
        elif self._can_send_new():
            frame = self._msgs[self._next_new].frame
        else:
            return None
        return len(frame.raw) + len(frame.sig)

    # --- inputs -------------------------------------------------------------------

    def push(self, record: OutRecord) -> None:
        """A message that is ALREADY durable in the outbox (the next seq of this lane).

        Raises:
            LocalProtocolError: ``record.seq`` is not ``head + 1``.
        """
        if record.seq != self.head + 1:
            raise LocalProtocolError(f"pushed seq {record.seq}, expected {self.head + 1}")
        self.head = record.seq
        if self.loaded_upto == record.seq - 1 and self._has_room(len(record.raw)):
            self._keep(record)

    def read_wanted(self) -> tuple[int, int] | None:
        """``(after, limit)`` to read from the store now, or None.

        A read is wanted when stored messages are not loaded and memory is at most half
        full; until ``on_read`` answers, no other read is wanted.
        """
        if self._reading or self.loaded_upto >= self.head:
            return None
        if len(self._msgs) > self.memory_limit // 2 or self._bytes > self.memory_bytes // 2:
            return None
        self._reading = True
        return self.loaded_upto, self.memory_limit - len(self._msgs)

    def on_read(self, records: Sequence[OutRecord]) -> None:
        """The store's answer to ``read_wanted``: stored messages in seq order."""
        self._reading = False
        self._load(r for r in records if r.seq > self.loaded_upto)

    def on_ack(self, ack: Ack, now: float) -> AckOutcome:
        """Process the peer's ACK of this lane (ACKs of another epoch are ignored)."""
        if ack.epoch != self.epoch:
            return None
        self._peer_window = ack.window
        outcome = self._check(Position(ack.upto, ack.chain))
        sample_at = _NO_SAMPLE
        if isinstance(outcome, Advanced):
            sample_at = self._advance(outcome.upto, outcome.chain)
        for lo, hi in ack.ranges:
            sample_at = max(sample_at, self._mark_held(lo, hi, now))
        if sample_at != _NO_SAMPLE:
            self._rtt.sample(now - sample_at)
        return outcome

    def on_hello(self, delivered: Position, now: float) -> AckOutcome:
        """The peer's HELLO says it holds this lane of our epoch up to ``delivered``.

        The peer may have restarted, forgetting its reorder buffer, so every unacked
        message becomes due at once.
        """
        outcome = self._check(delivered)
        if isinstance(outcome, Advanced):
            self._advance(outcome.upto, outcome.chain)
        elif outcome is None and delivered.upto < self.acked_upto:
            outcome = PeerLost(delivered.upto + 1, self.acked_upto)
        self._sacked.clear()
        self._all_due()
        return outcome

    def on_chain(self, upto: int, stored: bytes | None) -> AckOutcome:
        """Our stored chain hash at ``upto`` (read after ``NeedChain``): finish the check."""
        pending = self._pending_check
        if pending is None or pending.upto != upto:
            return None  # an answer to an older question: the newest one still waits
        self._pending_check = None
        if upto <= self.acked_upto:
            return None
        if stored != pending.chain:
            return Fork(upto, self.head, f"the peer holds other bytes at seq {upto}")
        self._advance(upto, pending.chain)
        return Advanced(upto, pending.chain)

    def resend(self, seq: int) -> None:
        """The path's loss detection says ``seq`` was lost: send it again now (unless it
        is acknowledged or already due)."""
        if seq in self._timers and seq not in self._sacked:
            del self._timers[seq]
            self._msgs[seq].retransmitted = True
            self._retx.add(seq)

    def on_path_change(self, now: float) -> None:
        """A new primary path (failover, or a fresh session): resend all unacked at once."""
        self._all_due()

    def handle_timer(self, now: float) -> None:
        """Expire retransmission deadlines that are due (RFC 6298 §5.4-5.6)."""
        rto = self.rto
        fired = False
        while self._timers:
            seq, sent_at = next(iter(self._timers.items()))
            if sent_at + rto > now:
                break
            del self._timers[seq]
            if seq in self._sacked:
                if seq != self.acked_upto + 1:
                    self._timers[seq] = now  # still held by the receiver: keep watching
                    continue
                self._sacked.discard(seq)  # held, yet blocking the ack: it forgot it
            self._msgs[seq].retransmitted = True
            self._retx.add(seq)
            fired = True
        if fired:
            self._rtt.back_off()

    # --- outputs ------------------------------------------------------------------

    def frames_to_send(self, now: float, limit: int | None = None) -> list[Data]:
        """DATA frames due now: retransmissions first (lowest seq first), then new ones.

        Call after every input and after ``handle_timer``; if it returned ``limit``
        frames, more may be due (``has_due``).
        """
        return [frame for _seq, frame in self.numbered_frames_to_send(now, limit)]

    def numbered_frames_to_send(self, now: float, limit: int | None = None
                                ) -> list[tuple[int, Data]]:
        """``frames_to_send`` with each frame's seq."""
        cap = len(self._msgs) if limit is None else limit
        out: list[tuple[int, Data]] = []
        if self._retx:
            for seq in sorted(self._retx)[:cap]:
                out.append((seq, self._send(seq, now)))
        while len(out) < cap and self._can_send_new():
            seq = self._next_new
            self._next_new += 1
            out.append((seq, self._send(seq, now)))
        return out

    def get_timer(self) -> float | None:
        """The earliest retransmission deadline, or None when nothing is in flight."""
        if not self._timers:
            return None
        return next(iter(self._timers.values())) + self.rto

    # --- internals ----------------------------------------------------------------

    def _check(self, peer: Position) -> AckOutcome:
        """Compare the peer's position with our transcript (see the module header)."""
        upto = peer.upto
        if upto > self.head:  # zeros or not: more than we ever stored
            return Fork(upto, self.head, f"the peer holds seq {upto}, our store ends at "
                                         f"{self.head}")
        if upto > 0 and peer.chain == ZERO_HASH:
            return None  # the receiver rejoined mid-way and does not know this chain yet
        if upto < self.acked_upto:
            return None  # older than what it already told us: nothing to learn
        if upto == self.acked_upto:
            if peer.chain != self.acked_chain:
                return Fork(upto, self.head, f"the peer holds other bytes at seq {upto}")
            return None
        if upto <= self.loaded_upto:
            if peer.chain != self._msgs[upto].chain:
                return Fork(upto, self.head, f"the peer holds other bytes at seq {upto}")
            return Advanced(upto, peer.chain)
        self._pending_check = peer
        return NeedChain(upto, peer.chain)

    def _has_room(self, size: int) -> bool:
        return len(self._msgs) < self.memory_limit and self._bytes + size <= self.memory_bytes

    def _load(self, records: Iterable[OutRecord]) -> None:
        """Keep ``records`` in memory while there is room; the rest is read again later."""
        for record in records:
            if record.seq != self.loaded_upto + 1 or record.seq > self.head:
                raise LocalProtocolError(
                    f"loaded seq {record.seq} does not follow {self.loaded_upto}")
            if not self._has_room(len(record.raw)):
                return
            self._keep(record)

    def _keep(self, record: OutRecord) -> None:
        self._msgs[record.seq] = _Pending(Data(record.raw, record.sig), record.chain)
        self._bytes += len(record.raw)
        self.loaded_upto = record.seq

    def _can_send_new(self) -> bool:
        return (
            self._next_new <= self.loaded_upto
            and self._next_new <= self.acked_upto + self._peer_window
            and self.in_flight < self.max_in_flight
        )

    def _send(self, seq: int, now: float) -> Data:
        if seq in self._retx:
            self.retransmissions += 1
        self._retx.discard(seq)
        self._timers.pop(seq, None)
        self._timers[seq] = now
        return self._msgs[seq].frame

    def _advance(self, upto: int, chain: bytes) -> float:
        """Free everything <= upto. Returns the newest send time usable as an RTT
        sample (``_NO_SAMPLE`` if none)."""
        newest = _NO_SAMPLE
        for seq in range(self.acked_upto + 1, min(upto, self.loaded_upto) + 1):
            msg = self._msgs.pop(seq)
            self._bytes -= len(msg.frame.raw)
            sent_at = self._timers.pop(seq, None)
            self._retx.discard(seq)
            if seq in self._sacked:
                self._sacked.discard(seq)  # sampled when first marked held
            elif sent_at is not None and not msg.retransmitted:
                newest = max(newest, sent_at)
        self.acked_upto, self.acked_chain = upto, chain
        self.loaded_upto = max(self.loaded_upto, upto)
        self._next_new = max(self._next_new, upto + 1)
        return newest

    def _mark_held(self, lo: int, hi: int, now: float) -> float:
        """Mark seqs lo..hi as held by the receiver; newest RTT-usable send time."""
        newest = _NO_SAMPLE
        for seq in range(max(lo, self.acked_upto + 1), min(hi, self._next_new - 1) + 1):
            if seq in self._sacked:
                continue
            sent_at = self._timers.get(seq)
            if sent_at is None:  # due for retransmission: no longer needed
                self._retx.discard(seq)
                self._timers[seq] = now
            elif not self._msgs[seq].retransmitted:
                newest = max(newest, sent_at)
            self._sacked.add(seq)
        return newest

    def _all_due(self) -> None:
        for seq in self._timers:
            if seq not in self._sacked:
                self._msgs[seq].retransmitted = True
                self._retx.add(seq)
        self._timers = {s: t for s, t in self._timers.items() if s in self._sacked}
        self._rtt.backoff = 1
