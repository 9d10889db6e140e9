"""The endpoint: every rule of one link's durable message streams, sans-IO (DESIGN §4, §4b, §9).

The daemon's runner only pumps. It feeds the endpoint what happened — a client request
(``request``), a packet or a path event from a transport, a store job's result
(``store_done``/``store_failed``), time passing — and then calls ``poll(now)``, which
returns everything to do: packets per path, store jobs, replies to clients, log
notices, paths to reset. ``get_timer`` is the one deadline to wake at. The simulator
and the tests drive this same object.

Durability order, enforced here and nowhere else:

* **seal → commit → send**: a ``SendRequest`` is admitted (backlog, size, media type),
  sealed at once (seq, chain, signature; ``sequencer.py``) into the pending batch; the
  client is answered ``Stored`` and the record is pushed to its lane's stream only
  after that batch committed.
* **accept → commit → ack**: envelopes the Link accepted go into the batch; only after
  the commit does the Link learn they are durable (``on_inbox_committed``), so no ACK
  ever covers what a crash could lose.
* **one commit in flight**: whatever arrives meanwhile is the next batch (group
  commit). A failed commit (disk full) refuses its sends with ``StoreFailedError`` and
  rolls back the sequencers and the receive streams to what is durable; the daemon stays
  up and the next batch tries again (the peer resends what we did not acknowledge).

Also here: ack waiters (``send --wait``), idempotent sends (``send --id``: requests
with ids are handled one at a time — look the ids up in the store, then seal only the
new ones — so an id is never stored twice), the backlog window of each lane (read from
the store as acks move it), and what a store that went back in time needs: a peer
acknowledging more than our store holds, or other bytes, makes us start a new epoch
and re-send our unacknowledged backlog in it (DESIGN §4b): re-sealed in order, in
chunks read back from the store, each exactly once (a lost commit carries its chunk
again), and before anything sent after the fork in the same lane.

Operator acknowledgement and drills (DESIGN §9, §10) are ``operator.py``'s: the
endpoint hands its ``OperatorDesk`` the requests, store results and batches it cares
about, and seals the envelopes it orders (each seam is marked ``OPERATOR SEAM``).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hotline.errors import (
    BacklogFullError,
    LocalProtocolError,
    NotAcknowledgedError,
    StoreFailedError,
    UsageError,
)
from hotline.proto.envelope import EPOCH_LEN, decode_envelope_untrusted, is_media_type
from hotline.proto.events import (
    Acked,
    ChainWanted,
    Delivered,
    Dropped,
    Event,
    Forked,
    GapFound,
    HandshakeComplete,
    InitiationAccepted,
    NewEpoch,
    ReceiptReceived,
    ResetPath,
)
from hotline.proto.guard import Source
from hotline.proto.identity import Identity, PublicKey
from hotline.proto.lanes import LANES, lane_name, message_id
from hotline.proto.link import Link, LinkSettings, Outbound, PathSpec, Received
from hotline.proto.notices import AUTH_KINDS, CRIT, Narrator, Notice, heartbeat_notice
from hotline.proto.operator import OPERATOR_JOBS, OperatorDesk, OperatorSettings
from hotline.proto.pq import RatchetDerived
from hotline.proto.records import (
    AckRecord,
    Carry,
    Commit,
    Committed,
    InRecord,
    LookupSendIds,
    NewOutEpoch,
    OutRecord,
    ReadChain,
    ReadOutgoing,
    ReceiptRecord,
    Rejoin,
    Resume,
    StoreBatch,
    StoreJob,
    StoreResult,
)
from hotline.proto.requests import (
    Acknowledged,
    DrillRequest,
    EndpointRequest,
    OperatorAckRequest,
    Outcome,
    Refused,
    SendRequest,
    StatusReport,
    StatusRequest,
    Stored,
    WaitRequest,
)
from hotline.proto.sequencer import LaneSequencer
from hotline.proto.status import LaneSnapshot, LinkSnapshot, PathSnapshot, status_text
from hotline.proto.supervision import Alert, AlertPolicy, AlertSettings

MAX_WAIT = 3600.0  # the longest a client may wait for an acknowledgement
_CARRY_CHUNK = 256
_READ_RETRY = 1.0  # seconds: after a failed read, no read before this pause
_REFUSED_MEMORY = 1024
# The snapshot behind the heartbeat line and STATUS= costs more than a message: taken on
# a change of the link's shape (a narrated event), when the heartbeat is due, and for
# STATUS='s counts at most this often (seconds).
_STATUS_EVERY = 0.5
# A batch holding nothing but the peer's acks waits this long for other records to
# commit with: back-to-back sends then pay one fsync each, not two. The ack record only
# spares resending what the peer holds after a restart (it deduplicates by seq), and
# no reply waits for it (clients are answered from the link's acks).
ACK_COMMIT_HOLD = 0.002


@dataclass(frozen=True)
class EndpointSettings:
    """The endpoint's tunables (from the config)."""

    link: LinkSettings = field(default_factory=LinkSettings)
    peer_name: str = "peer"
    log_every: float = 60.0
    max_backlog: int = 10_000_000
    alerts: AlertSettings = field(default_factory=AlertSettings)
    operator: OperatorSettings = field(default_factory=OperatorSettings)


