"""``hotline verify`` and ``hotline export`` on a real store, intact and tampered with.

Stores are built as the daemon builds them: real signed envelopes (``LaneSequencer``,
ours with our key, the peer's with the peer's) committed with
``Store.execute(Commit(StoreBatch(...)))``; tampering is then done with plain SQL.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest

from hotline.cli import main
from hotline.keyfile import save_identity
from hotline.proto import envelope as ev
from hotline.proto.identity import Identity
from hotline.proto.lanes import FLASH, IMMEDIATE, ROUTINE
from hotline.proto.records import (
    AckRecord,
    Commit,
    Committed,
    InRecord,
    NewOutEpoch,
    OutRecord,
    ReceiptRecord,
    Rejoin,
    StoreBatch,
)
from hotline.proto.sequencer import LaneSequencer
from hotline.store import Store
from hotline.verify import VerifyReport, verify_store

OURS = Identity.from_seed(bytes([3]) * 32)
THEIRS = Identity.from_seed(bytes([4]) * 32)
PEER_EPOCH = bytes([9]) * 16
PEER_TAG = "(peer epoch 09090909)"
ACK_TYPE = "application/vnd.hotline.ack"


def seal(signer: Identity, to: Identity, epoch: bytes, lane: int, count: int, start: int = 1,
         prev: bytes = ev.ZERO_HASH, media_type: str = "text/plain") -> list[OutRecord]:
    """``count`` real envelopes of ``lane`` from seq ``start``, bodies ``message SEQ``."""
    sealer = LaneSequencer(signer, to.public, epoch, lane, start - 1, prev, 65536)
    return [sealer.seal(f"message {seq}".encode(), media_type, 1_700_000_000 * 10**9 + seq)
            for seq in range(start, start + count)]


def theirs(lane: int, count: int, start: int = 1, prev: bytes = ev.ZERO_HASH,
           epoch: bytes = PEER_EPOCH) -> list[InRecord]:
    """The peer's envelopes as the store keeps them (signed by the peer's key)."""
    return [InRecord(r.epoch, r.lane, r.seq, r.raw, r.sig)
            for r in seal(THEIRS, OURS, epoch, lane, count, start, prev)]


def receipt(out: OutRecord, v1: bool = False) -> ReceiptRecord:
    """The peer's signed receipt of our stream up to ``out``."""
    if v1:
        raw = msgpack.packb([OURS.public.raw, THEIRS.public.raw, out.seq, out.chain],
                            use_bin_type=True)
    else:
        raw = ev.encode_receipt(OURS.public.raw, THEIRS.public.raw, out.epoch, out.lane,
                                out.seq, out.chain)
    return ReceiptRecord(out.epoch, out.lane, out.seq, out.chain, raw, ev.sign_receipt(THEIRS, raw))


def ack_body(message: InRecord, comment: str = "seen") -> bytes:
    """An operator acknowledgement's body (DESIGN §9): msgpack {lane, seq, chain, comment}."""
    body: bytes = msgpack.packb({"lane": message.lane, "seq": message.seq,
                                 "chain": ev.chain_hash(message.raw), "comment": comment},
                                use_bin_type=True)
    return body


def commit(store: Store, **batch: object) -> Committed:
    result = store.execute(Commit(StoreBatch(**batch)))  # type: ignore[arg-type]
    assert isinstance(result, Committed)
    assert result.rejected_receipts == ()
    return result


def joined(epoch: bytes = PEER_EPOCH, base: int = 1) -> list[Rejoin]:
    """What the endpoint commits on a new peer epoch: every lane joined at ``base``."""
    return [Rejoin(epoch, lane, base, "new peer epoch") for lane in (0, 1, 2, 3)]


@dataclass
class Link:
    config: Path
    db: Path
    epoch: bytes
    sent: dict[int, list[OutRecord]]


