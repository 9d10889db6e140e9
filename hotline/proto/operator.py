"""Operator acknowledgement (DESIGN §9) and drills (§10): the endpoint's desk, sans-IO.

A *receipt* says the far machine stored a message; an operator *acknowledgement* says a
person there saw it. ``hotline ack ID…`` seals, per message, an envelope of type
``application/vnd.hotline.ack`` in that message's lane, back to its sender (body in
``bodies.py``: lane, seq, SHA-256 of the acknowledged envelope, comment): signed,
numbered, chained, stored and exportable like any message.

``OperatorDesk`` holds everything about it; the endpoint calls it at a few seams and
never decides anything about operators itself:

* ``request`` — ``OperatorAckRequest`` (``hotline ack``: read the messages from the
  store, refuse an unknown id or an ack of an ack, then order the ack envelopes; one
  already acknowledged is not acknowledged twice: its first ack's id is answered),
  ``WaitRequest(operator=True)`` (``send --wait-operator``: every seq ``first..upto``
  of a lane acknowledged by the peer's operator — acks that came before the wait are
  read from the store — else ``NotAcknowledgedError`` at the timeout),
  ``DrillRequest`` (``hotline drill``).
* ``on_delivered`` — before a batch commits: each of the peer's ack envelopes becomes an
  ``OperatorAckRecord(ours=True)`` in the same batch. The store keeps it only if its
  chain is one of our stored envelopes'; a malformed or bogus ack is logged and
  ignored, never trusted.
* ``on_committed`` — what the commit made durable: our messages that need the peer's
  operator become **pending** (``operator_pending``), the peer's that need ours
  **owed** (``operator_owed``); stored acks clear them and answer waiters; the peer's
  drills are answered at once (``Order``), answers and acks of our drills go to the
  ``DrillBook`` (drills.py).
* ``poll`` — ``DeskOut``: orders (envelopes for the endpoint to seal into its batch),
  store jobs, client replies and notices; ``get_timer`` its one deadline.

What needs an operator's ack (``bodies.needs_operator_ack``): a message of a lane in
``operator_ack`` (default flash and immediate) that is not itself an ack or a drill,
and a drill that asks for one. Both ends should list the same lanes: the sender's list
decides what it waits for, the receiver's what its operator owes.

Deadlines (``operator_deadline``, default flash 600 s, immediate 1800 s: ACP handling
times) count from the envelope's timestamp — our clock for pending, the peer's for owed
(its deadline as best we know it). When a pending message's deadline passes, one
``operator_overdue`` notice (priority 2; fields ``peer id lane age_s deadline_s``),
once per message per daemon run: after a restart an overdue message is reported once
more, so a restart never hides it. An ack from the peer's operator is an
``operator_ack`` notice (5); a refused one an ``operator_ack`` notice with
``result=refused`` (3).

Bounds: at most ``MAX_TRACKED`` (10,000) pending and as many owed, the oldest dropped
beyond (counted in ``dropped``); status lists the ``STATUS_ITEMS`` (1,000) oldest.
At start-up one store read resumes both from the newest ``RESUME_SCAN`` (20,000)
unacknowledged envelopes per direction of the lanes concerned.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from hotline.errors import (
    NotAcknowledgedError,
    RemoteProtocolError,
    StoreFailedError,
    UsageError,
)
from hotline.proto.bodies import (
    ACK_TYPE,
    DRILL_TYPE,
    AckBody,
    DrillAnswer,
    DrillCall,
    decode_ack_untrusted,
    decode_drill_untrusted,
    encode_ack,
    encode_answer,
)
from hotline.proto.drills import DrillBook
from hotline.proto.envelope import Envelope, chain_hash, decode_envelope_untrusted
from hotline.proto.incoming import Accepted
from hotline.proto.lanes import FLASH, IMMEDIATE, LANES, PRIORITY, lane_name, message_id
from hotline.proto.notices import CRIT, ERR, INFO, NOTICE, Notice
from hotline.proto.records import (
    Committed,
    IncomingMessage,
    InRecord,
    OperatorAckRecord,
    OperatorState,
    OutRecord,
    ReadIncoming,
    ReadOperatorAcks,
    ReadOperatorState,
    StoreBatch,
)
from hotline.proto.requests import (
    Acknowledged,
    DrillRequest,
    OperatorAckRequest,
    Outcome,
    Refused,
    Stored,
    WaitRequest,
)
from hotline.proto.status import OperatorItem

MAX_TRACKED = 10_000
STATUS_ITEMS = 1_000
RESUME_SCAN = 20_000
MAX_WAIT_SPAN = 10_000  # seqs one --wait-operator may cover
MAX_OPERATOR_WAIT = 86_400.0  # seconds; people take longer than machines
DRILL_LANE = PRIORITY

OPERATOR_JOBS = (ReadIncoming, ReadOperatorAcks, ReadOperatorState)
OperatorRequest = OperatorAckRequest | DrillRequest | WaitRequest
_Key = tuple[bytes, int, int]  # (epoch, lane, seq)


@dataclass(frozen=True)
class OperatorSettings:
    """DESIGN §9/§10 config: ``operator_ack`` lanes, ``operator_deadline`` per lane, and
    the drills (``drill_every`` 0 = off here; the config's default is 43200)."""

    ack_lanes: frozenset[int] = frozenset({FLASH, IMMEDIATE})
    deadlines: Mapping[int, float] = field(
        default_factory=lambda: {FLASH: 600.0, IMMEDIATE: 1800.0})
    drill_every: float = 0.0
    drill_operator: bool = False
    drill_deadline: float = 600.0


@dataclass(frozen=True)
class Seal:
    """One envelope for the endpoint to seal: ``lane``, media ``type``, ``body``."""

    lane: int
    type: str
    body: bytes


@dataclass(frozen=True)
class Order:
    """Envelopes to seal into the pending batch, and what they mean.

    ``token``: the client to answer ``Stored(ids)`` once the batch is committed (None:
    nobody). ``acknowledges``: for ack envelopes, per seal, the peer's message it
    acknowledges (epoch, lane, seq, chain). ``ids``: the reply in order, None where the
    next sealed id goes (an id already acknowledged keeps its first ack's id).
    """

    seals: tuple[Seal, ...]
    token: object | None = None
    acknowledges: tuple[tuple[bytes, int, int, bytes], ...] = ()
    ids: tuple[tuple[int, int] | None, ...] = ()

    def complete(self, our_epoch: bytes, sealed: Sequence[tuple[int, int]]
                 ) -> tuple[list[OperatorAckRecord], tuple[tuple[int, int], ...]]:
        """The store records linking each ack to what it acknowledges, and the reply ids,
        given the (lane, seq) the endpoint sealed each of ``seals`` as."""
        acks = zip(self.acknowledges, sealed, strict=True) if self.acknowledges else ()
        records = [OperatorAckRecord(False, epoch, lane, seq, our_epoch, *ack, chain)
                   for (epoch, lane, seq, chain), ack in acks]
        fresh = iter(sealed)
        ids = tuple(next(fresh) if i is None else i for i in self.ids) or tuple(sealed)
        return records, ids


@dataclass
class DeskOut:
    """What the desk wants done (``OperatorDesk.poll``)."""

    orders: list[Order] = field(default_factory=list)
    jobs: list[ReadIncoming | ReadOperatorAcks | ReadOperatorState] = field(
        default_factory=list)
    replies: list[tuple[object, Outcome]] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


@dataclass
class _Awaited:
    born: float  # monotonic instant of the envelope's timestamp
    deadline: float | None  # seconds allowed; None: no deadline
    noted: bool = False  # operator_overdue said


_Row = tuple[str, float, float | None]  # (message id, born, deadline)


class _Awaiting:
    """Messages awaiting an operator, in the order stored (so oldest first), at most
    ``MAX_TRACKED``. The rows status shows are kept until the table changes: status is
    built every loop turn, and must not cost a loop over the table each time."""

    def __init__(self) -> None:
        self.items: dict[_Key, _Awaited] = {}
        self.dropped = 0  # the oldest forgotten beyond MAX_TRACKED
        self._rows: tuple[_Row, ...] | None = None

    def add(self, key: _Key, item: _Awaited) -> bool:
        """Track ``key`` (False: it already is)."""
        if key in self.items:
            return False
        self.items[key] = item
        if len(self.items) > MAX_TRACKED:
            del self.items[next(iter(self.items))]
            self.dropped += 1
        self._rows = None
        return True

    def pop(self, key: _Key) -> _Awaited | None:
        """Stop tracking ``key``; what was tracked, if anything."""
        item = self.items.pop(key, None)
        if item is not None:
            self._rows = None
        return item

    def keep(self, wanted: Callable[[_Key], bool]) -> None:
        """Forget every key not ``wanted``."""
        self.items = {k: v for k, v in self.items.items() if wanted(k)}
        self._rows = None

    def view(self, now: float) -> OperatorItems:
        """The ``STATUS_ITEMS`` oldest, as status shows them at ``now``."""
        if self._rows is None:
            self._rows = tuple((message_id(lane, seq), item.born, item.deadline)
                               for (_epoch, lane, seq), item
                               in itertools.islice(self.items.items(), STATUS_ITEMS))
        return OperatorItems(self._rows, now)


class OperatorItems(Sequence[OperatorItem]):
    """``operator_pending``/``operator_owed`` at one instant; each ``OperatorItem`` is
    made only when read (most snapshots are only read for their heartbeat shape)."""

    def __init__(self, rows: tuple[_Row, ...], now: float) -> None:
        self._rows = rows
        self._now = now

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> OperatorItem: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[OperatorItem]: ...

    def __getitem__(self, index: int | slice) -> OperatorItem | Sequence[OperatorItem]:
        if isinstance(index, slice):
            return [self._item(row) for row in self._rows[index]]
        return self._item(self._rows[index])

    def _item(self, row: _Row) -> OperatorItem:
        mid, born, deadline = row
        return OperatorItem(mid, round(self._now - born, 3),
                            None if deadline is None else round(born + deadline - self._now, 3))


@dataclass
class _Waiter:
    token: object
    epoch: bytes
    lane: int
    first: int
    upto: int
    deadline: float
    missing: set[int] | None = None  # None until the store said what was acked before
    seen: set[int] = field(default_factory=set)  # acked meanwhile


@dataclass
class _AckAsk:
    token: object
    ids: tuple[tuple[int, int], ...]
    comment: str


class OperatorDesk:
    """Pending, owed, operator acks, their waiters and drills (see the module header)."""

    def __init__(self, settings: OperatorSettings, peer: str, now: float,
                 wall_ns: Callable[[float], int]) -> None:
        """Track nothing yet: the store read queued here resumes pending and owed.

        Args:
            settings: from the config.
            peer: the peer's name, for notices.
            now: monotonic seconds at start-up.
            wall_ns: the endpoint's wall clock (Unix ns) at a monotonic instant.
        """
        self.settings = settings
        self._peer = peer
        self._wall_ns = wall_ns
        self.pending = _Awaiting()
        self.owed = _Awaiting()
        self.drills = DrillBook(peer, settings.drill_every, settings.drill_operator,
                                settings.drill_deadline, now)
        self._due: list[tuple[float, _Key]] = []  # heap of pending deadlines
        self._waiters: list[_Waiter] = []
        self._wait_reads: deque[_Waiter] = deque()
        self._ack_reads: deque[_AckAsk] = deque()
        self._watched = settings.ack_lanes | {DRILL_LANE}
        self._out = DeskOut(jobs=[ReadOperatorState(
            tuple(sorted(settings.ack_lanes)), tuple(sorted(self._watched)), RESUME_SCAN)])

    # --- requests -----------------------------------------------------------------

    def request(self, request: OperatorRequest, token: object, our_epoch: bytes,
                now: float) -> None:
        """A client's ``ack``, ``drill`` or operator ``wait``; answered through ``poll``."""
        if isinstance(request, OperatorAckRequest):
            ids = tuple(dict.fromkeys(request.ids))
            if not ids:
                self._reply(token, Refused(UsageError, "nothing to acknowledge"))
                return
            self._ack_reads.append(_AckAsk(token, ids, request.comment))
            self._out.jobs.append(ReadIncoming(ids))
        elif isinstance(request, DrillRequest):
            self._out.orders.append(Order((self._drill_seal(),), token))
        else:
            self._on_wait(request, token, our_epoch, now)

    def _on_wait(self, request: WaitRequest, token: object, epoch: bytes, now: float) -> None:
        first = request.first or request.upto
        if request.lane not in LANES or not 1 <= first <= request.upto:
            self._reply(token, Refused(UsageError, "no such wait"))
            return
        if request.upto - first >= MAX_WAIT_SPAN:
            self._reply(token, Refused(UsageError, (
                f"--wait-operator covers at most {MAX_WAIT_SPAN} messages at a time")))
            return
        timeout = MAX_OPERATOR_WAIT if request.timeout is None else min(
            request.timeout, MAX_OPERATOR_WAIT)
        waiter = _Waiter(token, epoch, request.lane, first, request.upto, now + timeout)
        self._waiters.append(waiter)
        self._wait_reads.append(waiter)
        self._out.jobs.append(ReadOperatorAcks(epoch, request.lane, first, request.upto))

    # --- store results ------------------------------------------------------------

    def store_done(self, job: ReadIncoming | ReadOperatorAcks | ReadOperatorState,
                   result: object, now: float) -> None:
        """A job of ours finished (results come back in the order jobs were given)."""
        if isinstance(job, ReadIncoming):
            assert isinstance(result, tuple)
            self._on_incoming_read(self._ack_reads.popleft(), result)
        elif isinstance(job, ReadOperatorAcks):
            assert isinstance(result, frozenset)
            self._on_acks_read(self._wait_reads.popleft(), result)
        else:
            assert isinstance(result, OperatorState)
            self._resume(result, now)

    def store_failed(self, job: ReadIncoming | ReadOperatorAcks | ReadOperatorState,
                     error: str) -> None:
        """A job of ours failed (the endpoint logged it): refuse whom it was for."""
        refusal = Refused(StoreFailedError, f"cannot read the store: {error}")
        if isinstance(job, ReadIncoming):
            self._reply(self._ack_reads.popleft().token, refusal)
        elif isinstance(job, ReadOperatorAcks):
            waiter = self._wait_reads.popleft()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._reply(waiter.token, refusal)

    def _on_incoming_read(self, ask: _AckAsk, found: Sequence[IncomingMessage | None]
                          ) -> None:
        seals, acknowledges = [], []
        ids: list[tuple[int, int] | None] = []
        for (lane, seq), message in zip(ask.ids, found, strict=True):
            problem = _not_acknowledgeable(message_id(lane, seq), message)
            if problem is not None:
                self._reply(ask.token, Refused(UsageError, f"{problem}; nothing acknowledged"))
                return
            assert message is not None
            if message.acked_by is not None:
                ids.append(message.acked_by)
                continue
            record = message.record
            chain = chain_hash(record.raw)
            seals.append(Seal(lane, ACK_TYPE, encode_ack(AckBody(lane, seq, chain,
                                                                 ask.comment))))
            acknowledges.append((record.epoch, lane, seq, chain))
            ids.append(None)
        if not seals:
            self._reply(ask.token, Stored(tuple(i for i in ids if i is not None)))
            return
        self._out.orders.append(Order(tuple(seals), ask.token, tuple(acknowledges),
                                      tuple(ids)))

    def _on_acks_read(self, waiter: _Waiter, acked: frozenset[int]) -> None:
        waiter.missing = set(range(waiter.first, waiter.upto + 1)) - acked - waiter.seen
        waiter.seen.clear()
        self._answer_if_done(waiter)

    def _resume(self, state: OperatorState, now: float) -> None:
        """Start-up: ours oldest first by timestamp (equal ones by precedence, then
        seq: the store's row order is by the second they were stored, which must not
        decide), the peer's in arrival order."""
        ours = [(env.ts, out) for out in state.ours
                if (env := _decoded(out.raw)) is not None and _plain_message(env)]
        for ts, out in sorted(ours, key=lambda item: (item[0], item[1].lane, item[1].seq)):
            self._await(self.pending, (out.epoch, out.lane, out.seq), ts,
                        self.settings.deadlines.get(out.lane), now)
        for record in reversed(state.theirs):
            self._theirs_stored(record, now, answer=False)

    # --- the batch: before and after its commit -----------------------------------

    def on_delivered(self, messages: Iterable[Accepted], our_epoch: bytes
                     ) -> list[OperatorAckRecord]:
        """The peer's envelopes accepted into the batch being gathered: the records of
        its operator's acks, to commit with them (the store checks their chain)."""
        records = []
        for m in messages:
            if m.envelope.type != ACK_TYPE:
                continue
            try:
                ack = decode_ack_untrusted(m.envelope.body)
            except RemoteProtocolError as err:
                self._refused_ack(m.lane, m.seq, f"malformed: {err}")
                continue
            if ack.lane != m.lane:
                self._refused_ack(m.lane, m.seq, (
                    f"it names {message_id(ack.lane, ack.seq)} of another lane"))
                continue
            records.append(OperatorAckRecord(True, our_epoch, ack.lane, ack.seq, m.epoch,
                                             m.lane, m.seq, ack.chain))
        return records

    def on_committed(self, batch: StoreBatch, committed: Committed, now: float) -> None:
        """``batch`` is durable (``committed`` says which peer's acks the store kept)."""
        for out in batch.outgoing:
            if out.lane in self._watched:
                self._ours_stored(out, now)
        for record in batch.operator_acks:
            if not record.ours:
                self.owed.pop((record.epoch, record.lane, record.seq))
        for record in committed.operator_acks:
            self._their_ack_stored(record, now)
        for record in committed.rejected_operator_acks:
            self._refused_ack(record.ack_lane, record.ack_seq, (
                f"it names {message_id(record.lane, record.seq)} with a hash that is not "
                "one of our stored messages"))
        for item in batch.incoming:
            if isinstance(item, InRecord) and item.lane in self._watched:
                self._theirs_stored(item, now, answer=True)

    def _ours_stored(self, out: OutRecord, now: float) -> None:
        env = _decoded(out.raw)
        if env is None:
            return
        if env.type == DRILL_TYPE and isinstance(_drill_body(env), DrillCall):
            self.drills.on_stored(out, now, self._wall_ns(now) / 1e9)
        elif _plain_message(env) and out.lane in self.settings.ack_lanes:
            self._await(self.pending, (out.epoch, out.lane, out.seq), env.ts,
                        self.settings.deadlines.get(out.lane), now)

    def _theirs_stored(self, record: InRecord, now: float, answer: bool) -> None:
        env = _decoded(record.raw)
        if env is None:
            return
        key = (record.epoch, record.lane, record.seq)
        if _plain_message(env):
            if record.lane in self.settings.ack_lanes:
                self._await(self.owed, key, env.ts, self.settings.deadlines.get(record.lane),
                            now)
            return
        body = _drill_body(env) if env.type == DRILL_TYPE else None
        if isinstance(body, DrillCall):
            if answer:
                self._answer_drill(record, body)
            if body.operator:
                self._await(self.owed, key, env.ts, body.deadline, now)
        elif isinstance(body, DrillAnswer) and answer and not self.drills.on_answer(body, now):
            self._note("drill_answer", INFO, id=message_id(record.lane, record.seq),
                       result="ignored", reason=(
                           f"it answers {message_id(body.lane, body.seq)}, no drill of "
                           "ours that is still running"))

    def _answer_drill(self, record: InRecord, call: DrillCall) -> None:
        answer = DrillAnswer(record.lane, record.seq, chain_hash(record.raw))
        self._out.orders.append(Order((Seal(record.lane, DRILL_TYPE, encode_answer(answer)),)))
        self._note("drill_answer", INFO, id=message_id(record.lane, record.seq),
                   result="answered", operator=call.operator)

    def _their_ack_stored(self, record: OperatorAckRecord, now: float) -> None:
        key = (record.epoch, record.lane, record.seq)
        item = self.pending.pop(key)
        self.drills.on_operator_ack(record.chain, now)
        for waiter in [w for w in self._waiters if (w.epoch, w.lane) == key[:2]
                       and w.first <= record.seq <= w.upto]:
            if waiter.missing is None:
                waiter.seen.add(record.seq)
            else:
                waiter.missing.discard(record.seq)
            self._answer_if_done(waiter)
        self._note("operator_ack", NOTICE, id=message_id(record.lane, record.seq),
                   lane=lane_name(record.lane), result="acknowledged",
                   ack=message_id(record.ack_lane, record.ack_seq),
                   age_s=None if item is None else round(now - item.born, 3))

    # --- epochs -------------------------------------------------------------------

    def on_our_epoch(self, old: bytes) -> None:
        """We abandoned our epoch ``old`` (our store went back in time); its backlog is
        re-sent in the new one, and pending again from there."""
        self.pending.keep(lambda key: key[0] != old)
        self.drills.forget_epoch(old)
        for waiter in [w for w in self._waiters if w.epoch == old]:
            self._waiters.remove(waiter)
            self._reply(waiter.token, Refused(NotAcknowledgedError, (
                "our store went back in time; unacknowledged messages are re-sent in a "
                "new epoch")))

    def on_peer_epoch(self, epoch: bytes) -> None:
        """The peer started epoch ``epoch``: acks of its older messages can reach nobody."""
        self.owed.keep(lambda key: key[0] == epoch)

    # --- time and outputs ---------------------------------------------------------

    def poll(self, now: float) -> DeskOut:
        """Everything to do now: scheduled drills, deadlines, expired waits."""
        if self.drills.scheduled(now):
            self._out.orders.append(Order((self._drill_seal(),)))
        self.drills.expire(now)
        self._out.notices.extend(self.drills.notices)
        self.drills.notices.clear()
        self._overdue(now)
        self._expire_waiters(now)
        out, self._out = self._out, DeskOut()
        return out

    def get_timer(self) -> float | None:
        """The next instant ``poll`` has something to do."""
        while self._due and self._stale(self._due[0][1]):
            heapq.heappop(self._due)
        deadlines = [self.drills.get_timer(), *(w.deadline for w in self._waiters)]
        if self._due:
            deadlines.append(self._due[0][0])
        earliest = min(deadlines)
        return None if earliest == float("inf") else earliest

    def pending_items(self, now: float) -> OperatorItems:
        """``operator_pending``: ours awaiting the peer's operator, oldest first."""
        return self.pending.view(now)

    def owed_items(self, now: float) -> OperatorItems:
        """``operator_owed``: the peer's awaiting our operator, oldest first."""
        return self.owed.view(now)

    def pending_counts(self) -> list[int]:
        """Pending messages per lane (flash first), for metrics."""
        counts = [0 for _ in LANES]
        for _epoch, lane, _seq in self.pending.items:
            counts[lane] += 1
        return counts

    def _overdue(self, now: float) -> None:
        while self._due and self._due[0][0] <= now:
            _, key = heapq.heappop(self._due)
            item = self.pending.items.get(key)
            if item is None or item.noted:
                continue
            item.noted = True
            _epoch, lane, seq = key
            self._note("operator_overdue", CRIT, id=message_id(lane, seq), lane=lane_name(lane),
                       age_s=round(now - item.born, 3), deadline_s=item.deadline)

    def _stale(self, key: _Key) -> bool:
        item = self.pending.items.get(key)
        return item is None or item.noted

    def _expire_waiters(self, now: float) -> None:
        for waiter in [w for w in self._waiters if w.deadline <= now]:
            self._waiters.remove(waiter)
            span = waiter.upto - waiter.first + 1
            left = span if waiter.missing is None else len(waiter.missing)
            self._reply(waiter.token, Refused(NotAcknowledgedError, (
                f"the peer's operator acknowledged {span - left} of {span}")))

    def _answer_if_done(self, waiter: _Waiter) -> None:
        if waiter.missing is None or waiter.missing or waiter not in self._waiters:
            return
        self._waiters.remove(waiter)
        self._reply(waiter.token, Acknowledged(waiter.lane, waiter.upto))

    def _await(self, table: _Awaiting, key: _Key, ts_ns: int, deadline: float | None,
               now: float) -> None:
        born = now - max(0.0, (self._wall_ns(now) - ts_ns) / 1e9)
        if not table.add(key, _Awaited(born, deadline)):
            return
        if table is self.pending and deadline is not None:
            heapq.heappush(self._due, (born + deadline, key))
            if len(self._due) > 2 * MAX_TRACKED:  # acked ones linger until their due time
                self._due = [(item.born + item.deadline, k)
                             for k, item in self.pending.items.items()
                             if item.deadline is not None and not item.noted]
                heapq.heapify(self._due)

    def _drill_seal(self) -> Seal:
        return Seal(DRILL_LANE, DRILL_TYPE, self.drills.body())

    def _refused_ack(self, lane: int, seq: int, reason: str) -> None:
        self._note("operator_ack", ERR, id=message_id(lane, seq), result="refused",
                   reason=f"the peer's acknowledgement {message_id(lane, seq)} is ignored: "
                          f"{reason}")

    def _note(self, kind: str, priority: int, **fields: object) -> None:
        self._out.notices.append(Notice(kind, priority, {"peer": self._peer, **fields}))

    def _reply(self, token: object, outcome: Outcome) -> None:
        self._out.replies.append((token, outcome))


def _decoded(raw: bytes) -> Envelope | None:
    """A stored envelope, decoded (None if it does not decode: verify reports those)."""
    try:
        return decode_envelope_untrusted(raw, len(raw))
    except RemoteProtocolError:
        return None


def _plain_message(env: Envelope) -> bool:
    return env.type not in (ACK_TYPE, DRILL_TYPE)


def _drill_body(env: Envelope) -> DrillCall | DrillAnswer | None:
    try:
        return decode_drill_untrusted(env.body)
    except RemoteProtocolError:
        return None


def _not_acknowledgeable(mid: str, message: IncomingMessage | None) -> str | None:
    """Why our operator cannot acknowledge ``message`` (None: they can)."""
    if message is None:
        return f"no received message {mid} in the peer's latest epoch"
    env = _decoded(message.record.raw)
    if env is None:
        return f"received message {mid} does not decode (run hotline verify)"
    if env.type == ACK_TYPE:
        return f"{mid} is an operator acknowledgement itself"
    if env.type == DRILL_TYPE and not isinstance(_drill_body(env), DrillCall):
        return f"{mid} is the far daemon's answer to a drill"
    return None
