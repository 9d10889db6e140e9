"""The SQLite store (schema v2) on real files: durability, group commit, lanes, epochs,
gaps, receipts, send ids, the inbox cursor, the bounded resume, refusals, kill -9.

Envelopes are real: sealed and signed by the product's ``LaneSequencer``, so that
``verify_store`` can check what the store kept.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotline.errors import LocalProtocolError, StoreError
from hotline.proto.envelope import ZERO_HASH, chain_hash, encode_receipt, sign_receipt
from hotline.proto.identity import Identity
from hotline.proto.lanes import FLASH, IMMEDIATE, LANES, PRIORITY, ROUTINE
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
    StoreBatch,
)
from hotline.proto.sequencer import LaneSequencer
from hotline.store import DB_NAME, Gap, InboxEntry, Store
from hotline.store_schema import SCHEMA_VERSION
from hotline.verify import verify_store

OURS = Identity.from_seed(bytes([1]) * 32)
THEIRS = Identity.from_seed(bytes([2]) * 32)
PEER_EPOCH = bytes([7]) * 16
PEER_EPOCH2 = bytes([8]) * 16
OUR_EPOCH2 = bytes([9]) * 16
REPO = Path(__file__).resolve().parent.parent
TS = 10**18


def fixed_rng(n: int) -> bytes:
    return bytes([0xEE]) * n


def sealed(signer: Identity, to: Identity, epoch: bytes, lane: int, after: int, prev: bytes,
           count: int, send_id: str | None = None) -> list[OutRecord]:
    """``count`` real envelopes of ``lane`` with seqs ``after + 1 ..``, chained to ``prev``."""
    sealer = LaneSequencer(signer, to.public, epoch, lane, after, prev, 65536)
    return [sealer.seal(b"m" * 100 + b"%d" % (after + i), "text/plain", TS + after + i,
                        None if send_id is None else f"{send_id}:{i}")
            for i in range(1, count + 1)]


def outs(store: Store, count: int, lane: int = ROUTINE, send_id: str | None = None,
         ) -> list[OutRecord]:
    """Our next ``count`` messages of ``lane``, continuing the store's head."""
    head, chain = store.out_head(lane)
    return sealed(OURS, THEIRS, store.epoch, lane, head, chain, count, send_id)


def ins(start: int, count: int, lane: int = ROUTINE, epoch: bytes = PEER_EPOCH,
        prev: bytes = ZERO_HASH) -> list[InRecord]:
    """The peer's messages ``start ..`` of ``lane`` (``prev``: the chain before ``start``)."""
    return [InRecord(r.epoch, r.lane, r.seq, r.raw, r.sig)
            for r in sealed(THEIRS, OURS, epoch, lane, start - 1, prev, count)]


def join(lane: int = ROUTINE, epoch: bytes = PEER_EPOCH, base: int = 1,
         reason: str = "new peer epoch") -> Rejoin:
    return Rejoin(epoch, lane, base, reason)


def receipt(epoch: bytes, lane: int, upto: int, chain: bytes) -> ReceiptRecord:
    """A receipt the peer really signed, of our ``lane`` of ``epoch`` up to ``upto``."""
    raw = encode_receipt(OURS.public.raw, THEIRS.public.raw, epoch, lane, upto, chain)
    return ReceiptRecord(epoch, lane, upto, chain, raw, sign_receipt(THEIRS, raw))


def receipt_of(record: OutRecord) -> ReceiptRecord:
    return receipt(record.epoch, record.lane, record.seq, record.chain)


def ack_of(record: OutRecord) -> AckRecord:
    return AckRecord(record.epoch, record.lane, record.seq, record.chain)


def batch(*, acks: tuple[AckRecord, ...] = (), **fields: Any) -> StoreBatch:
    """A ``StoreBatch`` of ``fields``, with ``acks`` recorded as the endpoint does."""
    made = StoreBatch(**fields)
    for ack in acks:
        made.ack(ack)
    return made


def open_store(path: Path, rng: Callable[[int], bytes] = fixed_rng) -> Store:
    return Store.open(path, OURS.public.raw, THEIRS.public.raw, rng)


