"""OutgoingStream / IncomingStream, one lane each: RTO and backoff, windows, selective
ranges, chain-checked acks (``Fork``, ``NeedChain``), the backlog window, ordering,
dedup, joins, gaps and rollback, receipts, and fuzzing (only RemoteProtocolError escapes).

Messages are real envelopes sealed and signed by the product's ``LaneSequencer``; the
memory tests use synthetic records (the sender never parses its own envelopes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.errors import (
    AuthenticationError,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayError,
)
from hotline.proto.envelope import ZERO_HASH, decode_envelope_untrusted
from hotline.proto.frames import Ack, Data, Position
from hotline.proto.identity import Identity
from hotline.proto.incoming import Accepted, Gap, IncomingStream
from hotline.proto.lanes import FLASH, ROUTINE
from hotline.proto.outgoing import Advanced, Fork, NeedChain, OutgoingStream, PeerLost
from hotline.proto.records import OutRecord
from hotline.proto.rtt import INITIAL_RTO, MAX_RTO, MIN_RTO
from hotline.proto.sequencer import LaneSequencer

ALICE = Identity.from_seed(b"\x01" * 32)
BOB = Identity.from_seed(b"\x02" * 32)
EPOCH = b"\xee" * 16
EPOCH2 = b"\xdd" * 16
MAX_MESSAGE = 65536
WINDOW = 4096  # IncomingStream's default reorder limit: the window its ACKs advertise


def seal(n: int, *, epoch: bytes = EPOCH, lane: int = ROUTINE, after: int = 0,
         prev: bytes = ZERO_HASH, sender: Identity = ALICE, recipient: Identity = BOB,
         ) -> list[OutRecord]:
    """``n`` signed envelopes of ``lane``, seqs ``after + 1 ..``, chained from ``prev``."""
    sealer = LaneSequencer(sender, recipient.public, epoch, lane, after, prev, MAX_MESSAGE)
    return [sealer.seal(f"message {after + i}".encode(), "text/plain", 10**18 + after + i)
            for i in range(1, n + 1)]


MSGS = seal(40)
DATA = [Data(r.raw, r.sig) for r in MSGS]
SEQ_OF = {d.raw: seq for seq, d in enumerate(DATA, 1)}


def chain(seq: int) -> bytes:
    """Our chain hash at ``seq`` of MSGS (zeros at 0)."""
    return ZERO_HASH if seq == 0 else MSGS[seq - 1].chain


def at(seq: int) -> Position:
    return Position(seq, chain(seq))


def outgoing(n: int = 0, **kw: int) -> OutgoingStream:
    out = OutgoingStream(EPOCH, ROUTINE, acked=at(0), head=0, **kw)
    for record in MSGS[:n]:
        out.push(record)
    return out


def seqs(frames: Sequence[Data]) -> list[int]:
    return [SEQ_OF[f.raw] for f in frames]


def ack(upto: int, ranges: tuple[tuple[int, int], ...] = (), window: int = WINDOW,
        chain_at: bytes | None = None) -> Ack:
    """The receiver's ACK of MSGS up to ``upto`` (with our chain there unless given)."""
    return Ack(EPOCH, ROUTINE, upto, chain(upto) if chain_at is None else chain_at, ranges,
               window)


# --- OutgoingStream: sending, acks, RTO -------------------------------------------------


def test_push_and_resume_must_be_contiguous() -> None:
    out = outgoing(2)
    with pytest.raises(LocalProtocolError):
        out.push(MSGS[3])
    with pytest.raises(LocalProtocolError):  # a head below the stored ack
        OutgoingStream(EPOCH, ROUTINE, acked=at(5), head=4)
    with pytest.raises(LocalProtocolError):  # loaded does not continue the ack
        OutgoingStream(EPOCH, ROUTINE, acked=at(5), head=9, loaded=MSGS[6:8])
    with pytest.raises(LocalProtocolError):  # loaded beyond the head
        OutgoingStream(EPOCH, ROUTINE, acked=at(0), head=1, loaded=MSGS[:2])


def test_sends_new_once_in_order_and_frees_on_cumulative_ack() -> None:
    out = outgoing(5)
    assert out.base_seq() == 1
    assert seqs(out.frames_to_send(0.0, 3)) == [1, 2, 3]
    assert seqs(out.frames_to_send(0.0)) == [4, 5]
    assert out.frames_to_send(0.0) == []
    assert out.in_flight == 5
    assert out.on_ack(ack(3), 0.1) == Advanced(3, chain(3))
    assert out.on_ack(ack(3), 0.1) is None  # not an advance
    assert out.on_ack(ack(2), 0.1) is None  # stale
    assert out.on_ack(Ack(EPOCH2, ROUTINE, 5, chain(5), (), 10), 0.1) is None  # other epoch
    assert (out.backlog, out.in_flight, out.base_seq(), out.in_memory) == (2, 2, 4, 2)
    assert out.on_ack(ack(5), 0.2) == Advanced(5, chain(5))
    assert (out.backlog, out.in_memory, out.acked_upto, out.acked_chain) == (0, 0, 5, chain(5))
    assert out.get_timer() is None
    assert not out.has_due()