@pytest.fixture
def link(tmp_path, monkeypatch) -> Link:
    """A config, our key file, and a store holding: sent routine 1-5 (acked to 3, receipts
    at 2 and 3) and flash 1-3 (an operator ack among them; receipt at 1); received routine
    1-4 and flash 1-3 of the peer's epoch."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    save_identity(tmp_path / "washington", OURS, "washington")
    state = tmp_path / "state"
    config = tmp_path / "moscow.toml"
    config.write_text(
        'key = "washington"\nlisten = []\nstate_dir = "state"\n'
        f'[peer]\nname = "moscow"\nkey = "{THEIRS.public.openssh_line("moscow")}"\n'
        'paths = ["tcp://127.0.0.1:7411"]\n')
    store = Store.open(state, OURS.public.raw, THEIRS.public.raw)
    routine = seal(OURS, THEIRS, store.epoch, ROUTINE, 5)
    flash = seal(OURS, THEIRS, store.epoch, FLASH, 2)
    peer_flash = theirs(FLASH, 3)
    flash.append(LaneSequencer(OURS, THEIRS.public, store.epoch, FLASH, 2, flash[-1].chain,
                               65536).seal(ack_body(peer_flash[0]), ACK_TYPE, 1))
    commit(store, outgoing=routine + flash, incoming=joined())
    commit(store, incoming=theirs(ROUTINE, 4) + peer_flash,
           acks={(store.epoch, ROUTINE): AckRecord(store.epoch, ROUTINE, 3, routine[2].chain)},
           receipts=[receipt(routine[1]), receipt(routine[2]), receipt(flash[0])])
    store.close()
    return Link(config, state / "hotline.db", store.epoch, {ROUTINE: routine, FLASH: flash})


def sql(db: Path, statement: str, *params: object) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(statement, params)
    conn.close()


def flip_last_byte(db: Path, table: str, seq: int, lane: int = ROUTINE,
                   epoch: bytes | None = None) -> None:
    """Alter the last byte (in the body) of one stored envelope (of ``epoch``, or of the
    only epoch that has this lane and seq)."""
    conn = sqlite3.connect(db)
    where, params = "WHERE seq = ? AND lane = ?", [seq, lane]
    if epoch is not None:
        where, params = where + " AND epoch = ?", [*params, epoch]
    rows = conn.execute(f"SELECT raw FROM {table} {where}", params).fetchall()
    assert len(rows) == 1
    raw = rows[0][0]
    with conn:
        conn.execute(f"UPDATE {table} SET raw = ? {where}",
                     (raw[:-1] + bytes([raw[-1] ^ 1]), *params))
    conn.close()


def verify(config, capsys) -> tuple[int, str]:
    code, out, err = verify_streams(config, capsys)
    return code, out + err


def verify_streams(config, capsys) -> tuple[int, str, str]:
    """Exit code, stdout (one line per problem) and stderr (the summary) of ``verify``."""
    code = main(["verify", "-c", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def our_tag(link: Link) -> str:
    return f"(our epoch {link.epoch.hex()[:8]})"


def test_intact_store_verifies(link, capsys):
    code, text = verify(link.config, capsys)
    assert code == 0
    assert text == "verified 8 sent, 7 received, 3 receipts: OK\n"


def test_verify_store_function(link):
    store = Store.open(link.db.parent, OURS.public.raw, THEIRS.public.raw, create=False)
    report = verify_store(store, OURS.public, THEIRS.public)
    store.close()
    assert report.ok
    assert (report.sent, report.received, report.receipts, report.gaps) == (8, 7, 3, 0)


@pytest.mark.parametrize(
    ("tamper", "expect"),
    [
        (lambda db: flip_last_byte(db, "outgoing", 3),
         "sent routine seq 3 {ours}: signature does not verify"),
        (lambda db: flip_last_byte(db, "outgoing", 2, FLASH),
         "sent flash seq 2 {ours}: signature does not verify"),
        (lambda db: flip_last_byte(db, "incoming", 2),
         f"received routine seq 2 {PEER_TAG}: signature does not verify"),
        (lambda db: flip_last_byte(db, "incoming", 3, FLASH),
         f"received flash seq 3 {PEER_TAG}: signature does not verify"),
        (lambda db: sql(db, "DELETE FROM outgoing WHERE seq = 2 AND lane = 0"),
         "sent flash seq 2 {ours}: missing (next stored is seq 3)"),
        (lambda db: sql(db, "DELETE FROM incoming WHERE seq = 3 AND lane = 3"),
         f"received routine seq 3 {PEER_TAG}: missing (next stored is seq 4)"),
        (lambda db: sql(db, "DELETE FROM incoming WHERE seq = 4 AND lane = 3"),
         f"received routine seq 4 {PEER_TAG}: missing (delivered up to 4)"),
        (lambda db: sql(db, "DELETE FROM incoming WHERE seq = 1 AND lane = 0"),
         f"received flash seq 1 {PEER_TAG}: missing (next stored is seq 2)"),
        (lambda db: sql(db, "DELETE FROM outgoing WHERE seq >= 3 AND lane = 3"),
         "sent routine seq 3 {ours}: missing (the peer acknowledged up to 3)"),
        (lambda db: sql(db, "UPDATE out_lanes SET acked_upto = 9 WHERE lane = 3"),
         "sent routine seqs 6-9 {ours}: missing (the peer acknowledged up to 9)"),
        (lambda db: sql(db, "UPDATE receipts SET raw = ? WHERE upto = 3",
                        ev.encode_receipt(OURS.public.raw, THEIRS.public.raw, bytes(16),
                                          ROUTINE, 4, bytes(32))),
         "receipt upto sent routine seq 3: bad receipt"),
        (lambda db: sql(db, "UPDATE receipts SET sig = ? WHERE upto = 2", bytes(64)),
         "receipt upto sent routine seq 2: bad receipt"),
        (lambda db: sql(db, "UPDATE receipts SET lane = 0 WHERE upto = 2"),
         "receipt upto sent flash seq 2: the receipt does not match its stored"),
        (lambda db: sql(db, "UPDATE receipts SET epoch = ? WHERE lane = 0", bytes(16)),
         "receipt upto sent flash seq 1: the receipt does not match its stored"),
        (lambda db: sql(db, "UPDATE outgoing SET sig = ? WHERE seq = 1 AND lane = 3", bytes(64)),
         "sent routine seq 1 {ours}: signature does not verify"),
        (lambda db: sql(db, "UPDATE outgoing SET chain = ? WHERE seq = 2 AND lane = 0",
                        bytes(32)),
         "sent flash seq 2 {ours}: stored chain hash does not match"),
        (lambda db: sql(db, "UPDATE peer_lanes SET chain = ? WHERE lane = 3", bytes(32)),
         f"received routine seq 4 {PEER_TAG}: the stored chain hash of the delivered head"),
        (lambda db: sql(db, "UPDATE incoming SET raw = x'00' WHERE seq = 1 AND lane = 3"),
         f"received routine seq 1 {PEER_TAG}: not a valid envelope"),
        (lambda db: sql(db, "UPDATE incoming SET lane = 1 WHERE lane = 0"),
         f"received immediate seq 1 {PEER_TAG}: the envelope says flash seq 1"),
    ],
    ids=["out-body", "out-flash-body", "in-body", "in-flash-body", "out-flash-deleted",
         "in-deleted", "in-head-deleted", "in-flash-first-deleted", "out-tail-deleted",
         "ack-above-head", "receipt-altered", "receipt-sig", "receipt-lane", "receipt-epoch",
         "out-sig", "out-chain-column", "in-head-chain-column", "in-garbage",
         "in-moved-to-another-lane"],
)
def test_tampered_store_fails_naming_the_lane_and_seq(link, capsys, tamper, expect):
    tamper(link.db)
    code, out, err = verify_streams(link.config, capsys)
    assert code == 1
    assert expect.format(ours=our_tag(link)) in out
    problems = out.splitlines()
    assert err.startswith(f"hotline: verify FAILED: {len(problems)} problem")
    assert len(err.splitlines()) == 1


def test_every_bad_item_is_reported(link, capsys):
    """One tampered message in each lane and direction, a bad receipt and an ack above
    our head: every one is named, in one run."""
    flip_last_byte(link.db, "outgoing", 1)
    flip_last_byte(link.db, "outgoing", 3, FLASH)
    flip_last_byte(link.db, "incoming", 3)
    flip_last_byte(link.db, "incoming", 1, FLASH)
    sql(link.db, "UPDATE receipts SET sig = ? WHERE upto = 2", bytes(64))
    sql(link.db, "UPDATE out_lanes SET acked_upto = 7 WHERE lane = 3")
    code, out, err = verify_streams(link.config, capsys)
    assert code == 1
    ours = our_tag(link)
    assert sorted(out.splitlines()) == sorted([
        f"sent flash seq 3 {ours}: signature does not verify",
        f"sent routine seq 1 {ours}: signature does not verify",
        f"sent routine seqs 6-7 {ours}: missing (the peer acknowledged up to 7)",
        f"received flash seq 1 {PEER_TAG}: signature does not verify",
        f"received routine seq 3 {PEER_TAG}: signature does not verify",
        "receipt upto sent routine seq 2: bad receipt: Ed25519 signature does not verify",
    ])
    assert err == ("hotline: verify FAILED: 6 problems in 8 sent, 7 received, "
                   "3 receipts\n")


def test_a_missing_run_is_one_problem_and_links_resume_after_it(link, capsys):
    sql(link.db, "DELETE FROM outgoing WHERE seq IN (2, 3) AND lane = 3")
    sql(link.db, "DELETE FROM receipts")
    code, out, _ = verify_streams(link.config, capsys)
    assert code == 1
    assert out.splitlines() == [
        f"sent routine seqs 2-3 {our_tag(link)}: missing (next stored is seq 4)"]


def test_output_is_bounded(link, capsys, monkeypatch):
    import hotline.verify as verify_module

    monkeypatch.setattr(verify_module, "MAX_SHOWN", 2)
    for seq in (1, 2, 3, 4, 5):
        flip_last_byte(link.db, "outgoing", seq)
    code, out, err = verify_streams(link.config, capsys)
    assert code == 1
    ours = our_tag(link)
    assert out.splitlines() == [f"sent routine seq 1 {ours}: signature does not verify",
                                f"sent routine seq 2 {ours}: signature does not verify",
                                "... and 5 more"]  # seqs 3-5 and both routine receipts
    assert "7 problems" in err


def test_problems_are_escaped_for_the_terminal():
    report = VerifyReport()
    report.add("received seq 1: bad \x1b]0;title\x07 \u202e")
    assert report.problem_lines() == ["received seq 1: bad \\x1b]0;title\\x07 \\u202e"]


def test_resigned_envelope_with_broken_chain_fails(link, capsys):
    """Even the signer cannot rewrite history: a re-signed seq 3 breaks seq 4's link."""
    forged = seal(OURS, THEIRS, link.epoch, ROUTINE, 1, start=3, prev=bytes(32))[0]
    sql(link.db, "UPDATE outgoing SET raw = ?, sig = ?, chain = ? WHERE seq = 3 AND lane = 3",
        forged.raw, forged.sig, forged.chain)
    code, text = verify(link.config, capsys)
    assert code == 1
    assert f"sent routine seq 3 {our_tag(link)}: broken chain link" in text