@dataclass
class Counters:
    """What happened since start-up (Prometheus counters: they only grow)."""

    sent: list[int] = field(default_factory=lambda: [0] * len(LANES))  # committed, by lane
    received: list[int] = field(default_factory=lambda: [0] * len(LANES))
    handshakes: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})


@dataclass
class Outputs:
    """Everything ``poll`` wants done, in this order: packets, jobs, replies, logs."""

    packets: list[Outbound] = field(default_factory=list)
    jobs: list[StoreJob] = field(default_factory=list)
    replies: list[tuple[object, Outcome]] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    resets: list[int] = field(default_factory=list)
    status_line: str | None = None  # for systemd's STATUS=, when it changed
    inbox_grew: bool = False  # a commit delivered messages (wake inbox --follow)
    alerts: list[Alert] = field(default_factory=list)  # for alert_command and the journal


@dataclass
class _Batch:
    """A batch being gathered or committed, with what to do once it is durable."""

    store: StoreBatch = field(default_factory=StoreBatch)
    sent: list[OutRecord] = field(default_factory=list)  # push to the Link after commit
    replies: list[tuple[object, tuple[tuple[int, int], ...]]] = field(default_factory=list)
    delivered: dict[tuple[bytes, int], int] = field(default_factory=dict)
    has_ids: bool = False
    # The carry-over list as it was before this batch's first re-sealed chunk: if the
    # batch is lost (failed commit), the carry-over goes back there.
    carry_before: list[Carry] | None = None


@dataclass
class _Waiter:
    token: object
    epoch: bytes
    lane: int
    upto: int
    deadline: float


@dataclass
class _QueuedSend:
    """A send that waits: for its ids to be looked up, or for a carry-over to finish."""

    token: object
    conversation: object
    request: SendRequest