def test_retransmission_timer_and_backoff() -> None:
    out = outgoing(2)
    out.frames_to_send(0.0)
    assert out.get_timer() == INITIAL_RTO
    out.handle_timer(0.5)
    assert out.frames_to_send(0.5) == []
    out.handle_timer(1.0)
    assert out.rto == 2 * INITIAL_RTO  # RFC 6298 §5.5
    assert seqs(out.frames_to_send(1.0)) == [1, 2]
    assert out.get_timer() == 3.0
    for t in (3.0, 7.0, 15.0, 25.0):
        out.handle_timer(t)
        assert seqs(out.frames_to_send(t)) == [1, 2]
    assert out.rto == MAX_RTO
    # Karn: an ack of a retransmitted message gives no sample, so the backoff stays.
    out.on_ack(ack(1), 25.1)
    assert out.srtt is None
    assert out.rto == MAX_RTO


def test_rtt_estimate_rfc6298() -> None:
    out = outgoing(40)
    out.frames_to_send(0.0, 1)
    out.on_ack(ack(1), 0.1)
    assert out.srtt == pytest.approx(0.1)
    assert out.rto == pytest.approx(0.3)  # 0.1 + 4 * 0.05
    out.frames_to_send(1.0, 1)
    out.on_ack(ack(2), 1.3)
    # rttvar = 3/4 * 0.05 + 1/4 * 0.2; srtt = 7/8 * 0.1 + 1/8 * 0.3
    assert out.srtt == pytest.approx(0.125)
    assert out.rto == pytest.approx(0.125 + 4 * 0.0875)
    for seq in range(3, 41):  # zero RTTs: the RTO falls to its floor
        out.frames_to_send(float(seq), 1)
        out.on_ack(ack(seq), float(seq))
    assert out.rto == MIN_RTO


def test_a_sample_ends_the_backoff() -> None:
    out = outgoing(3)
    out.frames_to_send(0.0, 1)
    out.handle_timer(1.0)
    assert out.rto == 2 * INITIAL_RTO
    out.frames_to_send(1.0)  # 1 again, 2 and 3 for the first time
    out.on_ack(ack(0, ((2, 3),)), 1.5)  # held: 2 and 3 were sent once, a valid sample
    assert out.srtt == pytest.approx(0.5)
    assert out.rto == pytest.approx(1.5)  # 0.5 + 4 * 0.25, backoff reset


def test_selective_ranges_suppress_retransmission() -> None:
    out = outgoing(6)
    out.frames_to_send(0.0)
    assert out.on_ack(ack(1, ((3, 4), (6, 6))), 0.1) == Advanced(1, chain(1))
    assert out.in_flight == 2  # 2 and 5
    out.handle_timer(0.1 + out.rto)
    assert seqs(out.frames_to_send(5.0)) == [2, 5]
    assert out.backlog == 5  # held messages are not freed: the reorder buffer is volatile
    assert out.on_ack(ack(6), 5.1) == Advanced(6, chain(6))
    assert out.backlog == 0


def test_held_message_resent_when_it_blocks_the_ack() -> None:
    # The receiver said it holds 3, then acked 2 without it: it forgot (reneged).
    out = outgoing(3)
    out.frames_to_send(0.0)
    out.on_ack(ack(1, ((3, 3),)), 0.1)
    out.on_ack(ack(2), 0.2)
    t = out.get_timer()
    assert t is not None
    out.handle_timer(t)
    assert seqs(out.frames_to_send(t)) == [3]


def test_peer_window_and_max_in_flight() -> None:
    out = outgoing(10, initial_window=3)
    assert seqs(out.frames_to_send(0.0)) == [1, 2, 3]
    out.on_ack(ack(2, window=4), 0.1)
    assert seqs(out.frames_to_send(0.1)) == [4, 5, 6]
    out.on_ack(ack(2, window=0), 0.2)  # a full receiver: nothing new
    assert out.frames_to_send(0.2) == []
    out = outgoing(10, max_in_flight=4)
    assert seqs(out.frames_to_send(0.0)) == [1, 2, 3, 4]
    assert not out.has_due()
    out.on_ack(ack(1, ((3, 3),)), 0.1)  # 1 freed, 3 held: two more may go
    assert seqs(out.frames_to_send(0.1)) == [5, 6]


def test_path_change_makes_everything_due() -> None:
    out = outgoing(4)
    out.frames_to_send(0.0)
    out.on_ack(ack(0, ((2, 2),)), 0.1)
    out.on_path_change(0.2)
    assert seqs(out.frames_to_send(0.2)) == [1, 3, 4]
    out.on_ack(ack(4), 0.3)
    assert out.srtt == pytest.approx(0.1)  # only 2, when first held: the rest went twice
    assert out.get_timer() is None


def test_hello_acks_and_resends_everything() -> None:
    out = outgoing(5)
    out.frames_to_send(0.0)
    out.on_ack(ack(0, ((4, 4),)), 0.1)
    assert out.on_hello(at(2), 0.5) == Advanced(2, chain(2))
    assert seqs(out.frames_to_send(0.5)) == [3, 4, 5]  # the hold on 4 is forgotten
    # a receiver that holds nothing of ours any more, after acknowledging 1..2: its store
    # went back in time, and the loss is named (DESIGN §4b)
    assert out.on_hello(at(0), 0.6) == PeerLost(1, 2)
    assert seqs(out.frames_to_send(0.6)) == [3, 4, 5]