def test_an_envelope_of_another_lane_cannot_stand_in(link, capsys):
    """Flash seq 2, genuine and signed, stored as routine seq 2: the lane is signed."""
    flash = link.sent[FLASH][1]
    sql(link.db, "UPDATE outgoing SET raw = ?, sig = ? WHERE seq = 2 AND lane = 3",
        flash.raw, flash.sig)
    code, text = verify(link.config, capsys)
    assert code == 1
    assert f"sent routine seq 2 {our_tag(link)}: the envelope says flash seq 2" in text


def test_receipt_of_another_transcript_fails(link, capsys):
    other = bytes(32)
    raw = ev.encode_receipt(OURS.public.raw, THEIRS.public.raw, link.epoch, ROUTINE, 2, other)
    sql(link.db, "UPDATE receipts SET raw = ?, sig = ?, chain = ? WHERE upto = 2 AND lane = 3",
        raw, ev.sign_receipt(THEIRS, raw), other)
    code, text = verify(link.config, capsys)
    assert code == 1
    assert "receipt upto sent routine seq 2: the peer signed a different transcript" in text


def test_a_first_release_receipt_still_verifies(link):
    """A version-1 receipt (no epoch, no lane) kept by a migrated store is routine."""
    store = Store.open(link.db.parent, OURS.public.raw, THEIRS.public.raw)
    commit(store, receipts=[receipt(link.sent[ROUTINE][3], v1=True)])
    report = verify_store(store, OURS.public, THEIRS.public)
    store.close()
    assert report.ok, report.problems
    assert report.receipts == 4