class Endpoint:
    """One link's streams, their durability rules and their clients (module header)."""

    def __init__(
        self,
        our: Identity,
        their: PublicKey,
        paths: Sequence[PathSpec],
        settings: EndpointSettings,
        resume: Resume,
        rng: Callable[[int], bytes],
        now: float,
        wall_ns: int,
    ) -> None:
        self._our = our
        self._their = their
        self._rng = rng
        self.settings = settings
        self.link = Link(our, their, paths, settings.link, resume, rng, now, wall_ns)
        # The epoch we seal in. After a fork it is new at once; the Link (and so the
        # peer) learns it only once it is committed (``_on_committed``).
        self._epoch = resume.epoch
        self._sealers = [self._sequencer(resume.epoch, lane, o.head, o.head_chain)
                         for lane, o in zip(LANES, resume.out, strict=True)]
        self._durable = [(o.head, o.head_chain) for o in resume.out]
        self._delivered = [lane.delivered for lane in resume.peer_lanes]
        self.narrator = Narrator(settings.peer_name, tuple(p.url for p in paths),
                                 settings.log_every)
        self.alert_policy = AlertPolicy(settings.peer_name, settings.alerts, now)
        self.counters = Counters()
        self._batch = _Batch()
        self._committing: _Batch | None = None
        self._waiters: list[_Waiter] = []
        self._refused: dict[object, Refused] = {}
        self._id_queue: deque[_QueuedSend] = deque()
        self._id_lookup: _QueuedSend | None = None
        self._held: deque[_QueuedSend] = deque()  # sends waiting for a carry-over
        self._reads: dict[int, ReadOutgoing] = {}  # window reads of our epoch, by lane
        self._carry = list(resume.carry)
        self._carry_read: ReadOutgoing | None = None
        self._read_retry_at: float | None = None
        self._ack_hold_until: float | None = None  # an ack-only batch commits by then
        self._out = Outputs()
        self._status_line = ""
        self._status_due = now  # when STATUS='s counts are refreshed next
        self._shape_changed = True  # a narrated event since the last snapshot
        # OPERATOR SEAM: operator acknowledgement and drills (proto/operator.py).
        self.operator = OperatorDesk(settings.operator, settings.peer_name, now,
                                     self.link.wall_ns)

    # --- inputs -------------------------------------------------------------------

    def request(self, request: EndpointRequest, token: object, conversation: object,
                now: float) -> None:
        """A client's request; the answer comes out of ``poll`` with ``token``.

        ``conversation`` identifies the client's connection: once one of its sends is
        refused, every later send of it is refused the same way, so a client that
        pipelines knows exactly which messages went in (those it was told).
        """
        if isinstance(request, SendRequest):
            self._on_send(request, token, conversation, now)
        elif isinstance(request, OperatorAckRequest | DrillRequest) or (
                isinstance(request, WaitRequest) and request.operator):  # OPERATOR SEAM
            self.operator.request(request, token, self._epoch, now)
        elif isinstance(request, WaitRequest):
            self._on_wait(request, token, now)
        elif isinstance(request, StatusRequest):
            self._reply(token, StatusReport(self.status(now)))
        else:
            self._reply(token, Refused(UsageError, "not supported by this daemon yet"))

    def packet(self, path_id: int, data: bytes, now: float,
               source: Source | None = None) -> Received:
        """A packet from a transport (``source``: ``guard.source_of`` its address); what
        it proved about its sender (``Received``)."""
        return self.link.receive_untrusted(path_id, data, now, source)

    def path_connected(self, path_id: int, now: float) -> None:
        """The transport can carry packets on this path now."""
        self.link.path_connected(path_id, now)

    def path_disconnected(self, path_id: int, now: float) -> None:
        """The transport lost this path."""
        self.link.path_disconnected(path_id, now)

    def set_wall_clock(self, now: float, wall_ns: int) -> None:
        """Re-anchor wall-clock time (envelope timestamps, PING/PONG)."""
        self.link.set_wall_clock(now, wall_ns)

    def store_done(self, job: StoreJob, result: StoreResult, now: float) -> None:
        """A store job finished with ``result`` (see ``records.py``)."""
        if isinstance(job, Commit):
            assert isinstance(result, Committed)
            self._on_committed(result, now)
        elif isinstance(job, ReadOutgoing):
            assert isinstance(result, list)
            self._on_read(job, result, now)
        elif isinstance(job, ReadChain):
            assert result is None or isinstance(result, bytes)
            self.link.on_chain(job.epoch, job.lane, job.seq, result)
        elif isinstance(job, OPERATOR_JOBS):  # OPERATOR SEAM
            self.operator.store_done(job, result, now)
        else:
            assert isinstance(result, dict)
            self._on_ids_found(result, now)

    def store_failed(self, job: StoreJob, error: str, now: float) -> None:
        """A store job failed (disk full, I/O error): refuse, roll back, carry on."""
        self._note(self.narrator.store_failed(type(job).__name__, error, now))
        self.alert_policy.on_store_error(error, now)
        if isinstance(job, Commit):
            self._on_commit_failed(error)
        elif isinstance(job, ReadOutgoing):
            self._on_read_failed(job, now)
        elif isinstance(job, LookupSendIds) and self._id_lookup is not None:
            pending, self._id_lookup = self._id_lookup, None
            self._refuse(pending.token, pending.conversation,
                         Refused(StoreFailedError, f"nothing stored: {error}"))
        elif isinstance(job, OPERATOR_JOBS):  # OPERATOR SEAM
            self.operator.store_failed(job, error)

    # --- outputs ------------------------------------------------------------------

    def poll(self, now: float) -> Outputs:
        """Everything to do now (after feeding inputs and ``handle_timer``)."""
        self.link.handle_timer(now)
        for event in self.link.next_events():
            self._on_event(event, now)
        if self._read_retry_at is not None and now >= self._read_retry_at:
            self._read_retry_at = None
        self._want_reads()
        self._release_held(now)
        self._next_id_send()
        self._expire_waiters(now)
        self._operator_poll(now)
        self._out.packets.extend(self.link.packets_to_send(now))
        self._start_commit(now)
        self._heartbeat(now)
        self._supervise(now)
        out, self._out = self._out, Outputs()
        return out

    def _supervise(self, now: float) -> None:
        """The alert policy (DESIGN §10): link state, its deadlines, what it raised."""
        policy = self.alert_policy
        policy.observe_link(any(p.up for p in self.link.paths), now)
        timer = policy.get_timer()
        if timer is not None and timer <= now:
            policy.handle_timer(now)
        self._out.alerts.extend(policy.alerts_to_send())

    def get_timer(self) -> float | None:
        """The next instant ``poll`` must run even if nothing arrives."""
        deadlines = [self.link.get_timer(), self.narrator.next_heartbeat,
                     self.alert_policy.get_timer(), self.operator.get_timer(),  # OPERATOR SEAM
                     self._read_retry_at, self._status_due, self._ack_hold_until]
        deadlines.extend(w.deadline for w in self._waiters)
        return min((d for d in deadlines if d is not None), default=None)

    @property
    def idle(self) -> bool:
        """True when nothing waits to be committed (graceful shutdown may close)."""
        return self._committing is None and not self._batch.store and not self._id_queue \
            and self._id_lookup is None and not self._held

    def status(self, now: float) -> LinkSnapshot:
        """The link as ``status`` and the heartbeat log show it."""
        link = self.link
        paths = [PathSnapshot(p.url, "up" if p.up else "down", p.rtt_ms(),
                              p.last_heard_age(now)) for p in link.paths]
        primary = link.paths[link.primary] if link.primary is not None else None
        skews = [p.skew_ns for p in link.paths if p.up and p.skew_ns is not None]
        lanes = [LaneSnapshot(self._durable[lane][0], link.outgoing[lane].acked_upto,
                              self._delivered[lane]) for lane in LANES]
        return LinkSnapshot(
            peer=self.settings.peer_name, state=link.state,
            active=primary.url if primary is not None else None, paths=paths, lanes=lanes,
            skew_ms=skews[0] / 1e6 if skews else None,
            session_age_s=link.sessions.session_age(now),
            dropped=dict(self.narrator.dropped), epoch=link.epoch.hex(),
            retransmitted=tuple(link.outgoing[lane].retransmissions for lane in LANES),
            operator_pending=self.operator.pending_items(now),  # OPERATOR SEAM
            operator_owed=self.operator.owed_items(now), last_drill=self.operator.drills.last,
            pq=link.sessions.pq,
        )

    # --- sends --------------------------------------------------------------------

    def _on_send(self, request: SendRequest, token: object, conversation: object,
                 now: float) -> None:
        refusal = self._refused.get(conversation) or self._admit(request)
        if refusal is not None:
            self._refuse(token, conversation, refusal)
        elif request.send_ids:
            self._id_queue.append(_QueuedSend(token, conversation, request))
        elif self._held or self._carrying(request.lane):
            self._held.append(_QueuedSend(token, conversation, request))
        else:
            self._seal(token, request, list(request.bodies), (), now)

    def _carrying(self, lane: int) -> bool:
        """Messages of an abandoned epoch still wait to be re-sealed in ``lane``: what
        is sent now must come after them."""
        return any(c.lane == lane for c in self._carry)

    def _release_held(self, now: float) -> None:
        """Seal the sends that waited for their lane's carry-over, in arrival order."""
        while self._held and not self._carrying(self._held[0].request.lane):
            held = self._held.popleft()
            refusal = self._refused.get(held.conversation)
            if refusal is not None:
                self._refuse(held.token, held.conversation, refusal)
            else:
                self._seal(held.token, held.request, list(held.request.bodies), (), now)

    def _admit(self, request: SendRequest) -> Refused | None:
        max_message = self.settings.link.max_message
        if not request.bodies:
            return Refused(UsageError, "nothing to send")
        if not is_media_type(request.type):
            return Refused(UsageError, f"type {request.type!r} is not a media type")
        if request.lane not in LANES:
            return Refused(UsageError, f"no precedence lane {request.lane}")
        if request.send_ids and len(request.send_ids) != len(request.bodies):
            return Refused(UsageError, "one send id per message, or none")
        if max(map(len, request.bodies)) > max_message:
            return Refused(UsageError, f"message over max_message ({max_message} bytes)")
        acked = sum(s.acked_upto for s in self.link.outgoing if s.epoch == self._epoch)
        carried = sum(c.head - c.after for c in self._carry)
        backlog = sum(s.last_seq for s in self._sealers) - acked + carried
        if backlog + len(request.bodies) > self.settings.max_backlog:
            return Refused(BacklogFullError, (
                f"backlog of {backlog} unacknowledged messages is full "
                f"(max_backlog {self.settings.max_backlog}); is the peer down?"))
        return None

    def _seal(self, token: object, request: SendRequest, bodies: list[bytes],
              send_ids: Sequence[str], now: float) -> list[tuple[int, int]]:
        """Seal ``bodies`` into the pending batch; ``token`` is answered after the commit
        (None: answered by the caller)."""
        sealer = self._sealers[request.lane]
        wall = self.link.wall_ns(now)
        ids = []
        for i, body in enumerate(bodies):
            record = sealer.seal(body, request.type, wall, send_ids[i] if send_ids else None)
            self._batch.store.outgoing.append(record)
            self._batch.sent.append(record)
            ids.append((record.lane, record.seq))
        self._batch.has_ids = self._batch.has_ids or bool(send_ids)
        if token is not None:
            self._batch.replies.append((token, tuple(ids)))
        return ids

    def _next_id_send(self) -> None:
        """Start the next idempotent send once no earlier one can still be uncommitted,
        and no carry-over is under way (its ids are stored under their old seqs until
        the re-sealed messages are committed, and a new id must come after them)."""
        if self._id_lookup is not None or not self._id_queue or self._batch.has_ids \
                or (self._committing is not None and self._committing.has_ids) or self._carry:
            return
        self._id_lookup = self._id_queue.popleft()
        self._out.jobs.append(LookupSendIds(self._id_lookup.request.send_ids))

    def _on_ids_found(self, found: dict[str, tuple[int, int]], now: float) -> None:
        pending, self._id_lookup = self._id_lookup, None
        if pending is None:
            return
        request = pending.request
        refusal = self._refused.get(pending.conversation)
        if refusal is not None:
            self._refuse(pending.token, pending.conversation, refusal)
            return
        if self._carry:  # a fork came while the store looked: look again once carried
            self._id_queue.appendleft(pending)
            return
        new = [(b, i) for b, i in zip(request.bodies, request.send_ids, strict=True)
               if i not in found]
        sealed = iter(self._seal(None, request, [b for b, _ in new], [i for _, i in new], now))
        ids = tuple(found[i] if i in found else next(sealed) for i in request.send_ids)
        if new:
            self._batch.replies.append((pending.token, ids))
        else:
            self._reply(pending.token, Stored(ids))

    # --- commits ------------------------------------------------------------------

    def _start_commit(self, now: float) -> None:
        store = self._batch.store
        if self._committing is not None or not store:
            return
        if store.acks and not dataclasses.replace(store, acks={}):  # acks only
            if self._ack_hold_until is None:
                self._ack_hold_until = now + ACK_COMMIT_HOLD
            if now < self._ack_hold_until:
                return
        self._ack_hold_until = None
        self._committing, self._batch = self._batch, _Batch()
        self._out.jobs.append(Commit(self._committing.store))

    def _on_committed(self, result: Committed, now: float) -> None:
        done, self._committing = self._committing, None
        if done is None:
            raise LocalProtocolError("a commit finished that was never started")
        if done.store.new_epoch is not None:  # durable now: the peer may learn it
            self._reads = {}  # the old epoch's window reads: their answers are stale
            self.link.new_epoch(done.store.new_epoch.epoch, now)
        # Records sealed in an epoch abandoned since (a fork while they were gathering
        # or committing) are durable there, and carried over like the rest of it.
        self.link.push([r for r in done.sent if r.epoch == self.link.epoch])
        for record in done.sent:
            if record.epoch == self._epoch:
                self._durable[record.lane] = (record.seq, record.chain)
            self.counters.sent[record.lane] += 1
        for token, ids in done.replies:
            self._reply(token, Stored(ids))
        self._out.inbox_grew = self._out.inbox_grew or bool(done.delivered)
        for item in done.store.incoming:
            if isinstance(item, InRecord):
                self.counters.received[item.lane] += 1
        for (epoch, lane), upto in done.delivered.items():
            self.link.on_inbox_committed(epoch, lane, upto)
            if epoch == self.link.incoming[lane].epoch:
                self._delivered[lane] = upto
        self.operator.on_committed(done.store, result, now)  # OPERATOR SEAM
        if done.store.ratchet is not None:
            self.link.on_ratchet_committed(done.store.ratchet)
        for receipt in result.rejected_receipts:
            self._note(Notice("receipt", CRIT, {
                "peer": self.settings.peer_name, "lane": lane_name(receipt.lane),
                "upto": receipt.upto,
                "reason": "refused: it does not sign our stored transcript"}))

    def _on_commit_failed(self, error: str) -> None:
        failed, self._committing = self._committing, None
        if failed is None:
            return
        gathering, self._batch = self._batch, _Batch()
        for batch in (failed, gathering):
            for token, _ids in batch.replies:
                self._reply(token, Refused(StoreFailedError, f"not stored: {error}"))
            self._batch.store.merge_unsent(batch.store)
        for lane, sealer in enumerate(self._sealers):
            sealer.rollback(*self._durable[lane])
        self.link.rollback_incoming()
        # Re-sealed chunks of a carry-over were lost with the batch: carry them again,
        # from where the oldest lost one began (a read still queued is stale now).
        before = failed.carry_before if failed.carry_before is not None \
            else gathering.carry_before
        if before is not None:
            self._carry = before
            self._carry_read = None
        while self._held:  # they wait for a carry-over that needs the disk
            held = self._held.popleft()
            self._refuse(held.token, held.conversation,
                         Refused(StoreFailedError, f"not stored: {error}"))

    # --- link events --------------------------------------------------------------

    def _on_event(self, event: Event, now: float) -> None:
        if isinstance(event, Delivered):
            self._on_delivered(event)
            self._batch.store.operator_acks.extend(  # OPERATOR SEAM
                self.operator.on_delivered(event.messages, self._epoch))
        elif isinstance(event, Acked):
            self._batch.store.ack(_ack_record(event))
            self._acked(event.epoch, event.lane, event.upto)
        elif isinstance(event, ReceiptReceived):
            self._batch.store.receipts.append(ReceiptRecord(
                event.epoch, event.lane, event.upto, event.chain, event.raw, event.sig))
        elif isinstance(event, ChainWanted):
            self._out.jobs.append(ReadChain(event.epoch, event.lane, event.upto))
        elif isinstance(event, ResetPath):
            self._out.resets.append(event.path_id)
        elif isinstance(event, InitiationAccepted):
            self._batch.store.handshake_ts = event.timestamp_ns
        elif isinstance(event, RatchetDerived):
            self._batch.store.ratchet = event.record  # used once durable (_on_committed)
        else:
            if isinstance(event, NewEpoch):
                self._on_new_peer_epoch(event)
            elif isinstance(event, GapFound):
                gap = event.gap
                self._batch.store.incoming.append(Rejoin(
                    gap.epoch, gap.lane, gap.last + 1, "the sender no longer holds these"))
            elif isinstance(event, Forked):
                self._on_fork(event, now)
            self._shape_changed = True
            self._watch(event, now)
            self._note(self.narrator.narrate(event, now))

    def _watch(self, event: Event, now: float) -> None:
        """What the alert policy and the counters learn from a Link event."""
        if isinstance(event, HandshakeComplete):
            self.counters.handshakes["ok"] += 1
        elif isinstance(event, Dropped) and event.kind in AUTH_KINDS:
            self.counters.handshakes["failed"] += event.kind == "HandshakeError"
            self.alert_policy.on_auth_failure(f"{event.kind}: {event.reason}", now)
        elif isinstance(event, NewEpoch) and event.old is not None:
            self.alert_policy.on_epoch_changed(event.old.hex(), event.epoch.hex(), now)

    def _on_delivered(self, event: Delivered) -> None:
        for m in event.messages:
            self._batch.store.incoming.append(InRecord(m.epoch, m.lane, m.seq, m.raw, m.sig))
            self._batch.delivered[(m.epoch, m.lane)] = m.seq

    def _on_new_peer_epoch(self, event: NewEpoch) -> None:
        for lane, base in zip(LANES, event.base_seqs, strict=True):
            self._batch.store.incoming.append(
                Rejoin(event.epoch, lane, max(base, 1), "new peer epoch"))
            self._delivered[lane] = max(base, 1) - 1
        self.operator.on_peer_epoch(event.epoch)  # OPERATOR SEAM

    def _on_fork(self, event: Forked, now: float) -> None:
        """Our store went back in time: start a new epoch, re-send our backlog in it.

        We seal in the new epoch at once; the Link announces it only after the commit
        of ``NewOutEpoch`` (a crash before that brings us back in the old epoch, which
        the peer must not have left)."""
        old = self._epoch
        if event.epoch != old:
            return  # another lane of the epoch we already left
        epoch = bytes(self._rng(EPOCH_LEN))
        carry = [Carry(old, lane, self.link.outgoing[lane].acked_upto, sealer.last_seq)
                 for lane, sealer in enumerate(self._sealers)
                 if sealer.last_seq > self.link.outgoing[lane].acked_upto]
        reason = (f"{lane_name(event.lane)}: {event.fork.reason} (our store went back in "
                  "time: restored from an older copy?)")
        self._batch.store.new_epoch = NewOutEpoch(epoch, reason)
        self._epoch = epoch
        self._sealers = [self._sequencer(epoch, lane, 0, bytes(32)) for lane in LANES]
        self._durable = [(0, bytes(32)) for _ in LANES]
        # The epoch just left goes first: an earlier abandoned epoch still being carried
        # over re-sealed its oldest messages in it (sends wait while a lane carries over).
        self._carry[:0] = carry
        self._carry_read = None
        for batch in (self._batch, self._committing):
            if batch is not None and batch.carry_before is not None:
                batch.carry_before[:0] = carry
        self.operator.on_our_epoch(old)  # OPERATOR SEAM
        resent = ",".join(f"{lane_name(c.lane)}:{c.after + 1}..{c.head}" for c in carry)
        self._note(Notice("epoch", CRIT, {
            "peer": self.settings.peer_name, "change": "our store went back in time",
            "reason": reason, "old": old.hex(), "epoch": epoch.hex(),
            "resent": resent or None,
            "peer_holds": f"{lane_name(event.lane)} up to {event.fork.peer_upto} of the old "
                          "epoch, more than or other than our store held"}))
        for waiter in [w for w in self._waiters if w.epoch == old]:
            self._waiters.remove(waiter)
            self._reply(waiter.token, Refused(NotAcknowledgedError, (
                "our store went back in time; unacknowledged messages are re-sent in "
                f"epoch {epoch.hex()}")))

    def _sequencer(self, epoch: bytes, lane: int, head: int, chain: bytes) -> LaneSequencer:
        return LaneSequencer(self._our, self._their, epoch, lane, head, chain,
                             self.settings.link.max_message)

    # --- backlog window and carry-over ---------------------------------------------

    def _want_reads(self) -> None:
        """Ask the store for each lane's next backlog stretch, and for the next chunk of
        the carry-over: one read of each kind at a time, none while a pause runs."""
        if self._read_retry_at is not None:
            return
        epoch = self.link.epoch
        for lane, stream in enumerate(self.link.outgoing):
            if lane in self._reads or epoch != self._epoch:  # no reads for a left epoch
                continue
            wanted = stream.read_wanted()
            if wanted is not None:
                self._reads[lane] = ReadOutgoing(epoch, lane, *wanted)
                self._out.jobs.append(self._reads[lane])
        # Not while records are gathering: some may be of the epoch being carried over
        # (sealed before the fork); the read must come after their commit.
        if self._carry and self._carry_read is None and not self._batch.store.outgoing:
            carry = self._carry[0]
            self._carry_read = ReadOutgoing(carry.epoch, carry.lane, carry.after,
                                            _CARRY_CHUNK, carry=True)
            self._out.jobs.append(self._carry_read)

    def _on_read(self, job: ReadOutgoing, records: list[OutRecord], now: float) -> None:
        """A read answered. Only the reads still waited for count: any other is stale
        (asked for an epoch abandoned since, or for carry-over chunks rolled back)."""
        if job == self._carry_read:
            self._carry_read = None
            self._carry_chunk(records, now)
        elif self._reads.get(job.lane) == job:
            del self._reads[job.lane]
            self.link.on_read(job.lane, records)

    def _on_read_failed(self, job: ReadOutgoing, now: float) -> None:
        """A read failed (I/O error): ask again after ``_READ_RETRY`` (at every poll, a
        lasting error would spin); a stale read is forgotten."""
        if job == self._carry_read:
            self._carry_read = None
        elif self._reads.get(job.lane) == job:
            del self._reads[job.lane]
            self.link.on_read(job.lane, [])
        else:
            return
        self._read_retry_at = now + _READ_RETRY

    def _carry_chunk(self, records: list[OutRecord], now: float) -> None:
        """Re-seal a chunk of ``_carry[0]`` (the read of it just answered) in our epoch."""
        carry = self._carry[0]
        records = [r for r in records if carry.after < r.seq <= carry.head]
        if self._batch.carry_before is None:
            self._batch.carry_before = list(self._carry)
        for record in records:
            env = decode_envelope_untrusted(record.raw, len(record.raw))
            request = SendRequest(env.type, (env.body,), env.lane)
            self._seal(None, request, [env.body],
                       (record.send_id,) if record.send_id else (), now)
        last = records[-1].seq if records else carry.head
        self._batch.store.carried[(carry.epoch, carry.lane)] = last
        if last >= carry.head:
            self._carry.pop(0)
        else:
            self._carry[0] = Carry(carry.epoch, carry.lane, last, carry.head)

    # --- waiters ------------------------------------------------------------------

    def _on_wait(self, request: WaitRequest, token: object, now: float) -> None:
        if request.lane not in LANES:
            self._reply(token, Refused(UsageError, "no such wait"))
            return
        timeout = MAX_WAIT if request.timeout is None else min(request.timeout, MAX_WAIT)
        waiter = _Waiter(token, self._epoch, request.lane, request.upto, now + timeout)
        if not self._satisfied(waiter):
            self._waiters.append(waiter)

    def _acked(self, epoch: bytes, lane: int, upto: int) -> None:
        self._waiters = [w for w in self._waiters if not self._satisfied(w)]

    def _satisfied(self, waiter: _Waiter) -> bool:
        stream = self.link.outgoing[waiter.lane]
        if waiter.epoch != stream.epoch or stream.acked_upto < waiter.upto:
            return False
        self._reply(waiter.token, Acknowledged(waiter.lane, stream.acked_upto))
        return True

    def _expire_waiters(self, now: float) -> None:
        still = []
        for waiter in self._waiters:
            if now < waiter.deadline:
                still.append(waiter)
                continue
            acked = self.link.outgoing[waiter.lane].acked_upto
            self._reply(waiter.token, Refused(NotAcknowledgedError, (
                f"not acknowledged: the peer holds {lane_name(waiter.lane)} up to "
                f"{message_id(waiter.lane, acked) if acked else 'nothing'}")))
        self._waiters = still

    # --- operator acknowledgement and drills ---------------------------------------

    def _operator_poll(self, now: float) -> None:
        """OPERATOR SEAM: seal what the desk orders into the batch; pass on the rest."""
        out = self.operator.poll(now)
        for order in out.orders:
            sealed = [self._seal(None, SendRequest(s.type, (s.body,), s.lane), [s.body], (),
                                 now)[0] for s in order.seals]
            records, ids = order.complete(self._epoch, sealed)
            self._batch.store.operator_acks.extend(records)
            if order.token is not None:
                self._batch.replies.append((order.token, ids))
        self._out.jobs.extend(out.jobs)
        self._out.replies.extend(out.replies)
        self._out.notices.extend(out.notices)
        for notice in out.notices:  # what pages a person (DESIGN §10)
            fields = notice.fields
            if notice.kind == "operator_overdue":
                self.alert_policy.on_operator_overdue(
                    str(fields["id"]), str(fields["lane"]), float(fields["age_s"]), now)  # type: ignore[arg-type]
            elif notice.kind == "drill_failed":
                self.alert_policy.on_drill_failed(str(fields["id"]),
                                                  str(fields.get("reason", "")), now)

    # --- output helpers -----------------------------------------------------------

    def _reply(self, token: object, outcome: Outcome) -> None:
        self._out.replies.append((token, outcome))

    def _refuse(self, token: object, conversation: object, refusal: Refused) -> None:
        if conversation is not None:
            self._refused[conversation] = refusal
            while len(self._refused) > _REFUSED_MEMORY:
                del self._refused[next(iter(self._refused))]
        self._reply(token, refusal)

    def forget_conversation(self, conversation: object) -> None:
        """The client's connection closed: forget whether it was refused."""
        self._refused.pop(conversation, None)

    def _note(self, notice: Notice | None) -> None:
        if notice is not None:
            self._out.notices.append(notice)

    def _heartbeat(self, now: float) -> None:
        """The heartbeat line when due and systemd's STATUS= line (``_STATUS_EVERY``)."""
        if not self._shape_changed and now < min(self.narrator.next_heartbeat,
                                                 self._status_due):
            return
        self._shape_changed = False
        self._status_due = now + _STATUS_EVERY
        snap = self.status(now)
        if self.narrator.heartbeat_due(snap, now):
            self._note(heartbeat_notice(snap))
        line = status_text(snap)
        if line != self._status_line:
            self._status_line = self._out.status_line = line


def _ack_record(event: Acked) -> AckRecord:
    return AckRecord(event.epoch, event.lane, event.upto, event.chain)