def test_resume_from_store() -> None:
    out = OutgoingStream(EPOCH, ROUTINE, acked=at(3), head=6, loaded=MSGS[3:6])
    assert (out.base_seq(), out.head, out.backlog, out.in_memory) == (4, 6, 3, 3)
    assert out.on_hello(at(4), 0.0) == Advanced(4, chain(4))
    assert seqs(out.frames_to_send(0.0)) == [5, 6]
    out.push(MSGS[6])
    assert seqs(out.frames_to_send(0.0)) == [7]


# --- OutgoingStream: acks name bytes (DESIGN §4b) ----------------------------------------


def test_ack_with_other_bytes_is_a_fork_and_frees_nothing() -> None:
    out = outgoing(5)
    out.frames_to_send(0.0)
    forged = b"\x07" * 32
    outcome = out.on_ack(ack(3, chain_at=forged), 0.1)
    assert isinstance(outcome, Fork)
    assert (outcome.peer_upto, outcome.head) == (3, 5)
    assert "other bytes at seq 3" in outcome.reason
    assert (out.acked_upto, out.backlog, out.in_flight) == (0, 5, 5)
    assert isinstance(out.on_hello(Position(3, forged), 0.2), Fork)
    assert out.acked_upto == 0
    out.on_ack(ack(2), 0.3)
    assert isinstance(out.on_ack(ack(2, chain_at=forged), 0.4), Fork)  # at our ack, too
    assert out.on_ack(ack(1, chain_at=forged), 0.4) is None  # older: nothing to learn
    assert out.acked_upto == 2


def test_upto_above_our_head_is_a_fork() -> None:
    out = outgoing(5)
    out.frames_to_send(0.0)
    claim = b"\x01" * 32  # whatever bytes the peer holds there, we never stored seq 9
    for outcome in (out.on_ack(Ack(EPOCH, ROUTINE, 9, claim, (), WINDOW), 0.1),
                    out.on_hello(Position(9, claim), 0.1)):
        assert isinstance(outcome, Fork)
        assert (outcome.peer_upto, outcome.head) == (9, 5)
        assert "our store ends at 5" in outcome.reason
    assert (out.acked_upto, out.backlog) == (0, 5)


def test_upto_beyond_the_loaded_window_needs_our_stored_chain() -> None:
    out = OutgoingStream(EPOCH, ROUTINE, acked=at(0), head=10, loaded=MSGS[:4])
    assert out.loaded_upto == 4
    assert out.on_ack(ack(7), 0.1) == NeedChain(7, chain(7))
    assert out.acked_upto == 0  # nothing freed before the check
    assert out.on_chain(7, chain(7)) == Advanced(7, chain(7))
    assert (out.acked_upto, out.acked_chain, out.in_memory, out.backlog) == (7, chain(7), 0, 3)
    assert out.on_chain(7, chain(7)) is None  # answered once
    assert out.read_wanted() == (7, out.memory_limit)
    out.on_read(MSGS[7:10])
    assert seqs(out.frames_to_send(0.2)) == [8, 9, 10]


def test_stored_chain_that_differs_is_a_fork() -> None:
    out = OutgoingStream(EPOCH, ROUTINE, acked=at(0), head=10, loaded=MSGS[:4])
    assert isinstance(out.on_hello(at(6), 0.1), NeedChain)
    outcome = out.on_chain(6, b"\x05" * 32)
    assert isinstance(outcome, Fork)
    assert outcome.peer_upto == 6
    assert out.on_ack(ack(8), 0.2) == NeedChain(8, chain(8))
    assert isinstance(out.on_chain(8, None), Fork)  # not even stored
    assert out.acked_upto == 0


def test_stale_chain_answers_are_ignored() -> None:
    out = OutgoingStream(EPOCH, ROUTINE, acked=at(0), head=10, loaded=MSGS[:4])
    assert out.on_chain(6, chain(6)) is None  # nothing asked
    assert out.acked_upto == 0
    assert isinstance(out.on_hello(at(8), 0.1), NeedChain)
    assert out.on_chain(8, chain(8)) == Advanced(8, chain(8))
    assert isinstance(out.on_ack(ack(9), 0.2), NeedChain)
    assert out.on_ack(ack(10), 0.2) == NeedChain(10, chain(10))
    assert out.on_chain(10, chain(10)) == Advanced(10, chain(10))
    assert out.on_chain(9, chain(9)) is None  # answered after the ack moved past it
    assert out.acked_upto == 10


def test_an_older_chain_answer_does_not_cancel_a_newer_question() -> None:
    """Every NeedChain makes the endpoint issue one ReadChain; answers come back in
    order. Two ACKs beyond the loaded window (6, then 8) before the first answer: the
    answer for 6 must not swallow the check of 8, or the ACK of 8 is lost."""
    out = OutgoingStream(EPOCH, ROUTINE, acked=at(0), head=10, loaded=MSGS[:4])
    assert out.on_ack(ack(6), 0.1) == NeedChain(6, chain(6))
    assert out.on_ack(ack(8), 0.1) == NeedChain(8, chain(8))
    out.on_chain(6, chain(6))
    assert out.on_chain(8, chain(8)) == Advanced(8, chain(8))
    assert out.acked_upto == 8


