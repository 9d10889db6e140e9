"""A fork (our store went back in time) and the carry-over of our backlog into the new epoch.

Two real endpoints over real SQLite stores, pumped by hand (hotline/testing/endpoints.py),
so that a test can hold store jobs back and fail chosen ones. The fork is caused as a peer
whose store is ahead of ours causes it: an ACK for more of our stream than we hold
(DESIGN §4b). The backlog of the abandoned epoch is then re-sealed in the new one
("carried") in chunks read back from the store; these tests pin down that every carried
message is re-sealed exactly once and in order, whatever fails or crosses on the way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hotline.errors import StoreFailedError
from hotline.proto.envelope import decode_envelope_untrusted
from hotline.proto.frames import Ack, encode_frame
from hotline.proto.lanes import ROUTINE
from hotline.proto.notices import STORE_LOG_EVERY
from hotline.proto.records import Commit, LookupSendIds, ReadOutgoing, StoreJob
from hotline.proto.requests import Refused, SendRequest, Stored
from hotline.testing.endpoints import Node, NodePair


@pytest.fixture
def pair(tmp_path: Path):
    p = NodePair(tmp_path)
    p.run(1.0)
    yield p
    p.close()


def send(node: Node, *bodies: bytes, ids: tuple[str, ...] = ()) -> list[tuple[int, int]]:
    """Send in the routine lane, run the node until committed; the (lane, seq) ids."""
    token = node.call(SendRequest("text/plain", bodies, ROUTINE, ids))
    node.turn()
    outcome = node.replies.pop(token)
    assert isinstance(outcome, Stored), outcome
    return list(outcome.ids)


def claim_more_than_we_hold(pair: NodePair) -> bytes:
    """The peer acknowledges more of a's routine lane than a holds: a forks at its next
    poll. Returns the epoch a abandons."""
    a, b = pair.a, pair.b
    epoch = a.endpoint.link.epoch
    head = a.store.out_head(ROUTINE)[0]
    frame = Ack(epoch, ROUTINE, head + 1, bytes(32), (), 1024)
    a.receive(0, b.endpoint.link.sessions.seal(b"\x00" + encode_frame(frame)))
    a.poll()
    assert any(n.kind == "epoch" and n.fields.get("old") == epoch.hex() for n in a.notices)
    return epoch


def inbox(node: Node, epoch: bytes) -> list[bytes]:
    """The bodies ``node`` received in the peer's ``epoch``, in delivery order."""
    return [decode_envelope_untrusted(e.raw, len(e.raw)).body
            for e in node.store.inbox_after(0, 10**9) if e.epoch == epoch]


def deliver(pair: NodePair, seconds: float = 10.0) -> None:
    """Reconnect and run until a has carried and the peer acknowledged everything."""
    pair.cut.clear()
    pair.run(seconds)
    assert not pair.a.endpoint._carry
    assert all(s.backlog == 0 for s in pair.a.endpoint.link.outgoing)


def run_one(node: Node, kind: type) -> StoreJob:
    """Run the node's first queued job of ``kind`` (the others stay queued, in order)."""
    job = next(j for j in node.jobs if isinstance(j, kind))
    node.jobs.remove(job)
    held, node.jobs = node.jobs, [job]
    node.run_jobs()
    node.jobs = held + node.jobs
    return job


# --- a failed commit of a carried chunk (review item 1) --------------------------------


def test_a_failed_commit_of_a_carried_chunk_re_seals_it_once_in_order(
        pair: NodePair) -> None:
    """Chunk 1 of the carry-over is sealed, its commit fails (disk full) while the read
    of chunk 2 is already queued behind it: chunk 1 is re-sealed, chunk 2's stale read
    is ignored, and a send made meanwhile comes after every carried message."""
    a = pair.a
    pair.cut.update({0, 1})
    bodies = [b"old %d" % i for i in range(600)]
    send(a, *bodies)
    claim_more_than_we_hold(pair)
    run_one(a, ReadOutgoing)  # chunk 1 (256) is sealed into the gathering batch
    run_one(a, Commit)  # the new epoch is durable
    a.poll()  # chunk 1's commit is queued
    a.poll()  # the read of chunk 2 is queued behind it
    assert [type(j) for j in a.jobs] == [Commit, ReadOutgoing]
    a.fail_commits = True
    a.run_jobs()
    late = a.call(SendRequest("text/plain", (b"late",), ROUTINE))
    a.turn()
    refused = a.replies.pop(late)  # held behind the carry-over, which needs the disk
    assert isinstance(refused, Refused)
    assert refused.error is StoreFailedError
    a.fail_commits = False
    late = a.call(SendRequest("text/plain", (b"late",), ROUTINE))
    a.turn()
    deliver(pair)
    assert a.replies.pop(late) == Stored(((ROUTINE, 601),))
    assert inbox(pair.b, a.endpoint.link.epoch) == [*bodies, b"late"]
    a.crash(pair.now)  # what was carried is durably carried: nothing is sent again
    deliver(pair)
    assert inbox(pair.b, a.endpoint.link.epoch) == [*bodies, b"late"]


