"""The durable store: outbox, inbox, receipts and acknowledgements in one SQLite file.

One file ``<state_dir>/hotline.db`` (mode 0600; SQLite gives its ``-wal``/``-shm``
files the same mode) holds everything a daemon must not forget (DESIGN §4, §4b, §9):

* ``meta`` — one row: our key, the pinned peer key, our current outgoing **epoch**
  (16 random bytes: a lost store means a new epoch, never reused seqs) and the last
  accepted handshake timestamp (the replay floor survives restarts, DESIGN §2b).
* ``out_epochs`` — each of our epochs in order, with why it began; ``out_lanes`` — per
  epoch and precedence lane, the peer's cumulative ack (``acked_upto`` and the chain
  hash there) and, for an abandoned epoch, how far its backlog was re-sent.
* ``outgoing`` — our envelopes by (epoch, lane, seq), exact signed bytes, signature,
  chain hash; ``send_ids`` — idempotency ids of ``send --id`` and the message each
  stored (DESIGN §4b).
* ``peer_epochs`` — every peer epoch ever seen (never re-entered); ``peer_lanes`` — per
  peer epoch and lane, ``delivered_upto`` (stored with no gap from ``first_seq``) and
  the chain hash there.
* ``incoming`` — the peer's envelopes; ``n`` is the inbox cursor: one order across
  epochs and lanes, so ``inbox --since``/``--follow`` never skip an older epoch.
* ``gaps`` — seqs we know we will never hold, and why (a sender whose store was
  restored; ``verify`` names a gap instead of failing on it).
* ``receipts`` — the peer's signed receipts of our stream, stored only when they sign
  our own transcript (their chain hash equals ours at their ``upto``).
* ``operator_acks`` — which message an operator acknowledgement (DESIGN §9) covers.
  The peer's operator's acks of ours are stored only when they name our own stored
  transcript (their chain hash equals ours at that lane and seq, in one of our epochs).
* ``ratchet`` — at most one row: the link's two newest post-quantum ratchet secrets
  (DESIGN §11, ``proto/pq.py``), which key the next handshakes. Secret: whoever reads
  them and can also break X25519 reads the sessions keyed by them (SECURITY.md).

Durability: WAL journal with ``synchronous=FULL``, so a committed transaction survives
a crash or power loss. Group commit: ``execute(Commit(batch))`` writes everything one
event-loop turn produced in ONE ``BEGIN IMMEDIATE`` transaction, so one fsync is
shared by all of it; a batch is all-or-nothing. Start-up reads a bounded window
(``resume``), never the whole backlog.

The daemon calls the store from one worker thread (hence ``check_same_thread=False``);
the CLI (``verify``, ``export``) may read the same file meanwhile: WAL lets readers run
beside the one writer, and ``busy_timeout`` waits out brief locks.

Schema versions live in ``PRAGMA user_version``; ``store_schema.MIGRATIONS[n]`` upgrades version n
to n + 1 (version 0 is the empty file, version 1 the first release's single-lane
store, whose messages become routine); a file from a newer hotline is refused.

The store never parses network bytes: callers hand it records whose epoch, lane and
seq they took from envelopes they already decoded and verified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hotline.errors import LocalProtocolError, StoreError
from hotline.proto.envelope import EPOCH_LEN, ZERO_HASH, chain_hash
from hotline.proto.identity import PublicKey
from hotline.proto.lanes import LANES
from hotline.proto.records import (
    AckRecord,
    Carry,
    Commit,
    Committed,
    IncomingMessage,
    InLane,
    InRecord,
    NewOutEpoch,
    OperatorAckRecord,
    OperatorState,
    OutLane,
    OutRecord,
    RatchetRecord,
    ReadChain,
    ReadIncoming,
    ReadOperatorAcks,
    ReadOperatorState,
    ReadOutgoing,
    ReceiptRecord,
    Rejoin,
    Resume,
    StoreBatch,
    StoreJob,
    StoreResult,
)
from hotline.store_schema import MIGRATIONS, SCHEMA_VERSION

DB_NAME = "hotline.db"
BUSY_TIMEOUT_MS = 10_000
_PAGE = 500  # rows per query when iterating for verify/export


@dataclass(frozen=True)
class InboxEntry:
    """One delivered message as the inbox shows it: cursor ``n`` and where it is from;
    ``acked_by``: our operator's ack envelope (lane, seq) of it, if any (DESIGN §9)."""

    n: int
    epoch: bytes
    lane: int
    seq: int
    raw: bytes
    sig: bytes
    acked_by: tuple[int, int] | None = None