def test_a_zero_chain_from_a_rejoined_receiver_is_ignored() -> None:
    """A receiver that joined mid-way does not know the chain before its first message:
    its position carries zeros, which say nothing about our bytes."""
    out = outgoing(5)
    out.frames_to_send(0.0)
    assert out.on_ack(ack(3, chain_at=ZERO_HASH), 0.1) is None
    assert out.on_hello(Position(4, ZERO_HASH), 0.2) is None
    assert (out.acked_upto, out.backlog) == (0, 5)


def test_a_rejoined_receiver_above_our_head_is_still_a_fork() -> None:
    """The receiver lost its store and rejoined our lane at 10 (our HELLO said our lane
    started there), so it reports (9, zeros). Then OUR store is restored from a backup
    that ends at 5. A position above our head means our store went back in time
    (DESIGN §4b), zeros or not: ignored, our new 6..9 look like duplicates to the
    receiver (below its expected 10), its first real ACK (10) frees them unstored."""
    receiver = IncomingStream(BOB.public, ALICE.public, ROUTINE, EPOCH, Position(9, ZERO_HASH))
    out = OutgoingStream(EPOCH, ROUTINE, acked=at(3), head=5, loaded=MSGS[3:5])
    hello = out.on_hello(receiver.position(), 0.0)
    assert isinstance(hello, Fork)
    assert (hello.peer_upto, hello.head) == (9, 5)
    receiver.request_ack()  # as the Link does when our HELLO arrives
    first_ack = receiver.ack_due(0.0)
    assert first_ack is not None
    assert first_ack.chain == ZERO_HASH
    assert isinstance(out.on_ack(first_ack, 0.1), Fork)


def test_rejoined_receiver_ack_is_ignored_end_to_end() -> None:
    inc = IncomingStream(BOB.public, ALICE.public, ROUTINE, None, at(0))
    inc.join(EPOCH, 4)  # the sender's HELLO said its lane starts at 4
    first = inc.ack_due(0.0)
    assert first is not None
    assert (first.upto, first.chain) == (3, ZERO_HASH)
    out = OutgoingStream(EPOCH, ROUTINE, acked=at(3), head=6, loaded=MSGS[3:6])
    assert out.on_ack(first, 0.1) is None
    assert out.on_hello(inc.position(), 0.1) is None
    frames = out.frames_to_send(0.1)
    assert [a.seq for a in give_all(inc, frames)] == [4, 5, 6]
    inc.on_committed(EPOCH, 6)
    second = inc.ack_due(0.2)
    assert second is not None
    assert out.on_ack(second, 0.2) == Advanced(6, chain(6))


# --- OutgoingStream: the backlog window (bounded by disk, not memory) ---------------------


def test_push_beyond_the_memory_limit_stays_on_disk() -> None:
    out = outgoing(10, max_in_flight=2, memory_limit=4)
    assert (out.head, out.loaded_upto, out.in_memory, out.backlog) == (10, 4, 4, 10)
    assert out.read_wanted() is None  # memory more than half full
    assert seqs(out.frames_to_send(0.0)) == [1, 2]
    out.on_ack(ack(2), 0.1)
    assert seqs(out.frames_to_send(0.1)) == [3, 4]
    assert out.frames_to_send(0.1) == []  # 5.. are on disk only
    wanted = out.read_wanted()
    assert wanted == (4, 2)
    assert out.read_wanted() is None  # one read at a time
    out.push(MSGS[10])  # while behind: stays on disk even with room
    assert (out.head, out.loaded_upto) == (11, 4)
    out.on_read(MSGS[4:6])
    assert (out.loaded_upto, out.in_memory) == (6, 4)
    out.on_ack(ack(4), 0.2)
    assert seqs(out.frames_to_send(0.2)) == [5, 6]


def test_read_answers_are_checked_and_stale_rows_skipped() -> None:
    out = outgoing(6, memory_limit=4, max_in_flight=4)
    out.frames_to_send(0.0)
    out.on_ack(ack(3), 0.1)
    assert out.read_wanted() == (4, 3)
    out.on_read(MSGS[2:6])  # rows it already holds (3, 4) are skipped
    assert out.loaded_upto == 6
    out.on_ack(ack(6), 0.2)
    out.push(MSGS[6])
    out.push(MSGS[7])
    assert out.in_memory == 2
    assert out.read_wanted() is None  # everything stored is loaded
    out = outgoing(6, memory_limit=2, max_in_flight=2)
    out.frames_to_send(0.0)
    out.on_ack(ack(2), 0.1)
    assert out.read_wanted() == (2, 2)
    with pytest.raises(LocalProtocolError):  # a hole in the answer is our bug
        out.on_read([MSGS[3]])