def verified(store: Store) -> tuple[int, int, int, int]:
    """(sent, received, receipts, gaps) of a clean ``verify_store`` (fails otherwise)."""
    report = verify_store(store, OURS.public, THEIRS.public)
    assert report.problems == []
    return report.sent, report.received, report.receipts, report.gaps


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path)
    yield s
    s.close()


# --- a fresh store and its files ------------------------------------------------------


def test_fresh_store(store: Store, tmp_path: Path) -> None:
    assert store.epoch == bytes([0xEE]) * 16
    assert store.out_epochs() == [(store.epoch, "store created")]
    resume = store.resume(100)
    assert resume.epoch == store.epoch
    assert [(o.head, o.acked, o.unacked) for o in resume.out] == [(0, 0, ())] * 4
    assert (resume.peer_epoch, resume.peer_epochs_seen, resume.handshake_ts) == (
        None, frozenset(), 0)
    assert [(i.delivered, i.chain) for i in resume.peer_lanes] == [(0, ZERO_HASH)] * 4
    assert resume.carry == ()
    assert store.inbox_after(0) == []
    assert store.inbox_cursor(ROUTINE, 5) == 0
    assert store.gaps() == []
    assert store.get_outgoing(ROUTINE, 1) is None
    assert store.get_incoming(ROUTINE, 1) is None
    assert store.chain_at(store.epoch, ROUTINE, 0) == ZERO_HASH
    assert store.chain_at(store.epoch, ROUTINE, 1) is None
    assert verified(store) == (0, 0, 0, 0)
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    db.close()


def test_files_are_private(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b"
    s = open_store(state)
    s.apply(batch(outgoing=outs(s, 1)))
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / DB_NAME).stat().st_mode) == 0o600
    for name in ("hotline.db-wal", "hotline.db-shm"):
        assert stat.S_IMODE((state / name).stat().st_mode) & 0o077 == 0
    s.close()


# --- durability and group commit ------------------------------------------------------


def test_reopen_resumes_everything(tmp_path: Path) -> None:
    s = open_store(tmp_path, os.urandom)
    epoch = s.epoch
    routine = outs(s, 5)
    flash = outs(s, 2, FLASH)
    got = ins(1, 3)
    committed = s.apply(batch(
        outgoing=[*routine, *flash], incoming=[join(), *got], acks=(ack_of(routine[1]),),
        receipts=[receipt_of(routine[1])], handshake_ts=1234))
    assert committed == Committed(())
    s.close()
    s = open_store(tmp_path, lambda n: bytes(n))
    assert s.epoch == epoch  # not redrawn
    resume = s.resume(100)
    assert resume.handshake_ts == 1234
    out = resume.out[ROUTINE]
    assert (out.head, out.head_chain, out.acked, out.acked_chain) == (
        5, routine[-1].chain, 2, routine[1].chain)
    assert out.unacked == tuple(routine[2:])
    assert resume.out[FLASH].unacked == tuple(flash)
    assert (resume.peer_epoch, resume.peer_epochs_seen) == (PEER_EPOCH, {PEER_EPOCH})
    assert resume.peer_lanes[ROUTINE].delivered == 3
    assert resume.peer_lanes[FLASH].delivered == 0
    assert s.get_outgoing(ROUTINE, 3) == routine[2]
    assert s.get_incoming(ROUTINE, 2) == got[1]
    assert s.get_incoming(ROUTINE, 2, epoch=bytes(16)) is None
    assert list(s.iter_outgoing(epoch, ROUTINE)) == routine
    assert list(s.iter_incoming(PEER_EPOCH, ROUTINE)) == got
    assert list(s.iter_receipts()) == [receipt_of(routine[1])]
    assert verified(s) == (7, 3, 1, 0)
    more = outs(s, 2)
    assert more[0].seq == 6
    s.apply(batch(outgoing=more))
    assert s.out_head(ROUTINE) == (7, more[-1].chain)
    s.close()


