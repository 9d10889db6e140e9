# hotline/proto/recovery.py — RTT, loss detection and congestion control of one path,
# from MESSAGE acknowledgements. Sans-IO.
#
# Owns: which of the packets sent on a path were delivered and which were lost (RFC
# 9002 §5-6), and so what the path's congestion controller (congestion.py) hears.
#
# How it works: the link acknowledges MESSAGES (an ACK frame is a cumulative ``upto``
# plus selective ``[lo, hi]`` ranges of DATA seqs), not packets. So every packet that
# carries DATA gets a record here when it is sent: our own packet number (send order),
# its size in bytes, its send time and the DATA seqs it carried.
#   * Acknowledged: a packet is acknowledged once ALL the seqs it carried are covered
#     by acknowledgements (a datagram arrives whole or not at all; a seq carried by
#     several packets, a retransmission, is credited to each of them).
#   * Lost (§6.1): once a later-sent packet is acknowledged, a packet still waiting is
#     lost if it was sent 3 or more packets before the newest acknowledged one, or
#     more than 9/8 of max(smoothed RTT, latest RTT) before now; otherwise the loss
#     timer is set for the moment it would be.
#   * RTT samples (§5): from the newest acknowledged packet, when an acknowledgement
#     makes it the newest, and only if none of its seqs had been sent before (Karn:
#     an ACK of a retransmitted message does not say which copy arrived). Our ACKs
#     carry no ack delay, so the sample includes the receiver's commit.
#   * Probe timeout (§6.2): with packets in flight and no loss timer, the PTO fires at
#     last send + (smoothed + max(4 x rttvar, 1 ms) + max_ack_delay) x 2^count; the
#     caller then sends one probe, allowed past the window and the pacer.
#   * Persistent congestion (§7.6): lost packets spanning more than 3 PTO periods,
#     with no packet sent between them acknowledged, after the first RTT sample.
#   * ``resend`` in an outcome: seqs of lost packets that no acknowledgement covers
#     and no packet still in flight carries: what to retransmit.
#   * Lanes: seqs are per precedence lane, so a packet's DATA are recorded by
#     ``data_key(lane, seq)`` (the lane in the high bits: each lane's keys are one
#     sorted stretch) and an ACK frame names its lane (``on_ack(..., lane=)``).
# ``PathRecovery`` wires an ``RttEstimator``, a ``LossDetector`` and a ``NewReno`` together
# for the link: one per path, replaced by a fresh one (``reset``) on failover.
"""Per-path RTT estimation, loss detection (RFC 9002) and the link's congestion API."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from hotline.errors import LocalProtocolError
from hotline.proto.congestion import NewReno
from hotline.proto.packet import UDP_MAX_DATAGRAM

PACKET_THRESHOLD = 3  # RFC 9002 §6.1.1
TIME_THRESHOLD = 9 / 8  # §6.1.2
GRANULARITY = 0.001  # §6.1.2, seconds
INITIAL_RTT = 0.333  # §6.2.2
MAX_ACK_DELAY = 0.025  # §6.2.1 (QUIC's default max_ack_delay)
PERSISTENT_CONGESTION_THRESHOLD = 3  # §7.6.1
_MAX_PTO_BACKOFF = 6  # 2^6 x PTO at most
_LANE_SHIFT = 63  # seqs are below 2^63


def data_key(lane: int, seq: int) -> int:
    """The key a DATA of ``lane``/``seq`` is recorded under (``split_key`` undoes it)."""
    return lane << _LANE_SHIFT | seq


def split_key(key: int) -> tuple[int, int]:
    """``(lane, seq)`` of a ``data_key``."""
    return key >> _LANE_SHIFT, key & ((1 << _LANE_SHIFT) - 1)


class RttEstimator:
    """Latest, minimum and smoothed RTT and its variation (RFC 9002 §5)."""

    def __init__(self, initial_rtt: float = INITIAL_RTT) -> None:
        self.latest = 0.0
        self.minimum = initial_rtt
        self.smoothed = initial_rtt
        self.variance = initial_rtt / 2
        self.first_sample_time: float | None = None  # None: no sample yet

    def on_sample(self, latest_rtt: float, now: float, ack_delay: float = 0.0) -> None:
        """Add one measurement (§5.3: ack delay is taken off if min RTT allows)."""
        self.latest = max(latest_rtt, 0.0)
        if self.first_sample_time is None:
            self.first_sample_time = now
            self.minimum = self.smoothed = self.latest
            self.variance = self.latest / 2
            return
        self.minimum = min(self.minimum, self.latest)
        adjusted = self.latest
        if adjusted >= self.minimum + ack_delay:
            adjusted -= ack_delay
        self.variance = 0.75 * self.variance + 0.25 * abs(self.smoothed - adjusted)
        self.smoothed = 0.875 * self.smoothed + 0.125 * adjusted

    def loss_delay(self) -> float:
        """How long after a later packet's acknowledgement a packet counts as lost."""
        return max(TIME_THRESHOLD * max(self.smoothed, self.latest), GRANULARITY)

    def probe_timeout(self, max_ack_delay: float) -> float:
        """One PTO period, without backoff (§6.2.1)."""
        return self.smoothed + max(4 * self.variance, GRANULARITY) + max_ack_delay