def test_memory_bytes_limit_on_push() -> None:
    size = len(MSGS[0].raw)
    out = outgoing(10, memory_bytes=3 * size + size // 2)
    assert out.loaded_upto == 3
    assert out.in_memory == 3


def synthetic(seq: int, size: int) -> OutRecord:
    """A record of ``size`` bytes whose raw starts with its seq (the sender never parses it)."""
    raw = seq.to_bytes(8, "big") + bytes(size - 8)
    return OutRecord(EPOCH, ROUTINE, seq, raw, b"s" * 64, seq.to_bytes(32, "big"))


@pytest.mark.parametrize(("size", "memory_bytes"), [
    pytest.param(32, 1 << 20, id="count-bound"),
    pytest.param(1024, 64 * 1024, id="bytes-bound"),
])
def test_memory_stays_bounded_through_100000_messages(size: int, memory_bytes: int) -> None:
    """A producer pushes 100,000 messages (each durable first: ``disk``) while the
    receiver acknowledges what was sent; the sender refills from ``disk`` when asked.
    Memory never holds more than ``memory_limit`` messages or ``memory_bytes`` bytes."""
    total, memory_limit = 100_000, 256
    disk: list[OutRecord] = []
    out = OutgoingStream(EPOCH, ROUTINE, acked=Position(0, ZERO_HASH), head=0,
                         max_in_flight=64, memory_limit=memory_limit,
                         memory_bytes=memory_bytes)
    peak, now = 0, 0.0
    while out.acked_upto < total:
        for _ in range(min(1000, total - len(disk))):
            disk.append(synthetic(len(disk) + 1, size))
            out.push(disk[-1])
        wanted = out.read_wanted()
        if wanted is not None:
            after, limit = wanted
            out.on_read(disk[after:after + limit])
        peak = max(peak, out.in_memory)
        assert out.in_memory <= memory_limit
        assert out.in_memory * size <= memory_bytes
        frames = out.frames_to_send(now)
        if frames:
            last = int.from_bytes(frames[-1].raw[:8], "big")
            assert out.on_ack(Ack(EPOCH, ROUTINE, last, disk[last - 1].chain, (), WINDOW),
                              now) == Advanced(last, disk[last - 1].chain)
        now += 0.001
    assert (out.backlog, out.in_memory, out.in_flight) == (0, 0, 0)
    assert out.read_wanted() is None
    assert peak > 0


def test_resume_window_beyond_the_memory_bytes_is_not_all_kept() -> None:
    """Start-up hands over the first ``window`` unacked records (a count); the stream
    keeps no more of them than its byte limit allows and reads the rest later."""
    loaded = [synthetic(seq, 1024) for seq in range(1, 101)]
    out = OutgoingStream(EPOCH, ROUTINE, acked=Position(0, ZERO_HASH), head=100,
                         loaded=loaded, memory_bytes=16 * 1024)
    assert out.in_memory * 1024 <= 16 * 1024


# --- IncomingStream ---------------------------------------------------------------------


def incoming(epoch: bytes | None = EPOCH, position: Position | None = None,
             **kw: int) -> IncomingStream:
    return IncomingStream(BOB.public, ALICE.public, ROUTINE, epoch, position or at(0), **kw)


def give(inc: IncomingStream, data: Data, now: float = 0.0) -> list[Accepted]:
    """One DATA frame as the Link hands it over: its envelope decoded first."""
    return inc.on_data_untrusted(data, decode_envelope_untrusted(data.raw, MAX_MESSAGE), now)


def give_all(inc: IncomingStream, frames: Sequence[Data]) -> list[Accepted]:
    return [a for frame in frames for a in give(inc, frame)]


def accepted_seqs(res: Sequence[Accepted]) -> list[int]:
    return [a.seq for a in res]


def test_in_order_accept_and_ack_only_committed() -> None:
    inc = incoming()
    res = give(inc, DATA[0])
    assert accepted_seqs(res) == [1]
    assert (res[0].epoch, res[0].lane, res[0].raw, res[0].sig) == (
        EPOCH, ROUTINE, DATA[0].raw, DATA[0].sig)
    assert res[0].envelope.body == b"message 1"
    assert res[0].chain == chain(1)
    assert inc.ack_due(0.0) is None  # accepted but not committed: nothing to ack yet
    assert inc.position() == at(0)
    inc.on_committed(EPOCH, 1)
    assert inc.ack_due(0.0) == Ack(EPOCH, ROUTINE, 1, chain(1), (), WINDOW)
    assert inc.ack_due(0.0) is None  # coalesced
    assert (inc.position(), inc.committed_upto, inc.expected_seq) == (at(1), 1, 2)
    with pytest.raises(LocalProtocolError):
        inc.on_committed(EPOCH, 2)
    inc.on_committed(EPOCH2, 5)  # another epoch's commit: ignored
    assert inc.committed_upto == 1


def test_acks_name_their_lane_and_committed_chain() -> None:
    flash = seal(3, lane=FLASH)
    inc = IncomingStream(BOB.public, ALICE.public, FLASH, EPOCH, Position(0, ZERO_HASH))
    assert accepted_seqs(give_all(inc, [Data(r.raw, r.sig) for r in flash])) == [1, 2, 3]
    inc.on_committed(EPOCH, 2)  # a partial commit: the ack says 2, with 2's chain
    assert inc.ack_due(0.0) == Ack(EPOCH, FLASH, 2, flash[1].chain, (), WINDOW)


def test_duplicates_are_reacked_not_redelivered() -> None:
    inc = incoming()
    give(inc, DATA[0])
    inc.on_committed(EPOCH, 1)
    inc.ack_due(0.0)
    assert give(inc, DATA[0], 0.1) == []
    assert inc.duplicates == 1
    assert inc.ack_due(0.1) == Ack(EPOCH, ROUTINE, 1, chain(1), (), WINDOW)


def test_reorder_buffer_ranges_and_drain() -> None:
    inc = incoming()
    for i in (2, 3, 5, 7, 8, 9):
        assert give(inc, DATA[i - 1]) == []
    assert give(inc, DATA[2]) == []  # duplicate in the buffer
    assert inc.buffered == 6
    got = inc.ack_due(0.0)
    assert got is not None
    assert (got.upto, got.ranges) == (0, ((2, 3), (5, 5), (7, 9)))
    assert accepted_seqs(give(inc, DATA[0])) == [1, 2, 3]
    assert accepted_seqs(give(inc, DATA[3])) == [4, 5]
    inc.on_committed(EPOCH, 5)
    assert inc.ack_due(0.0) == Ack(EPOCH, ROUTINE, 5, chain(5), ((7, 9),), WINDOW)


def test_ranges_are_capped() -> None:
    long = seal(70)
    inc = incoming()
    for record in long[1:68:2]:  # seqs 2, 4, … 68: 34 separate runs
        assert give(inc, Data(record.raw, record.sig)) == []
    got = inc.ack_due(0.0)
    assert got is not None
    assert len(got.ranges) == 32  # MAX_RANGES: the lowest 31, which matter first,
    assert (got.ranges[0], got.ranges[-2]) == ((2, 2), (62, 62))
    assert got.ranges[-1] == (68, 68)  # and the newest arrival (for loss detection)


def test_reorder_limit_and_byte_cap() -> None:
    inc = incoming(reorder_limit=4)
    assert give(inc, DATA[4]) == []  # seq 5 = expected + 4: dropped
    assert (inc.overflows, inc.buffered) == (1, 0)
    assert give(inc, DATA[3]) == []
    assert inc.buffered == 1
    assert inc.ack_due(0.0) == Ack(EPOCH, ROUTINE, 0, ZERO_HASH, ((4, 4),), 4)
    inc = incoming(max_buffered_bytes=len(DATA[1].raw))
    give(inc, DATA[1])
    give(inc, DATA[2])
    assert (inc.buffered, inc.overflows) == (1, 1)
    assert accepted_seqs(give(inc, DATA[0])) == [1, 2]


def test_refusals() -> None:
    inc = incoming()
    wrong_to = seal(1, recipient=ALICE)[0]
    with pytest.raises(AuthenticationError):
        give(inc, Data(wrong_to.raw, wrong_to.sig))
    forged = seal(1, sender=BOB, recipient=BOB)[0]
    with pytest.raises(AuthenticationError):
        give(inc, Data(forged.raw, forged.sig))
    with pytest.raises(AuthenticationError):
        give(inc, Data(DATA[0].raw, DATA[1].sig))
    other = seal(1, epoch=EPOCH2)[0]
    with pytest.raises(ReplayError):
        give(inc, Data(other.raw, other.sig))
    unchained = seal(1, prev=b"\x07" * 32)[0]
    with pytest.raises(AuthenticationError, match="does not chain"):
        give(inc, Data(unchained.raw, unchained.sig))
    badly_signed_later = Data(DATA[5].raw, DATA[4].sig)
    with pytest.raises(AuthenticationError):  # verified before it is buffered
        give(inc, badly_signed_later)
    assert (inc.expected_seq, inc.buffered) == (1, 0)
    assert accepted_seqs(give(inc, DATA[0])) == [1]


def test_forked_buffered_message_is_dropped_on_drain() -> None:
    inc = incoming()
    fork = seal(1, after=1, prev=b"\x07" * 32)[0]
    give(inc, Data(fork.raw, fork.sig))
    assert accepted_seqs(give(inc, DATA[0])) == [1]
    assert inc.buffered == 0
    assert accepted_seqs(give(inc, DATA[1])) == [2]


def test_join_a_new_epoch() -> None:
    inc = incoming(EPOCH, at(3))
    assert accepted_seqs(give(inc, DATA[3])) == [4]
    fresh = seal(2, epoch=EPOCH2)
    with pytest.raises(ReplayError):
        give(inc, Data(fresh[0].raw, fresh[0].sig))
    inc.join(EPOCH2, 1)
    assert (inc.epoch, inc.position(), inc.expected_seq) == (EPOCH2, Position(0, ZERO_HASH), 1)
    assert inc.ack_due(0.0) == Ack(EPOCH2, ROUTINE, 0, ZERO_HASH, (), WINDOW)
    inc.on_committed(EPOCH, 4)  # late commit of the old epoch: ignored
    assert accepted_seqs(give(inc, Data(fresh[0].raw, fresh[0].sig))) == [1]
    with pytest.raises(ReplayError):
        give(inc, DATA[4])
    # Seq 1 of an epoch must chain from the zero hash.
    inc = incoming(None)
    inc.join(EPOCH, 1)
    unchained = seal(1, prev=b"\x07" * 32)[0]
    with pytest.raises(AuthenticationError):
        give(inc, Data(unchained.raw, unchained.sig))


def test_joining_mid_stream_trusts_the_first_prev() -> None:
    inc = incoming(None)
    with pytest.raises(ReplayError):
        give(inc, DATA[0])  # no HELLO yet: epoch unknown
    assert inc.ack_due(0.0) is None
    inc.join(EPOCH, 5)
    assert give(inc, DATA[3]) == []  # below where the sender starts: a duplicate
    assert accepted_seqs(give(inc, DATA[4])) == [5]
    inc.on_committed(EPOCH, 5)
    assert inc.position() == at(5)  # the chain is known from its first message on
    unchained = seal(1, after=5, prev=b"\x07" * 32)[0]
    with pytest.raises(AuthenticationError):
        give(inc, Data(unchained.raw, unchained.sig))


def test_rejoin_above_expected_reports_the_gap() -> None:
    inc = incoming(EPOCH, at(3))
    give(inc, DATA[5])  # buffered; forgotten by the rejoin
    assert inc.rejoin(2) is None
    assert inc.rejoin(4) is None  # exactly what we expect: no gap
    assert inc.rejoin(7) == Gap(EPOCH, ROUTINE, 4, 6)
    assert (inc.expected_seq, inc.committed_upto, inc.buffered) == (7, 6, 0)
    assert inc.position() == Position(6, ZERO_HASH)  # we never held 6's bytes
    assert inc.receipt_due(10.0) is None  # nothing to sign with a zero chain
    assert give(inc, DATA[4]) == []  # inside the gap: below expected
    assert accepted_seqs(give(inc, DATA[6])) == [7]  # its prev is trusted
    inc.on_committed(EPOCH, 7)
    assert inc.position() == at(7)
    assert inc.receipt_due(10.0) == (7, chain(7))
    assert incoming(None).rejoin(5) is None  # no epoch yet: nothing to rejoin


def test_rejoin_drops_what_was_accepted_but_not_committed() -> None:
    inc = incoming()
    give_all(inc, DATA[:3])
    inc.on_committed(EPOCH, 1)
    assert inc.rejoin(6) == Gap(EPOCH, ROUTINE, 4, 5)
    inc.on_committed(EPOCH, 3)  # the old batch's commit lands later: already covered
    assert inc.committed_upto == 5


def test_rollback_after_a_failed_commit() -> None:
    inc = incoming()
    give_all(inc, DATA[:3])
    inc.on_committed(EPOCH, 1)
    inc.ack_due(0.0)
    inc.rollback()  # the commit of 2..3 failed: the peer resends them
    assert (inc.expected_seq, inc.committed_upto) == (2, 1)
    with pytest.raises(LocalProtocolError):
        inc.on_committed(EPOCH, 3)
    assert inc.ack_due(0.0) is None
    assert accepted_seqs(give_all(inc, DATA[1:4])) == [2, 3, 4]  # again, not duplicates
    inc.on_committed(EPOCH, 4)
    assert inc.ack_due(0.0) == Ack(EPOCH, ROUTINE, 4, chain(4), (), WINDOW)
    inc.rollback()  # nothing pending: nothing changes
    assert inc.expected_seq == 5


def test_rollback_after_rejoin_trusts_the_next_prev_again() -> None:
    inc = incoming()
    inc.rejoin(5)
    give(inc, DATA[4])
    inc.rollback()
    assert inc.expected_seq == 5
    assert accepted_seqs(give(inc, DATA[4])) == [5]


def test_receipt_pacing() -> None:
    inc = incoming()
    assert inc.receipt_due(0.0) is None
    give_all(inc, DATA[:2])
    assert inc.receipt_due(0.0) is None  # nothing committed
    inc.on_committed(EPOCH, 2)
    assert inc.receipt_due(0.0) == (2, chain(2))
    assert inc.receipt_due(5.0) is None  # no advance
    give(inc, DATA[2])
    inc.on_committed(EPOCH, 3)
    assert inc.receipt_due(5.5) == (3, chain(3))
    give(inc, DATA[3])
    inc.on_committed(EPOCH, 4)
    assert inc.receipt_due(6.0) is None  # too soon
    assert inc.receipt_due(6.5, receipt_every=1.0) == (4, chain(4))


# --- fuzz: only RemoteProtocolError escapes -----------------------------------------------


@settings(max_examples=200)
@given(st.binary(max_size=400), st.binary(min_size=64, max_size=64))
def test_fuzz_random_data(raw: bytes, sig: bytes) -> None:
    inc = incoming()
    with contextlib.suppress(RemoteProtocolError):
        assert give(inc, Data(raw or b"x", sig)) == []


@settings(max_examples=300)
@given(st.integers(0, 5), st.data())
def test_fuzz_mutated_envelopes(index: int, data: st.DataObject) -> None:
    raw = bytearray(DATA[index].raw)
    sig = bytearray(DATA[index].sig)
    target = data.draw(st.sampled_from(["raw", "sig", "both"]))
    for buf in [raw, sig] if target == "both" else [raw if target == "raw" else sig]:
        for _ in range(data.draw(st.integers(1, 3))):
            pos = data.draw(st.integers(0, len(buf) - 1))
            buf[pos] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(1, len(raw))):]
    inc = incoming(EPOCH, at(index))
    try:
        got = give(inc, Data(bytes(raw) or b"x", bytes(sig)))
    except RemoteProtocolError:
        return
    # Only the unchanged envelope (the mutations cancelled out) is accepted.
    assert (bytes(raw), bytes(sig)) == (DATA[index].raw, DATA[index].sig)
    assert accepted_seqs(got) == [index + 1]