def v1_chain(signer: Identity, to: Identity, epoch: bytes, count: int) -> list[InRecord]:
    """First-release envelopes (version 1: no lane, so routine), signed and chained."""
    out, prev = [], ev.ZERO_HASH
    for seq in range(1, count + 1):
        raw = msgpack.packb([1, epoch, signer.public.raw, to.public.raw, seq, seq, prev,
                             "text/plain", f"old {seq}".encode()], use_bin_type=True)
        out.append(InRecord(epoch, ROUTINE, seq, raw, ev.sign_envelope(signer, raw)))
        prev = ev.chain_hash(raw)
    return out


def test_first_release_envelopes_verify_as_routine(link, capsys):
    """A migrated store keeps version-1 envelopes (both ways) as routine: they verify."""
    peer_old, ours_old = bytes([11]) * 16, bytes([12]) * 16
    store = Store.open(link.db.parent, OURS.public.raw, THEIRS.public.raw)
    commit(store, incoming=joined(peer_old))
    commit(store, incoming=v1_chain(THEIRS, OURS, peer_old, 3))
    commit(store, new_epoch=NewOutEpoch(ours_old, "test"))
    mine = v1_chain(OURS, THEIRS, ours_old, 2)
    commit(store, outgoing=[OutRecord(r.epoch, r.lane, r.seq, r.raw, r.sig,
                                      ev.chain_hash(r.raw)) for r in mine])
    report = verify_store(store, OURS.public, THEIRS.public)
    store.close()
    assert report.ok, report.problems
    assert (report.sent, report.received) == (8 + 2, 7 + 3)
    flip_last_byte(link.db, "incoming", 2, ROUTINE, peer_old)
    code, out, _ = verify_streams(link.config, capsys)
    assert code == 1
    assert out == "received routine seq 2 (peer epoch 0b0b0b0b): signature does not verify\n"