def test_group_commit_is_one_transaction(store: Store) -> None:
    good = outs(store, 3)
    flash = outs(store, 2, FLASH)
    gap = OutRecord(store.epoch, ROUTINE, 9, b"x", b"y" * 64, b"z" * 32)
    parts: dict[str, Any] = {"incoming": [join(), *ins(1, 2)], "acks": (ack_of(good[0]),),
             "receipts": [receipt_of(good[0])], "handshake_ts": 99}
    with pytest.raises(LocalProtocolError):  # one bad record: the whole batch is refused
        store.apply(batch(outgoing=[*flash, *good, gap], **parts))
    assert [store.out_head(lane)[0] for lane in LANES] == [0, 0, 0, 0]
    resume = store.resume(10)
    assert (resume.peer_epoch, resume.handshake_ts, resume.out[ROUTINE].acked) == (None, 0, 0)
    assert list(store.iter_receipts()) == []
    assert store.execute(Commit(batch(outgoing=[*flash, *good], **parts))) == Committed(())
    assert (store.out_head(ROUTINE)[0], store.out_head(FLASH)[0]) == (3, 2)
    assert store.resume(10).out[ROUTINE].acked == 1
    assert verified(store) == (5, 2, 1, 0)


def test_a_failed_write_stores_nothing_and_the_store_recovers(store: Store) -> None:
    store.apply(batch(outgoing=outs(store, 1)))
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # a full disk, for this connection
    big = outs(store, 50)
    with pytest.raises(StoreError, match="full"):
        store.apply(batch(outgoing=big, incoming=[join(), *ins(1, 50)]))
    assert store.out_head(ROUTINE)[0] == 1
    assert store.resume(10).peer_epoch is None
    store._db.execute("PRAGMA max_page_count = 1073741823")  # space returns
    store.apply(batch(outgoing=big, incoming=[join(), *ins(1, 50)]))
    assert verified(store) == (51, 50, 0, 0)


def test_empty_batch_is_no_transaction(store: Store) -> None:
    assert not StoreBatch()
    assert store.apply(StoreBatch()) == Committed()


# --- contiguity and refusals (our misuse: LocalProtocolError) ---------------------------


def test_outgoing_must_continue_each_lane(store: Store) -> None:
    first = outs(store, 2)
    store.apply(batch(outgoing=first))
    again = first[1]
    skip = outs(store, 2)[1]
    for bad in (again, skip):
        with pytest.raises(LocalProtocolError, match="does not follow"):
            store.apply(batch(outgoing=[bad]))
    with pytest.raises(LocalProtocolError):
        store.apply(batch(outgoing=[outs(store, 2, PRIORITY)[1]]))  # lane starts at 1
    store.apply(batch(outgoing=[*outs(store, 1, PRIORITY), *outs(store, 1, IMMEDIATE)]))
    assert [store.out_head(lane)[0] for lane in LANES] == [0, 1, 1, 2]


def test_incoming_must_follow_delivered_or_rejoin(store: Store) -> None:
    with pytest.raises(LocalProtocolError, match="never joined"):
        store.apply(batch(incoming=ins(1, 1)))
    chain = ins(1, 5)
    store.apply(batch(incoming=[join(), *chain[:2]]))
    with pytest.raises(LocalProtocolError, match="does not follow"):
        store.apply(batch(incoming=chain[3:]))  # seq 4 with 3 missing
    with pytest.raises(LocalProtocolError, match="never joined"):
        store.apply(batch(incoming=ins(1, 1, FLASH)))  # a lane is joined on its own
    store.apply(batch(incoming=chain[2:]))
    assert [e.seq for e in store.inbox_after(0)] == [1, 2, 3, 4, 5]


def test_ack_is_monotonic_and_never_above_head(store: Store) -> None:
    sent = outs(store, 5)
    store.apply(batch(outgoing=sent))
    store.apply(batch(acks=(ack_of(sent[3]),)))
    store.apply(batch(acks=(ack_of(sent[1]),)))  # older: ignored
    lane = store.out_lanes()[ROUTINE]
    assert (lane.upto, lane.chain) == (4, sent[3].chain)
    assert [r.seq for r in store.resume(10).out[ROUTINE].unacked] == [5]
    with pytest.raises(LocalProtocolError, match="above our last seq"):
        store.apply(batch(acks=(AckRecord(store.epoch, ROUTINE, 6, b"c" * 32),)))
    with pytest.raises(LocalProtocolError):
        store.apply(batch(acks=(AckRecord(store.epoch, FLASH, 1, b"c" * 32),)))
    assert store.out_lanes()[ROUTINE].upto == 4


