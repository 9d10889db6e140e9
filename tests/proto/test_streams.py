"""OutgoingStream / IncomingStream: timers, acks, windows, ordering, and fuzzing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.errors import (
    AuthenticationError,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayError,
)
from hotline.proto.envelope import ZERO_HASH, chain_hash, encode_envelope, sign_envelope
from hotline.proto.frames import Ack, Data, Hello
from hotline.proto.identity import Identity
from hotline.proto.incoming import IncomingStream, NewEpoch
from hotline.proto.outgoing import INITIAL_RTO, MAX_RTO, MIN_RTO, OutgoingStream

ALICE = Identity.from_seed(b"\x01" * 32)
BOB = Identity.from_seed(b"\x02" * 32)
EPOCH = b"\xee" * 16
EPOCH2 = b"\xdd" * 16


def make_stream(
    n: int, *, epoch: bytes = EPOCH, first: int = 1, prev: bytes = ZERO_HASH,
    sender: Identity = ALICE, recipient: Identity = BOB,
) -> list[Data]:
    """n signed, chained envelopes from sender to recipient, seqs first..first+n-1."""
    out = []
    for seq in range(first, first + n):
        raw = encode_envelope(
            epoch, sender.public.raw, recipient.public.raw, seq, 10**18 + seq, prev,
            "text/plain", f"message {seq}".encode(),
        )
        out.append(Data(raw, sign_envelope(sender, raw)))
        prev = chain_hash(raw)
    return out


MSGS = make_stream(40)


def outgoing(n: int = 0, **kw: int) -> OutgoingStream:
    out = OutgoingStream(EPOCH, 0, [], **kw)
    for seq, d in enumerate(MSGS[:n], 1):
        out.push(seq, d.raw, d.sig)
    return out


def seqs(frames: list[Data]) -> list[int]:
    return [MSGS.index(f) + 1 for f in frames]


def ack(upto: int, ranges: tuple[tuple[int, int], ...] = (), window: int = 4096) -> Ack:
    return Ack(EPOCH, upto, ranges, window)


# --- OutgoingStream -------------------------------------------------------------------


def test_push_must_be_contiguous() -> None:
    out = outgoing(2)
    with pytest.raises(LocalProtocolError):
        out.push(4, MSGS[3].raw, MSGS[3].sig)
    with pytest.raises(LocalProtocolError):
        OutgoingStream(EPOCH, 5, [(7, b"x", b"y")])


def test_sends_new_once_in_order_and_frees_on_cumulative_ack() -> None:
    out = outgoing(5)
    assert out.base_seq() == 1
    assert seqs(out.frames_to_send(0.0, 3)) == [1, 2, 3]
    assert seqs(out.frames_to_send(0.0)) == [4, 5]
    assert out.frames_to_send(0.0) == []
    assert out.in_flight == 5
    assert out.on_ack(ack(3), 0.1) == 3
    assert out.on_ack(ack(3), 0.1) is None  # not an advance
    assert out.on_ack(ack(2), 0.1) is None  # stale
    assert out.on_ack(Ack(EPOCH2, 5, (), 10), 0.1) is None  # another epoch
    assert (out.backlog, out.in_flight, out.base_seq()) == (2, 2, 4)
    assert out.on_ack(ack(99), 0.2) == 5  # clamped to what exists
    assert out.backlog == 0
    assert out.get_timer() is None


def test_retransmission_timer_and_backoff() -> None:
    out = outgoing(2)
    out.frames_to_send(0.0)
    assert out.get_timer() == INITIAL_RTO
    out.handle_timer(0.5)
    assert out.frames_to_send(0.5) == []
    out.handle_timer(1.0)
    assert out.rto == 2 * INITIAL_RTO
    assert seqs(out.frames_to_send(1.0)) == [1, 2]
    assert out.get_timer() == 3.0
    for t in (3.0, 7.0, 15.0, 25.0):
        out.handle_timer(t)
        assert seqs(out.frames_to_send(t)) == [1, 2]
    assert out.rto == MAX_RTO
    # Karn: an ack of a retransmitted message gives no sample, so the backoff stays
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


def test_selective_ranges_suppress_retransmission() -> None:
    out = outgoing(6)
    out.frames_to_send(0.0)
    assert out.on_ack(ack(1, ((3, 4), (6, 6))), 0.1) == 1
    assert out.in_flight == 2  # 2 and 5
    out.handle_timer(0.1 + out.rto)
    assert seqs(out.frames_to_send(5.0)) == [2, 5]
    assert out.backlog == 5  # held messages are not freed
    assert out.on_ack(ack(6), 5.1) == 6
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
    out = outgoing(10, max_in_flight=4)
    assert seqs(out.frames_to_send(0.0)) == [1, 2, 3, 4]
    assert not out.has_due()
    out.on_ack(ack(1, ((3, 3),)), 0.1)
    assert seqs(out.frames_to_send(0.1)) == [5, 6]


def test_path_change_makes_everything_due() -> None:
    out = outgoing(4)
    out.frames_to_send(0.0)
    out.on_ack(ack(0, ((2, 2),)), 0.1)
    out.on_path_change(0.2)
    assert seqs(out.frames_to_send(0.2)) == [1, 3, 4]


def test_hello_acks_and_resends() -> None:
    out = outgoing(5)
    out.frames_to_send(0.0)
    out.on_ack(ack(0, ((4, 4),)), 0.1)
    assert out.on_hello(Hello(EPOCH2, 1, EPOCH, 2), 0.5) == 2
    assert seqs(out.frames_to_send(0.5)) == [3, 4, 5]  # the hold on 4 is forgotten
    assert out.on_hello(Hello(EPOCH2, 1, EPOCH2, 5), 0.6) is None  # not our epoch
    assert out.on_hello(Hello(EPOCH2, 1, None, 0), 0.6) is None


def test_resume_from_store() -> None:
    unacked = [(s, d.raw, d.sig) for s, d in enumerate(MSGS[:6], 1)][3:]
    out = OutgoingStream(EPOCH, 3, unacked)
    assert (out.base_seq(), out.next_seq, out.backlog) == (4, 7, 3)
    assert out.on_hello(Hello(EPOCH2, 1, EPOCH, 4), 0.0) == 4
    assert seqs(out.frames_to_send(0.0)) == [5, 6]
    out.push(7, MSGS[6].raw, MSGS[6].sig)
    assert seqs(out.frames_to_send(0.0)) == [7]


# --- IncomingStream -------------------------------------------------------------------


def incoming(state: tuple[bytes, int, bytes] | None = (EPOCH, 0, ZERO_HASH), **kw: int):
    return IncomingStream(BOB.public, ALICE.public, state, **kw)


def accepted_seqs(res: list) -> list[int]:
    return [a.seq for a in res]


def test_in_order_accept_and_ack_only_committed() -> None:
    inc = incoming()
    res = inc.on_data_untrusted(MSGS[0], 0.0)
    assert accepted_seqs(res) == [1]
    assert res[0].envelope.body == b"message 1"
    assert res[0].chain == chain_hash(MSGS[0].raw)
    assert inc.ack_due(0.0) is None  # accepted but not committed: nothing to ack yet
    inc.on_committed(EPOCH, 1, 0.0)
    got = inc.ack_due(0.0)
    assert got == Ack(EPOCH, 1, (), 4096)
    assert inc.ack_due(0.0) is None  # coalesced
    assert inc.position() == (EPOCH, 1)
    with pytest.raises(LocalProtocolError):
        inc.on_committed(EPOCH, 2, 0.0)


def test_duplicates_are_reacked_not_redelivered() -> None:
    inc = incoming()
    inc.on_data_untrusted(MSGS[0], 0.0)
    inc.on_committed(EPOCH, 1, 0.0)
    inc.ack_due(0.0)
    assert inc.on_data_untrusted(MSGS[0], 0.1) == []
    assert inc.duplicates == 1
    assert inc.ack_due(0.1) == Ack(EPOCH, 1, (), 4096)


def test_reorder_buffer_ranges_and_drain() -> None:
    inc = incoming()
    for i in (2, 3, 5, 7, 8, 9):
        assert inc.on_data_untrusted(MSGS[i - 1], 0.0) == []
    assert inc.on_data_untrusted(MSGS[2], 0.0) == []  # duplicate in buffer
    got = inc.ack_due(0.0)
    assert got is not None
    assert got.ranges == ((2, 3), (5, 5), (7, 9))
    assert accepted_seqs(inc.on_data_untrusted(MSGS[0], 0.0)) == [1, 2, 3]
    assert accepted_seqs(inc.on_data_untrusted(MSGS[3], 0.0)) == [4, 5]
    inc.on_committed(EPOCH, 5, 0.0)
    assert inc.ack_due(0.0) == Ack(EPOCH, 5, ((7, 9),), 4096)


def test_reorder_limit_and_byte_cap() -> None:
    inc = incoming(reorder_limit=4)
    assert inc.on_data_untrusted(MSGS[4], 0.0) == []  # seq 5 = expected + 4: dropped
    assert (inc.overflows, inc.buffered) == (1, 0)
    assert inc.on_data_untrusted(MSGS[3], 0.0) == []
    assert inc.buffered == 1
    inc = incoming(max_buffered_bytes=len(MSGS[1].raw))
    inc.on_data_untrusted(MSGS[1], 0.0)
    inc.on_data_untrusted(MSGS[2], 0.0)
    assert (inc.buffered, inc.overflows) == (1, 1)
    assert accepted_seqs(inc.on_data_untrusted(MSGS[0], 0.0)) == [1, 2]


def test_refusals() -> None:
    inc = incoming()
    wrong_to = make_stream(1, recipient=ALICE)[0]
    with pytest.raises(AuthenticationError):
        inc.on_data_untrusted(wrong_to, 0.0)
    forged = make_stream(1, sender=BOB, recipient=BOB)[0]
    with pytest.raises(AuthenticationError):
        inc.on_data_untrusted(forged, 0.0)
    with pytest.raises(AuthenticationError):
        inc.on_data_untrusted(Data(MSGS[0].raw, MSGS[1].sig), 0.0)
    with pytest.raises(ReplayError):
        inc.on_data_untrusted(make_stream(1, epoch=EPOCH2)[0], 0.0)
    unchained = make_stream(1, prev=b"\x07" * 32)[0]
    with pytest.raises(AuthenticationError):
        inc.on_data_untrusted(unchained, 0.0)
    assert inc.expected_seq == 1
    assert accepted_seqs(inc.on_data_untrusted(MSGS[0], 0.0)) == [1]


def test_forked_buffered_message_is_dropped_on_drain() -> None:
    inc = incoming()
    fork = make_stream(1, first=2, prev=b"\x07" * 32)[0]
    inc.on_data_untrusted(fork, 0.0)
    assert accepted_seqs(inc.on_data_untrusted(MSGS[0], 0.0)) == [1]
    assert inc.chain_breaks == 1
    assert accepted_seqs(inc.on_data_untrusted(MSGS[1], 0.0)) == [2]


def test_new_epoch_from_hello() -> None:
    inc = incoming((EPOCH, 3, chain_hash(MSGS[2].raw)))
    assert inc.on_hello(Hello(EPOCH, 1, None, 0)) is None
    assert accepted_seqs(inc.on_data_untrusted(MSGS[3], 0.0)) == [4]
    fresh = make_stream(2, epoch=EPOCH2)
    with pytest.raises(ReplayError):
        inc.on_data_untrusted(fresh[0], 0.0)
    assert inc.on_hello(Hello(EPOCH2, 1, None, 0)) == NewEpoch(EPOCH, EPOCH2, 1)
    assert inc.position() == (EPOCH2, 0)
    inc.on_committed(EPOCH, 4, 0.0)  # late commit of the old epoch: ignored
    assert accepted_seqs(inc.on_data_untrusted(fresh[0], 0.0)) == [1]
    assert inc.on_hello(Hello(EPOCH, 4, None, 0)) is None  # the old epoch never returns
    with pytest.raises(ReplayError):
        inc.on_data_untrusted(MSGS[4], 0.0)
    # epoch 1 of a fresh stream must start from the zero hash
    inc = incoming(None)
    inc.on_hello(Hello(EPOCH, 1, None, 0))
    with pytest.raises(AuthenticationError):
        inc.on_data_untrusted(make_stream(1, prev=b"\x07" * 32)[0], 0.0)


def test_joining_mid_stream_trusts_first_prev() -> None:
    inc = incoming(None)
    with pytest.raises(ReplayError):
        inc.on_data_untrusted(MSGS[0], 0.0)  # no HELLO yet: epoch unknown
    assert inc.ack_due(0.0) is None
    assert inc.on_hello(Hello(EPOCH, 5, None, 0)) == NewEpoch(None, EPOCH, 5)
    assert inc.on_data_untrusted(MSGS[3], 0.0) == []
    assert accepted_seqs(inc.on_data_untrusted(MSGS[4], 0.0)) == [5]


def test_receipt_pacing() -> None:
    inc = incoming()
    assert inc.receipt_due(0.0) is None
    inc.on_data_untrusted(MSGS[0], 0.0)
    inc.on_data_untrusted(MSGS[1], 0.0)
    assert inc.receipt_due(0.0) is None  # nothing committed
    inc.on_committed(EPOCH, 2, 0.0)
    assert inc.receipt_due(0.0) == (2, chain_hash(MSGS[1].raw))
    assert inc.receipt_due(5.0) is None  # no advance
    inc.on_data_untrusted(MSGS[2], 0.0)
    inc.on_committed(EPOCH, 3, 0.5)
    assert inc.receipt_due(0.5) is None  # too soon
    assert inc.receipt_due(1.0) == (3, chain_hash(MSGS[2].raw))


# --- fuzz: only RemoteProtocolError escapes -------------------------------------------


@settings(max_examples=200)
@given(st.binary(max_size=400), st.binary(min_size=64, max_size=64))
def test_fuzz_random_data(raw: bytes, sig: bytes) -> None:
    inc = incoming()
    with contextlib.suppress(RemoteProtocolError):
        assert inc.on_data_untrusted(Data(raw or b"x", sig), 0.0) == []


@settings(max_examples=300)
@given(st.integers(0, 5), st.data())
def test_fuzz_mutated_envelopes(index: int, data: st.DataObject) -> None:
    raw = bytearray(MSGS[index].raw)
    sig = bytearray(MSGS[index].sig)
    target = data.draw(st.sampled_from(["raw", "sig", "both"]))
    for buf in [raw, sig] if target == "both" else [raw if target == "raw" else sig]:
        for _ in range(data.draw(st.integers(1, 3))):
            pos = data.draw(st.integers(0, len(buf) - 1))
            buf[pos] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(1, len(raw))) :]
    inc = incoming()
    try:
        inc.on_data_untrusted(Data(bytes(raw) or b"x", bytes(sig)), 0.0)
    except RemoteProtocolError:
        return
    # Only an unchanged envelope (the mutations cancelled out) is accepted.
    assert (bytes(raw), bytes(sig)) == (MSGS[index].raw, MSGS[index].sig)
