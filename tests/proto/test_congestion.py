"""Congestion control, pacing and loss detection (congestion.py, recovery.py).

Unit tests drive each part by hand; ``Transfer`` then runs a message sender with
PathRecovery through the deterministic bottleneck model (hotline/testing/bottleneck.py)
in simulated time, so its throughput figures are exact and repeatable, not timings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.errors import LocalProtocolError
from hotline.proto.congestion import NewReno, Pacer
from hotline.proto.recovery import (
    GRANULARITY,
    INITIAL_RTT,
    LossDetector,
    PathRecovery,
    RttEstimator,
    SentPacket,
)
from hotline.testing.bottleneck import Bottleneck

MDS = 1000  # max datagram size of the unit tests


def packets(*sizes_and_times: tuple[int, float]) -> list[SentPacket]:
    return [SentPacket(i, size, t, (i,), retransmission=False)
            for i, (size, t) in enumerate(sizes_and_times)]


# --- NewReno ---------------------------------------------------------------------------


def test_initial_and_minimum_windows_follow_rfc9002() -> None:
    assert NewReno(1232).cwnd == 12320
    assert NewReno(1500).cwnd == 14720  # 10 x 1500 capped at 14,720
    assert NewReno(1232).minimum_window == 2464
    with pytest.raises(LocalProtocolError):
        NewReno(0)


def test_slow_start_doubles_the_window_per_round_trip() -> None:
    cc = NewReno(MDS)
    sent = packets(*[(MDS, 0.0)] * 10)
    for p in sent:
        cc.on_packet_sent(p.size, 0.0)
    assert not cc.can_send(1)
    assert cc.available_window() == 0
    cc.on_packets_acked(sent, 0.1)
    assert cc.cwnd == 20 * MDS
    assert cc.bytes_in_flight == 0
    assert cc.in_slow_start


def test_loss_halves_once_per_recovery_period_then_avoidance_adds_a_datagram() -> None:
    cc = NewReno(MDS)
    sent = packets(*[(MDS, 0.0)] * 10)
    for p in sent:
        cc.on_packet_sent(p.size, 0.0)
    cc.on_packets_lost(sent[:1], now=0.5)
    assert (cc.cwnd, cc.ssthresh) == (5 * MDS, 5 * MDS)
    cc.on_packets_lost(sent[1:2], now=0.6)  # sent before the period began: same event
    assert cc.cwnd == 5 * MDS
    cc.on_packets_acked(sent[2:], now=0.7)  # sent before recovery: no growth
    assert cc.cwnd == 5 * MDS
    assert not cc.in_slow_start

    later = [SentPacket(20 + i, MDS, 0.8, (20 + i,), retransmission=False) for i in range(5)]
    for p in later:
        cc.on_packet_sent(p.size, 0.8)
    cc.on_packets_acked(later, now=1.0)  # a whole window acked: +1 datagram
    assert cc.cwnd == 6 * MDS
    cc.on_packet_sent(MDS, 0.9)
    cc.on_packets_lost([SentPacket(30, MDS, 0.9, (30,), retransmission=False)], now=1.1)
    assert cc.cwnd == 3 * MDS  # sent after the first period began: a new event


def test_persistent_congestion_collapses_to_the_minimum_window() -> None:
    cc = NewReno(MDS)
    cc.on_persistent_congestion(1.0)
    assert cc.cwnd == cc.minimum_window == 2 * MDS


def test_window_does_not_grow_while_mostly_unused() -> None:
    cc = NewReno(MDS)
    for i in range(20):  # one packet at a time: never more than a tenth of the window
        (p,) = packets((MDS, float(i)))
        cc.on_packet_sent(p.size, float(i))
        cc.on_packets_acked([p], float(i) + 0.1)
    assert cc.cwnd == cc.initial_window


def test_more_bytes_leaving_flight_than_sent_is_our_bug() -> None:
    cc = NewReno(MDS)
    cc.on_packet_sent(100, 0.0)
    with pytest.raises(LocalProtocolError):
        cc.on_packets_acked(packets((200, 0.0)), 0.1)
    with pytest.raises(LocalProtocolError):
        cc.on_packet_sent(0, 0.0)


# --- pacing ----------------------------------------------------------------------------


def paced_send_times(cc: NewReno, count: int, now: float = 0.0) -> list[float]:
    """Send ``count`` packets as early as the pacer allows; their send times."""
    times = []
    for _ in range(count):
        wake = cc.next_send_time(now)
        now = now if wake is None else wake
        assert cc.next_send_time(now) is None
        cc.on_packet_sent(MDS, now)
        times.append(now)
    return times


def test_pacing_spreads_a_window_over_the_round_trip() -> None:
    srtt = 0.2
    cc = NewReno(MDS)
    cc.cwnd = 40 * MDS
    cc.on_rtt_sample(srtt, 0.0)  # slow start: 2 x cwnd / srtt = 400 kB/s
    times = paced_send_times(cc, 40)
    burst = 10  # a quarter of the window, at most 10 datagrams
    assert times[burst - 1] == 0.0
    assert times[burst] > 0.0
    gaps = [b - a for a, b in zip(times[burst:], times[burst + 1 :], strict=False)]
    assert min(gaps) == pytest.approx(MDS / (2 * 40 * MDS / srtt))
    assert times[-1] >= (40 - burst) * MDS / (2 * 40 * MDS / srtt) - 1e-9  # ~RTT/2 - burst

    cc = NewReno(MDS)  # congestion avoidance: 1.25 x cwnd / srtt, the window takes ~0.8 RTT
    cc.cwnd = cc.ssthresh = 40 * MDS
    cc.on_rtt_sample(srtt, 0.0)
    times = paced_send_times(cc, 40)
    assert times[-1] >= 0.6 * srtt


def test_without_an_rtt_the_window_alone_limits() -> None:
    cc = NewReno(MDS)
    assert cc.next_send_time(0.0) is None
    assert paced_send_times(cc, 10) == [0.0] * 10
    pacer = Pacer(MDS)
    pacer.on_packet_sent(MDS, 0.0)
    assert pacer.next_send_time(0.0) is None


def test_idle_time_refills_only_up_to_the_burst() -> None:
    cc = NewReno(MDS)
    cc.cwnd = 40 * MDS
    cc.on_rtt_sample(0.2, 0.0)
    paced_send_times(cc, 40)
    assert paced_send_times(cc, 11, now=100.0)[-1] > 100.0  # 10 at once, then paced


# --- RTT and loss detection ------------------------------------------------------------


def test_rtt_estimator_follows_rfc9002_section_5() -> None:
    rtt = RttEstimator()
    assert (rtt.smoothed, rtt.variance, rtt.first_sample_time) == (INITIAL_RTT, INITIAL_RTT / 2,
                                                                   None)
    rtt.on_sample(0.1, now=1.0)
    assert (rtt.smoothed, rtt.variance, rtt.minimum) == (0.1, 0.05, 0.1)
    rtt.on_sample(0.2, now=2.0, ack_delay=0.05)  # 0.2 >= min + delay: 0.15 counts
    assert rtt.smoothed == pytest.approx(0.875 * 0.1 + 0.125 * 0.15)
    assert rtt.variance == pytest.approx(0.75 * 0.05 + 0.25 * 0.05)
    assert rtt.loss_delay() == pytest.approx(9 / 8 * 0.2)  # max(smoothed, latest)
    assert rtt.probe_timeout(0.025) == pytest.approx(rtt.smoothed + 4 * rtt.variance + 0.025)
    tiny = RttEstimator()
    tiny.on_sample(0.0, now=0.0)
    assert tiny.loss_delay() == GRANULARITY


def sent_one_per_packet(detector: LossDetector, count: int, spacing: float = 0.01) -> None:
    for seq in range(1, count + 1):
        detector.on_packet_sent(MDS, [seq], (seq - 1) * spacing)


def test_packet_threshold_then_time_threshold_declare_losses() -> None:
    detector = LossDetector(RttEstimator(0.1))
    sent_one_per_packet(detector, 5, spacing=0.001)  # packets 0..4 carry seqs 1..5
    outcome = detector.on_ack(0, [(5, 5)], now=0.104)  # only the newest arrived
    assert [p.number for p in outcome.acked] == [4]
    assert outcome.rtt_sample == pytest.approx(0.1)
    assert [p.number for p in outcome.lost] == [0, 1]  # 3 or more packets older
    assert outcome.resend == (1, 2)
    for number in (2, 3):  # then each when 9/8 RTT old
        timer = detector.get_timer()
        assert timer is not None
        assert timer == pytest.approx(0.001 * number + 9 / 8 * 0.1)
        assert detector.handle_timer(timer - 0.0001).lost == ()
        late = detector.handle_timer(timer)
        assert [p.number for p in late.lost] == [number]
        assert late.resend == (number + 1,)
    assert detector.packets_in_flight == 0
    assert detector.get_timer() is None


def test_a_packet_is_acked_once_all_its_seqs_are() -> None:
    detector = LossDetector(RttEstimator(0.1))
    detector.on_packet_sent(3 * MDS, [1, 2, 3], 0.0)
    assert detector.on_ack(1, [(3, 3)], 0.1).acked == ()
    outcome = detector.on_ack(3, [], 0.12)
    assert [p.seqs for p in outcome.acked] == [(1, 2, 3)]
    assert outcome.rtt_sample == pytest.approx(0.12)


def test_retransmissions_give_no_rtt_sample_and_are_not_resent_twice() -> None:
    detector = LossDetector(RttEstimator(0.1))
    sent_one_per_packet(detector, 5)
    detector.on_packet_sent(MDS, [1], 0.05)  # seq 1 again (packet 5), before 0 is declared
    outcome = detector.on_ack(0, [(2, 5)], now=0.2)
    assert [p.number for p in outcome.lost] == [0]
    assert outcome.resend == ()  # packet 5 still carries seq 1
    outcome = detector.on_ack(5, [], now=0.3)
    assert [p.number for p in outcome.acked] == [5]
    assert outcome.rtt_sample is None  # Karn: which copy arrived?


def test_a_seq_acknowledged_then_sent_again_is_no_orphan_of_the_old_packet() -> None:
    """A peer that lost its store wants acknowledged seqs again: the packet that first
    carried one, declared lost later, must leave the new copy's carriers alone (the sim
    soak found it raising ValueError)."""
    detector = LossDetector(RttEstimator(0.1))
    detector.on_packet_sent(2 * MDS, [1, 2], 0.0)  # packet 0: seq 1 gets through, 2 not
    assert detector.on_ack(1, [], 0.1).acked == ()  # packet 0 still waits for seq 2
    for seq in (3, 4, 5):  # packets 1-3
        detector.on_packet_sent(MDS, [seq], 0.15)
    detector.on_packet_sent(MDS, [1], 0.2)  # packet 4: seq 1 again, for the wiped peer
    outcome = detector.on_ack(0, [(3, 5)], 0.25)  # not the new copy of seq 1 yet
    assert [p.number for p in outcome.lost] == [0]
    assert outcome.resend == (2,)  # seq 1 is carried by packet 4, not orphaned
    assert [p.number for p in detector.on_ack(1, [], 0.3).acked] == [4]  # as usual


def test_probe_timeout_fires_and_backs_off() -> None:
    rtt = RttEstimator(0.1)
    detector = LossDetector(rtt, max_ack_delay=0.025)
    assert detector.get_timer() is None
    detector.on_packet_sent(MDS, [1], 1.0)
    pto = rtt.probe_timeout(0.025)
    assert detector.get_timer() == pytest.approx(1.0 + pto)
    assert detector.handle_timer(1.0).probe is False
    fired = detector.handle_timer(1.0 + pto)
    assert fired.probe is True
    assert fired.resend == (1,)  # the probe carries the oldest message in flight
    # re-armed from the firing (where the probe leaves), with the backoff doubled
    assert detector.get_timer() == pytest.approx(1.0 + pto + 2 * pto)
    assert detector.on_ack(1, [], 1.5).acked
    assert detector.pto_count == 0


def test_persistent_congestion_needs_a_span_without_acks() -> None:
    def scenario(ack_in_between: bool) -> bool:
        rtt = RttEstimator(0.1)
        detector = LossDetector(rtt, max_ack_delay=0.0)
        detector.on_packet_sent(MDS, [1], 0.0)
        detector.on_ack(1, [], 0.1)  # first RTT sample, at 0.1
        for seq, t in [(2, 0.2), (3, 0.5), (4, 0.9), (5, 1.0), (6, 1.1), (7, 1.2)]:
            detector.on_packet_sent(MDS, [seq], t)
        ranges = [(3, 3), (7, 7)] if ack_in_between else [(7, 7)]
        return detector.on_ack(1, ranges, 1.3).persistent_congestion

    assert scenario(ack_in_between=False)  # 2..5 lost over 0.8 s > 3 PTO (0.6 s)
    assert not scenario(ack_in_between=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=40))
def test_every_packet_ends_acked_lost_or_in_flight_exactly_once(
    acks: list[tuple[int, int]],
) -> None:
    detector = LossDetector(RttEstimator(0.1))
    sent = [detector.on_packet_sent(MDS, [seq, seq + 1], 0.01 * seq) for seq in range(1, 30, 2)]
    seen: list[int] = []
    now = 1.0
    for lo, span in acks:
        outcome = detector.on_ack(lo // 2, [(lo, lo + span % 4)], now)
        seen += [p.number for p in outcome.acked + outcome.lost]
        now += 0.05
        seen += [p.number for p in detector.handle_timer(now).lost]
    assert len(seen) == len(set(seen))
    assert len(seen) + detector.packets_in_flight == len(sent)


# --- the link's view: PathRecovery -------------------------------------------------------


def test_reset_on_failover_starts_the_new_path_from_scratch() -> None:
    path = PathRecovery(max_datagram_size=MDS)
    for seq in range(1, 11):
        path.on_packet_sent(MDS, [seq], 0.0)
    path.on_ack(0, [(4, 10)], 0.2)  # 1..3 lost: a congestion event
    assert path.cc.cwnd < path.cc.initial_window
    assert path.rtt.first_sample_time is not None

    path.reset(5.0, initial_rtt=0.05)  # failover onto a path whose heartbeat RTT is 50 ms
    assert path.cc.cwnd == path.cc.initial_window
    assert path.cc.bytes_in_flight == 0
    assert path.detector.packets_in_flight == 0
    assert path.get_timer() is None
    assert path.rtt.smoothed == 0.05
    assert path.rtt.first_sample_time is None
    assert path.cc.pacer.rate == pytest.approx(2 * path.cc.initial_window / 0.05)
    assert path.on_ack(10, [], 5.1).acked == ()  # the old path's packets are forgotten


def test_probe_is_owed_after_a_pto_and_paid_by_the_next_packet() -> None:
    path = PathRecovery(max_datagram_size=MDS, initial_rtt=0.1)
    path.on_packet_sent(MDS, [1], 0.0)
    timer = path.get_timer()
    assert timer is not None
    assert path.handle_timer(timer).probe
    assert path.probes_due == 1
    path.on_packet_sent(MDS, [1], timer)
    assert path.probes_due == 0


# --- a message sender through the bottleneck model ---------------------------------------

MESSAGE = 1000  # bytes of message body
OVERHEAD = 100  # envelope, signature and headers around it (a model figure)
PACKET = MESSAGE + OVERHEAD
ACK = 60


@dataclass
class Transfer:
    """One sender of MESSAGE-byte messages, one per packet, and its receiver, over a
    forward and a return Bottleneck, in simulated time. The receiver acknowledges
    every packet: cumulative upto + up to 32 ranges, like the link's ACK frame, either
    the 32 lowest runs or (``newest_run``) the 31 lowest and the highest."""

    forward: Bottleneck[int]
    back: Bottleneck[tuple[int, tuple[tuple[int, int], ...]]]
    newest_run: bool = False
    # RFC 9002 NewReno alone (the link's delay ceiling is tested end to end in test_wan)
    path: PathRecovery = field(default_factory=lambda: PathRecovery(
        max_datagram_size=PACKET, delay_ceiling=False))
    now: float = 0.0
    next_new: int = 1
    acked_upto: int = 0
    resend: set[int] = field(default_factory=set)
    sends: int = 0
    retransmissions: int = 0
    received_upto: int = 0
    received: set[int] = field(default_factory=set)
    delivered_at: list[float] = field(default_factory=list)  # when each seq was delivered

    def run(self, until: float) -> None:
        while self.now < until:
            self._deliver()
            self._on_acks()
            self._on_timer()
            self._send()
            self.now = min(t for t in self._wakes() if t is not None)

    def _wakes(self) -> list[float | None]:
        paced = self.path.next_send_time(self.now) if self.path.can_send(PACKET) else None
        return [self.forward.next_arrival(), self.back.next_arrival(),
                self.path.get_timer(), paced, self.now + 1.0]

    def _deliver(self) -> None:
        for seq in self.forward.receive(self.now):
            if seq > self.received_upto:
                self.received.add(seq)
            while self.received_upto + 1 in self.received:
                self.received_upto += 1
                self.received.discard(self.received_upto)
                self.delivered_at.append(self.now)
            self.back.offer((self.received_upto, self._ranges()), ACK, self.now)

    def _ranges(self) -> tuple[tuple[int, int], ...]:
        ranges: list[tuple[int, int]] = []
        for seq in sorted(self.received):
            if ranges and ranges[-1][1] == seq - 1:
                ranges[-1] = (ranges[-1][0], seq)
            else:
                ranges.append((seq, seq))
        if len(ranges) > 32 and self.newest_run:
            return (*ranges[:31], ranges[-1])
        return tuple(ranges[:32])

    def _on_acks(self) -> None:
        for upto, ranges in self.back.receive(self.now):
            self.acked_upto = max(self.acked_upto, upto)
            outcome = self.path.on_ack(upto, ranges, self.now)
            self.resend |= {s for s in outcome.resend if s > self.acked_upto}

    def _on_timer(self) -> None:
        timer = self.path.get_timer()
        if timer is not None and timer <= self.now:
            outcome = self.path.handle_timer(self.now)
            self.resend |= {s for s in outcome.resend if s > self.acked_upto}

    def _send(self) -> None:
        while self.path.probes_due or (
            self.path.can_send(PACKET) and self.path.next_send_time(self.now) is None
        ):
            seq = self._next_seq()
            self.sends += 1
            self.path.on_packet_sent(PACKET, [seq], self.now)
            self.forward.offer(seq, PACKET, self.now)

    def _next_seq(self) -> int:
        if self.path.probes_due and not self.resend:
            self.resend.add(self.acked_upto + 1)  # probe with the oldest unacked
        self.resend = {s for s in self.resend if s > self.acked_upto}
        if self.resend:
            self.retransmissions += 1
            seq = min(self.resend)
            self.resend.discard(seq)
            return seq
        self.next_new += 1
        return self.next_new - 1

    def goodput(self, start: float, end: float) -> float:
        """Message bits per second delivered in order between ``start`` and ``end``."""
        count = sum(1 for t in self.delivered_at if start <= t < end)
        return count * MESSAGE * 8 / (end - start)


def test_bottleneck_model_serialises_delays_and_tail_drops() -> None:
    link: Bottleneck[int] = Bottleneck(rate=8000, delay=0.1, queue=2)  # 1 kB/s
    assert link.offer(1, 100, 0.0)  # serialised by 0.1, arrives at 0.2
    assert link.offer(2, 100, 0.0)  # behind it: by 0.2, arrives at 0.3
    assert not link.offer(3, 100, 0.05)  # 2 held: tail drop
    assert link.held(0.1) == 1
    assert link.offer(4, 100, 0.1)  # a slot is free again
    assert link.next_arrival() == pytest.approx(0.2)
    assert link.receive(0.25) == [1]
    assert link.receive(1.0) == [2, 4]
    assert (link.stats.offered, link.stats.dropped, link.stats.delivered) == (4, 1, 3)
    with pytest.raises(ValueError, match="required"):
        Bottleneck(rate=0, delay=0, queue=1)


def wan(rate: float = 1e6, delay: float = 0.1, queue: int = 50,
        newest_run: bool = False) -> Transfer:
    return Transfer(Bottleneck(rate, delay, queue), Bottleneck(rate, delay, queue), newest_run)


@pytest.mark.parametrize("newest_run", [False, True])
def test_through_a_thin_long_path_goodput_is_high_and_retransmissions_few(
    newest_run: bool,
) -> None:
    transfer = wan(newest_run=newest_run)  # 1 Mbit/s, 100 ms each way, 50-packet queue
    transfer.run(until=20.0)
    assert transfer.path.cc.ssthresh is not None  # slow start ended, by overflowing the queue
    sends, retransmissions = transfer.sends, transfer.retransmissions
    transfer.run(until=80.0)
    goodput = transfer.goodput(20.0, 80.0)
    assert goodput >= 0.8 * 1e6  # of the 0.91 that 1,000 of 1,100 bytes allow
    assert transfer.retransmissions - retransmissions < 0.05 * (transfer.sends - sends)
    assert transfer.retransmissions < 0.05 * transfer.sends  # slow start's overshoot included
    assert transfer.forward.stats.dropped < 0.05 * transfer.forward.stats.offered
    if newest_run:  # the newest run tells the sender at once what arrived: none resent twice
        assert transfer.retransmissions == transfer.forward.stats.dropped


@pytest.mark.parametrize("initial_rtt", [None, 0.2])
def test_pacing_keeps_the_first_window_out_of_a_short_queue(initial_rtt: float | None) -> None:
    transfer = wan(queue=5)  # half the initial window
    transfer.path = PathRecovery(max_datagram_size=PACKET, initial_rtt=initial_rtt)
    transfer.run(until=0.2)  # the first window, before any ACK is back
    assert transfer.forward.stats.offered == 10
    # No RTT (no pacing): the window leaves in one burst and half of it is dropped.
    # Paced at 2 x cwnd / 200 ms, slower than the link, behind a burst of 2 datagrams.
    assert transfer.forward.stats.dropped == (5 if initial_rtt is None else 0)


def test_failover_onto_a_new_path_restarts_congestion_control_and_recovers() -> None:
    transfer = wan()
    transfer.run(until=20.0)
    delivered = transfer.received_upto
    # The first path dies; the link resets the controller for the new path and resends
    # every unacked message on it (OutgoingStream.on_path_change).
    transfer.forward, transfer.back = Bottleneck(2e6, 0.05, 50), Bottleneck(2e6, 0.05, 50)
    transfer.path.reset(transfer.now, initial_rtt=0.1)
    assert transfer.path.cc.cwnd == transfer.path.cc.initial_window
    transfer.resend = set(range(transfer.acked_upto + 1, transfer.next_new))
    transfer.run(until=40.0)
    assert transfer.received_upto > delivered
    assert transfer.goodput(30.0, 40.0) >= 0.8 * 2e6


def test_queueing_delay_ends_slow_start_and_caps_the_window() -> None:
    cc = NewReno(MDS)
    for _ in range(10):
        cc.on_packet_sent(MDS, 0.0)
    assert cc.in_slow_start
    cc.on_delay(latest_rtt=0.100, min_rtt=0.100, now=0.1)  # no queue: nothing changes
    assert cc.in_slow_start
    assert cc.cwnd == cc.initial_window
    cc.on_delay(latest_rtt=0.120, min_rtt=0.100, now=0.2)  # a queue forms: leave slow start
    assert not cc.in_slow_start
    assert cc.cwnd == cc.initial_window
    cc.on_delay(latest_rtt=0.300, min_rtt=0.100, now=0.3)  # queue over a base RTT: cut
    assert cc.cwnd == max(int(10 * MDS * 2 * 0.100 / 0.300), cc.minimum_window)