def test_verify_without_store(link, capsys):
    for name in ("hotline.db", "hotline.db-wal", "hotline.db-shm"):
        (link.db.parent / name).unlink(missing_ok=True)
    code, text = verify(link.config, capsys)
    assert code == 1
    assert "no store" in text


# --- epochs and gaps -----------------------------------------------------------------------


def test_every_epoch_is_verified_ours_and_the_peers(link, capsys):
    """Our store began a new epoch (it found itself behind) and the peer started a new
    one: all four streams verify, and a bad item is named with its epoch."""
    epoch2, peer2 = bytes([7]) * 16, bytes([10]) * 16
    store = Store.open(link.db.parent, OURS.public.raw, THEIRS.public.raw)
    commit(store, new_epoch=NewOutEpoch(epoch2, "the peer holds more than our store"))
    commit(store, outgoing=seal(OURS, THEIRS, epoch2, ROUTINE, 2)
           + seal(OURS, THEIRS, epoch2, IMMEDIATE, 1), incoming=joined(peer2))
    commit(store, incoming=theirs(ROUTINE, 3, epoch=peer2))
    report = verify_store(store, OURS.public, THEIRS.public)
    store.close()
    assert report.ok, report.problems
    assert (report.sent, report.received) == (8 + 3, 7 + 3)
    flip_last_byte(link.db, "outgoing", 2, ROUTINE, link.epoch)  # routine seq 2 of both
    flip_last_byte(link.db, "outgoing", 2, ROUTINE, epoch2)
    sql(link.db, "DELETE FROM incoming WHERE epoch = ? AND seq = 1", peer2)
    code, out, _ = verify_streams(link.config, capsys)
    assert code == 1
    assert sorted(out.splitlines()) == sorted([
        f"sent routine seq 2 {our_tag(link)}: signature does not verify",
        "sent routine seq 2 (our epoch 07070707): signature does not verify",
        "receipt upto sent routine seq 2: the peer signed a different transcript than we "
        "store",
        "received routine seq 1 (peer epoch 0a0a0a0a): missing (next stored is seq 2)",
    ])