_deliveries = st.lists(st.one_of(
    st.tuples(st.just("data"), st.integers(1, 12)),
    st.tuples(st.just("forged"), st.integers(1, 12)),
    st.tuples(st.just("commit"), st.integers(0, 12)),
    st.just(("rollback", 0)),
), max_size=60)


@settings(max_examples=150, deadline=None)
@given(_deliveries)
def test_fuzz_receiver_delivers_exactly_once_in_order(ops: list[tuple[str, int]]) -> None:
    """Any order, duplication, forgery, partial commits and failed commits: what is
    committed is exactly 1..k in order, and every ACK names a committed seq and its chain."""
    inc = incoming(reorder_limit=6)
    pending: list[int] = []
    committed: list[int] = []
    for op, n in ops:
        if op == "data":
            pending += accepted_seqs(give(inc, DATA[n - 1]))
        elif op == "forged":
            with contextlib.suppress(RemoteProtocolError):
                give(inc, Data(DATA[n - 1].raw, DATA[n % 12].sig))
        elif op == "commit" and pending:
            upto = pending[min(n, len(pending) - 1)]
            inc.on_committed(EPOCH, upto)
            committed += pending[:pending.index(upto) + 1]
            pending = pending[pending.index(upto) + 1:]
        elif op == "rollback":
            inc.rollback()
            pending = []
        assert committed == list(range(1, len(committed) + 1))
        assert pending == list(range(len(committed) + 1, len(committed) + len(pending) + 1))
        got = inc.ack_due(0.0)
        if got is not None:
            assert (got.upto, got.chain) == (len(committed), chain(len(committed)))
            assert all(got.upto + 1 < lo <= hi for lo, hi in got.ranges)