def test_batch_keeps_the_newest_ack_per_lane() -> None:
    b = StoreBatch()
    b.ack(AckRecord(PEER_EPOCH, ROUTINE, 4, b"4" * 32))
    b.ack(AckRecord(PEER_EPOCH, ROUTINE, 2, b"2" * 32))
    b.ack(AckRecord(PEER_EPOCH, FLASH, 1, b"1" * 32))
    assert {k: a.upto for k, a in b.acks.items()} == {
        (PEER_EPOCH, ROUTINE): 4, (PEER_EPOCH, FLASH): 1}


# --- the peer's streams: joins, duplicates, gaps ----------------------------------------


def test_duplicates_are_ignored(store: Store) -> None:
    first = ins(1, 3)
    store.apply(batch(incoming=[join(), *first]))
    forged = InRecord(PEER_EPOCH, ROUTINE, 2, b"forged", b"s" * 64)
    store.apply(batch(incoming=[join(), forged, *ins(1, 4)]))  # a repeated join, too
    assert [e.raw for e in store.inbox_after(0)] == [r.raw for r in ins(1, 4)]
    assert store.peer_lanes(PEER_EPOCH)[0].upto == 4
    assert verified(store) == (0, 4, 0, 0)


def test_new_peer_epoch_may_start_above_one(store: Store) -> None:
    later = ins(40, 2, prev=b"p" * 32)
    store.apply(batch(incoming=[join(base=40), *later]))
    [lane] = store.peer_lanes(PEER_EPOCH)
    assert (lane.lane, lane.first_seq, lane.upto) == (ROUTINE, 40, 41)
    store.apply(batch(incoming=ins(1, 3)))  # below the lane's start: duplicates
    assert [e.seq for e in store.inbox_after(0)] == [40, 41]
    assert store.gaps() == []
    assert verified(store) == (0, 2, 0, 0)


def test_rejoin_above_delivered_records_a_gap(store: Store) -> None:
    chain = ins(1, 9)
    store.apply(batch(incoming=[join(), *chain[:3]]))
    # The sender no longer holds 4..6 (our store went back in time): rejoin at 7.
    store.apply(batch(incoming=[join(base=7, reason="sender starts at 7"), *chain[6:]]))
    assert store.gaps() == [Gap("in", PEER_EPOCH, ROUTINE, 4, 6, "sender starts at 7")]
    [lane] = store.peer_lanes(PEER_EPOCH)
    assert (lane.first_seq, lane.upto, lane.chain) == (1, 9, chain_hash(chain[8].raw))
    assert [e.seq for e in store.inbox_after(0)] == [1, 2, 3, 7, 8, 9]
    store.apply(batch(incoming=[join(base=5)]))  # not above what we hold: no gap
    store.apply(batch(incoming=[join(base=10)]))  # right after it: no gap
    assert len(store.gaps()) == 1
    assert store.resume(10).peer_lanes[ROUTINE].delivered == 9
    assert verified(store) == (0, 6, 0, 1)  # verify names the gap instead of failing


def test_rejoin_and_records_apply_in_event_order(store: Store) -> None:
    chain = ins(1, 6)
    store.apply(batch(incoming=[join(), *chain[:2], join(base=5), *chain[4:]]))
    assert [(g.first, g.last) for g in store.gaps()] == [(3, 4)]
    assert [e.seq for e in store.inbox_after(0)] == [1, 2, 5, 6]


def test_every_lane_is_its_own_stream(store: Store) -> None:
    flash = ins(1, 3, FLASH)
    store.apply(batch(incoming=[join(FLASH), join(ROUTINE), flash[0], *ins(1, 3), flash[1]]))
    assert [(lane.lane, lane.upto) for lane in store.peer_lanes(PEER_EPOCH)] == [
        (FLASH, 2), (ROUTINE, 3)]
    with pytest.raises(LocalProtocolError):  # routine's seq 4 is not flash's
        store.apply(batch(incoming=[InRecord(PEER_EPOCH, FLASH, 4, b"x", b"s" * 64)]))
    store.apply(batch(incoming=[flash[2]]))
    resume = store.resume(10)
    assert [i.delivered for i in resume.peer_lanes] == [3, 0, 0, 3]
    assert resume.peer_lanes[FLASH].chain == chain_hash(flash[2].raw)
    assert verified(store) == (0, 6, 0, 0)


# --- receipts: stored only if they sign our transcript -----------------------------------


