"""``hotline verify`` and ``hotline export`` on a real store, intact and tampered with."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from hotline.cli import main
from hotline.commands.verify import VerifyReport, verify_store
from hotline.keyfile import save_identity
from hotline.proto import envelope as ev
from hotline.proto.identity import Identity
from hotline.store import Batch, InRecord, OutRecord, ReceiptRecord, Store

OURS = Identity.from_seed(bytes([3]) * 32)
THEIRS = Identity.from_seed(bytes([4]) * 32)
PEER_EPOCH = bytes([9]) * 16


def chain(signer, to, epoch, count, start=1, prev=ev.ZERO_HASH):
    out = []
    for seq in range(start, start + count):
        raw = ev.encode_envelope(epoch, signer.public.raw, to.public.raw, seq,
                                 1_700_000_000 * 10**9 + seq, prev, "text/plain",
                                 f"message {seq}".encode())
        out.append((seq, raw, ev.sign_envelope(signer, raw)))
        prev = ev.chain_hash(raw)
    return out


@pytest.fixture
def link(tmp_path, monkeypatch):
    """A config, our key file, and a store with 5 sent, 4 received, 2 receipts."""
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
    sent = [OutRecord(*t) for t in chain(OURS, THEIRS, store.epoch, 5)]
    receipts = []
    for upto in (2, 3):
        c = ev.chain_hash(sent[upto - 1].raw)
        raw = ev.encode_receipt(OURS.public.raw, THEIRS.public.raw, upto, c)
        receipts.append(ReceiptRecord(store.epoch, upto, c, raw, ev.sign_receipt(THEIRS, raw)))
    store.apply(Batch(
        outgoing=sent, acked_upto=3, receipts=receipts,
        incoming=[InRecord(PEER_EPOCH, *t) for t in chain(THEIRS, OURS, PEER_EPOCH, 4)]))
    store.close()
    return config, state / "hotline.db"


def sql(db: Path, statement: str, *params: object) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(statement, params)
    conn.close()


def flip_last_byte(db: Path, table: str, seq: int) -> None:
    conn = sqlite3.connect(db)
    raw = conn.execute(f"SELECT raw FROM {table} WHERE seq = ?", (seq,)).fetchone()[0]
    with conn:
        conn.execute(f"UPDATE {table} SET raw = ? WHERE seq = ?",
                     (raw[:-1] + bytes([raw[-1] ^ 1]), seq))
    conn.close()


def verify(config, capsys) -> tuple[int, str]:
    code, out, err = verify_streams(config, capsys)
    return code, out + err


def verify_streams(config, capsys) -> tuple[int, str, str]:
    """Exit code, stdout (one line per problem) and stderr (the summary) of ``verify``."""
    code = main(["verify", "-c", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def test_intact_store_verifies(link, capsys):
    code, text = verify(link[0], capsys)
    assert code == 0
    assert text == "verified 5 sent, 4 received, 2 receipts: OK\n"


def test_verify_store_function(link):
    store = Store.open(link[1].parent, OURS.public.raw, THEIRS.public.raw, create=False)
    report = verify_store(store, OURS.public, THEIRS.public)
    store.close()
    assert report.ok
    assert (report.sent, report.received, report.receipts) == (5, 4, 2)


@pytest.mark.parametrize(
    ("tamper", "expect"),
    [
        (lambda db: flip_last_byte(db, "outgoing", 3), "sent seq 3: signature does not verify"),
        (lambda db: flip_last_byte(db, "incoming", 2), "received seq 2 "),
        (lambda db: sql(db, "DELETE FROM outgoing WHERE seq = 2"), "sent seq 2: missing"),
        (lambda db: sql(db, "DELETE FROM incoming WHERE seq = 3"), "received seq 3 "),
        (lambda db: sql(db, "DELETE FROM incoming WHERE seq = 4"), "received seq 4 "),
        (lambda db: sql(db, "DELETE FROM outgoing WHERE seq >= 3"), "sent seq 3: missing"),
        (lambda db: sql(db, "UPDATE receipts SET raw = ? WHERE upto = 3",
                        ev.encode_receipt(OURS.public.raw, THEIRS.public.raw, 4, bytes(32))),
         "receipt upto sent seq 3: bad receipt"),
        (lambda db: sql(db, "UPDATE receipts SET sig = ? WHERE upto = 2", bytes(64)),
         "receipt upto sent seq 2"),
        (lambda db: sql(db, "UPDATE outgoing SET sig = ? WHERE seq = 1", bytes(64)),
         "sent seq 1: signature"),
        (lambda db: sql(db, "UPDATE incoming SET raw = x'00' WHERE seq = 1"),
         "received seq 1 (peer epoch 09090909): not a valid envelope"),
    ],
    ids=["out-body", "in-body", "out-deleted", "in-deleted", "in-head-deleted",
         "out-tail-deleted", "receipt-altered", "receipt-sig", "out-sig", "in-garbage"],
)
def test_tampered_store_fails_naming_the_seq(link, capsys, tamper, expect):
    config, db = link
    tamper(db)
    code, out, err = verify_streams(config, capsys)
    assert code == 1
    assert expect in out
    problems = out.splitlines()
    assert err.startswith(f"hotline: verify FAILED: {len(problems)} problem")
    assert len(err.splitlines()) == 1


def test_every_bad_item_is_reported(link, capsys):
    """Two tampered messages (one each way) and a bad receipt: all three named."""
    config, db = link
    flip_last_byte(db, "outgoing", 1)
    flip_last_byte(db, "incoming", 3)
    sql(db, "UPDATE receipts SET sig = ? WHERE upto = 2", bytes(64))
    code, out, err = verify_streams(config, capsys)
    assert code == 1
    assert out.splitlines() == [
        "sent seq 1: signature does not verify",
        "received seq 3 (peer epoch 09090909): signature does not verify",
        "receipt upto sent seq 2: bad receipt: Ed25519 signature does not verify",
    ]
    assert err == ("hotline: verify FAILED: 3 problems in 5 sent, 4 received, "
                   "2 receipts\n")


def test_a_missing_run_is_one_problem_and_links_resume_after_it(link, capsys):
    config, db = link
    sql(db, "DELETE FROM outgoing WHERE seq IN (2, 3)")
    sql(db, "DELETE FROM receipts")
    code, out, _ = verify_streams(config, capsys)
    assert code == 1
    assert out.splitlines() == ["sent seqs 2-3: missing (next stored is seq 4)"]


def test_output_is_bounded(link, capsys, monkeypatch):
    import hotline.commands.verify as verify_module

    monkeypatch.setattr(verify_module, "MAX_SHOWN", 2)
    config, db = link
    for seq in (1, 2, 3, 4, 5):
        flip_last_byte(db, "outgoing", seq)
    code, out, err = verify_streams(config, capsys)
    assert code == 1
    lines = out.splitlines()
    assert lines[:2] == ["sent seq 1: signature does not verify",
                         "sent seq 2: signature does not verify"]
    assert lines[2:] == ["... and 5 more"]  # seqs 3-5 and both receipts
    assert "7 problems" in err


def test_problems_are_escaped_for_the_terminal():
    report = VerifyReport()
    report.add("received seq 1: bad \x1b]0;title\x07 \u202e")
    assert report.problem_lines() == ["received seq 1: bad \\x1b]0;title\\x07 \\u202e"]


def test_resigned_envelope_with_broken_chain_fails(link, capsys):
    """Even the signer cannot rewrite history: a re-signed seq 3 breaks seq 4's link."""
    config, db = link
    store = Store.open(db.parent, OURS.public.raw, THEIRS.public.raw)
    epoch = store.epoch
    store.close()
    _, raw, sig = chain(OURS, THEIRS, epoch, 1, start=3, prev=bytes(32))[0]
    sql(db, "UPDATE outgoing SET raw = ?, sig = ?, chain = ? WHERE seq = 3",
        raw, sig, ev.chain_hash(raw))
    code, text = verify(config, capsys)
    assert code == 1
    assert "sent seq 3: broken chain link" in text