def test_a_peer_epoch_first_met_past_its_start_verifies(link, capsys):
    """We lost our store: the peer's next epoch is first met at its HELLO's base_seq 5
    (what it no longer holds is not ours to miss)."""
    peer2 = bytes([10]) * 16
    store = Store.open(link.db.parent, OURS.public.raw, THEIRS.public.raw)
    commit(store, incoming=joined(peer2, base=5))
    commit(store, incoming=theirs(ROUTINE, 7, epoch=peer2)[4:])
    store.close()
    code, text = verify(link.config, capsys)
    assert code == 0, text
    assert text == "verified 8 sent, 10 received, 3 receipts: OK\n"


def _store_gap(link: Link, lane: int, after: int, count: int) -> list[InRecord]:
    """The sender no longer holds ``lane``'s seqs after ``after`` up to ``after + 3``
    (GapFound → Rejoin, as the endpoint commits it); then ``count`` messages from
    ``after + 4`` are delivered. Returns all the peer's messages of that lane."""
    peer = theirs(lane, after + 3 + count)
    store = Store.open(link.db.parent, OURS.public.raw, THEIRS.public.raw)
    commit(store, incoming=[Rejoin(PEER_EPOCH, lane, after + 4,
                                   "the sender no longer holds these"),
                            *peer[after + 3:]])
    store.close()
    return peer


def test_a_recorded_gap_is_not_a_failure(link, capsys):
    _store_gap(link, ROUTINE, 4, 3)  # seqs 5-7 gone; 8-10 delivered after them
    code, text = verify(link.config, capsys)
    assert code == 0, text
    assert text == "verified 8 sent, 10 received, 3 receipts, 1 known gaps: OK\n"
    store = Store.open(link.db.parent, OURS.public.raw, THEIRS.public.raw)
    assert [(g.direction, g.lane, g.first, g.last) for g in store.gaps()] == [
        ("in", ROUTINE, 5, 7)]
    store.close()


def test_a_gap_at_the_head_is_not_a_failure(link, capsys):
    _store_gap(link, FLASH, 3, 0)  # flash 4-6 gone, nothing after them yet
    code, text = verify(link.config, capsys)
    assert code == 0, text
    assert text == "verified 8 sent, 7 received, 3 receipts, 1 known gaps: OK\n"


def test_a_gap_explains_only_its_own_seqs(link, capsys):
    """After the gap the stream is checked as before: a missing or altered message there
    is still a failure."""
    _store_gap(link, ROUTINE, 4, 4)  # 5-7 gone, 8-11 delivered
    sql(link.db, "DELETE FROM incoming WHERE lane = 3 AND seq = 9")
    flip_last_byte(link.db, "incoming", 11)
    code, out, err = verify_streams(link.config, capsys)
    assert code == 1
    assert out.splitlines() == [
        f"received routine seq 9 {PEER_TAG}: missing (next stored is seq 10)",
        f"received routine seq 11 {PEER_TAG}: signature does not verify",
    ]
    assert err == ("hotline: verify FAILED: 2 problems in 8 sent, 10 received, 3 receipts, "
                   "1 known gaps\n")