def test_a_failed_commit_before_any_carry_commit_loses_nothing_after_a_restart(
        pair: NodePair) -> None:
    """The carry-over's first chunk fails to commit and the next one commits: a restart
    must still find the first one not carried (the durable mark may not pass it)."""
    a = pair.a
    pair.cut.update({0, 1})
    bodies = [b"old %d" % i for i in range(300)]
    send(a, *bodies)
    claim_more_than_we_hold(pair)
    run_one(a, ReadOutgoing)
    a.fail_commits = True
    a.run_jobs()  # the new epoch and chunk 1 both fail
    a.fail_commits = False
    a.turn()
    a.crash(pair.now)
    deliver(pair)
    assert inbox(pair.b, a.endpoint.link.epoch) == bodies


# --- reads that cross the fork (review item 2) -----------------------------------------


def window_read_in_flight(pair: NodePair) -> ReadOutgoing:
    """Let the peer acknowledge a's backlog until a asks the store for the next stretch
    of it; return that read, left queued (not run) in a's jobs."""
    a, b = pair.a, pair.b
    for _ in range(100_000):
        a.now = b.now = pair.now
        a.poll()
        read = next((j for j in a.jobs if isinstance(j, ReadOutgoing)), None)
        if read is not None:
            return read
        a.run_jobs()
        for packet in a.take_packets():
            b.receive(packet.path_id, packet.packet)
        b.turn()
        for packet in b.take_packets():
            a.receive(packet.path_id, packet.packet)
        pair.now = round(pair.now + 0.01, 6)
    raise AssertionError("the sender never read its backlog window")


def test_a_window_read_of_the_old_epoch_in_flight_is_no_carried_chunk(
        pair: NodePair) -> None:
    """A read of the backlog window is queued when the fork comes: its answer is not a
    chunk of the carry-over (which would skip some messages and seal others twice)."""
    a = pair.a
    pair.cut.update({0, 1})
    bodies = [b"m %d" % i for i in range(2300)]  # more than the 2048 kept in memory
    send(a, *bodies)
    pair.cut.clear()
    stale = window_read_in_flight(pair)
    pair.cut.update({0, 1})
    acked = a.endpoint.link.outgoing[ROUTINE].acked_upto
    old = claim_more_than_we_hold(pair)
    assert stale.epoch == old
    assert a.jobs[0] == stale
    a.run_jobs(1)  # the stale answer comes first,
    a.poll()  # the endpoint looks at what to read next,
    a.turn()  # then the carry-over's own read answers
    deliver(pair)
    assert inbox(pair.b, a.endpoint.link.epoch) == bodies[acked:]


def test_a_failed_window_read_of_the_old_epoch_touches_nothing(pair: NodePair) -> None:
    """The same stale read, failing: the carry-over goes on, nothing else changes."""
    a = pair.a
    pair.cut.update({0, 1})
    bodies = [b"m %d" % i for i in range(2300)]
    send(a, *bodies)
    pair.cut.clear()
    stale = window_read_in_flight(pair)
    pair.cut.update({0, 1})
    acked = a.endpoint.link.outgoing[ROUTINE].acked_upto
    claim_more_than_we_hold(pair)
    a.fail = lambda job: job == stale
    a.run_jobs(1)
    a.poll()
    a.turn()
    a.fail = None
    deliver(pair)
    assert inbox(pair.b, a.endpoint.link.epoch) == bodies[acked:]