@dataclass(eq=False, slots=True)
class SentPacket:
    """One congestion-controlled packet in flight, as ``LossDetector`` tracks it."""

    number: int  # our own count, in send order (not the transport counter)
    size: int  # bytes on the wire
    sent_time: float
    seqs: tuple[int, ...]  # the DATA seqs it carried
    retransmission: bool  # carried a seq that an earlier packet carried
    unacked: int = field(default=0, repr=False)  # its seqs not yet acknowledged


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an acknowledgement or a timer revealed."""

    acked: tuple[SentPacket, ...] = ()
    lost: tuple[SentPacket, ...] = ()
    resend: tuple[int, ...] = ()  # lost seqs nothing covers or carries any more
    rtt_sample: float | None = None
    persistent_congestion: bool = False
    probe: bool = False  # the PTO fired: send one probe, past window and pacer


class LossDetector:
    """Sent-packet records of one path and the loss detection of RFC 9002 §6.

    Args:
        rtt: the path's estimator; this detector feeds it the samples it takes.
        max_ack_delay: how long the peer may hold an acknowledgement back.
    """

    def __init__(self, rtt: RttEstimator, max_ack_delay: float = MAX_ACK_DELAY) -> None:
        self.rtt = rtt
        self.max_ack_delay = max_ack_delay
        self.pto_count = 0
        self._packets: dict[int, SentPacket] = {}  # in flight, in send order
        self._carriers: dict[int, list[SentPacket]] = {}  # unacked seq -> packets carrying it
        self._unacked_seqs: list[int] = []  # sorted keys of _carriers
        self._acked_numbers: list[int] = []  # sorted, none older than the oldest in flight
        self._next_number = 0
        self._largest_acked = -1
        self._highest_sent: dict[int, int] = {}  # lane -> highest key sent
        self._last_sent_time: float | None = None
        self._loss_time: float | None = None

    @property
    def packets_in_flight(self) -> int:
        """Packets sent and neither acknowledged nor declared lost yet."""
        return len(self._packets)

    def on_packet_sent(self, size: int, seqs: Sequence[int], now: float) -> SentPacket:
        """Record a packet that carried the DATA ``seqs`` (packets without DATA are not
        acknowledged by anything, so they are neither recorded nor congestion-controlled).

        Raises:
            LocalProtocolError: no seqs, or a size that is not positive.
        """
        if not seqs or size <= 0:
            raise LocalProtocolError("a recorded packet carries DATA and has a size")
        unique = tuple(sorted(set(seqs)))
        highest = self._highest_sent
        again = any(key <= highest.get(key >> _LANE_SHIFT, -1) for key in unique)
        packet = SentPacket(self._next_number, size, now, unique, retransmission=again,
                            unacked=len(unique))
        self._next_number += 1
        for key in unique:
            lane = key >> _LANE_SHIFT
            highest[lane] = max(highest.get(lane, key), key)
        self._packets[packet.number] = packet
        for seq in unique:
            carriers = self._carriers.get(seq)
            if carriers is None:
                self._carriers[seq] = [packet]
                bisect.insort(self._unacked_seqs, seq)
            else:
                carriers.append(packet)
        self._last_sent_time = now
        return packet

    def on_ack(self, upto: int, ranges: Sequence[tuple[int, int]], now: float,
               lane: int = 0) -> Outcome:
        """An ACK frame of ``lane``: every seq <= ``upto`` and in the ``[lo, hi]``
        ranges is held.

        Returns:
            The packets it acknowledged, those now declared lost, what to resend,
            and the RTT sample it gave (already fed to the estimator).
        """
        acked = self._acknowledge(self._covered(upto, ranges, lane))
        if not acked:
            return Outcome()
        self.pto_count = 0
        newest = max(acked, key=lambda p: p.number)
        sample = None
        if newest.number > self._largest_acked:
            self._largest_acked = newest.number
            if not newest.retransmission:
                sample = now - newest.sent_time
                self.rtt.on_sample(sample, now)
        for packet in acked:
            bisect.insort(self._acked_numbers, packet.number)
        return self._declare_lost(now, tuple(acked), sample)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` has work: the loss timer, else the PTO (None if idle)."""
        if self._loss_time is not None:
            return self._loss_time
        if not self._packets or self._last_sent_time is None:
            return None
        backoff = 1 << min(self.pto_count, _MAX_PTO_BACKOFF)
        return self._last_sent_time + self.rtt.probe_timeout(self.max_ack_delay) * backoff

    def handle_timer(self, now: float) -> Outcome:
        """Declare lost what the loss timer was waiting for, or fire the PTO."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return Outcome()
        if self._loss_time is not None:
            return self._declare_lost(now)
        self.pto_count += 1
        # Re-armed from now: if no probe can be sent, the next PTO still moves on.
        self._last_sent_time = now
        return Outcome(probe=True, resend=self._oldest_unacked())

    def _oldest_unacked(self) -> tuple[int, ...]:
        """The probe's content (RFC 9002 §6.2.4): the oldest message still in flight."""
        for packet in self._packets.values():
            for key in packet.seqs:
                if key in self._carriers:
                    return (key,)
        return ()

    # --- acknowledgement ------------------------------------------------------------

    def _covered(self, upto: int, ranges: Sequence[tuple[int, int]],
                 lane: int) -> list[int]:
        """Take the unacked keys of ``lane`` that the ACK covers out of ``_unacked_seqs``."""
        seqs = self._unacked_seqs
        base = data_key(lane, 0)
        first, cut = bisect.bisect_left(seqs, base), bisect.bisect_right(seqs, base | upto)
        covered = seqs[first:cut]
        del seqs[first:cut]
        for lo, hi in ranges:
            start = bisect.bisect_left(seqs, base | lo)
            end = bisect.bisect_right(seqs, base | hi)
            covered += seqs[start:end]
            del seqs[start:end]
        return covered

    def _acknowledge(self, seqs: list[int]) -> list[SentPacket]:
        acked: list[SentPacket] = []
        for seq in seqs:
            for packet in self._carriers.pop(seq):
                packet.unacked -= 1
                if packet.unacked == 0 and packet.number in self._packets:
                    del self._packets[packet.number]
                    acked.append(packet)
        return acked

    # --- loss -----------------------------------------------------------------------

    def _declare_lost(self, now: float, acked: tuple[SentPacket, ...] = (),
                      sample: float | None = None) -> Outcome:
        lost = self._detect_lost(now)
        outcome = Outcome(acked=acked, lost=lost, resend=self._orphans(lost),
                          rtt_sample=sample,
                          persistent_congestion=self._persistent_congestion(lost))
        oldest = next(iter(self._packets), self._next_number)
        del self._acked_numbers[: bisect.bisect_left(self._acked_numbers, oldest)]
        return outcome

    def _detect_lost(self, now: float) -> tuple[SentPacket, ...]:
        """Declare lost what §6.1 says is; set the loss timer for the rest."""
        delay = self.rtt.loss_delay()
        lost: list[SentPacket] = []
        self._loss_time = None
        for packet in self._packets.values():
            if packet.number >= self._largest_acked:
                break
            if (packet.number + PACKET_THRESHOLD <= self._largest_acked
                    or packet.sent_time + delay <= now):
                lost.append(packet)
            elif self._loss_time is None:
                self._loss_time = packet.sent_time + delay  # the oldest sets the timer
        for packet in lost:
            del self._packets[packet.number]
        return tuple(lost)

    def _orphans(self, lost: tuple[SentPacket, ...]) -> tuple[int, ...]:
        """Seqs of ``lost`` that are unacknowledged and now carried by no packet."""
        orphans: list[int] = []
        for packet in lost:
            for seq in packet.seqs:
                carriers = self._carriers.get(seq)
                if carriers is None or packet not in carriers:
                    # Acknowledged — and perhaps sent again since, by newer packets
                    # only (a peer that lost its store wants acknowledged seqs again).
                    continue
                carriers.remove(packet)
                if not carriers:
                    del self._carriers[seq]
                    del self._unacked_seqs[bisect.bisect_left(self._unacked_seqs, seq)]
                    orphans.append(seq)
        return tuple(sorted(orphans))

    def _persistent_congestion(self, lost: tuple[SentPacket, ...]) -> bool:
        """§7.6.2: lost packets spanning the period, nothing between them acknowledged."""
        first_sample = self.rtt.first_sample_time
        if first_sample is None or len(lost) < 2:
            return False
        period = self.rtt.probe_timeout(self.max_ack_delay) * PERSISTENT_CONGESTION_THRESHOLD
        candidates = [p for p in lost if p.sent_time > first_sample]
        start = 0
        for i in range(1, len(candidates)):
            if self._acked_between(candidates[i - 1].number, candidates[i].number):
                start = i
            elif candidates[i].sent_time - candidates[start].sent_time > period:
                return True
        return False

    def _acked_between(self, low: int, high: int) -> bool:
        index = bisect.bisect_right(self._acked_numbers, low)
        return index < len(self._acked_numbers) and self._acked_numbers[index] < high


