"""What the endpoint asks of the store, and what the store answers (sans-IO vocabulary).

The endpoint (``endpoint.py``) never touches SQLite: it hands the daemon *store jobs*
and gets their results back as inputs. ``store.py`` executes them, one at a time, on
the store's own thread, in the order they were submitted — so a read submitted after a
commit sees that commit.

* ``Commit(batch)`` — one group commit (one transaction, one fsync) of everything one
  event-loop turn produced: our sealed envelopes, the peer's accepted envelopes, new
  acknowledgements, receipts, epoch changes and gaps. At most one is in flight.
* ``ReadOutgoing`` — our stored envelopes of one lane after a seq: the sender keeps
  only a window of its backlog in memory and reads the rest as acks move the window
  (DESIGN §4b "backlog bounded by disk"), and re-seals an abandoned epoch's backlog
  (``carried`` records how far, so a restart continues there).
* ``ReadChain`` — the chain hash of one of our stored envelopes, to check an
  acknowledgement for a seq that is not in memory.
* ``LookupSendIds`` — which idempotency ids (``send --id``) are already stored.
* ``ReadIncoming``, ``ReadOperatorAcks``, ``ReadOperatorState`` — operator
  acknowledgement and drills (DESIGN §9, §10; ``operator.py``): the peer's messages our
  operator acknowledges, which of ours the peer's operator acknowledged, and what
  awaits an operator at start-up.

A batch may also carry the link's new post-quantum ratchet secrets (``RatchetRecord``,
``pq.py``): they are used for a handshake only once committed.

Records carry exactly the bytes that were signed; the store never parses network bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One of our envelopes: epoch, lane, seq, exact signed bytes, signature, chain hash,
    and the client's idempotency id (``send --id``) if it gave one."""

    epoch: bytes
    lane: int
    seq: int
    raw: bytes
    sig: bytes
    chain: bytes
    send_id: str | None = None


@dataclass(frozen=True, slots=True)
class InRecord:
    """One of the peer's envelopes, accepted in order in its lane."""

    epoch: bytes
    lane: int
    seq: int
    raw: bytes
    sig: bytes


@dataclass(frozen=True, slots=True)
class AckRecord:
    """The peer durably holds our ``lane`` of ``epoch`` up to ``upto`` (chain ``chain``)."""

    epoch: bytes
    lane: int
    upto: int
    chain: bytes


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    """A peer's signed receipt of our stream (``epoch`` and ``lane`` are ours)."""

    epoch: bytes
    lane: int
    upto: int
    chain: bytes
    raw: bytes
    sig: bytes


@dataclass(frozen=True, slots=True)
class Rejoin:
    """The receiver (re)starts the peer's ``lane`` of ``epoch`` at ``base_seq``.

    For a new peer epoch this is where its stream starts for us (normally 1). For an
    epoch we know, ``base_seq`` above what we hold means those seqs are gone from the
    sender (our store was restored from an older copy): the store records the gap so
    that ``verify`` names it instead of failing on it.
    """

    epoch: bytes
    lane: int
    base_seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class NewOutEpoch:
    """We abandon our current epoch and continue in ``epoch`` (seqs from 1 in every lane).

    ``reason`` is stored with it. Used when the peer acknowledged more of our stream
    than our store holds, or other bytes than it holds: the store went back in time.
    """

    epoch: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class OperatorAckRecord:
    """An operator acknowledgement (DESIGN §9) linking an ack envelope to the message it
    acknowledges. ``ours`` True: the peer's operator acknowledged one of OUR messages
    (``epoch``/``lane``/``seq`` are ours; ``ack_*`` name their ack envelope). False: our
    operator acknowledged one of the PEER's messages with our envelope ``ack_*``."""

    ours: bool
    epoch: bytes
    lane: int
    seq: int
    ack_epoch: bytes
    ack_lane: int
    ack_seq: int
    # The acknowledged envelope's chain hash, as the ack envelope names it. For ``ours``
    # the store keeps the record only if it equals our stored chain at (lane, seq) in one
    # of our epochs (and files it under that epoch; ``epoch`` is only the endpoint's
    # guess, its current one): a peer cannot acknowledge what we never sent.
    chain: bytes = b""


@dataclass(frozen=True, slots=True)
class RatchetRecord:
    """The link's ML-KEM ratchet secrets (DESIGN §11): the newest and the one it was
    derived from (None: derived in a session keyed without one). Each replaces the
    last; both are 32 bytes."""

    current: bytes
    previous: bytes | None