def test_a_gap_explains_nothing_in_another_lane_or_epoch(link, capsys):
    _store_gap(link, FLASH, 3, 2)  # flash 4-6 gone, 7-8 delivered
    sql(link.db, "DELETE FROM incoming WHERE lane = 3 AND seq = 3")  # routine 3: lost
    peer2 = bytes([10]) * 16
    store = Store.open(link.db.parent, OURS.public.raw, THEIRS.public.raw)
    commit(store, incoming=joined(peer2))
    commit(store, incoming=theirs(FLASH, 8, epoch=peer2))
    store.close()
    sql(link.db, "DELETE FROM incoming WHERE lane = 0 AND seq = 5 AND epoch = ?", peer2)
    code, out, _ = verify_streams(link.config, capsys)
    assert code == 1
    assert sorted(out.splitlines()) == sorted([
        f"received routine seq 3 {PEER_TAG}: missing (next stored is seq 4)",
        "received flash seq 5 (peer epoch 0a0a0a0a): missing (next stored is seq 6)",
    ])


# --- export by message id ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "message", "name", "lane", "seq"),
    [("in", "2", "moscow", ROUTINE, 2), ("in", "R4", "moscow", ROUTINE, 4),
     ("in", "Z3", "moscow", FLASH, 3), ("out", "Z1", "washington", FLASH, 1),
     ("out", "1234", "washington", ROUTINE, 1234), ("out", "5", "washington", ROUTINE, 5)],
)
def test_export_is_verified_by_ssh_keygen(link, capsys, tmp_path, ssh_keygen,
                                          direction, message, name, lane, seq):
    if seq == 1234:  # a four-digit routine id, as operators type them
        store = Store.open(link.db.parent, OURS.public.raw, THEIRS.public.raw)
        more = seal(OURS, THEIRS, link.epoch, ROUTINE, 1229, start=6,
                    prev=link.sent[ROUTINE][-1].chain)
        commit(store, outgoing=more)
        store.close()
    out_dir = tmp_path / "export"
    code = main(["export", "-c", str(link.config), message, str(out_dir),
                 "--direction", direction])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"-I {name} -n hotline" in out
    raw = (out_dir / "msg").read_bytes()
    env = ev.decode_envelope_untrusted(raw, 65536)
    assert (env.lane, env.seq, env.body) == (lane, seq, f"message {seq}".encode())
    assert env.sender == (OURS if direction == "out" else THEIRS).public.raw
    _ssh_keygen_verifies(ssh_keygen, out_dir, name, raw)


def _ssh_keygen_verifies(ssh_keygen: str, out_dir: Path, name: str, raw: bytes) -> None:
    cmd = [ssh_keygen, "-Y", "verify", "-f", str(out_dir / "allowed_signers"), "-I", name,
           "-n", "hotline", "-s", str(out_dir / "msg.sig")]
    result = subprocess.run(cmd, input=raw, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    assert b"Good" in result.stdout + result.stderr
    assert subprocess.run(cmd, input=raw + b"!", capture_output=True,
                          check=False).returncode != 0


def test_exported_operator_ack_is_verified_by_ssh_keygen(link, capsys, tmp_path, ssh_keygen):
    """Our operator's acknowledgement is a message like any other (DESIGN §9)."""
    out_dir = tmp_path / "ack"
    code = main(["export", "-c", str(link.config), "Z3", str(out_dir), "--direction", "out"])
    assert code == 0, capsys.readouterr().err
    raw = (out_dir / "msg").read_bytes()
    env = ev.decode_envelope_untrusted(raw, 65536)
    assert (env.type, env.lane, env.seq) == (ACK_TYPE, FLASH, 3)
    assert msgpack.unpackb(env.body)["seq"] == 1
    _ssh_keygen_verifies(ssh_keygen, out_dir, "washington", raw)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["99"], "no received message (latest peer epoch) 99 in"),
     (["Z9"], "no received message (latest peer epoch) Z9 in"),
     (["O1"], "no received message (latest peer epoch) O1 in"),
     (["P1", "--direction", "out"], "no sent message P1 in")],
)
def test_export_missing_id(link, capsys, tmp_path, argv, message):
    code = main(["export", "-c", str(link.config), argv[0], str(tmp_path / "x"), *argv[1:]])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("bad", ["X1", "Z0", "0", "Z", "1.5", "-3"])
