"""The durable store: outbox, inbox and receipts in one SQLite file (DESIGN §4).

One file ``<state_dir>/hotline.db`` (mode 0600; SQLite gives its ``-wal``/``-shm``
files the same mode) holds everything a daemon must not forget:

* ``meta`` — one row: our key, the pinned peer key, our outgoing **epoch** (16 random
  bytes drawn when the store is created; a lost store means a new epoch, never reused
  seqs) and the peer's cumulative ack of our stream (``acked_upto``, monotonic).
* ``outgoing`` — our envelopes by seq (contiguous from 1), exact signed bytes + signature.
* ``peer_epochs`` — each peer epoch seen, in order, with ``delivered_upto`` (highest seq
  stored with no gap below it, from the epoch's first stored seq) and the chain hash of
  the envelope at ``delivered_upto``.
* ``incoming`` — the peer's envelopes by (epoch, seq); duplicates are ignored.
* ``receipts`` — the peer's signed receipts of our stream.

Durability: WAL journal with ``synchronous=FULL``, so a committed transaction survives
a crash or power loss. Group commit: ``apply(batch)`` writes everything one event-loop
turn produced (outgoing, incoming, the new ack, receipts) in ONE ``BEGIN IMMEDIATE``
transaction, so one fsync is shared by all of it; a batch is all-or-nothing.

The daemon calls the store from one worker thread (hence ``check_same_thread=False``);
the CLI (``verify``, ``export``) may read the same file meanwhile: WAL lets readers run
beside the one writer, and ``busy_timeout`` waits out brief locks.

Schema versions live in ``PRAGMA user_version``. ``_MIGRATIONS[n]`` upgrades version n
to n + 1 (version 0 is the empty file); a file from a newer hotline is refused.

The store never parses network bytes: callers hand it records whose epoch and seq they
took from envelopes they already decoded and verified.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hotline.errors import LocalProtocolError, StoreError
from hotline.proto.envelope import EPOCH_LEN, ZERO_HASH, chain_hash
from hotline.proto.identity import PublicKey

DB_NAME = "hotline.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000
_PAGE = 500  # rows per query when iterating for verify/export


@dataclass(frozen=True)
class OutRecord:
    """One of our envelopes: seq, exact signed bytes, 64-byte signature."""

    seq: int
    raw: bytes
    sig: bytes


@dataclass(frozen=True)
class InRecord:
    """One of the peer's envelopes, keyed by the peer's epoch and seq."""

    epoch: bytes
    seq: int
    raw: bytes
    sig: bytes


@dataclass(frozen=True)
class PeerStream:
    """How far the peer's stream in ``epoch`` is stored without a gap."""

    epoch: bytes
    delivered_upto: int
    chain: bytes  # chain hash of the envelope at delivered_upto (zeros if none)
    first_seq: int = 1  # where this epoch's stream starts in our store


@dataclass(frozen=True)
class ReceiptRecord:
    """A peer's signed receipt of our stream (``epoch`` is our epoch)."""

    epoch: bytes
    upto: int
    chain: bytes
    raw: bytes
    sig: bytes


@dataclass
class Batch:
    """Everything one event-loop turn wants committed, in one transaction."""

    outgoing: list[OutRecord] = field(default_factory=list)
    incoming: list[InRecord] = field(default_factory=list)
    acked_upto: int | None = None
    receipts: list[ReceiptRecord] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.outgoing or self.incoming or self.receipts
                    or self.acked_upto is not None)


# --- schema and migrations ------------------------------------------------------------

_SCHEMA_V1 = """
CREATE TABLE meta (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    our_key     BLOB NOT NULL CHECK (length(our_key) = 32),
    peer_key    BLOB NOT NULL CHECK (length(peer_key) = 32),
    epoch       BLOB NOT NULL CHECK (length(epoch) = 16),
    acked_upto  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE outgoing (
    seq   INTEGER PRIMARY KEY CHECK (seq >= 1),
    raw   BLOB NOT NULL,
    sig   BLOB NOT NULL,
    chain BLOB NOT NULL
);
CREATE TABLE peer_epochs (
    ord            INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch          BLOB NOT NULL UNIQUE CHECK (length(epoch) = 16),
    first_seq      INTEGER NOT NULL CHECK (first_seq >= 1),
    delivered_upto INTEGER NOT NULL,
    chain          BLOB NOT NULL
);
CREATE TABLE incoming (
    epoch BLOB NOT NULL REFERENCES peer_epochs(epoch),
    seq   INTEGER NOT NULL CHECK (seq >= 1),
    raw   BLOB NOT NULL,
    sig   BLOB NOT NULL,
    PRIMARY KEY (epoch, seq)
) WITHOUT ROWID;
CREATE TABLE receipts (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch BLOB NOT NULL,
    upto  INTEGER NOT NULL,
    chain BLOB NOT NULL,
    raw   BLOB NOT NULL,
    sig   BLOB NOT NULL,
    UNIQUE (epoch, upto)
);
"""


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            db.execute(statement)


