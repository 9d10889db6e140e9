"""The sender half of the reliable message stream (DESIGN §4). Sans-IO.

Owns sequencing on the wire: which DATA frames to (re)send and when, and which
envelopes to accept, in what order, and what to acknowledge. The store owns
durability; the daemon (through ``link.py``) stands between the two and keeps this
rule: **a message is pushed only after it is durable, and acknowledged only after it
is durable** — so an ACK is a promise that survives a crash of either end.

The receiver half is ``incoming.py``.

``OutgoingStream``. Every pushed message stays in memory until the peer's
*cumulative* ack covers it (the store frees it then, too). Messages are sent in seq
order, new ones no further than the peer's advertised ``window`` beyond its ack and
at most ``max_in_flight`` unacknowledged at once. Each sent message carries a
retransmission deadline ``sent_at + RTO``; the in-flight set is kept in send-time
order, so the earliest deadline is its first entry and ``get_timer`` is O(1). The RTO
follows RFC 6298: SRTT/RTTVAR from samples taken only on messages never sent twice
(Karn's rule), RTO = SRTT + 4·RTTVAR clamped to [0.2 s, 10 s], initial 1 s, doubled on
each timeout until a fresh sample arrives (§5.5-5.7). Selective ranges in an ACK mark
messages as held by the receiver so they are not resent; they are not freed, since
the receiver's reorder buffer is not durable. Should it forget them (a restart is
announced by its HELLO, which clears every mark), the safety net is the timer: a
marked message whose deadline passes is resent if it is the lowest unacked one.
A path change or a HELLO makes every unacked message due at once (magic-wormhole's
``outbound.py`` replays on reconnect the same way).
"""

from __future__ import annotations

from collections.abc import Sequence

from hotline.errors import LocalProtocolError
from hotline.proto.frames import Ack, Data, Hello

INITIAL_RTO = 1.0
MIN_RTO = 0.2
MAX_RTO = 10.0
_CLOCK_GRANULARITY = 0.001
_MAX_BACKOFF = 64
_NO_SAMPLE = float("-inf")

DEFAULT_MAX_IN_FLIGHT = 1024


# --- sender ---------------------------------------------------------------------------


class _Pending:
    """One unacknowledged outgoing message."""

    __slots__ = ("frame", "retransmitted")

    def __init__(self, frame: Data) -> None:
        self.frame = frame
        self.retransmitted = False