def test_receipt_of_another_transcript_fails(link, capsys):
    config, db = link
    other = bytes(32)
    raw = ev.encode_receipt(OURS.public.raw, THEIRS.public.raw, 2, other)
    sql(db, "UPDATE receipts SET raw = ?, sig = ?, chain = ? WHERE upto = 2",
        raw, ev.sign_receipt(THEIRS, raw), other)
    code, text = verify(config, capsys)
    assert code == 1
    assert "receipt upto sent seq 2: the peer signed a different transcript" in text


def test_verify_without_store(tmp_path, link, capsys):
    config, db = link
    for name in ("hotline.db", "hotline.db-wal", "hotline.db-shm"):
        (db.parent / name).unlink(missing_ok=True)
    code, text = verify(config, capsys)
    assert code == 1
    assert "no store" in text


@pytest.mark.parametrize(("direction", "seq", "name"), [("in", 2, "moscow"),
                                                         ("out", 4, "washington")])
def test_export_is_verified_by_ssh_keygen(link, capsys, tmp_path, ssh_keygen,
                                          direction, seq, name):
    config, _ = link
    out_dir = tmp_path / "export"
    code = main(["export", "-c", str(config), str(seq), str(out_dir), "--direction", direction])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"-I {name} -n hotline" in out
    raw = (out_dir / "msg").read_bytes()
    assert ev.decode_envelope_untrusted(raw, 65536).body == f"message {seq}".encode()
    cmd = [ssh_keygen, "-Y", "verify", "-f", str(out_dir / "allowed_signers"), "-I", name,
           "-n", "hotline", "-s", str(out_dir / "msg.sig")]
    result = subprocess.run(cmd, input=raw, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    assert b"Good" in result.stdout + result.stderr
    assert subprocess.run(cmd, input=raw + b"!", capture_output=True,
                          check=False).returncode != 0


def test_export_missing_seq(link, capsys, tmp_path):
    config, _ = link
    code = main(["export", "-c", str(config), "99", str(tmp_path / "x")])
    assert code == 2
    assert "no received message (latest peer epoch) with seq 99" in capsys.readouterr().err


def test_export_refuses_a_bad_signature(link, capsys, tmp_path):
    config, db = link
    flip_last_byte(db, "incoming", 1)
    code = main(["export", "-c", str(config), "1", str(tmp_path / "x")])
    assert code == 1
    assert "does not verify" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_new_peer_epoch_and_pending_gap_verify(link):
    """A second peer epoch, and a stored record above a gap (awaiting retransmission)."""
    _, db = link
    store = Store.open(db.parent, OURS.public.raw, THEIRS.public.raw)
    epoch2 = bytes([10]) * 16
    records = [InRecord(epoch2, *t) for t in chain(THEIRS, OURS, epoch2, 6)]
    store.apply(Batch(incoming=records[:3] + records[4:]))
    assert store.peer_stream().delivered_upto == 3
    report = verify_store(store, OURS.public, THEIRS.public)
    assert report.ok, report.problems
    assert report.received == 4 + 5
    sql(db, "DELETE FROM incoming WHERE epoch = ? AND seq = 1", epoch2)
    report = verify_store(store, OURS.public, THEIRS.public)
    assert report.problems == [
        "received seq 1 (peer epoch 0a0a0a0a): missing (next stored is seq 2)"]
    store.close()


# --- export never writes through a symlink or into a directory others control ----------


def export(config, capsys, directory, seq=2) -> tuple[int, str]:
    """Exit code and stderr of ``hotline export -c CONFIG SEQ DIR``."""
    code = main(["export", "-c", str(config), str(seq), str(directory)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", ["msg", "msg.sig", "allowed_signers"])
def test_export_refuses_a_planted_symlink(link, capsys, tmp_path, name):
    config, _ = link
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
    config, _ = link
    out_dir, target = tmp_path / "export", tmp_path / "created-elsewhere"
    out_dir.mkdir(mode=0o700)
    (out_dir / "allowed_signers").symlink_to(target)
    code, _ = export(config, capsys, out_dir)
    assert code == 77
    assert not target.exists()


def test_export_refuses_a_directory_that_is_a_symlink(link, capsys, tmp_path):
    config, _ = link
    real, alias = tmp_path / "real", tmp_path / "alias"
    real.mkdir(mode=0o700)
    alias.symlink_to(real)
    code, err = export(config, capsys, alias)
    assert code == 77
    assert "it is a symbolic link (give the real directory)" in err
    assert list(real.iterdir()) == []


def test_export_refuses_a_directory_others_may_write(link, capsys, tmp_path):
    config, _ = link
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
    config, _ = link
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
    config, _ = link
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