# _MIGRATIONS[n] turns a version-n file into version n + 1 (inside one transaction).
# For v2: write _migrate_1_to_2, add it here, bump SCHEMA_VERSION.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _migrate_0_to_1}


def _fingerprint(raw: bytes) -> str:
    return PublicKey.from_raw(raw).fingerprint()


# --- the store ------------------------------------------------------------------------


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

    # --- reads ----------------------------------------------------------------------

    def out_head(self) -> tuple[int, bytes]:
        """(last outgoing seq, chain hash of that envelope); (0, 32 zero bytes) if none."""
        row = self._db.execute(
            "SELECT seq, chain FROM outgoing ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, ZERO_HASH) if row is None else (row[0], row[1])

    def acked_upto(self) -> int:
        """The peer's cumulative ack of our stream (0 if nothing acknowledged)."""
        value: int = self._db.execute("SELECT acked_upto FROM meta").fetchone()[0]
        return value

    def unacked(self) -> list[OutRecord]:
        """Our envelopes above ``acked_upto``, in seq order."""
        rows = self._db.execute(
            "SELECT seq, raw, sig FROM outgoing WHERE seq > (SELECT acked_upto FROM meta)"
            " ORDER BY seq").fetchall()
        return [OutRecord(*row) for row in rows]

    def peer_stream(self) -> PeerStream | None:
        """The latest peer epoch seen and how far it is stored without a gap."""
        row = self._db.execute(
            "SELECT epoch, delivered_upto, chain, first_seq FROM peer_epochs"
            " ORDER BY ord DESC LIMIT 1"
        ).fetchone()
        return None if row is None else PeerStream(*row)

    def peer_epochs(self) -> list[PeerStream]:
        """Every peer epoch seen, oldest first."""
        rows = self._db.execute(
            "SELECT epoch, delivered_upto, chain, first_seq FROM peer_epochs ORDER BY ord"
        ).fetchall()
        return [PeerStream(*row) for row in rows]

    def inbox_since(self, seq: int, limit: int = 1000) -> list[InRecord]:
        """Delivered envelopes (no gap below) of the latest peer epoch with seq > ``seq``."""
        stream = self.peer_stream()
        if stream is None:
            return []
        rows = self._db.execute(
            "SELECT epoch, seq, raw, sig FROM incoming WHERE epoch = ? AND seq > ?"
            " AND seq <= ? ORDER BY seq LIMIT ?",
            (stream.epoch, seq, stream.delivered_upto, limit)).fetchall()
        return [InRecord(*row) for row in rows]

    def get_outgoing(self, seq: int) -> OutRecord | None:
        """Our envelope ``seq``, or None."""
        row = self._db.execute(
            "SELECT seq, raw, sig FROM outgoing WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else OutRecord(*row)

    def get_incoming(self, seq: int, epoch: bytes | None = None) -> InRecord | None:
        """The peer's envelope ``seq`` in ``epoch`` (default: the latest peer epoch)."""
        if epoch is None:
            stream = self.peer_stream()
            if stream is None:
                return None
            epoch = stream.epoch
        row = self._db.execute(
            "SELECT epoch, seq, raw, sig FROM incoming WHERE epoch = ? AND seq = ?",
            (epoch, seq)).fetchone()
        return None if row is None else InRecord(*row)

    def iter_outgoing(self) -> Iterator[OutRecord]:
        """All our envelopes in seq order (read page by page)."""
        last = 0
        while rows := self._db.execute(
                "SELECT seq, raw, sig FROM outgoing WHERE seq > ? ORDER BY seq LIMIT ?",
                (last, _PAGE)).fetchall():
            yield from (OutRecord(*row) for row in rows)
            last = rows[-1][0]

    def iter_incoming(self, epoch: bytes | None = None) -> Iterator[InRecord]:
        """The peer's envelopes, seqs ascending: of ``epoch``, or of every epoch in the
        order first seen (``epoch=None``)."""
        epochs = [p.epoch for p in self.peer_epochs()] if epoch is None else [epoch]
        for current in epochs:
            last = 0
            while rows := self._db.execute(
                    "SELECT epoch, seq, raw, sig FROM incoming WHERE epoch = ? AND seq > ?"
                    " ORDER BY seq LIMIT ?", (current, last, _PAGE)).fetchall():
                yield from (InRecord(*row) for row in rows)
                last = rows[-1][1]

    def iter_receipts(self) -> Iterator[ReceiptRecord]:
        """All stored receipts in the order received."""
        last = 0
        while rows := self._db.execute(
                "SELECT id, epoch, upto, chain, raw, sig FROM receipts WHERE id > ?"
                " ORDER BY id LIMIT ?", (last, _PAGE)).fetchall():
            yield from (ReceiptRecord(*row[1:]) for row in rows)
            last = rows[-1][0]

    # --- the one write path -------------------------------------------------------------

    def apply(self, batch: Batch) -> None:
        """Commit a whole batch in one transaction (one fsync), all or nothing.

        Outgoing records must continue ``out_head()`` contiguously. Incoming records
        already stored, or at or below the epoch's ``delivered_upto``, are ignored; a
        record of an unseen peer epoch starts that epoch (its stream begins at the
        lowest seq of that epoch in this batch, normally 1). ``acked_upto``
        only ever grows. Receipts already stored for the same upto are ignored.

        Raises:
            LocalProtocolError: outgoing seqs not contiguous, or an ack above our head.
            StoreError: the database failed (nothing of the batch is stored).
        """
        if not batch:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._write(batch)
            self._db.execute("COMMIT")
        except BaseException as err:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise StoreError(f"store {self.path}: write failed: {err}") from err
            raise

    def _write(self, batch: Batch) -> None:
        self._insert_outgoing(batch.outgoing)
        self._insert_incoming(batch.incoming)
        if batch.acked_upto is not None:
            self._set_acked(batch.acked_upto)
        self._db.executemany(
            "INSERT OR IGNORE INTO receipts (epoch, upto, chain, raw, sig)"
            " VALUES (?, ?, ?, ?, ?)",
            [(r.epoch, r.upto, r.chain, r.raw, r.sig) for r in batch.receipts])

    def _insert_outgoing(self, records: Sequence[OutRecord]) -> None:
        if not records:
            return
        head = self.out_head()[0]
        for i, record in enumerate(records):
            if record.seq != head + 1 + i:
                raise LocalProtocolError(
                    f"outgoing seq {record.seq} does not follow {head + i} contiguously")
        self._db.executemany(
            "INSERT INTO outgoing (seq, raw, sig, chain) VALUES (?, ?, ?, ?)",
            [(r.seq, r.raw, r.sig, chain_hash(r.raw)) for r in records])

    def _insert_incoming(self, records: Sequence[InRecord]) -> None:
        by_epoch: dict[bytes, list[InRecord]] = {}
        for record in records:
            by_epoch.setdefault(record.epoch, []).append(record)
        for epoch, group in by_epoch.items():
            upto = self._ensure_peer_epoch(epoch, min(r.seq for r in group))
            # At or below delivered_upto (or below the epoch's first seq): a duplicate.
            self._db.executemany(
                "INSERT OR IGNORE INTO incoming (epoch, seq, raw, sig) VALUES (?, ?, ?, ?)",
                [(r.epoch, r.seq, r.raw, r.sig) for r in group if r.seq > upto])
            self._advance_delivered(epoch, upto)

    def _ensure_peer_epoch(self, epoch: bytes, first_seq: int) -> int:
        """Create the epoch's row if new; return its delivered_upto."""
        if len(epoch) != EPOCH_LEN:
            raise LocalProtocolError("a peer epoch is 16 bytes")
        self._db.execute(
            "INSERT OR IGNORE INTO peer_epochs (epoch, first_seq, delivered_upto, chain)"
            " VALUES (?, ?, ?, ?)", (epoch, first_seq, first_seq - 1, ZERO_HASH))
        upto: int = self._db.execute(
            "SELECT delivered_upto FROM peer_epochs WHERE epoch = ?", (epoch,)).fetchone()[0]
        return upto

    def _advance_delivered(self, epoch: bytes, upto: int) -> None:
        """Move ``delivered_upto`` over every stored seq that now follows it without a gap."""
        new = upto
        while self._db.execute(
                "SELECT 1 FROM incoming WHERE epoch = ? AND seq = ?", (epoch, new + 1)
        ).fetchone() is not None:
            new += 1
        if new == upto:
            return
        raw = self._db.execute(
            "SELECT raw FROM incoming WHERE epoch = ? AND seq = ?", (epoch, new)).fetchone()[0]
        self._db.execute(
            "UPDATE peer_epochs SET delivered_upto = ?, chain = ? WHERE epoch = ?",
            (new, chain_hash(raw), epoch))

    def _set_acked(self, upto: int) -> None:
        head = self.out_head()[0]
        if upto > head:
            raise LocalProtocolError(f"ack {upto} is above our last seq {head}")
        self._db.execute("UPDATE meta SET acked_upto = max(acked_upto, ?)", (upto,))


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
            if version > SCHEMA_VERSION or version not in _MIGRATIONS:
                db.execute("ROLLBACK")
                raise StoreError(
                    f"store {path} has schema version {version}; this hotline knows "
                    f"versions up to {SCHEMA_VERSION} (upgrade hotline)")
            _MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
    except sqlite3.Error as err:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise StoreError(f"store {path} is not a usable hotline store: {err}") from err


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
