"""The SQLite store on real files: durability, resume, group commit, refusals, kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hotline.errors import LocalProtocolError, StoreError
from hotline.proto import envelope as ev
from hotline.proto.identity import Identity
from hotline.store import Batch, InRecord, OutRecord, PeerStream, ReceiptRecord, Store

OURS = Identity.from_seed(bytes([1]) * 32)
THEIRS = Identity.from_seed(bytes([2]) * 32)
PEER_EPOCH = bytes([7]) * 16
REPO = Path(__file__).resolve().parent.parent


def fixed_rng(n: int) -> bytes:
    return bytes([0xEE]) * n


def make_chain(signer, to, epoch, start, count, prev=ev.ZERO_HASH):
    """``count`` real signed envelopes from ``start``: list of (seq, raw, sig)."""
    out = []
    for seq in range(start, start + count):
        raw = ev.encode_envelope(epoch, signer.public.raw, to.public.raw, seq, 10**18 + seq,
                                 prev, "text/plain", b"m" * 200 + str(seq).encode())
        out.append((seq, raw, ev.sign_envelope(signer, raw)))
        prev = ev.chain_hash(raw)
    return out


def outs(store, count):
    seq, chain = store.out_head()
    return [OutRecord(*t) for t in make_chain(OURS, THEIRS, store.epoch, seq + 1, count, chain)]


def ins(start, count, epoch=PEER_EPOCH, prev=ev.ZERO_HASH):
    return [InRecord(epoch, *t) for t in make_chain(THEIRS, OURS, epoch, start, count, prev)]


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path, OURS.public.raw, THEIRS.public.raw, fixed_rng)
    yield s
    s.close()


def test_fresh_store(store, tmp_path):
    assert store.epoch == bytes([0xEE]) * 16
    assert store.out_head() == (0, ev.ZERO_HASH)
    assert store.acked_upto() == 0
    assert store.unacked() == []
    assert store.peer_stream() is None
    assert store.peer_epochs() == []
    assert store.inbox_since(0) == []
    assert store.get_incoming(1) is None
    assert store.get_outgoing(1) is None
    assert stat.S_IMODE((tmp_path / "hotline.db").stat().st_mode) == 0o600
    db = sqlite3.connect(tmp_path / "hotline.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()


def test_wal_files_not_readable_by_others(store, tmp_path):
    store.apply(Batch(outgoing=outs(store, 1)))
    for name in ("hotline.db-wal", "hotline.db-shm"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) & 0o077 == 0


def test_reopen_resumes_everything(tmp_path):
    s = Store.open(tmp_path, OURS.public.raw, THEIRS.public.raw)
    epoch = s.epoch
    sent = outs(s, 5)
    got = ins(1, 3)
    receipt = ReceiptRecord(epoch, 2, ev.chain_hash(sent[1].raw), b"r" * 100, b"s" * 64)
    s.apply(Batch(outgoing=sent, incoming=got, acked_upto=2, receipts=[receipt]))
    s.close()
    s = Store.open(tmp_path, OURS.public.raw, THEIRS.public.raw, lambda n: bytes(n))
    assert s.epoch == epoch  # not redrawn
    assert s.out_head() == (5, ev.chain_hash(sent[-1].raw))
    assert s.acked_upto() == 2
    assert s.unacked() == sent[2:]
    assert s.peer_stream() == PeerStream(PEER_EPOCH, 3, ev.chain_hash(got[-1].raw))
    assert s.inbox_since(0) == got
    assert s.inbox_since(1, limit=1) == got[1:2]
    assert s.get_outgoing(3) == sent[2]
    assert s.get_incoming(2) == got[1]
    assert s.get_incoming(2, epoch=bytes(16)) is None
    assert list(s.iter_outgoing()) == sent
    assert list(s.iter_incoming()) == got
    assert list(s.iter_receipts()) == [receipt]
    # Resume: the next batch continues the chain.
    more = outs(s, 2)
    assert more[0].seq == 6
    s.apply(Batch(outgoing=more))
    assert s.out_head()[0] == 7
    s.close()


def test_group_commit_is_one_transaction(store):
    good = outs(store, 3)
    bad = [*good, OutRecord(9, b"x", b"y")]  # not contiguous: the whole batch is refused
    with pytest.raises(LocalProtocolError):
        store.apply(Batch(outgoing=bad, incoming=ins(1, 2), acked_upto=1))
    assert store.out_head() == (0, ev.ZERO_HASH)
    assert store.peer_stream() is None
    store.apply(Batch(outgoing=good, incoming=ins(1, 2), acked_upto=1))
    assert store.out_head()[0] == 3
    assert store.acked_upto() == 1


def test_outgoing_must_continue_head(store):
    store.apply(Batch(outgoing=outs(store, 2)))
    with pytest.raises(LocalProtocolError):
        store.apply(Batch(outgoing=[OutRecord(2, b"dup", b"s")]))
    with pytest.raises(LocalProtocolError):
        store.apply(Batch(outgoing=[OutRecord(4, b"gap", b"s")]))
    assert store.out_head()[0] == 2


def test_ack_is_monotonic_and_bounded(store):
    store.apply(Batch(outgoing=outs(store, 5)))
    store.apply(Batch(acked_upto=4))
    store.apply(Batch(acked_upto=2))
    assert store.acked_upto() == 4
    assert [r.seq for r in store.unacked()] == [5]
    with pytest.raises(LocalProtocolError):
        store.apply(Batch(acked_upto=6))
    assert store.acked_upto() == 4


def test_duplicate_incoming_ignored(store):
    first = ins(1, 3)
    store.apply(Batch(incoming=first))
    replay = [InRecord(PEER_EPOCH, 2, b"forged", b"sig"), *ins(1, 4)]
    store.apply(Batch(incoming=replay))
    assert store.inbox_since(0) == [*first, ins(1, 4)[3]]
    assert store.peer_stream().delivered_upto == 4


def test_gap_is_stored_but_not_delivered(store):
    chain = ins(1, 5)
    store.apply(Batch(incoming=chain[:2] + chain[3:]))
    assert store.peer_stream() == PeerStream(PEER_EPOCH, 2, ev.chain_hash(chain[1].raw))
    assert store.inbox_since(0) == chain[:2]
    store.apply(Batch(incoming=[chain[2]]))
    assert store.peer_stream() == PeerStream(PEER_EPOCH, 5, ev.chain_hash(chain[4].raw))
    assert store.inbox_since(2) == chain[2:]


def test_new_peer_epoch(store):
    store.apply(Batch(incoming=ins(1, 3)))
    new_epoch = bytes([8]) * 16
    fresh = ins(1, 2, epoch=new_epoch)
    store.apply(Batch(incoming=fresh))
    assert store.peer_stream() == PeerStream(new_epoch, 2, ev.chain_hash(fresh[-1].raw))
    assert [p.epoch for p in store.peer_epochs()] == [PEER_EPOCH, new_epoch]
    assert store.inbox_since(0) == fresh
    assert store.get_incoming(3) is None
    assert store.get_incoming(3, epoch=PEER_EPOCH) is not None
    assert [r.epoch for r in store.iter_incoming()] == [PEER_EPOCH] * 3 + [new_epoch] * 2
    assert list(store.iter_incoming(PEER_EPOCH)) == ins(1, 3)


def test_new_epoch_may_start_above_one(store):
    store.apply(Batch(incoming=ins(40, 2)))
    assert store.peer_stream().delivered_upto == 41
    assert store.peer_stream().first_seq == 40
    store.apply(Batch(incoming=ins(1, 3)))  # below the epoch's start: ignored
    assert [r.seq for r in store.iter_incoming()] == [40, 41]
    assert [r.seq for r in store.inbox_since(0)] == [40, 41]


def test_receipts_deduplicated(store):
    r = ReceiptRecord(store.epoch, 1, bytes(32), b"raw", b"sig")
    store.apply(Batch(outgoing=outs(store, 1), receipts=[r]))
    store.apply(Batch(receipts=[r, ReceiptRecord(store.epoch, 1, bytes(32), b"raw2", b"s")]))
    assert list(store.iter_receipts()) == [r]


def test_iteration_pages(store):
    for _ in range(3):
        store.apply(Batch(outgoing=outs(store, 400), incoming=ins(
            store.peer_stream().delivered_upto + 1 if store.peer_stream() else 1, 1)))
    assert [r.seq for r in store.iter_outgoing()] == list(range(1, 1201))


def test_refuses_other_keys(tmp_path):
    Store.open(tmp_path, OURS.public.raw, THEIRS.public.raw).close()
    with pytest.raises(StoreError, match="belongs to another link") as info:
        Store.open(tmp_path, OURS.public.raw, bytes(32))
    assert OURS.public.fingerprint() in str(info.value)
    with pytest.raises(StoreError, match="another link"):
        Store.open(tmp_path, THEIRS.public.raw, OURS.public.raw)


def test_refuses_newer_schema(tmp_path):
    Store.open(tmp_path, OURS.public.raw, THEIRS.public.raw).close()
    db = sqlite3.connect(tmp_path / "hotline.db")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store.open(tmp_path, OURS.public.raw, THEIRS.public.raw)


def test_refuses_garbage_and_missing(tmp_path):
    with pytest.raises(StoreError, match="no store"):
        Store.open(tmp_path / "none", OURS.public.raw, THEIRS.public.raw, create=False)
    (tmp_path / "hotline.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        Store.open(tmp_path, OURS.public.raw, THEIRS.public.raw)


def test_creates_state_dir(tmp_path):
    Store.open(tmp_path / "a" / "b", OURS.public.raw, THEIRS.public.raw).close()
    assert (tmp_path / "a" / "b" / "hotline.db").exists()


_CRASH_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hotline.store import Batch, InRecord, OutRecord, Store
    ours, theirs, epoch = bytes([1]) * 32, bytes([2]) * 32, bytes([7]) * 16
    store = Store.open(Path(sys.argv[1]), ours, theirs)
    k = 0
    while True:
        k += 1
        seqs = range(10 * k - 9, 10 * k + 1)
        store.apply(Batch(
            outgoing=[OutRecord(s, b"out%d" % s * 30, b"sig") for s in seqs],
            incoming=[InRecord(epoch, s, b"in%d" % s * 30, b"sig") for s in seqs],
            acked_upto=10 * k - 5))
        print(k, flush=True)
""")


def test_kill_9_leaves_a_prefix_of_committed_batches(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_CHILD, str(tmp_path)], stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
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
    head = store.out_head()[0]
    assert head % 10 == 0
    assert head >= 10 * last
    k = head // 10
    assert store.acked_upto() == 10 * k - 5
    assert store.peer_stream().delivered_upto == head
    assert [r.raw for r in store.iter_outgoing()] == [
        b"out%d" % s * 30 for s in range(1, head + 1)]
    assert len(list(store.iter_incoming())) == head
    store.close()
