"""Stores written by the first release open, migrate to schema v2 and verify (issue 10).

The fixture (``tests/fixtures/store-v1``, see its README) is the two stores of a real
daemon pair of the first release (schema v1, one lane, v1 envelopes and receipts) after
a few dozen messages both ways, and ``manifest.json``: what those stores held as the
first release itself read them. Each test migrates a fresh copy with the current
``Store`` and checks it against that manifest: nothing lost or re-ordered, every
message routine, verify clean at both ends, and the routine lane continuing at the
next seq, chained to the first release's last envelope.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from hotline.proto.envelope import (
    chain_hash,
    decode_envelope_untrusted,
    decode_receipt_untrusted,
    verify_envelope,
    verify_receipt,
)
from hotline.proto.identity import Identity, PublicKey
from hotline.proto.lanes import LANES, ROUTINE
from hotline.proto.records import Commit, InRecord, StoreBatch
from hotline.proto.sequencer import LaneSequencer
from hotline.store import DB_NAME, Store
from hotline.store_schema import SCHEMA_VERSION
from hotline.verify import verify_store

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "store-v1"
MANIFEST: dict[str, Any] = json.loads((FIXTURE / "manifest.json").read_text())
NAMES = ("washington", "moscow")
SEEDS = {"washington": bytes([0x57]) * 32, "moscow": bytes([0x4D]) * 32}  # README
KEYS = {name: PublicKey.from_openssh_line((FIXTURE / f"{name}.pub").read_text())
        for name in NAMES}
PEER = {"washington": "moscow", "moscow": "washington"}
MAX_MESSAGE = 65536


def user_version(state_dir: Path) -> int:
    db = sqlite3.connect(state_dir / DB_NAME)
    try:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()
    return version


def dump(state_dir: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table (``stored_at``, the migration's clock, left out)."""
    db = sqlite3.connect(state_dir / DB_NAME)
    try:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {}
        for table in tables:
            columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")
                       if r[1] != "stored_at"]
            order = ", ".join(str(i) for i in range(1, len(columns) + 1))
            rows[table] = db.execute(
                f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}").fetchall()
    finally:
        db.close()
    return rows


@pytest.fixture
def copies(tmp_path: Path) -> Path:
    """A fresh copy of both v1 state directories."""
    for name in NAMES:
        (tmp_path / name).mkdir()
        shutil.copyfile(FIXTURE / name / DB_NAME, tmp_path / name / DB_NAME)
    return tmp_path


def open_store(root: Path, name: str) -> Store:
    return Store.open(root / name, KEYS[name].raw, KEYS[PEER[name]].raw)


def test_fixture_is_a_first_release_store(copies: Path) -> None:
    for name in NAMES:
        assert user_version(copies / name) == 1
        assert Identity.from_seed(SEEDS[name]).public == KEYS[name]
    assert MANIFEST["nodes"]["washington"]["epoch"] == MANIFEST["nodes"]["moscow"]["peer_epoch"]


@pytest.mark.parametrize("name", NAMES)
def test_migrated_store_verifies(copies: Path, name: str) -> None:
    expected = MANIFEST["nodes"][name]
    store = open_store(copies, name)
    try:
        assert user_version(copies / name) == SCHEMA_VERSION == 2
        report = verify_store(store, KEYS[name], KEYS[PEER[name]])
    finally:
        store.close()
    assert report.problems == []
    assert (report.sent, report.received, report.receipts, report.gaps) == (
        expected["out_head"], expected["delivered_upto"], expected["receipts"], 0)
    assert report.summary() == (
        f"verified {expected['out_head']} sent, {expected['delivered_upto']} received, "
        f"{expected['receipts']} receipts: OK")


@pytest.mark.parametrize("name", NAMES)
def test_resume_shows_the_first_release_streams_as_routine(copies: Path, name: str) -> None:
    expected = MANIFEST["nodes"][name]
    store = open_store(copies, name)
    try:
        resume = store.resume(window=8)
        inbox = store.inbox_after(0, limit=1000)
        epochs = store.out_epochs()
    finally:
        store.close()
    assert resume.epoch.hex() == expected["epoch"]
    assert epochs == [(resume.epoch, "store created")]
    routine = resume.out[ROUTINE]
    assert (routine.head, routine.head_chain.hex()) == (
        expected["out_head"], expected["out_head_chain"])
    assert routine.acked == expected["acked_upto"]
    assert routine.unacked == ()  # everything was acknowledged before the stop
    if routine.acked == routine.head:
        assert routine.acked_chain == routine.head_chain
    for lane in LANES:
        if lane != ROUTINE:
            assert (resume.out[lane].head, resume.out[lane].acked) == (0, 0)
            assert resume.peer_lanes[lane].delivered == 0
    assert resume.peer_epoch is not None
    assert resume.peer_epoch.hex() == expected["peer_epoch"]
    assert resume.peer_epochs_seen == {resume.peer_epoch}
    peer_routine = resume.peer_lanes[ROUTINE]
    assert (peer_routine.delivered, peer_routine.chain.hex()) == (
        expected["delivered_upto"], expected["delivered_chain"])
    assert resume.carry == ()
    # The inbox: every message, in the first release's order, routine, exact bytes.
    assert [e.n for e in inbox] == list(range(1, len(inbox) + 1))
    assert [(e.lane, e.seq) for e in inbox] == [
        (ROUTINE, seq) for seq in range(1, expected["delivered_upto"] + 1)]
    assert [chain_hash(e.raw).hex() for e in inbox] == expected["inbox_sha256"]