class PathRecovery:
    """RTT, loss detection and NewReno of one path: what the link calls, in bytes.

    Args:
        max_datagram_size: the path's largest packet.
        initial_rtt: a prior RTT (e.g. the path's heartbeat RTT) instead of 333 ms;
            it also sets the pacing rate before the first sample.
        max_ack_delay: how long the peer may hold an acknowledgement back.

    Usage: ``on_packet_sent`` for every packet carrying DATA; ``on_ack`` for every
    ACK frame; ``handle_timer`` at ``get_timer``. Send while ``can_send`` and
    ``next_send_time`` allow (or when ``probes_due``); resend the ``resend`` seqs of
    each outcome. On failover, ``reset`` (the new path starts from scratch).
    """

    rtt: RttEstimator
    detector: LossDetector
    cc: NewReno
    probes_due: int  # PTO probes owed: send them past the window and the pacer

    def __init__(self, max_datagram_size: int = UDP_MAX_DATAGRAM,
                 initial_rtt: float | None = None,
                 max_ack_delay: float = MAX_ACK_DELAY, now: float = 0.0,
                 delay_ceiling: bool = True) -> None:
        self.max_datagram_size = max_datagram_size
        self.max_ack_delay = max_ack_delay
        self.delay_ceiling = delay_ceiling  # NewReno.on_delay: keep bottleneck queues short
        self.reset(now, initial_rtt)

    def reset(self, now: float, initial_rtt: float | None = None) -> None:
        """Start over (a new path, or one that failed over): initial window, nothing
        in flight, the RTT from ``initial_rtt`` (or 333 ms, unpaced) until sampled."""
        self.rtt = RttEstimator(INITIAL_RTT if initial_rtt is None else initial_rtt)
        self.detector = LossDetector(self.rtt, self.max_ack_delay)
        self.cc = NewReno(self.max_datagram_size)
        self.probes_due = 0
        if initial_rtt is not None:
            self.cc.on_rtt_sample(initial_rtt, now)

    def can_send(self, size: int) -> bool:
        """True if a packet of ``size`` bytes fits in the congestion window."""
        return self.cc.can_send(size)

    @property
    def idle(self) -> bool:
        """Nothing in flight on this path."""
        return self.cc.bytes_in_flight == 0

    def sendable(self, now: float) -> float:
        """Bytes that may leave now: the free window, capped by the pacer's tokens; at
        least one packet while a PTO probe is owed."""
        free = min(self.cc.available_window(), self.cc.pacer.available(now))
        return max(free, self.max_datagram_size) if self.probes_due else free

    def next_send_time(self, now: float) -> float | None:
        """None if the pacer lets a packet leave now, else when it will."""
        return self.cc.next_send_time(now)

    def on_packet_sent(self, size: int, seqs: Sequence[int], now: float) -> None:
        """A packet of ``size`` bytes carrying DATA ``seqs`` left on this path."""
        self.detector.on_packet_sent(size, seqs, now)
        self.cc.on_packet_sent(size, now)
        self.probes_due = max(0, self.probes_due - 1)

    def on_ack(self, upto: int, ranges: Sequence[tuple[int, int]], now: float,
               lane: int = 0) -> Outcome:
        """An ACK frame of ``lane`` arrived on any path for this path's packets."""
        return self._apply(self.detector.on_ack(upto, ranges, now, lane), now)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run (None: nothing in flight)."""
        return self.detector.get_timer()

    def handle_timer(self, now: float) -> Outcome:
        """Run the loss timer or the PTO if due (a PTO adds one to ``probes_due``)."""
        outcome = self._apply(self.detector.handle_timer(now), now)
        if outcome.probe:
            self.probes_due += 1
        return outcome

    def _apply(self, outcome: Outcome, now: float) -> Outcome:
        """Feed an outcome to the controller in RFC 9002 order: RTT, losses, acks."""
        if outcome.rtt_sample is not None:
            self.cc.on_rtt_sample(self.rtt.smoothed, now)
            if self.delay_ceiling:
                self.cc.on_delay(self.rtt.latest, self.rtt.minimum, now)
        if outcome.lost:
            self.cc.on_packets_lost(outcome.lost, now)
        if outcome.persistent_congestion:
            self.cc.on_persistent_congestion(now)
        if outcome.acked:
            self.cc.on_packets_acked(outcome.acked, now)
        return outcome