_acks = st.lists(st.one_of(
    st.tuples(st.just("ack"), st.integers(0, 14), st.sampled_from(["ours", "other", "zero"]),
              st.integers(0, 14), st.integers(0, 64)),
    st.tuples(st.just("hello"), st.integers(0, 14), st.sampled_from(["ours", "other", "zero"]),
              st.just(0), st.just(0)),
    st.tuples(st.just("chain"), st.integers(0, 14), st.just("ours"), st.just(0), st.just(0)),
    st.tuples(st.just("timer"), st.integers(0, 20), st.just("ours"), st.just(0), st.just(0)),
    st.tuples(st.just("path"), st.just(0), st.just("ours"), st.just(0), st.just(0)),
    st.tuples(st.just("push"), st.integers(1, 3), st.just("ours"), st.just(0), st.just(0)),
), max_size=60)


@settings(max_examples=200, deadline=None)
@given(_acks)
def test_fuzz_sender_frees_only_what_the_peer_holds(
        ops: list[tuple[str, int, str, int, int]]) -> None:
    """Whatever ACKs, HELLOs and chain answers arrive: the cumulative ack moves only to a
    seq we stored and whose chain the peer named exactly; a Fork frees nothing; memory
    holds exactly the unacked loaded seqs; every DATA sent is an unacked stored one."""
    out = OutgoingStream(EPOCH, ROUTINE, acked=at(0), head=4, loaded=MSGS[:2],
                         max_in_flight=3, memory_limit=3)
    now = 0.0
    for op, n, kind, span, window in ops:
        before = out.acked_upto
        named = {"ours": chain(n), "other": b"\x09" * 32, "zero": ZERO_HASH}[kind]
        outcome: object = None
        if op == "ack":
            ranges = ((n + 1, n + 1 + span),) if span else ()
            outcome = out.on_ack(Ack(EPOCH, ROUTINE, n, named, ranges, window), now)
        elif op == "hello":
            outcome = out.on_hello(Position(n, named), now)
        elif op == "chain":  # the store answers with what it holds
            outcome = out.on_chain(n, chain(n) if n <= out.head else None)
        elif op == "timer":
            now += n / 4
            out.handle_timer(now)
        elif op == "path":
            out.on_path_change(now)
        elif out.head + n <= len(MSGS):
            for record in MSGS[out.head:out.head + n]:
                out.push(record)
        wanted = out.read_wanted()
        if wanted is not None:
            out.on_read(MSGS[wanted[0]:min(wanted[0] + wanted[1], out.head)])
        if isinstance(outcome, Advanced):
            assert outcome.chain == chain(outcome.upto)
            assert outcome.upto <= out.head
        if not isinstance(outcome, Advanced):
            assert out.acked_upto == before
        assert out.acked_chain == chain(out.acked_upto)
        assert out.in_memory == out.loaded_upto - out.acked_upto <= out.memory_limit
        for seq in seqs(out.frames_to_send(now)):
            assert out.acked_upto < seq <= out.loaded_upto