@dataclass(frozen=True)
class Gap:
    """Seqs ``first..last`` of a lane we will never hold, and why."""

    direction: str  # "in": the peer's stream; "out": ours
    epoch: bytes
    lane: int
    first: int
    last: int
    reason: str


@dataclass(frozen=True)
class LaneState:
    """One lane of one epoch, for ``verify`` and ``status``."""

    epoch: bytes
    lane: int
    first_seq: int
    upto: int  # outgoing: the peer's ack; incoming: delivered_upto
    chain: bytes


class Store:
    """The SQLite store of one link. Open with ``Store.open``; not thread-safe by itself
    (the daemon uses it from one worker thread)."""

    def __init__(self, db: sqlite3.Connection, path: Path, epoch: bytes) -> None:
        self._db = db
        self.path = path
        self.epoch = epoch

    @classmethod
    def open(
        cls, state_dir: Path, our_key: bytes, peer_key: bytes,
        rng: Callable[[int], bytes] = os.urandom, *, create: bool = True,
    ) -> Store:
        """Open (or create) ``state_dir/hotline.db`` for the link ``our_key``→``peer_key``.

        Args:
            state_dir: directory of the store (created 0700 if missing and ``create``).
            our_key, peer_key: raw 32-byte Ed25519 public keys of both ends.
            rng: randomness for a new store's epoch.
            create: if False, a missing store is an error (read-only commands).

        Raises:
            StoreError: the file is not a hotline store, is from a newer schema, belongs
                to other keys, or is missing (``create=False``).
        """
        if len(our_key) != 32 or len(peer_key) != 32:
            raise LocalProtocolError("store keys are raw 32-byte Ed25519 public keys")
        path = Path(state_dir) / DB_NAME
        db = _connect(path, create)
        try:
            _upgrade(db, path)
            epoch = _ensure_meta(db, path, our_key, peer_key, rng)
        except BaseException:
            db.close()
            raise
        return cls(db, path, epoch)

    def close(self) -> None:
        """Close the database (committed data is already durable)."""
        self._db.close()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run the reads inside the ``with`` block on one consistent snapshot (WAL), so a
        reader (``verify``) sees no half of what a running daemon commits meanwhile."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    # --- the daemon's jobs (records.py) ---------------------------------------------

    def execute(self, job: StoreJob) -> StoreResult:
        """Run one store job for the endpoint and return its result.

        Raises:
            StoreError: the database failed (for ``Commit``: nothing of the batch is
                stored).
            LocalProtocolError: the batch breaks an invariant (a bug of the caller).
        """
        if isinstance(job, Commit):
            return self.apply(job.batch)
        if isinstance(job, ReadOutgoing):
            return self.read_outgoing(job.epoch, job.lane, job.after, job.limit)
        if isinstance(job, ReadChain):
            return self.chain_at(job.epoch, job.lane, job.seq)
        if isinstance(job, ReadIncoming):
            return self.read_incoming(job.ids)
        if isinstance(job, ReadOperatorAcks):
            return self.operator_acked_seqs(job.epoch, job.lane, job.first, job.upto)
        if isinstance(job, ReadOperatorState):
            return self.operator_state(job.our_lanes, job.their_lanes, job.limit)
        return self.lookup_send_ids(job.ids)

    def resume(self, window: int) -> Resume:
        """Everything the endpoint needs at start-up: at most ``window`` unacked
        envelopes per lane are read, whatever the backlog."""
        q = self._db.execute
        out = []
        for lane in LANES:
            head, head_chain = self._out_head(self.epoch, lane)
            acked, acked_chain = q(
                "SELECT acked_upto, acked_chain FROM out_lanes WHERE epoch = ? AND lane = ?",
                (self.epoch, lane)).fetchone() or (0, ZERO_HASH)
            unacked = tuple(self.read_outgoing(self.epoch, lane, acked, window))
            out.append(OutLane(head, head_chain, acked, acked_chain, unacked))
        peer = q("SELECT epoch FROM peer_epochs ORDER BY ord DESC LIMIT 1").fetchone()
        peer_epoch = None if peer is None else bytes(peer[0])
        lanes = []
        for lane in LANES:
            row = None if peer_epoch is None else q(
                "SELECT delivered_upto, chain FROM peer_lanes WHERE epoch = ? AND lane = ?",
                (peer_epoch, lane)).fetchone()
            lanes.append(InLane(0, ZERO_HASH) if row is None else InLane(row[0], row[1]))
        seen = frozenset(bytes(r[0]) for r in q("SELECT epoch FROM peer_epochs"))
        handshake_ts: int = q("SELECT handshake_ts FROM meta").fetchone()[0]
        return Resume(self.epoch, tuple(out), peer_epoch, tuple(lanes), seen, handshake_ts,
                      self._carries(), self.ratchet())

    def ratchet(self) -> RatchetRecord | None:
        """The stored post-quantum ratchet secrets, or None before the first exchange."""
        row = self._db.execute("SELECT current, previous FROM ratchet").fetchone()
        return None if row is None else RatchetRecord(
            bytes(row[0]), None if row[1] is None else bytes(row[1]))

    def _carries(self) -> tuple[Carry, ...]:
        """Abandoned epochs' lanes whose backlog is not re-sent yet, the newest epoch
        first: it re-sealed the oldest messages of an earlier one still being carried
        over when it was abandoned (the endpoint's order, ``Endpoint._on_fork``)."""
        carries = []
        for epoch, lane, carried in self._db.execute(
                "SELECT l.epoch, l.lane, l.carried_upto FROM out_lanes l"
                " JOIN out_epochs e ON e.epoch = l.epoch"
                " WHERE l.epoch != ? AND l.carried_upto IS NOT NULL"
                " ORDER BY e.ord DESC, l.lane", (self.epoch,)).fetchall():
            head = self._out_head(epoch, lane)[0]
            if carried < head:
                carries.append(Carry(bytes(epoch), lane, carried, head))
        return tuple(carries)

    def read_outgoing(self, epoch: bytes, lane: int, after: int, limit: int) -> list[OutRecord]:
        """Up to ``limit`` of our envelopes of ``epoch``/``lane`` with seq > ``after``."""
        rows = self._db.execute(
            "SELECT o.seq, o.raw, o.sig, o.chain, i.send_id FROM outgoing o"
            " LEFT JOIN send_ids i ON i.epoch = o.epoch AND i.lane = o.lane AND i.seq = o.seq"
            " WHERE o.epoch = ? AND o.lane = ? AND o.seq > ? ORDER BY o.seq LIMIT ?",
            (epoch, lane, after, limit)).fetchall()
        return [OutRecord(epoch, lane, *row) for row in rows]

    def chain_at(self, epoch: bytes, lane: int, seq: int) -> bytes | None:
        """The chain hash of our envelope ``seq`` (zeros for seq 0), or None."""
        if seq == 0:
            return ZERO_HASH
        row = self._db.execute(
            "SELECT chain FROM outgoing WHERE epoch = ? AND lane = ? AND seq = ?",
            (epoch, lane, seq)).fetchone()
        return None if row is None else bytes(row[0])

    def lookup_send_ids(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``{id: (lane, seq)}`` for the ids already stored (seq in its current epoch)."""
        found: dict[str, tuple[int, int]] = {}
        for start in range(0, len(ids), _PAGE):
            chunk = list(ids[start:start + _PAGE])
            marks = ",".join("?" * len(chunk))
            for send_id, lane, seq in self._db.execute(
                    f"SELECT send_id, lane, seq FROM send_ids WHERE send_id IN ({marks})",
                    chunk):
                found[send_id] = (lane, seq)
        return found

    # --- the one write path -------------------------------------------------------------

    def apply(self, batch: StoreBatch) -> Committed:
        """Commit a whole batch in one transaction (one fsync), all or nothing.

        Order inside: a new epoch, then outgoing records (each lane continuing its
        head contiguously), rejoins, incoming records (each continuing its lane's
        ``delivered_upto``; duplicates ignored), acks (monotonic, never above our
        head), receipts (stored only if they sign our transcript), operator acks,
        the handshake timestamp, the ratchet secrets.

        Returns:
            ``Committed`` with the receipts that were refused and the peer's operator
            acks that were stored or refused.

        Raises:
            LocalProtocolError: outgoing seqs not contiguous, an ack above our head,
                incoming seqs that skip ahead without a ``Rejoin``.
            StoreError: the database failed (nothing of the batch is stored).
        """
        if not batch:
            return Committed()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            committed = self._write(batch)
            self._db.execute("COMMIT")
        except BaseException as err:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise StoreError(f"store {self.path}: write failed: {err}") from err
            raise
        if batch.new_epoch is not None:
            self.epoch = batch.new_epoch.epoch
        return committed

    def _write(self, batch: StoreBatch) -> Committed:
        if batch.new_epoch is not None:
            self._start_epoch(batch.new_epoch)
        self._insert_outgoing(batch.outgoing)
        for (epoch, lane), upto in batch.carried.items():
            self._db.execute("UPDATE out_lanes SET carried_upto = max(carried_upto, ?)"
                             " WHERE epoch = ? AND lane = ?", (upto, epoch, lane))
        for run in _runs(batch.incoming):
            if isinstance(run, Rejoin):
                self._rejoin(run)
            else:
                self._insert_incoming(run)
        for ack in batch.acks.values():
            self._set_acked(ack)
        rejected = self._insert_receipts(batch.receipts)
        stored, refused = self._insert_operator_acks(batch.operator_acks)
        if batch.handshake_ts is not None:
            self._db.execute("UPDATE meta SET handshake_ts = max(handshake_ts, ?)",
                             (batch.handshake_ts,))
        if batch.ratchet is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO ratchet (id, current, previous, updated_at)"
                " VALUES (1, ?, ?, ?)",
                (batch.ratchet.current, batch.ratchet.previous, int(time.time())))
        return Committed(tuple(rejected), tuple(stored), tuple(refused))

    def _insert_operator_acks(self, acks: Sequence[OperatorAckRecord]
                              ) -> tuple[list[OperatorAckRecord], list[OperatorAckRecord]]:
        """Store operator acks; the peer's acks of ours only where their chain is ours
        (filed under the epoch it matched). Returns (peer's stored, peer's refused)."""
        stored, refused, rows = [], [], []
        epochs = [e for e, _ in reversed(self.out_epochs())] if acks else []
        for a in acks:
            if a.ours:
                epoch = next((e for e in epochs
                              if self.chain_at(e, a.lane, a.seq) == a.chain), None)
                if epoch is None or a.seq < 1:
                    refused.append(a)
                    continue
                a = dataclasses.replace(a, epoch=epoch)
                stored.append(a)
            rows.append((int(a.ours), a.epoch, a.lane, a.seq, a.ack_epoch, a.ack_lane,
                         a.ack_seq))
        self._db.executemany(
            "INSERT OR IGNORE INTO operator_acks (ours, epoch, lane, seq, ack_epoch, ack_lane,"
            " ack_seq) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return stored, refused

    def _start_epoch(self, new: NewOutEpoch) -> None:
        """Abandon the current epoch: its unacknowledged backlog is to be carried over
        (``carried_upto`` starts at its ack), and ``new.epoch`` becomes current."""
        if len(new.epoch) != EPOCH_LEN:
            raise LocalProtocolError("an epoch is 16 bytes")
        old = self._current_epoch()
        for lane in LANES:
            self._db.execute(
                "INSERT INTO out_lanes (epoch, lane, acked_upto, acked_chain, carried_upto)"
                " VALUES (?, ?, 0, ?, 0) ON CONFLICT (epoch, lane) DO UPDATE"
                " SET carried_upto = acked_upto", (old, lane, ZERO_HASH))
        self._db.execute("INSERT INTO out_epochs (epoch, reason) VALUES (?, ?)",
                         (new.epoch, new.reason))
        self._db.execute("UPDATE meta SET epoch = ?", (new.epoch,))

    def _current_epoch(self) -> bytes:
        epoch: bytes = self._db.execute("SELECT epoch FROM meta").fetchone()[0]
        return epoch

    def _insert_outgoing(self, records: Sequence[OutRecord]) -> None:
        heads: dict[tuple[bytes, int], int] = {}
        for r in records:
            key = (r.epoch, r.lane)
            if key not in heads:
                heads[key] = self._out_head(r.epoch, r.lane)[0]
            if r.seq != heads[key] + 1:
                raise LocalProtocolError(
                    f"outgoing lane {r.lane} seq {r.seq} does not follow {heads[key]}")
            heads[key] = r.seq
        now = int(time.time())
        self._db.executemany(
            "INSERT INTO outgoing (epoch, lane, seq, raw, sig, chain, stored_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(r.epoch, r.lane, r.seq, r.raw, r.sig, r.chain, now) for r in records])
        self._db.executemany(
            "INSERT OR REPLACE INTO send_ids (send_id, epoch, lane, seq) VALUES (?, ?, ?, ?)",
            [(r.send_id, r.epoch, r.lane, r.seq) for r in records if r.send_id is not None])

    def _out_head(self, epoch: bytes, lane: int) -> tuple[int, bytes]:
        row = self._db.execute(
            "SELECT seq, chain FROM outgoing WHERE epoch = ? AND lane = ?"
            " ORDER BY seq DESC LIMIT 1", (epoch, lane)).fetchone()
        return (0, ZERO_HASH) if row is None else (row[0], row[1])

    def _rejoin(self, rejoin: Rejoin) -> None:
        if len(rejoin.epoch) != EPOCH_LEN:
            raise LocalProtocolError("a peer epoch is 16 bytes")
        self._db.execute("INSERT OR IGNORE INTO peer_epochs (epoch) VALUES (?)", (rejoin.epoch,))
        row = self._db.execute(
            "SELECT delivered_upto FROM peer_lanes WHERE epoch = ? AND lane = ?",
            (rejoin.epoch, rejoin.lane)).fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO peer_lanes (epoch, lane, first_seq, delivered_upto, chain)"
                " VALUES (?, ?, ?, ?, ?)",
                (rejoin.epoch, rejoin.lane, rejoin.base_seq, rejoin.base_seq - 1, ZERO_HASH))
            return
        if rejoin.base_seq <= row[0] + 1:
            return
        self._db.execute(
            "INSERT INTO gaps (direction, epoch, lane, first, last, reason, at)"
            " VALUES ('in', ?, ?, ?, ?, ?, ?)",
            (rejoin.epoch, rejoin.lane, row[0] + 1, rejoin.base_seq - 1, rejoin.reason,
             int(time.time())))
        self._db.execute(
            "UPDATE peer_lanes SET delivered_upto = ?, chain = ? WHERE epoch = ? AND lane = ?",
            (rejoin.base_seq - 1, ZERO_HASH, rejoin.epoch, rejoin.lane))

    def _insert_incoming(self, records: Sequence[InRecord]) -> None:
        delivered: dict[tuple[bytes, int], int] = {}
        rows = []
        for r in records:
            key = (r.epoch, r.lane)
            if key not in delivered:
                delivered[key] = self._delivered(r.epoch, r.lane)
            if r.seq <= delivered[key]:
                continue  # a duplicate
            if r.seq != delivered[key] + 1:
                raise LocalProtocolError(
                    f"incoming lane {r.lane} seq {r.seq} does not follow {delivered[key]}")
            delivered[key] = r.seq
            rows.append(r)
        self._db.executemany(
            "INSERT INTO incoming (epoch, lane, seq, raw, sig) VALUES (?, ?, ?, ?, ?)",
            [(r.epoch, r.lane, r.seq, r.raw, r.sig) for r in rows])
        last: dict[tuple[bytes, int], InRecord] = {(r.epoch, r.lane): r for r in rows}
        self._db.executemany(
            "UPDATE peer_lanes SET delivered_upto = ?, chain = ? WHERE epoch = ? AND lane = ?",
            [(r.seq, chain_hash(r.raw), r.epoch, r.lane) for r in last.values()])

    def _delivered(self, epoch: bytes, lane: int) -> int:
        row = self._db.execute(
            "SELECT delivered_upto FROM peer_lanes WHERE epoch = ? AND lane = ?",
            (epoch, lane)).fetchone()
        if row is None:
            raise LocalProtocolError("incoming record of a peer lane never joined (Rejoin)")
        upto: int = row[0]
        return upto

    def _set_acked(self, ack: AckRecord) -> None:
        head = self._out_head(ack.epoch, ack.lane)[0]
        if ack.upto > head:
            raise LocalProtocolError(f"ack {ack.upto} is above our last seq {head}")
        self._db.execute(
            "INSERT INTO out_lanes (epoch, lane, acked_upto, acked_chain) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (epoch, lane) DO UPDATE SET acked_upto = excluded.acked_upto,"
            " acked_chain = excluded.acked_chain WHERE excluded.acked_upto > acked_upto",
            (ack.epoch, ack.lane, ack.upto, ack.chain))

    def _insert_receipts(self, receipts: Sequence[ReceiptRecord]) -> list[ReceiptRecord]:
        rejected = []
        for r in receipts:
            if self.chain_at(r.epoch, r.lane, r.upto) != r.chain:
                rejected.append(r)
                continue
            self._db.execute(
                "INSERT OR IGNORE INTO receipts (epoch, lane, upto, chain, raw, sig)"
                " VALUES (?, ?, ?, ?, ?, ?)", (r.epoch, r.lane, r.upto, r.chain, r.raw, r.sig))
        return rejected

    # --- reads for the CLI and the control socket -----------------------------------

    def out_epochs(self) -> list[tuple[bytes, str]]:
        """Our epochs, oldest first, with the reason each began."""
        rows = self._db.execute("SELECT epoch, reason FROM out_epochs ORDER BY ord")
        return [(bytes(e), r) for e, r in rows]

    def out_lanes(self, epoch: bytes | None = None) -> list[LaneState]:
        """Per lane of our ``epoch`` (default: current): the peer's ack."""
        epoch = self.epoch if epoch is None else epoch
        out = []
        for lane in LANES:
            row = self._db.execute(
                "SELECT acked_upto, acked_chain FROM out_lanes WHERE epoch = ? AND lane = ?",
                (epoch, lane)).fetchone() or (0, ZERO_HASH)
            out.append(LaneState(epoch, lane, 1, row[0], row[1]))
        return out

    def out_head(self, lane: int, epoch: bytes | None = None) -> tuple[int, bytes]:
        """(last seq, its chain hash) of our ``lane`` in ``epoch`` (default: current)."""
        return self._out_head(self.epoch if epoch is None else epoch, lane)

    def peer_epochs(self) -> list[bytes]:
        """Every peer epoch seen, oldest first."""
        return [bytes(r[0]) for r in self._db.execute(
            "SELECT epoch FROM peer_epochs ORDER BY ord")]

    def peer_lanes(self, epoch: bytes) -> list[LaneState]:
        """Per lane of the peer's ``epoch`` that we joined: how far it is stored."""
        rows = self._db.execute(
            "SELECT lane, first_seq, delivered_upto, chain FROM peer_lanes WHERE epoch = ?"
            " ORDER BY lane", (epoch,))
        return [LaneState(epoch, *row) for row in rows]

    def gaps(self) -> list[Gap]:
        """Every gap recorded, oldest first."""
        rows = self._db.execute(
            "SELECT direction, epoch, lane, first, last, reason FROM gaps ORDER BY id")
        return [Gap(d, bytes(e), lane, f, la, r) for d, e, lane, f, la, r in rows]

    def get_outgoing(self, lane: int, seq: int, epoch: bytes | None = None) -> OutRecord | None:
        """Our envelope ``seq`` of ``lane`` in ``epoch`` (default: current), or None."""
        records = self.read_outgoing(self.epoch if epoch is None else epoch, lane, seq - 1, 1)
        return records[0] if records and records[0].seq == seq else None

    def get_incoming(self, lane: int, seq: int, epoch: bytes | None = None) -> InRecord | None:
        """The peer's envelope ``seq`` of ``lane`` in ``epoch`` (default: the latest)."""
        if epoch is None:
            epochs = self.peer_epochs()
            if not epochs:
                return None
            epoch = epochs[-1]
        row = self._db.execute(
            "SELECT raw, sig FROM incoming WHERE epoch = ? AND lane = ? AND seq = ?",
            (epoch, lane, seq)).fetchone()
        return None if row is None else InRecord(epoch, lane, seq, row[0], row[1])

    def inbox_after(self, cursor: int, limit: int = 1000) -> list[InboxEntry]:
        """Delivered messages with inbox cursor above ``cursor``, in arrival order, each
        with our operator's ack of it if any."""
        return self._inbox_rows("WHERE i.n > ? ORDER BY i.n LIMIT ?", (cursor, limit))

    def inbox_unacked(self, cursor: int, lanes: Sequence[int], limit: int = 1000
                      ) -> list[InboxEntry]:
        """Like ``inbox_after``, only messages of the peer's latest epoch in ``lanes``
        that our operator has not acknowledged (``inbox --pending``; the caller keeps
        those that need an acknowledgement)."""
        epochs = self.peer_epochs()
        if not epochs or not lanes:
            return []
        return self._inbox_rows(
            f"WHERE i.n > ? AND i.epoch = ? AND i.lane IN ({_marks(lanes)}) AND a.ack_seq IS NULL"
            " ORDER BY i.n LIMIT ?", (cursor, epochs[-1], *lanes, limit))

    def _inbox_rows(self, where: str, params: Sequence[object]) -> list[InboxEntry]:
        """Inbox entries with our operator's ack of each (``a``) joined in."""
        rows = self._db.execute(
            "SELECT i.n, i.epoch, i.lane, i.seq, i.raw, i.sig, a.ack_lane, a.ack_seq"
            " FROM incoming i LEFT JOIN operator_acks a ON a.ours = 0 AND a.epoch = i.epoch"
            f" AND a.lane = i.lane AND a.seq = i.seq {where}", params).fetchall()
        return [InboxEntry(n, bytes(e), lane, seq, raw, sig,
                           None if ack_seq is None else (ack_lane, ack_seq))
                for n, e, lane, seq, raw, sig, ack_lane, ack_seq in rows]

    def inbox_cursor(self, lane: int, seq: int) -> int:
        """The cursor just after message ``seq`` of ``lane`` (``inbox --since``).

        The message itself, in the newest peer epoch that holds it — so an id of an
        older epoch, after the peer's store was reset, skips nothing of the new one;
        else the last message of that lane below ``seq`` in the latest epoch; else 0
        (from the beginning). An id both epochs hold means the newer one: a script
        that must not guess keeps the exact cursor ``n`` of ``inbox --json``.
        """
        epochs = self.peer_epochs()
        if not epochs or seq <= 0:
            return 0
        for epoch in reversed(epochs):
            row = self._db.execute(
                "SELECT n FROM incoming WHERE epoch = ? AND lane = ? AND seq = ?",
                (epoch, lane, seq)).fetchone()
            if row is not None:
                return int(row[0])
        row = self._db.execute(
            "SELECT n FROM incoming WHERE epoch = ? AND lane = ? AND seq <= ?"
            " ORDER BY seq DESC LIMIT 1", (epochs[-1], lane, seq)).fetchone()
        return 0 if row is None else int(row[0])

    def operator_acked(self, ours: bool, epoch: bytes, lane: int, seq: int
                       ) -> tuple[bytes, int, int] | None:
        """The ack envelope (epoch, lane, seq) that acknowledged this message, or None."""
        row = self._db.execute(
            "SELECT ack_epoch, ack_lane, ack_seq FROM operator_acks"
            " WHERE ours = ? AND epoch = ? AND lane = ? AND seq = ?",
            (int(ours), epoch, lane, seq)).fetchone()
        return None if row is None else (bytes(row[0]), row[1], row[2])

    # --- operator acknowledgement (DESIGN §9) ------------------------------------------

    def read_incoming(self, ids: Sequence[tuple[int, int]]
                      ) -> tuple[IncomingMessage | None, ...]:
        """The peer's envelopes ``ids`` of its latest epoch, each with our operator's ack
        of it if any (None where not stored)."""
        epochs = self.peer_epochs()
        found: list[IncomingMessage | None] = []
        for lane, seq in ids:
            record = self.get_incoming(lane, seq, epochs[-1]) if epochs else None
            acked = None if record is None else self.operator_acked(False, record.epoch,
                                                                    lane, seq)
            found.append(None if record is None else IncomingMessage(
                record, None if acked is None else acked[1:]))
        return tuple(found)

    def operator_acked_seqs(self, epoch: bytes, lane: int, first: int, upto: int
                            ) -> frozenset[int]:
        """Seqs ``first..upto`` of our ``lane`` of ``epoch`` the peer's operator acked."""
        rows = self._db.execute(
            "SELECT seq FROM operator_acks WHERE ours = 1 AND epoch = ? AND lane = ?"
            " AND seq BETWEEN ? AND ?", (epoch, lane, first, upto))
        return frozenset(r[0] for r in rows)

    def operator_state(self, our_lanes: Sequence[int], their_lanes: Sequence[int],
                       limit: int) -> OperatorState:
        """Envelopes no operator acknowledged, newest first, at most ``limit`` each: ours
        of ``our_lanes`` (current epoch), the peer's of ``their_lanes`` (latest epoch)."""
        ours = [] if not our_lanes else self._db.execute(
            "SELECT o.lane, o.seq, o.raw, o.sig, o.chain FROM outgoing o"
            " LEFT JOIN operator_acks a ON a.ours = 1 AND a.epoch = o.epoch"
            " AND a.lane = o.lane AND a.seq = o.seq"
            f" WHERE o.epoch = ? AND o.lane IN ({_marks(our_lanes)}) AND a.ack_seq IS NULL"
            " ORDER BY o.stored_at DESC, o.seq DESC LIMIT ?",
            (self.epoch, *our_lanes, limit)).fetchall()
        epochs = self.peer_epochs()
        theirs = [] if not epochs or not their_lanes else self._inbox_rows(
            f"WHERE i.epoch = ? AND i.lane IN ({_marks(their_lanes)}) AND a.ack_seq IS NULL"
            " ORDER BY i.n DESC LIMIT ?", (epochs[-1], *their_lanes, limit))
        return OperatorState(
            tuple(OutRecord(self.epoch, lane, seq, raw, sig, chain)
                  for lane, seq, raw, sig, chain in ours),
            tuple(InRecord(e.epoch, e.lane, e.seq, e.raw, e.sig) for e in theirs))

    def iter_outgoing(self, epoch: bytes, lane: int) -> Iterator[OutRecord]:
        """Our envelopes of one epoch and lane in seq order (read page by page)."""
        last = 0
        while rows := self.read_outgoing(epoch, lane, last, _PAGE):
            yield from rows
            last = rows[-1].seq

    def iter_incoming(self, epoch: bytes, lane: int) -> Iterator[InRecord]:
        """The peer's envelopes of one epoch and lane, seqs ascending."""
        last = 0
        while rows := self._db.execute(
                "SELECT seq, raw, sig FROM incoming WHERE epoch = ? AND lane = ? AND seq > ?"
                " ORDER BY seq LIMIT ?", (epoch, lane, last, _PAGE)).fetchall():
            yield from (InRecord(epoch, lane, *row) for row in rows)
            last = rows[-1][0]

    def iter_receipts(self) -> Iterator[ReceiptRecord]:
        """All stored receipts in the order received."""
        last = 0
        while rows := self._db.execute(
                "SELECT id, epoch, lane, upto, chain, raw, sig FROM receipts WHERE id > ?"
                " ORDER BY id LIMIT ?", (last, _PAGE)).fetchall():
            yield from (ReceiptRecord(*row[1:]) for row in rows)
            last = rows[-1][0]


def _marks(values: Sequence[object]) -> str:
    """``?,?,?``: one SQL parameter per value."""
    return ",".join("?" * len(values))


def _runs(items: Sequence[InRecord | Rejoin]) -> Iterator[Rejoin | list[InRecord]]:
    """Rejoins one by one, and the incoming records between them as lists, in order."""
    run: list[InRecord] = []
    for item in items:
        if isinstance(item, Rejoin):
            if run:
                yield run
                run = []
            yield item
        else:
            run.append(item)
    if run:
        yield run


def peek_ratchet(state_dir: Path) -> int | None:
    """How many post-quantum ratchet secrets the store in ``state_dir`` holds (0..2),
    read without opening it for writing (``hotline check``); None: no readable store."""
    path = Path(state_dir) / DB_NAME
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT previous FROM ratchet").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return 0 if row is None else 1 + (row[0] is not None)


# --- opening --------------------------------------------------------------------------


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    """Connect with our pragmas; a new file is created 0600 before SQLite touches it."""
    if not path.exists():
        if not create:
            raise StoreError(f"no store at {path} (has the daemon ever run with this config?)")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as err:
            raise StoreError(f"cannot create store {path}: {err.strerror}") from err
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as err:
        raise StoreError(f"cannot open store {path}: {err}") from err
    if mode != "wal":
        db.close()
        raise StoreError(f"store {path}: cannot switch to WAL journal mode (got {mode})")
    return db


def _upgrade(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION, one migration per transaction."""
    try:
        while True:
            db.execute("BEGIN IMMEDIATE")
            version: int = db.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                db.execute("COMMIT")
                return
            if version > SCHEMA_VERSION or version not in MIGRATIONS:
                db.execute("ROLLBACK")
                raise StoreError(
                    f"store {path} has schema version {version}; this hotline knows "
                    f"versions up to {SCHEMA_VERSION} (upgrade hotline)")
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
    except sqlite3.Error as err:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise StoreError(f"store {path} is not a usable hotline store: {err}") from err


def _fingerprint(raw: bytes) -> str:
    return PublicKey.from_raw(raw).fingerprint()


def _ensure_meta(
    db: sqlite3.Connection, path: Path, our_key: bytes, peer_key: bytes,
    rng: Callable[[int], bytes],
) -> bytes:
    """Create the meta row on first open (fresh epoch) or check it is for these keys."""
    try:
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT our_key, peer_key, epoch FROM meta").fetchone()
        if row is None:
            epoch = bytes(rng(EPOCH_LEN))
            if len(epoch) != EPOCH_LEN:
                raise LocalProtocolError("rng returned the wrong number of bytes")
            db.execute("INSERT INTO meta (id, our_key, peer_key, epoch) VALUES (1, ?, ?, ?)",
                       (our_key, peer_key, epoch))
            db.execute("INSERT INTO out_epochs (epoch, reason) VALUES (?, 'store created')",
                       (epoch,))
            row = (our_key, peer_key, epoch)
        db.execute("COMMIT")
    except sqlite3.Error as err:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise StoreError(f"store {path} is not a usable hotline store: {err}") from err
    if (row[0], row[1]) != (our_key, peer_key):
        raise StoreError(
            f"store {path} belongs to another link (our key {_fingerprint(row[0])}, "
            f"peer {_fingerprint(row[1])}), not to our key {_fingerprint(our_key)} "
            f"with peer {_fingerprint(peer_key)}; use another state_dir")
    epoch_value: bytes = row[2]
    return epoch_value