class _RttEstimator:
    """RFC 6298 §2 smoothed RTT and RTO, with §5.5 exponential backoff."""

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.backoff = 1

    def sample(self, rtt: float) -> None:
        """Add a measurement from a message sent once (Karn); ends any backoff."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.backoff = 1

    @property
    def rto(self) -> float:
        """The current retransmission timeout, backoff included."""
        if self.srtt is None:
            base = INITIAL_RTO
        else:
            base = self.srtt + max(_CLOCK_GRANULARITY, 4 * self.rttvar)
        return min(MAX_RTO, max(MIN_RTO, base) * self.backoff)


class OutgoingStream:
    """Sender half: in-flight set, retransmission timer, peer window (see module header).

    Invariants: unacked seqs are exactly ``acked_upto + 1 .. next_seq - 1``; a sent
    message is either in flight (``_timers``, send-time order) or due again
    (``_retx``); ``_sacked`` ⊆ ``_timers``; seqs ``>= _next_new`` were never sent.
    """

    def __init__(
        self,
        epoch: bytes,
        acked_upto: int,
        unacked: Sequence[tuple[int, bytes, bytes]],
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        initial_window: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        """Resume a stream from the store.

        Args:
            epoch: our stream's epoch (16 bytes, fixed when our store was created).
            acked_upto: the peer's cumulative ack as stored.
            unacked: durable but unacknowledged ``(seq, envelope, sig)``, ascending
                from ``acked_upto + 1`` without gaps.
            max_in_flight: most messages sent and not yet acknowledged at once.
            initial_window: the peer's window assumed until its first ACK.

        Raises:
            LocalProtocolError: ``unacked`` is not contiguous after ``acked_upto``.
        """
        self.epoch = epoch
        self.acked_upto = acked_upto
        self.max_in_flight = max_in_flight
        self._peer_window = initial_window
        self._msgs: dict[int, _Pending] = {}
        self._next_seq = acked_upto + 1
        self._next_new = acked_upto + 1
        self._timers: dict[int, float] = {}  # seq -> sent_at, oldest first
        self._retx: set[int] = set()
        self._sacked: set[int] = set()
        self._rtt = _RttEstimator()
        for seq, raw, sig in unacked:
            self.push(seq, raw, sig)

    # --- state --------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The seq the next pushed message must carry."""
        return self._next_seq

    @property
    def backlog(self) -> int:
        """Messages pushed and not yet cumulatively acknowledged."""
        return len(self._msgs)

    @property
    def in_flight(self) -> int:
        """Messages sent, not acknowledged, not known held by the receiver, not timed out."""
        return len(self._timers) - len(self._sacked)

    @property
    def rto(self) -> float:
        """Current retransmission timeout in seconds."""
        return self._rtt.rto

    @property
    def srtt(self) -> float | None:
        """Smoothed round-trip time of acknowledged messages (None before a sample)."""
        return self._rtt.srtt

    def base_seq(self) -> int:
        """For our HELLO: the lowest unacked seq, or the next seq when all are acked."""
        return self.acked_upto + 1

    def has_due(self) -> bool:
        """Whether ``frames_to_send`` would return something now."""
        return bool(self._retx) or self._can_send_new()

    # --- inputs -------------------------------------------------------------------

    def push(self, seq: int, raw: bytes, sig: bytes) -> None:
        """Queue a message that is ALREADY durable in the outbox.

        Raises:
            LocalProtocolError: ``seq`` is not ``next_seq``.
        """
        if seq != self._next_seq:
            raise LocalProtocolError(f"pushed seq {seq}, expected {self._next_seq}")
        self._msgs[seq] = _Pending(Data(raw, sig))
        self._next_seq = seq + 1

    def on_ack(self, ack: Ack, now: float) -> int | None:
        """Process the peer's ACK.

        Returns:
            The new cumulative upto when it advanced (the caller records it in the
            store), else None. ACKs for another epoch are ignored.
        """
        if ack.epoch != self.epoch:
            return None
        self._peer_window = ack.window
        advanced = self._advance(ack.upto)
        result = None if advanced is None else self.acked_upto
        sample_at = _NO_SAMPLE if advanced is None else advanced
        for lo, hi in ack.ranges:
            sample_at = max(sample_at, self._mark_held(lo, hi, now))
        if sample_at != _NO_SAMPLE:
            self._rtt.sample(now - sample_at)
        return result

    def on_hello(self, hello: Hello, now: float) -> int | None:
        """Process the peer's HELLO (sent after each handshake).

        If it has seen our epoch, everything up to its ``delivered_upto`` counts as
        acknowledged. The peer may have restarted, forgetting its reorder buffer, so
        every unacked message becomes due at once.

        Returns:
            The new cumulative upto when it advanced, else None.
        """
        upto: int | None = None
        if hello.seen_epoch == self.epoch:
            before = self.acked_upto
            self._advance(hello.delivered_upto)
            if self.acked_upto > before:
                upto = self.acked_upto
        self._sacked.clear()
        self._all_due()
        return upto

    def on_path_change(self, now: float) -> None:
        """A new primary path (failover, or a fresh session): resend all unacked at once."""
        self._all_due()

    def handle_timer(self, now: float) -> None:
        """Expire retransmission deadlines that are due (RFC 6298 §5.4-5.6)."""
        rto = self._rtt.rto
        fired = False
        while self._timers:
            seq, sent_at = next(iter(self._timers.items()))
            if sent_at + rto > now:
                break
            del self._timers[seq]
            if seq in self._sacked:
                if seq != self.acked_upto + 1:
                    self._timers[seq] = now  # still held by the receiver: keep watching
                    continue
                self._sacked.discard(seq)  # held, yet blocking the ack: it forgot it
            self._msgs[seq].retransmitted = True
            self._retx.add(seq)
            fired = True
        if fired:
            self._rtt.backoff = min(self._rtt.backoff * 2, _MAX_BACKOFF)

    # --- outputs ------------------------------------------------------------------

    def frames_to_send(self, now: float, limit: int | None = None) -> list[Data]:
        """DATA frames due now: retransmissions first (lowest seq first), then new ones.

        Call after every input and after ``handle_timer``; if it returned ``limit``
        frames, more may be due (``has_due``).
        """
        cap = len(self._msgs) if limit is None else limit
        out: list[Data] = []
        if self._retx:
            for seq in sorted(self._retx)[:cap]:
                out.append(self._send(seq, now))
        while len(out) < cap and self._can_send_new():
            seq = self._next_new
            self._next_new += 1
            out.append(self._send(seq, now))
        return out

    def get_timer(self) -> float | None:
        """The earliest retransmission deadline, or None when nothing is in flight.

        Messages that are due but held back (window, ``limit``) have no deadline of
        their own: the caller sends again after its next input.
        """
        if not self._timers:
            return None
        return next(iter(self._timers.values())) + self._rtt.rto

    # --- internals ----------------------------------------------------------------

    def _can_send_new(self) -> bool:
        return (
            self._next_new < self._next_seq
            and self._next_new <= self.acked_upto + self._peer_window
            and self.in_flight < self.max_in_flight
        )

    def _send(self, seq: int, now: float) -> Data:
        self._retx.discard(seq)
        self._timers.pop(seq, None)
        self._timers[seq] = now
        return self._msgs[seq].frame

    def _advance(self, upto: int) -> float | None:
        """Free everything <= upto. Returns the newest send time usable as an RTT
        sample (``_NO_SAMPLE`` if none), or None if the ack did not advance."""
        upto = min(upto, self._next_seq - 1)
        if upto <= self.acked_upto:
            return None
        newest = _NO_SAMPLE
        for seq in range(self.acked_upto + 1, upto + 1):
            msg = self._msgs.pop(seq)
            sent_at = self._timers.pop(seq, None)
            self._retx.discard(seq)
            if seq in self._sacked:
                self._sacked.discard(seq)  # sampled when first marked held
            elif sent_at is not None and not msg.retransmitted:
                newest = max(newest, sent_at)
        self.acked_upto = upto
        self._next_new = max(self._next_new, upto + 1)
        return newest

    def _mark_held(self, lo: int, hi: int, now: float) -> float:
        """Mark seqs lo..hi as held by the receiver; newest RTT-usable send time."""
        newest = _NO_SAMPLE
        for seq in range(max(lo, self.acked_upto + 1), min(hi, self._next_new - 1) + 1):
            if seq in self._sacked:
                continue
            sent_at = self._timers.get(seq)
            if sent_at is None:  # due for retransmission: no longer needed
                self._retx.discard(seq)
                self._timers[seq] = now
            elif not self._msgs[seq].retransmitted:
                newest = max(newest, sent_at)
            self._sacked.add(seq)
        return newest

    def _all_due(self) -> None:
        for seq in self._timers:
            if seq not in self._sacked:
                self._msgs[seq].retransmitted = True
                self._retx.add(seq)
        self._timers = {s: t for s, t in self._timers.items() if s in self._sacked}
        self._rtt.backoff = 1
