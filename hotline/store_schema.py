"""The store's SQL schema and its migrations (``PRAGMA user_version``).

``MIGRATIONS[n]`` turns a version-n file into version n + 1 inside one transaction
(``store._upgrade`` runs them in order). Version 1 is the first release's single-lane
store; version 2 adds precedence lanes, epochs on our own envelopes, idempotency ids,
gaps, the inbox cursor, operator acknowledgements, the persisted handshake
timestamp and the post-quantum ratchet secrets (``ratchet``, DESIGN §11). A v1 store's
messages become routine (lane 3) and keep their exact signed bytes, so they still verify.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SCHEMA_VERSION = 2
ROUTINE = 3

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

_TABLES_V2 = """
CREATE TABLE out_epochs (
    ord    INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch  BLOB NOT NULL UNIQUE CHECK (length(epoch) = 16),
    reason TEXT NOT NULL
);
CREATE TABLE out_lanes (
    epoch       BLOB NOT NULL,
    lane        INTEGER NOT NULL CHECK (lane BETWEEN 0 AND 3),
    acked_upto  INTEGER NOT NULL DEFAULT 0,
    acked_chain BLOB NOT NULL,
    carried_upto INTEGER,  -- abandoned epochs: backlog re-sent in a later epoch up to here
    PRIMARY KEY (epoch, lane)
) WITHOUT ROWID;
CREATE TABLE outgoing2 (
    epoch     BLOB NOT NULL,
    lane      INTEGER NOT NULL CHECK (lane BETWEEN 0 AND 3),
    seq       INTEGER NOT NULL CHECK (seq >= 1),
    raw       BLOB NOT NULL,
    sig       BLOB NOT NULL,
    chain     BLOB NOT NULL,
    stored_at INTEGER NOT NULL,
    PRIMARY KEY (epoch, lane, seq)
) WITHOUT ROWID;
CREATE TABLE send_ids (
    send_id TEXT PRIMARY KEY,
    epoch   BLOB NOT NULL,
    lane    INTEGER NOT NULL,
    seq     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE peer_epochs2 (
    ord   INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch BLOB NOT NULL UNIQUE CHECK (length(epoch) = 16)
);
CREATE TABLE peer_lanes (
    epoch          BLOB NOT NULL,
    lane           INTEGER NOT NULL CHECK (lane BETWEEN 0 AND 3),
    first_seq      INTEGER NOT NULL CHECK (first_seq >= 1),
    delivered_upto INTEGER NOT NULL,
    chain          BLOB NOT NULL,
    PRIMARY KEY (epoch, lane)
) WITHOUT ROWID;
CREATE TABLE incoming2 (
    n     INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch BLOB NOT NULL,
    lane  INTEGER NOT NULL CHECK (lane BETWEEN 0 AND 3),
    seq   INTEGER NOT NULL CHECK (seq >= 1),
    raw   BLOB NOT NULL,
    sig   BLOB NOT NULL,
    UNIQUE (epoch, lane, seq)
);
CREATE TABLE gaps (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    epoch     BLOB NOT NULL,
    lane      INTEGER NOT NULL,
    first     INTEGER NOT NULL,
    last      INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    at        INTEGER NOT NULL
);
CREATE TABLE receipts2 (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch BLOB NOT NULL,
    lane  INTEGER NOT NULL,
    upto  INTEGER NOT NULL,
    chain BLOB NOT NULL,
    raw   BLOB NOT NULL,
    sig   BLOB NOT NULL,
    UNIQUE (epoch, lane, upto)
);
CREATE TABLE operator_acks (
    ours      INTEGER NOT NULL CHECK (ours IN (0, 1)),
    epoch     BLOB NOT NULL,
    lane      INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    ack_epoch BLOB NOT NULL,
    ack_lane  INTEGER NOT NULL,
    ack_seq   INTEGER NOT NULL,
    PRIMARY KEY (ours, epoch, lane, seq)
) WITHOUT ROWID;
CREATE TABLE ratchet (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    current    BLOB NOT NULL CHECK (length(current) = 32),
    previous   BLOB CHECK (previous IS NULL OR length(previous) = 32),
    updated_at INTEGER NOT NULL
);
"""

_COPY_V1_TO_V2 = f"""
ALTER TABLE meta ADD COLUMN handshake_ts INTEGER NOT NULL DEFAULT 0;
INSERT INTO out_epochs (epoch, reason) SELECT epoch, 'store created' FROM meta;
INSERT INTO out_lanes (epoch, lane, acked_upto, acked_chain)
    SELECT m.epoch, {ROUTINE}, m.acked_upto,
           coalesce((SELECT chain FROM outgoing o WHERE o.seq = m.acked_upto), zeroblob(32))
    FROM meta m;
INSERT INTO outgoing2 (epoch, lane, seq, raw, sig, chain, stored_at)
    SELECT (SELECT epoch FROM meta), {ROUTINE}, seq, raw, sig, chain,
           CAST(strftime('%s', 'now') AS INTEGER)
    FROM outgoing ORDER BY seq;
INSERT INTO peer_epochs2 (ord, epoch) SELECT ord, epoch FROM peer_epochs ORDER BY ord;
INSERT INTO peer_lanes (epoch, lane, first_seq, delivered_upto, chain)
    SELECT epoch, {ROUTINE}, first_seq, delivered_upto, chain FROM peer_epochs;
INSERT INTO incoming2 (epoch, lane, seq, raw, sig)
    SELECT i.epoch, {ROUTINE}, i.seq, i.raw, i.sig FROM incoming i
    JOIN peer_epochs p ON p.epoch = i.epoch
    WHERE i.seq <= p.delivered_upto ORDER BY p.ord, i.seq;
INSERT INTO receipts2 (id, epoch, lane, upto, chain, raw, sig)
    SELECT id, epoch, {ROUTINE}, upto, chain, raw, sig FROM receipts ORDER BY id;
DROP TABLE incoming;
DROP TABLE receipts;
DROP TABLE outgoing;
DROP TABLE peer_epochs;
ALTER TABLE outgoing2 RENAME TO outgoing;
ALTER TABLE incoming2 RENAME TO incoming;
ALTER TABLE receipts2 RENAME TO receipts;
ALTER TABLE peer_epochs2 RENAME TO peer_epochs;
"""


def _run_script(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    _run_script(db, _SCHEMA_V1)


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    _run_script(db, _TABLES_V2)
    _run_script(db, _COPY_V1_TO_V2)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: _migrate_0_to_1,
    1: _migrate_1_to_2,
}
