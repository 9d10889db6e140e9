"""Operator acknowledgement (DESIGN §9) and drills (§10) between two real endpoints.

Each node is the product's ``Endpoint`` over a real SQLite store, pumped by hand with a
hand-set clock (hotline/testing/endpoints.py): acks are real signed envelopes, checked
by the real store, so everything here is what the daemons do, minus sockets and time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from hotline.daemon.control_server import inbox_message
from hotline.errors import NotAcknowledgedError, StoreFailedError, UsageError
from hotline.proto.bodies import (
    ACK_TYPE,
    DRILL_TYPE,
    AckBody,
    DrillAnswer,
    decode_ack_untrusted,
    decode_drill_untrusted,
    encode_ack,
)
from hotline.proto.endpoint import EndpointSettings
from hotline.proto.envelope import Envelope, chain_hash, decode_envelope_untrusted
from hotline.proto.lanes import FLASH, IMMEDIATE, PRIORITY, ROUTINE
from hotline.proto.notices import CRIT, Notice
from hotline.proto.operator import OperatorSettings
from hotline.proto.requests import (
    Acknowledged,
    DrillRequest,
    EndpointRequest,
    OperatorAckRequest,
    Outcome,
    Refused,
    SendRequest,
    Stored,
    WaitRequest,
)
from hotline.proto.status import OperatorItem
from hotline.testing.endpoints import Node, NodePair
from hotline.verify import verify_store


def make_pair(tmp_path: Path, **operator: object) -> NodePair:
    settings = EndpointSettings(operator=OperatorSettings(**operator))  # type: ignore[arg-type]
    pair = NodePair(tmp_path / "pair", settings=settings)
    pair.run(1.0)
    return pair


@pytest.fixture
def pair(tmp_path: Path):
    p = make_pair(tmp_path)
    yield p
    p.close()


def ask(node: Node, request: EndpointRequest) -> Outcome | None:
    """Hand ``request`` to the node and run it until its store work is done."""
    token = node.call(request)
    node.turn()
    return node.replies.pop(token, None)


def send(node: Node, body: bytes, lane: int = FLASH, media: str = "text/plain") -> int:
    outcome = ask(node, SendRequest(media, (body,), lane))
    assert isinstance(outcome, Stored), outcome
    return outcome.ids[0][1]


def ack(node: Node, *ids: tuple[int, int], comment: str = "") -> Outcome | None:
    return ask(node, OperatorAckRequest(ids, comment))


def ids(items: Sequence[OperatorItem]) -> list[str]:
    return [item.id for item in items]


def notices(node: Node, kind: str) -> list[Notice]:
    return [n for n in node.notices if n.kind == kind]


def received(node: Node) -> list[Envelope]:
    return [decode_envelope_untrusted(e.raw, len(e.raw)) for e in node.store.inbox_after(0)]


def pending(node: Node, now: float) -> list[str]:
    return ids(node.endpoint.status(now).operator_pending)


def owed(node: Node, now: float) -> list[str]:
    return ids(node.endpoint.status(now).operator_owed)


def test_ack_round_trip_is_a_signed_chained_message_both_stores_link(pair: NodePair) -> None:
    a, b = pair.a, pair.b
    send(a, b"launch detected")
    pair.run(1.0)
    assert pending(a, pair.now) == ["Z1"]
    assert owed(b, pair.now) == ["Z1"]
    assert ack(b, (FLASH, 1), comment="seen, standing by") == Stored(((FLASH, 1),))
    pair.run(1.0)
    assert pending(a, pair.now) == []
    assert owed(b, pair.now) == []
    assert a.store.operator_acked(True, a.store.epoch, FLASH, 1) == (b.store.epoch, FLASH, 1)
    assert b.store.operator_acked(False, a.store.epoch, FLASH, 1) == (b.store.epoch, FLASH, 1)
    received = a.store.get_incoming(FLASH, 1)
    assert received is not None
    env = decode_envelope_untrusted(received.raw, len(received.raw))
    original = a.store.get_outgoing(FLASH, 1)
    assert original is not None
    assert (env.type, env.lane, env.seq) == (ACK_TYPE, FLASH, 1)
    assert decode_ack_untrusted(env.body) == AckBody(FLASH, 1, original.chain,
                                                     "seen, standing by")
    [notice] = notices(a, "operator_ack")
    assert notice.fields["id"] == "Z1"
    assert notice.fields["result"] == "acknowledged"
    for node in pair.nodes:
        report = verify_store(node.store, node.identity.public, node.peer)
        assert report.ok, report.problems


def test_wait_operator_is_answered_by_the_far_operators_ack(pair: NodePair) -> None:
    for body in (b"one", b"two", b"three"):
        send(pair.a, body)
    token = pair.a.call(WaitRequest(FLASH, 3, 60.0, operator=True, first=1))
    pair.run(1.0)
    ack(pair.b, (FLASH, 1), (FLASH, 3))
    pair.run(1.0)
    assert token not in pair.a.replies  # Z2 is still awaited
    ack(pair.b, (FLASH, 2))
    pair.run(1.0)
    assert pair.a.replies[token] == Acknowledged(FLASH, 3)


def test_wait_operator_counts_acks_that_came_before_it(pair: NodePair) -> None:
    send(pair.a, b"one", lane=ROUTINE)  # any lane may be acknowledged
    pair.run(1.0)
    ack(pair.b, (ROUTINE, 1))
    pair.run(1.0)
    assert ask(pair.a, WaitRequest(ROUTINE, 1, 5.0, operator=True, first=1)) == \
        Acknowledged(ROUTINE, 1)


def test_wait_operator_times_out(pair: NodePair) -> None:
    send(pair.a, b"nobody reads this")
    token = pair.a.call(WaitRequest(FLASH, 1, 5.0, operator=True, first=1))
    pair.run(4.0)
    assert token not in pair.a.replies  # stored by the peer, not acknowledged by a person
    pair.run(2.0)
    outcome = pair.a.replies[token]
    assert isinstance(outcome, Refused)
    assert outcome.error is NotAcknowledgedError
    assert "acknowledged 0 of 1" in outcome.message


@pytest.mark.parametrize(
    ("body", "lane", "reason"),
    [(encode_ack(AckBody(FLASH, 1, bytes(32))), FLASH, "not one of our stored messages"),
     (encode_ack(AckBody(FLASH, 7, bytes(32))), FLASH, "not one of our stored messages"),
     (b"\xc1 not msgpack", FLASH, "malformed"),
     (encode_ack(AckBody(IMMEDIATE, 1, bytes(32))), FLASH, "of another lane")],
    ids=["wrong-chain", "unknown-seq", "malformed", "wrong-lane"])
def test_a_bogus_ack_is_logged_and_ignored(pair: NodePair, body: bytes, lane: int,
                                           reason: str) -> None:
    send(pair.a, b"launch detected")
    token = pair.a.call(WaitRequest(FLASH, 1, 60.0, operator=True, first=1))
    send(pair.b, body, lane=lane, media=ACK_TYPE)  # the peer's client forges an ack
    pair.run(1.0)
    [refused] = notices(pair.a, "operator_ack")
    assert refused.fields["result"] == "refused"
    assert reason in str(refused.fields["reason"])
    assert token not in pair.a.replies
    assert pending(pair.a, pair.now) == ["Z1"]
    assert pair.a.store.operator_acked(True, pair.a.store.epoch, FLASH, 1) is None
    send(pair.b, b"the line still works", lane=ROUTINE)
    pair.run(1.0)
    assert pair.a.store.get_incoming(ROUTINE, 1) is not None


def test_ack_refuses_an_unknown_id_or_an_ack_and_stores_nothing(pair: NodePair) -> None:
    send(pair.a, b"launch detected")
    pair.run(1.0)
    outcome = ack(pair.b, (FLASH, 1), (FLASH, 9))
    assert isinstance(outcome, Refused)
    assert outcome.error is UsageError
    assert outcome.message == ("no received message Z9 in the peer's latest epoch; "
                               "nothing acknowledged")
    assert pair.b.store.out_head(FLASH)[0] == 0
    ack(pair.b, (FLASH, 1))
    pair.run(1.0)
    outcome = ack(pair.a, (FLASH, 1))  # the peer's ack is a.s Z1
    assert isinstance(outcome, Refused)
    assert outcome.message == "Z1 is an operator acknowledgement itself; nothing acknowledged"


def test_a_message_is_acknowledged_once(pair: NodePair) -> None:
    send(pair.a, b"launch detected")
    pair.run(1.0)
    assert ack(pair.b, (FLASH, 1)) == Stored(((FLASH, 1),))
    assert ack(pair.b, (FLASH, 1), (FLASH, 1)) == Stored(((FLASH, 1),))
    assert pair.b.store.out_head(FLASH)[0] == 1


def test_overdue_is_noticed_at_the_deadline_once(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, deadlines={FLASH: 5.0})
    send(pair.a, b"launch detected")
    send(pair.a, b"routine matters", lane=ROUTINE)
    pair.run(4.5)
    assert notices(pair.a, "operator_overdue") == []
    [item] = pair.a.endpoint.status(pair.now).operator_pending
    assert 0 < item.deadline_s <= 1.0
    pair.run(1.0)
    [overdue] = notices(pair.a, "operator_overdue")
    assert overdue.priority == CRIT
    assert (overdue.fields["id"], overdue.fields["lane"]) == ("Z1", "flash")
    assert overdue.fields["deadline_s"] == 5.0
    assert overdue.fields["age_s"] >= 5.0
    pair.run(10.0)
    assert len(notices(pair.a, "operator_overdue")) == 1
    [item] = pair.a.endpoint.status(pair.now).operator_pending
    assert item.deadline_s < -10.0
    pair.close()


def test_pending_and_owed_survive_a_restart(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, deadlines={FLASH: 30.0, IMMEDIATE: 60.0})
    a, b = pair.a, pair.b
    send(a, b"flash one")
    send(a, b"immediate one", lane=IMMEDIATE)
    send(a, b"priority one", lane=PRIORITY)  # no operator ack wanted in this lane
    send(a, b"flash two")
    pair.run(1.0)
    ack(b, (FLASH, 2))
    pair.run(1.0)
    assert pending(a, pair.now) == owed(b, pair.now) == ["Z1", "O1"]
    pair.run(35.0)
    for node in pair.nodes:
        node.crash(pair.now)
    pair.run(1.0)
    assert pending(a, pair.now) == owed(b, pair.now) == ["Z1", "O1"]
    [z1, o1] = a.endpoint.status(pair.now).operator_pending
    assert z1.age_s >= 37.0
    assert z1.deadline_s < -7.0
    assert o1.deadline_s > 0
    assert [n.fields["id"] for n in notices(a, "operator_overdue")] == ["Z1", "Z1"]  # once per run
    ack(b, (IMMEDIATE, 1))
    pair.run(1.0)
    assert pending(a, pair.now) == owed(b, pair.now) == ["Z1"]
    pair.close()


def test_pending_order_after_a_restart_does_not_depend_on_the_second_stored(
        tmp_path: Path) -> None:
    """Envelopes with one timestamp come back in precedence order, whichever second of
    the wall clock the store recorded for each (it once flaked at a second boundary)."""
    pair = make_pair(tmp_path)
    a = pair.a
    send(a, b"flash one")
    send(a, b"immediate one", lane=IMMEDIATE)
    pair.run(1.0)
    assert pending(a, pair.now) == ["Z1", "O1"]
    # The immediate one stored in the next second: the store returns it first (newest
    # first), and both envelopes carry the same timestamp.
    a.store._db.execute("UPDATE outgoing SET stored_at = stored_at + 1 WHERE lane = ?",
                        (IMMEDIATE,))
    a.crash(pair.now)
    pair.run(1.0)
    assert pending(a, pair.now) == ["Z1", "O1"]  # same timestamp: flash first
    pair.close()


def test_drills_every_two_seconds_are_answered(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, drill_every=2.0, drill_deadline=5.0)
    pair.run(9.0)
    done = notices(pair.a, "drill")
    assert len(done) >= 4
    assert all(n.fields["result"] == "ok" and n.fields["answered_s"] is not None
               for n in done)
    assert notices(pair.a, "drill_failed") == []
    last = pair.a.endpoint.status(pair.now).last_drill
    assert last is not None
    assert last["id"].startswith("P")
    success = pair.a.endpoint.operator.drills.last_success_at
    assert success is not None
    assert success >= last["sent_at"] - 2.5  # the last success is this drill or the one before
    assert [n.fields["result"] for n in notices(pair.b, "drill_answer")].count("answered") >= 4
    assert owed(pair.b, pair.now) == []  # the operator is not asked
    drill = pair.a.store.get_outgoing(PRIORITY, 1)
    assert drill is not None
    bodies = [decode_drill_untrusted(env.body) for env in received(pair.a)
              if env.type == DRILL_TYPE]  # b's own drills and b's answers to a's
    assert DrillAnswer(PRIORITY, 1, drill.chain) in bodies
    pair.close()


def test_a_drill_fails_at_its_deadline_without_the_operators_ack(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, drill_operator=True, drill_deadline=5.0)
    assert ask(pair.a, DrillRequest()) == Stored(((PRIORITY, 1),))
    pair.run(4.0)
    last = pair.a.endpoint.status(pair.now).last_drill
    assert last is not None
    assert last["ok"] is None
    assert last["answered_s"] is not None
    assert owed(pair.b, pair.now) == ["P1"]
    pair.run(2.0)
    [failed] = notices(pair.a, "drill_failed")
    assert failed.priority == CRIT
    assert failed.fields["reason"] == "the far operator did not acknowledge it within 5 s"
    last = pair.a.endpoint.status(pair.now).last_drill
    assert last is not None
    assert (last["id"], last["ok"], last["operator_s"]) == ("P1", False, None)
    pair.close()


def test_a_drill_the_far_operator_acknowledges_succeeds(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, drill_operator=True, drill_deadline=60.0)
    ask(pair.a, DrillRequest())
    pair.run(2.0)
    assert notices(pair.a, "drill") == []  # answered, but the person has not acked yet
    assert ack(pair.b, (PRIORITY, 1), comment="drill seen") == Stored(((PRIORITY, 2),))
    pair.run(1.0)
    [done] = notices(pair.a, "drill")
    assert done.fields["result"] == "ok"
    last = pair.a.endpoint.status(pair.now).last_drill
    assert last is not None
    assert last["ok"] is True
    assert 0 < last["answered_s"] < last["operator_s"]
    assert owed(pair.b, pair.now) == []
    assert pending(pair.a, pair.now) == []  # drills report as drills, not as pending
    pair.close()


def test_a_drill_over_a_dead_line_fails_unanswered(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, drill_deadline=3.0)
    pair.cut.update({0, 1})
    ask(pair.a, DrillRequest())
    pair.run(4.0)
    [failed] = notices(pair.a, "drill_failed")
    assert failed.fields["reason"] == "no answer from the far daemon within 3 s"
    pair.close()


def test_inbox_shows_the_ack_state(pair: NodePair) -> None:
    send(pair.a, b"launch detected")
    send(pair.a, b"routine report", lane=ROUTINE)
    send(pair.a, b"immediate", lane=IMMEDIATE)
    pair.run(1.0)
    b = pair.b
    lanes = (FLASH, IMMEDIATE)
    assert [m.seq for m in b.store.inbox_unacked(0, lanes)] == [1, 1]
    ack(b, (FLASH, 1), comment="seen")
    pair.run(1.0)
    messages = {(e.lane, e.seq): inbox_message(e, lanes) for e in b.store.inbox_after(0)}
    assert (messages[FLASH, 1]["ack_state"], messages[FLASH, 1]["acked_by"]) == ("acked", "Z1")
    assert messages[ROUTINE, 1]["ack_state"] is None
    assert messages[IMMEDIATE, 1]["ack_state"] == "owed"
    assert [(e.lane, e.seq) for e in b.store.inbox_unacked(0, lanes)] == [(IMMEDIATE, 1)]
    [their_ack] = [inbox_message(e, lanes) for e in pair.a.store.inbox_after(0)]
    assert their_ack["note"] == "acknowledges Z1: seen"
    assert their_ack["ack_state"] is None
    assert chain_hash(pair.a.store.get_outgoing(FLASH, 1).raw) == \
        decode_ack_untrusted(their_ack["body"]).chain  # type: ignore[union-attr]


def test_an_ack_whose_commit_failed_is_refused_and_leaves_no_link(pair: NodePair) -> None:
    send(pair.a, b"launch detected")
    pair.run(1.0)
    pair.b.fail_commits = True  # the disk is full
    outcome = ack(pair.b, (FLASH, 1))
    assert isinstance(outcome, Refused)
    assert outcome.error is StoreFailedError
    pair.b.fail_commits = False
    send(pair.b, b"disk freed", lane=ROUTINE)  # the next commit carries nothing stale
    assert pair.b.store.operator_acked(False, pair.a.store.epoch, FLASH, 1) is None
    assert owed(pair.b, pair.now) == ["Z1"]
    assert ack(pair.b, (FLASH, 1)) == Stored(((FLASH, 1),))
    pair.run(1.0)
    assert pending(pair.a, pair.now) == []