def test_export_bad_id_is_a_usage_error(link, capsys, tmp_path, bad):
    assert main(["export", "-c", str(link.config), bad, str(tmp_path / "x")]) == 2
    assert "is not a message id" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_refuses_a_bad_signature(link, capsys, tmp_path):
    flip_last_byte(link.db, "incoming", 2, FLASH)
    code = main(["export", "-c", str(link.config), "Z2", str(tmp_path / "x")])
    assert code == 1
    assert "Z2: the stored signature does not verify" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# --- export never writes through a symlink or into a directory others control ----------


def export(config, capsys, directory, seq=2) -> tuple[int, str]:
    """Exit code and stderr of ``hotline export -c CONFIG SEQ DIR``."""
    code = main(["export", "-c", str(config), str(seq), str(directory)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", ["msg", "msg.sig", "allowed_signers"])
def test_export_refuses_a_planted_symlink(link, capsys, tmp_path, name):
    config = link.config
    out_dir, target = tmp_path / "export", tmp_path / "precious"
    out_dir.mkdir(mode=0o700)
    target.write_bytes(b"keep me")
    (out_dir / name).symlink_to(target)
    code, err = export(config, capsys, out_dir)
    assert code == 77
    assert err == f"hotline: refusing to export: {out_dir / name} is a symbolic link " \
                  "(not following it)\n"
    assert target.read_bytes() == b"keep me"
    assert sorted(p.name for p in out_dir.iterdir()) == [name]  # nothing else written


def test_export_refuses_a_dangling_symlink_whose_target_would_be_created(
        link, capsys, tmp_path):
    config = link.config
    out_dir, target = tmp_path / "export", tmp_path / "created-elsewhere"
    out_dir.mkdir(mode=0o700)
    (out_dir / "allowed_signers").symlink_to(target)
    code, _ = export(config, capsys, out_dir)
    assert code == 77
    assert not target.exists()


def test_export_refuses_a_directory_that_is_a_symlink(link, capsys, tmp_path):
    config = link.config
    real, alias = tmp_path / "real", tmp_path / "alias"
    real.mkdir(mode=0o700)
    alias.symlink_to(real)
    code, err = export(config, capsys, alias)
    assert code == 77
    assert "it is a symbolic link (give the real directory)" in err
    assert list(real.iterdir()) == []


def test_export_refuses_a_directory_others_may_write(link, capsys, tmp_path):
    config = link.config
    out_dir = tmp_path / "shared"
    out_dir.mkdir()
    out_dir.chmod(0o777)
    code, err = export(config, capsys, out_dir)
    assert code == 77
    assert "no sticky bit" in err
    assert list(out_dir.iterdir()) == []
    out_dir.chmod(0o1777)  # sticky, like /tmp: others cannot replace our files
    code, err = export(config, capsys, out_dir)
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["allowed_signers", "msg", "msg.sig"]


def test_export_refuses_another_users_directory_and_file(link, capsys, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    config = link.config
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    code, err = export(config, capsys, theirs)
    assert code == 77
    assert "belongs to another user (uid 65534)" in err
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o1777)
    (ours / "msg.sig").write_text("planted")
    os.chown(ours / "msg.sig", 65534, 65534)
    code, err = export(config, capsys, ours)
    assert code == 77
    assert "msg.sig exists and is not our own regular file" in err
    assert (ours / "msg.sig").read_text() == "planted"


def test_export_replaces_an_earlier_export_and_files_are_private(link, capsys, tmp_path):
    config = link.config
    out_dir = tmp_path / "new" / "export"
    assert export(config, capsys, out_dir, seq=1)[0] == 0
    hard_link = tmp_path / "hard-link-to-msg"
    os.link(out_dir / "msg", hard_link)
    first = hard_link.read_bytes()
    code, err = export(config, capsys, out_dir, seq=2)
    assert code == 0, err
    assert ev.decode_envelope_untrusted((out_dir / "msg").read_bytes(), 65536).seq == 2
    assert hard_link.read_bytes() == first  # a new file, not the old one rewritten
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o700
    for name in ("msg", "msg.sig", "allowed_signers"):
        assert stat.S_IMODE((out_dir / name).stat().st_mode) == 0o600