# --- a failed carry read (review item 3) ---------------------------------------------------


def store_notices(node: Node) -> int:
    return sum(n.kind == "store" for n in node.notices)


def test_a_failed_carry_read_is_retried_later_not_at_once(pair: NodePair) -> None:
    """Reading the old epoch fails (I/O error) for a while: the read is retried after a
    pause — not at every poll, which in the daemon would spin and flood the log — and
    once the disk answers again the carry-over completes, once and in order."""
    a = pair.a
    pair.cut.update({0, 1})
    bodies = [b"old %d" % i for i in range(300)]
    send(a, *bodies)
    old = claim_more_than_we_hold(pair)
    reads: list[StoreJob] = []  # the failed reads of the old epoch

    def fail(job: StoreJob) -> bool:
        failing = isinstance(job, ReadOutgoing) and job.epoch == old
        if failing:
            reads.append(job)
        return failing

    a.fail = fail
    a.turn()
    assert len(reads) == store_notices(a) == 1
    a.turn()
    assert len(reads) == 1  # nothing retried before its time
    for _ in range(3):  # each retry, a second later, fails once more
        pair.now = a.now = pair.now + 1.0
        a.turn()
    assert len(reads) == 4
    assert store_notices(a) == 1  # one line per STORE_LOG_EVERY, however many fail
    pair.now = a.now = pair.now + STORE_LOG_EVERY
    a.turn()
    assert len(reads) == 5
    [*_, line] = [n for n in a.notices if n.kind == "store"]
    assert str(line.fields["error"]).endswith("(and 3 more since the last line)")
    a.fail = None
    deliver(pair)
    assert inbox(pair.b, a.endpoint.link.epoch) == bodies


# --- sends across the fork ---------------------------------------------------------------


@pytest.mark.parametrize("committing", [False, True])
def test_a_send_sealed_in_the_old_epoch_is_carried_after_its_commit(
        pair: NodePair, committing: bool) -> None:
    """A send sealed just before the fork (still gathering, or its commit in flight)
    is committed in the old epoch, answered there, and carried like the rest — never
    pushed into the new epoch's stream."""
    a = pair.a
    pair.cut.update({0, 1})
    send(a, b"one")
    token = a.call(SendRequest("text/plain", (b"two",), ROUTINE))
    if committing:
        a.poll()
        assert [type(j) for j in a.jobs] == [Commit]
    claim_more_than_we_hold(pair)
    a.turn()
    assert a.replies.pop(token) == Stored(((ROUTINE, 2),))  # its id in the old epoch
    deliver(pair)
    assert inbox(pair.b, a.endpoint.link.epoch) == [b"one", b"two"]


def test_sends_wait_for_the_carry_over_of_their_lane(pair: NodePair) -> None:
    """What a client sends after the fork comes after what is carried over."""
    a = pair.a
    pair.cut.update({0, 1})
    bodies = [b"old %d" % i for i in range(600)]
    send(a, *bodies)
    claim_more_than_we_hold(pair)
    token = a.call(SendRequest("text/plain", (b"new",), ROUTINE))
    a.turn()
    assert a.replies.pop(token) == Stored(((ROUTINE, 601),))
    deliver(pair)
    assert inbox(pair.b, a.endpoint.link.epoch) == [*bodies, b"new"]


# --- idempotent sends across the fork (review item 4) ----------------------------------


def test_a_retried_send_id_waiting_to_be_carried_is_answered_with_its_new_id(
        pair: NodePair) -> None:
    """``send --id`` retried while its message still waits to be carried over: the
    answer is its id in the new epoch, never its abandoned seq, and it is stored once."""
    a = pair.a
    send(a, *[b"acked %d" % i for i in range(10)])
    pair.run(1.0)  # delivered and acknowledged in the old epoch
    pair.cut.update({0, 1})
    bodies = [b"job %d" % i for i in range(600)]
    send(a, *bodies, ids=tuple(f"job:{i}" for i in range(600)))  # seqs 11..610
    claim_more_than_we_hold(pair)  # seqs 11..610 become 1..600
    retry = a.call(SendRequest("text/plain", (b"job 500", b"job 600"), ROUTINE,
                               ("job:500", "job:600")))
    a.turn()
    deliver(pair)
    assert a.replies.pop(retry) == Stored(((ROUTINE, 501), (ROUTINE, 601)))
    assert inbox(pair.b, a.endpoint.link.epoch) == [*bodies, b"job 600"]