def test_multiline_and_binary_bodies_survive(copies: Path) -> None:
    store = open_store(copies, "moscow")
    try:
        bodies = {decode_envelope_untrusted(e.raw, MAX_MESSAGE).body: e
                  for e in store.inbox_after(0)}
    finally:
        store.close()
    multiline = b"first line\nsecond line\n\nfourth line, after an empty one\n"
    binary = bytes(range(256)) * 4
    for body in (multiline, binary, b"hello moscow", b"last from washington"):
        entry = bodies[body]
        verify_envelope(KEYS["washington"], entry.raw, entry.sig)
        assert decode_envelope_untrusted(entry.raw, MAX_MESSAGE).v == 1
    assert decode_envelope_untrusted(bodies[binary].raw, MAX_MESSAGE).type == (
        "application/octet-stream")


@pytest.mark.parametrize("name", NAMES)
def test_migrated_receipts_are_routine_v1_receipts_that_verify(copies: Path, name: str) -> None:
    expected = MANIFEST["nodes"][name]
    store = open_store(copies, name)
    try:
        receipts = list(store.iter_receipts())
        chains = {r.upto: store.chain_at(store.epoch, ROUTINE, r.upto) for r in receipts}
        epoch = store.epoch
    finally:
        store.close()
    assert len(receipts) == expected["receipts"]
    assert receipts[-1].upto == expected["last_receipt_upto"] == expected["out_head"]
    for record in receipts:
        assert (record.epoch, record.lane) == (epoch, ROUTINE)
        decoded = decode_receipt_untrusted(record.raw)
        assert decoded.epoch is None  # a first-release receipt names no epoch
        assert decoded.lane == ROUTINE
        assert (decoded.upto, decoded.chain) == (record.upto, record.chain)
        assert (decoded.sender, decoded.recipient) == (KEYS[name].raw, KEYS[PEER[name]].raw)
        verify_receipt(KEYS[PEER[name]], record.raw, record.sig)
        assert chains[record.upto] == record.chain


def test_routine_seqs_continue_at_both_ends(copies: Path) -> None:
    """washington seals its next routine message from what resume reads; it is seq N+1,
    chained to the first release's last envelope; both ends store it and verify."""
    sender = open_store(copies, "washington")
    receiver = open_store(copies, "moscow")
    try:
        resume = sender.resume(window=8)
        head = resume.out[ROUTINE]
        sealer = LaneSequencer(Identity.from_seed(SEEDS["washington"]), KEYS["moscow"],
                               resume.epoch, ROUTINE, head.head, head.head_chain, MAX_MESSAGE)
        record = sealer.seal(b"first message after the upgrade", "text/plain", 2 * 10**18)
        sender.execute(Commit(StoreBatch(outgoing=[record])))
        receiver.execute(Commit(StoreBatch(incoming=[
            InRecord(record.epoch, ROUTINE, record.seq, record.raw, record.sig)])))
    finally:
        sender.close()
        receiver.close()
    n = MANIFEST["nodes"]["washington"]["out_head"]
    envelope = decode_envelope_untrusted(record.raw, MAX_MESSAGE)
    assert (envelope.v, envelope.lane, envelope.seq) == (2, ROUTINE, n + 1)
    assert envelope.prev.hex() == MANIFEST["nodes"]["washington"]["out_head_chain"]
    sender = open_store(copies, "washington")
    receiver = open_store(copies, "moscow")
    try:
        assert sender.out_head(ROUTINE) == (n + 1, record.chain)
        assert sender.resume(window=8).out[ROUTINE].unacked == (record,)
        sent = verify_store(sender, KEYS["washington"], KEYS["moscow"])
        received = verify_store(receiver, KEYS["moscow"], KEYS["washington"])
        assert receiver.resume(window=8).peer_lanes[ROUTINE].delivered == n + 1
    finally:
        sender.close()
        receiver.close()
    assert (sent.problems, sent.sent) == ([], n + 1)
    assert (received.problems, received.received) == ([], n + 1)


@pytest.mark.parametrize("name", NAMES)
def test_migration_is_idempotent(copies: Path, tmp_path: Path, name: str) -> None:
    open_store(copies, name).close()
    migrated = dump(copies / name)
    for _ in range(2):
        store = open_store(copies, name)
        report = verify_store(store, KEYS[name], KEYS[PEER[name]])
        store.close()
        assert report.ok
        assert user_version(copies / name) == 2
        assert dump(copies / name) == migrated
    # A second copy migrated on its own comes out the same.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(FIXTURE / name / DB_NAME, other / DB_NAME)
    Store.open(other, KEYS[name].raw, KEYS[PEER[name]].raw).close()
    assert dump(other) == migrated