def test_receipts_must_sign_our_stored_transcript(store: Store) -> None:
    routine = outs(store, 3)
    flash = outs(store, 1, FLASH)
    store.apply(batch(outgoing=[*routine, *flash]))
    good = [receipt_of(routine[1]), receipt_of(flash[0])]
    bad = [
        receipt(store.epoch, ROUTINE, 2, routine[0].chain),  # wrong chain at 2
        receipt(store.epoch, ROUTINE, 4, routine[2].chain),  # above our head
        receipt(OUR_EPOCH2, ROUTINE, 2, routine[1].chain),  # an epoch we never had
        receipt(store.epoch, IMMEDIATE, 1, flash[0].chain),  # a lane with nothing in it
        receipt(store.epoch, FLASH, 1, routine[0].chain),  # another lane's chain
    ]
    committed = store.apply(batch(receipts=[bad[0], good[0], *bad[1:], good[1]]))
    assert committed.rejected_receipts == tuple(bad)
    assert list(store.iter_receipts()) == good
    store.apply(batch(receipts=[good[0]]))  # the same receipt again: stored once
    assert list(store.iter_receipts()) == good
    assert verified(store) == (4, 0, 2, 0)


# --- send ids -------------------------------------------------------------------------


def test_send_ids_are_found_and_survive_reopen(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    lines = outs(s, 3, ROUTINE, send_id="job")
    flash = outs(s, 1, FLASH, send_id="alarm")
    s.apply(batch(outgoing=[*lines, *flash, *outs(s, 1, PRIORITY)]))
    assert s.lookup_send_ids(["job:1", "job:3", "alarm:1", "nope"]) == {
        "job:1": (ROUTINE, 1), "job:3": (ROUTINE, 3), "alarm:1": (FLASH, 1)}
    assert [r.send_id for r in s.read_outgoing(s.epoch, ROUTINE, 0, 10)] == [
        "job:1", "job:2", "job:3"]
    s.close()
    s = open_store(tmp_path)
    assert s.execute(LookupSendIds(("job:2", "alarm:1"))) == {
        "job:2": (ROUTINE, 2), "alarm:1": (FLASH, 1)}
    assert s.resume(10).out[FLASH].unacked[0].send_id == "alarm:1"
    s.close()


def test_send_id_lookup_pages_through_many_ids(store: Store) -> None:
    store.apply(batch(outgoing=outs(store, 1200, send_id="bulk")))
    wanted = [f"bulk:{i}" for i in range(1, 1301)]
    found = store.lookup_send_ids(wanted)
    assert found == {f"bulk:{i}": (ROUTINE, i) for i in range(1, 1201)}


# --- the inbox cursor across peer epochs ----------------------------------------------------


def test_inbox_cursor_spans_epochs_and_lanes(store: Store) -> None:
    old = ins(1, 4)
    store.apply(batch(incoming=[join(), *old[:2]]))
    store.apply(batch(incoming=[join(FLASH), *ins(1, 1, FLASH), *old[2:]]))
    # The peer lost its store: a new epoch, its seqs start again at 1.
    new = ins(1, 3, epoch=PEER_EPOCH2)
    store.apply(batch(incoming=[join(epoch=PEER_EPOCH2), *new]))
    entries = store.inbox_after(0)
    assert [(e.n, e.epoch, e.lane, e.seq) for e in entries] == [
        (1, PEER_EPOCH, ROUTINE, 1), (2, PEER_EPOCH, ROUTINE, 2), (3, PEER_EPOCH, FLASH, 1),
        (4, PEER_EPOCH, ROUTINE, 3), (5, PEER_EPOCH, ROUTINE, 4),
        (6, PEER_EPOCH2, ROUTINE, 1), (7, PEER_EPOCH2, ROUTINE, 2), (8, PEER_EPOCH2, ROUTINE, 3),
    ]
    assert entries[6] == InboxEntry(7, PEER_EPOCH2, ROUTINE, 2, new[1].raw, new[1].sig)
    # A follower that read up to n = 2 gets everything after it: the old epoch's rest
    # and the new epoch, nothing skipped.
    assert [e.n for e in store.inbox_after(2)] == [3, 4, 5, 6, 7, 8]
    assert [e.n for e in store.inbox_after(2, limit=2)] == [3, 4]
    # --since names a message: of the newest epoch that holds it.
    assert store.inbox_cursor(ROUTINE, 1) == 6
    assert store.inbox_cursor(ROUTINE, 4) == 5  # only the old epoch has it: nothing skipped
    assert [e.seq for e in store.inbox_after(store.inbox_cursor(ROUTINE, 2))] == [3]
    assert store.inbox_cursor(ROUTINE, 99) == 8  # beyond: from its last message
    assert store.inbox_cursor(FLASH, 1) == 3  # the old epoch's flash 1
    assert store.inbox_cursor(ROUTINE, 0) == 0
    assert store.peer_epochs() == [PEER_EPOCH, PEER_EPOCH2]
    assert store.get_incoming(ROUTINE, 4) is None  # the latest epoch by default
    assert store.get_incoming(ROUTINE, 4, epoch=PEER_EPOCH) == old[3]
    assert verified(store) == (0, 8, 0, 0)


# --- the bounded resume and reads ----------------------------------------------------------


def test_resume_reads_at_most_a_window_per_lane(store: Store) -> None:
    routine = outs(store, 3000)
    store.apply(batch(outgoing=[*routine, *outs(store, 7, FLASH)]))
    store.apply(batch(acks=(ack_of(routine[99]),)))
    resume = store.resume(window=64)
    out = resume.out[ROUTINE]
    assert (out.head, out.acked, len(out.unacked)) == (3000, 100, 64)
    assert [r.seq for r in out.unacked] == list(range(101, 165))
    assert out.unacked[0] == routine[100]
    assert len(resume.out[FLASH].unacked) == 7
    assert resume.out[PRIORITY].unacked == ()
    page = store.execute(ReadOutgoing(store.epoch, ROUTINE, 2990, 64))
    assert isinstance(page, list)
    assert [r.seq for r in page] == list(range(2991, 3001))
    assert store.execute(ReadChain(store.epoch, ROUTINE, 1500)) == routine[1499].chain
    assert store.execute(ReadChain(store.epoch, ROUTINE, 3001)) is None
    assert [r.seq for r in store.iter_outgoing(store.epoch, ROUTINE)] == list(range(1, 3001))


# --- a new epoch of ours (our store went back in time) -------------------------------------


def test_new_out_epoch_carries_the_backlog(store: Store) -> None:
    old = store.epoch
    routine = outs(store, 6)
    flash = outs(store, 2, FLASH)
    store.apply(batch(outgoing=[*routine, *flash], acks=(ack_of(routine[2]), ack_of(flash[1]))))
    store.apply(batch(new_epoch=NewOutEpoch(OUR_EPOCH2, "the peer holds seq 9")))
    assert store.epoch == OUR_EPOCH2
    assert store.out_epochs() == [(old, "store created"), (OUR_EPOCH2, "the peer holds seq 9")]
    resume = store.resume(10)
    assert resume.epoch == OUR_EPOCH2
    assert [o.head for o in resume.out] == [0, 0, 0, 0]  # seqs from 1 in every lane
    assert resume.carry == (Carry(old, ROUTINE, 3, 6),)  # flash was all acknowledged
    # Re-sealed in the new epoch: seqs 4 and 5 of the old one, as new 1 and 2.
    resent = outs(store, 2)
    store.apply(batch(outgoing=resent, carried={(old, ROUTINE): 5}))
    assert store.resume(10).carry == (Carry(old, ROUTINE, 5, 6),)
    store.apply(batch(outgoing=outs(store, 1), carried={(old, ROUTINE): 6}))
    store.apply(batch(carried={(old, ROUTINE): 4}))  # never moves back
    assert store.resume(10).carry == ()
    assert store.out_head(ROUTINE) == (3, store.out_head(ROUTINE)[1])
    assert store.out_head(ROUTINE, old)[0] == 6
    assert verified(store) == (11, 0, 0, 0)
    store.close()
    reopened = open_store(Path(store.path).parent)
    assert reopened.epoch == OUR_EPOCH2
    reopened.close()


def test_carry_overs_resume_newest_epoch_first(store: Store) -> None:
    """Left again while carried over: the newer epoch holds the oldest messages (the
    first ones re-sealed), so a restart carries it over first."""
    first, second = store.epoch, bytes([0xF0]) * 16  # sorts after the first
    store.apply(batch(outgoing=outs(store, 4)))
    store.apply(batch(new_epoch=NewOutEpoch(second, "fork")))
    store.apply(batch(outgoing=outs(store, 2), carried={(first, ROUTINE): 2}))
    store.apply(batch(new_epoch=NewOutEpoch(bytes([0x01]) * 16, "fork again")))
    assert store.resume(10).carry == (Carry(second, ROUTINE, 0, 2), Carry(first, ROUTINE, 2, 4))


def test_new_out_epoch_must_be_16_bytes(store: Store) -> None:
    with pytest.raises(LocalProtocolError):
        store.apply(batch(new_epoch=NewOutEpoch(b"short", "x")))
    assert store.out_epochs() == [(bytes([0xEE]) * 16, "store created")]


# --- refusals when opening ------------------------------------------------------------------


def test_refuses_other_keys(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    with pytest.raises(StoreError, match="belongs to another link") as info:
        Store.open(tmp_path, OURS.public.raw, bytes(32))
    assert OURS.public.fingerprint() in str(info.value)
    with pytest.raises(StoreError, match="another link"):
        Store.open(tmp_path, THEIRS.public.raw, OURS.public.raw)
    with pytest.raises(LocalProtocolError):
        Store.open(tmp_path, b"short", OURS.public.raw)


def test_refuses_newer_schema(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        open_store(tmp_path)


def test_refuses_garbage_and_missing(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store"):
        Store.open(tmp_path / "none", OURS.public.raw, THEIRS.public.raw, create=False)
    assert not (tmp_path / "none").exists()
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        open_store(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    db = sqlite3.connect(other / DB_NAME)
    db.execute("CREATE TABLE meta (x)")  # a SQLite file, but not ours
    db.close()
    with pytest.raises(StoreError, match="not a usable hotline store"):
        open_store(other)


# --- kill -9 ----------------------------------------------------------------------------

_CRASH_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hotline.proto.records import AckRecord, InRecord, OutRecord, Rejoin, StoreBatch
    from hotline.store import Store
    ours, theirs, peer = bytes([1]) * 32, bytes([2]) * 32, bytes([7]) * 16
    store = Store.open(Path(sys.argv[1]), ours, theirs)
    e = store.epoch
    store.apply(StoreBatch(incoming=[Rejoin(peer, 3, 1, "new")]))
    k = 0
    while True:
        k += 1
        seqs = range(10 * k - 9, 10 * k + 1)
        b = StoreBatch(
            outgoing=[OutRecord(e, 3, s, b"out%d" % s * 30, b"s" * 64, b"c%d" % s) for s in seqs]
                     + [OutRecord(e, 0, k, b"flash%d" % k, b"s" * 64, b"f", "id-%d" % k)],
            incoming=[InRecord(peer, 3, s, b"in%d" % s * 30, b"s" * 64) for s in seqs])
        b.ack(AckRecord(e, 3, 10 * k - 5, b"c%d" % (10 * k - 5)))
        store.apply(b)
        print(k, flush=True)
""")


def test_kill_9_leaves_a_prefix_of_committed_batches(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_CHILD, str(tmp_path)], stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert child.stdout is not None
    last = 0
    for line in child.stdout:
        last = int(line)
        if last >= 25:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    store = Store.open(tmp_path, bytes([1]) * 32, bytes([2]) * 32)
    head = store.out_head(ROUTINE)[0]
    assert head % 10 == 0  # whole batches only
    k = head // 10
    assert k >= last  # every batch whose commit returned is there
    assert store.out_head(FLASH) == (k, b"f")
    resume = store.resume(5)
    assert (resume.out[ROUTINE].acked, resume.out[ROUTINE].acked_chain) == (
        10 * k - 5, b"c%d" % (10 * k - 5))
    assert resume.peer_lanes[ROUTINE].delivered == head
    assert [r.raw for r in store.iter_outgoing(store.epoch, ROUTINE)] == [
        b"out%d" % s * 30 for s in range(1, head + 1)]
    assert [e.seq for e in store.inbox_after(0, 10**6)] == list(range(1, head + 1))
    assert store.lookup_send_ids([f"id-{k}", f"id-{k + 1}"]) == {f"id-{k}": (FLASH, k)}
    store.close()