@dataclass
class StoreBatch:
    """Everything one event-loop turn wants committed, in one transaction."""

    new_epoch: NewOutEpoch | None = None
    outgoing: list[OutRecord] = field(default_factory=list)
    carried: dict[tuple[bytes, int], int] = field(default_factory=dict)
    incoming: list[InRecord | Rejoin] = field(default_factory=list)  # in event order
    acks: dict[tuple[bytes, int], AckRecord] = field(default_factory=dict)
    receipts: list[ReceiptRecord] = field(default_factory=list)
    operator_acks: list[OperatorAckRecord] = field(default_factory=list)
    handshake_ts: int | None = None
    ratchet: RatchetRecord | None = None

    def __bool__(self) -> bool:
        return bool(self.new_epoch or self.outgoing or self.carried or self.incoming
                    or self.acks or self.receipts or self.operator_acks
                    or self.handshake_ts is not None or self.ratchet is not None)

    def merge_unsent(self, failed: StoreBatch) -> None:
        """Take over what a failed commit must not lose: everything but the sealed and
        accepted messages, which the endpoint rolled back (they are sealed or resent
        again). ``carried`` is not taken over either: it marks re-sealed messages that
        were rolled back too, and the endpoint carries them over again, with a new mark."""
        self.new_epoch = self.new_epoch or failed.new_epoch
        self.incoming[:0] = [r for r in failed.incoming if isinstance(r, Rejoin)]
        for ack in failed.acks.values():
            self.ack(ack)
        self.receipts[:0] = failed.receipts
        # Operator acks are not taken over: each belongs to an ack envelope of the failed
        # batch (ours: rolled back, its client refused; the peer's: resent by the peer).
        if failed.handshake_ts is not None:
            self.handshake_ts = max(self.handshake_ts or 0, failed.handshake_ts)
        # Merged oldest first (the failed batch, then the one gathered meanwhile): the
        # latest ratchet record is the whole state.
        self.ratchet = failed.ratchet or self.ratchet

    def ack(self, record: AckRecord) -> None:
        """Record a new cumulative ack (the newest per epoch and lane wins)."""
        key = (record.epoch, record.lane)
        old = self.acks.get(key)
        if old is None or record.upto > old.upto:
            self.acks[key] = record


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit ``batch`` in one transaction."""

    batch: StoreBatch


@dataclass(frozen=True, slots=True)
class Committed:
    """``Commit`` succeeded. ``rejected_receipts``: receipts that did not sign our own
    stored transcript (wrong chain, or above our head), not stored (DESIGN §4b).
    ``operator_acks``: the peer's operator acknowledgements (``ours``) stored, each filed
    under the epoch of ours its chain matched; ``rejected_operator_acks``: those whose
    chain matches none of our stored envelopes, not stored (DESIGN §9)."""

    rejected_receipts: Sequence[ReceiptRecord] = ()
    operator_acks: Sequence[OperatorAckRecord] = ()
    rejected_operator_acks: Sequence[OperatorAckRecord] = ()


@dataclass(frozen=True, slots=True)
class ReadOutgoing:
    """Up to ``limit`` of our envelopes of ``epoch``/``lane`` with seq > ``after``.

    ``carry``: a chunk of an abandoned epoch to re-seal in the current one, not the
    next stretch of a lane's backlog window (the store reads both alike; the endpoint
    matches an answer to the read it still waits for and ignores any other).
    """

    epoch: bytes
    lane: int
    after: int
    limit: int
    carry: bool = False


@dataclass(frozen=True, slots=True)
class ReadChain:
    """The chain hash of our envelope ``epoch``/``lane``/``seq`` (None if not stored)."""

    epoch: bytes
    lane: int
    seq: int


@dataclass(frozen=True, slots=True)
class LookupSendIds:
    """Which of ``ids`` are stored, and as which (lane, seq)."""

    ids: tuple[str, ...]


# --- operator acknowledgement and drills (DESIGN §9, §10; operator.py) ------------------


@dataclass(frozen=True, slots=True)
class ReadIncoming:
    """The peer's envelopes ``ids`` ((lane, seq)) of its latest epoch (``hotline ack``);
    result: one ``IncomingMessage`` or None (not stored) per id, in order."""

    ids: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One of the peer's envelopes and, if our operator acknowledged it already, our ack
    envelope's (lane, seq)."""

    record: InRecord
    acked_by: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class ReadOperatorAcks:
    """Which seqs ``first..upto`` of our ``lane`` of ``epoch`` the peer's operator has
    acknowledged (result: a frozenset of seqs)."""

    epoch: bytes
    lane: int
    first: int
    upto: int


@dataclass(frozen=True, slots=True)
class ReadOperatorState:
    """At start-up: envelopes that no operator acknowledged yet, newest first, at most
    ``limit`` per direction — ours of ``our_lanes``, the peer's of ``their_lanes`` (the
    endpoint keeps those that need an acknowledgement)."""

    our_lanes: tuple[int, ...]
    their_lanes: tuple[int, ...]
    limit: int


@dataclass(frozen=True, slots=True)
class OperatorState:
    """``ReadOperatorState``'s result: ours of our current epoch not acknowledged by the
    peer's operator, and the peer's of its latest epoch not acknowledged by ours."""

    ours: tuple[OutRecord, ...]
    theirs: tuple[InRecord, ...]


StoreJob = (Commit | ReadOutgoing | ReadChain | LookupSendIds | ReadIncoming
            | ReadOperatorAcks | ReadOperatorState)
StoreResult = (Committed | list[OutRecord] | bytes | None | dict[str, tuple[int, int]]
               | tuple[IncomingMessage | None, ...] | frozenset[int] | OperatorState)


@dataclass(frozen=True, slots=True)
class OutLane:
    """At start-up: one lane of our current epoch as stored."""

    head: int  # last seq stored
    head_chain: bytes
    acked: int  # the peer's cumulative ack
    acked_chain: bytes
    unacked: tuple[OutRecord, ...]  # the first ones above ``acked`` (a window, not all)


@dataclass(frozen=True, slots=True)
class InLane:
    """At start-up: one lane of the peer's latest epoch as stored."""

    delivered: int
    chain: bytes


@dataclass(frozen=True, slots=True)
class Carry:
    """An abandoned epoch's lane whose backlog is being re-sent in the current epoch:
    seqs ``after + 1 .. head`` of ``epoch`` still to re-seal."""

    epoch: bytes
    lane: int
    after: int
    head: int


@dataclass(frozen=True, slots=True)
class Resume:
    """What the endpoint needs from the store at start-up (read once, bounded)."""

    epoch: bytes
    out: tuple[OutLane, ...]  # one per lane
    peer_epoch: bytes | None
    peer_lanes: tuple[InLane, ...]  # one per lane (zeros when peer_epoch is None)
    peer_epochs_seen: frozenset[bytes]
    handshake_ts: int
    carry: tuple[Carry, ...] = ()
    ratchet: RatchetRecord | None = None  # the post-quantum ratchet secrets, if any