def test_a_retried_send_id_acknowledged_in_the_old_epoch_stores_nothing(
        pair: NodePair) -> None:
    """A message the peer acknowledged in the abandoned epoch is never carried: a retry
    of its id stores nothing and is answered with its seq in the epoch that holds it."""
    a = pair.a
    send(a, b"first", ids=("job:1",))
    pair.run(1.0)
    pair.cut.update({0, 1})
    send(a, b"second")
    claim_more_than_we_hold(pair)
    retry = a.call(SendRequest("text/plain", (b"first",), ROUTINE, ("job:1",)))
    a.turn()
    deliver(pair)
    assert a.replies.pop(retry) == Stored(((ROUTINE, 1),))
    assert inbox(pair.b, a.endpoint.link.epoch) == [b"second"]


def test_an_id_lookup_in_flight_at_the_fork_is_looked_up_again(pair: NodePair) -> None:
    """The lookup was answered from the old epoch's rows; the fork came meanwhile."""
    a = pair.a
    send(a, *[b"acked %d" % i for i in range(5)])
    pair.run(1.0)
    pair.cut.update({0, 1})
    bodies = [b"job %d" % i for i in range(300)]
    send(a, *bodies, ids=tuple(f"job:{i}" for i in range(300)))  # seqs 6..305
    send(a, b"pad")
    retry = a.call(SendRequest("text/plain", (b"job 299", b"job 300"), ROUTINE,
                               ("job:299", "job:300")))
    a.poll()
    assert [type(j) for j in a.jobs] == [LookupSendIds]
    claim_more_than_we_hold(pair)
    a.turn()
    deliver(pair)
    assert a.replies.pop(retry) == Stored(((ROUTINE, 300), (ROUTINE, 302)))
    assert inbox(pair.b, a.endpoint.link.epoch) == [*bodies, b"pad", b"job 300"]


# --- a second fork while the first one is still carried over ----------------------------


@pytest.mark.parametrize("restart", [False, True])
def test_a_second_fork_mid_carry_keeps_the_order(pair: NodePair, restart: bool) -> None:
    """Chunk 1 of the first carry-over is committed in epoch 2, then epoch 2 is left
    too: epoch 3 gets epoch 2's messages (the oldest) before the rest of epoch 1 —
    also when a restart finds both carry-overs in the store."""
    a = pair.a
    pair.cut.update({0, 1})
    bodies = [b"old %d" % i for i in range(600)]
    send(a, *bodies)
    claim_more_than_we_hold(pair)
    run_one(a, ReadOutgoing)  # chunk 1
    a.run_jobs()
    a.poll()
    assert [type(j) for j in a.jobs] == [Commit]
    a.run_jobs()  # chunk 1 is durable in epoch 2
    assert a.store.out_head(ROUTINE)[0] == 256
    claim_more_than_we_hold(pair)
    if restart:
        a.jobs = [j for j in a.jobs if isinstance(j, Commit)]  # the new epoch only
        a.run_jobs()
        a.crash(pair.now)
    deliver(pair)
    assert inbox(pair.b, a.endpoint.link.epoch) == bodies


# --- the new epoch is announced only once it is durable ----------------------------------


def test_the_new_epoch_is_announced_only_once_durable(pair: NodePair) -> None:
    """The peer must not learn our new epoch before it is committed: a crash before that
    commit brings us back in the old epoch, which the peer would never re-enter."""
    a, b = pair.a, pair.b
    send(a, b"one")
    pair.run(1.0)
    pair.cut.update({0, 1})
    send(a, b"two")
    claim_more_than_we_hold(pair)
    assert any(isinstance(j, Commit) and j.batch.new_epoch for j in a.jobs)  # not run yet
    for packet in a.take_packets():  # what left before the commit reaches the peer
        b.receive(packet.path_id, packet.packet)
    b.turn()
    a.crash(pair.now)  # the commit of the new epoch never happened
    deliver(pair)
    assert [decode_envelope_untrusted(e.raw, len(e.raw)).body
            for e in b.store.inbox_after(0, 100)] == [b"one", b"two"]
