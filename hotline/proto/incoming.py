"""The receiver half of one lane of the reliable message stream (DESIGN §4, §4b). Sans-IO.

The sender half is ``outgoing.py``; ``endpoint.py`` keeps the durability rule: the
accepted envelopes are committed to the inbox, and only then may an ACK cover them.

``IncomingStream`` (one per precedence lane) knows the peer's current epoch and the
next expected seq of its lane. The Link decodes a DATA's envelope once and hands it
here with its lane already checked. An envelope is checked for its keys and epoch,
deduplicated (anything below the expected seq is a duplicate: re-ack it, return
nothing), bounded (at most ``reorder_limit`` seqs ahead and ``max_buffered_bytes``
buffered), then its signature verified; an in-order one must chain to the previous one
(``prev`` = SHA-256 of the previous envelope; trusted only for the first message after
we (re)joined a stream mid-way) and is returned with everything it unblocks from the
reorder buffer. ACKs carry only the *committed* upto (``on_committed``) and the chain
hash there, never merely accepted seqs, plus selective ranges of the buffer.

Joining: ``join(epoch, base_seq)`` starts a new peer epoch (the Link decided it is one
never seen before). ``rejoin(base_seq)`` handles a HELLO of the current epoch whose
``base_seq`` is above what we expect: those seqs are gone from the sender, which only
frees what we acknowledged — so OUR store went back in time. The range is returned as
a ``Gap`` to log loudly and record, and the lane continues at ``base_seq``.

``rollback`` forgets what was accepted but not committed (a failed commit): the peer
was never told about it and will resend it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hotline.errors import AuthenticationError, LocalProtocolError, ReplayError
from hotline.proto.envelope import ZERO_HASH, Envelope, chain_hash, verify_envelope
from hotline.proto.frames import MAX_RANGES, Ack, Data, Position
from hotline.proto.identity import PublicKey

DEFAULT_REORDER_LIMIT = 4096
DEFAULT_MAX_BUFFERED_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Accepted:
    """An envelope accepted in order: verified, chained, not seen before.

    The endpoint commits it to the inbox, then calls ``IncomingStream.on_committed``.
    ``chain`` is ``chain_hash(raw)``, the ``prev`` of the next envelope.
    """

    epoch: bytes
    lane: int
    seq: int
    raw: bytes
    sig: bytes
    envelope: Envelope
    chain: bytes


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs ``first..last`` of the peer's ``lane`` in ``epoch`` are gone for good."""

    epoch: bytes
    lane: int
    first: int
    last: int


class IncomingStream:
    """Receiver half of one lane (see the module header)."""

    def __init__(
        self,
        our_key: PublicKey,
        their_key: PublicKey,
        lane: int,
        epoch: bytes | None,
        position: Position,
        *,
        reorder_limit: int = DEFAULT_REORDER_LIMIT,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
    ) -> None:
        """Resume from the store.

        Args:
            our_key: our public key (envelopes must be addressed to it).
            their_key: the pinned peer key (envelopes must come from and be signed by it).
            lane: which lane this is.
            epoch: the peer's latest epoch as stored, or None if we never stored any.
            position: ``delivered_upto`` of this lane in ``epoch`` and the chain hash of
                that envelope (32 zero bytes when unknown or 0).
            reorder_limit: how many seqs beyond the expected one we buffer (our window).
            max_buffered_bytes: cap on the bytes held in the reorder buffer.
        """
        self._our = our_key.raw
        self._their_key = their_key
        self._their = their_key.raw
        self.lane = lane
        self.reorder_limit = reorder_limit
        self.max_buffered_bytes = max_buffered_bytes
        self._epoch = epoch
        self._committed = position.upto
        self._committed_chain = position.chain
        self._chain: bytes | None = position.chain  # prev of the expected seq; None = trust
        if position.upto > 0 and position.chain == ZERO_HASH:
            self._chain = None
        self._expected = self._committed + 1
        self._pending_chains: dict[int, bytes] = {}  # accepted, not yet committed
        self._buffer: dict[int, Data] = {}
        self._envelopes: dict[int, Envelope] = {}
        self._buffered_bytes = 0
        self._ack_needed = False
        self._receipted = self._committed
        self._last_receipt: float | None = None
        self.duplicates = 0
        self.overflows = 0

    # --- state --------------------------------------------------------------------

    @property
    def epoch(self) -> bytes | None:
        """The peer's current epoch (None before its first HELLO when nothing is stored)."""
        return self._epoch

    @property
    def committed_upto(self) -> int:
        """Highest seq of the current epoch durably stored (what ACK and HELLO report)."""
        return self._committed

    @property
    def expected_seq(self) -> int:
        """The next seq to accept in order."""
        return self._expected

    @property
    def buffered(self) -> int:
        """Messages held in the reorder buffer."""
        return len(self._buffer)

    def position(self) -> Position:
        """For our HELLO: how far this lane is durably held (committed only)."""
        return Position(self._committed, self._committed_chain)

    # --- inputs -------------------------------------------------------------------

    def join(self, epoch: bytes, base_seq: int) -> None:
        """Start the peer's new ``epoch`` at ``base_seq`` (normally 1)."""
        base = max(base_seq, 1)
        self._epoch = epoch
        self._restart(base, ZERO_HASH if base == 1 else None)

    def rejoin(self, base_seq: int) -> Gap | None:
        """The sender's HELLO says its lane starts at ``base_seq`` in our epoch.

        Returns:
            The ``Gap`` we will never fill if ``base_seq`` is above the expected seq
            (the lane then continues at ``base_seq``), else None.
        """
        if self._epoch is None or base_seq <= self._expected:
            return None
        gap = Gap(self._epoch, self.lane, self._expected, base_seq - 1)
        self._restart(base_seq, None)
        return gap

    def on_data_untrusted(self, data: Data, env: Envelope, now: float) -> list[Accepted]:
        """Handle one DATA frame of this lane (its envelope already decoded).

        Returns:
            The envelopes now deliverable in order (possibly several, when this one
            fills a gap), or an empty list (duplicate, buffered, or over a limit).

        Raises:
            AuthenticationError: wrong keys, bad signature, or a broken chain.
            ReplayError: an envelope of an epoch other than the current one.
        """
        if env.sender != self._their or env.recipient != self._our:
            raise AuthenticationError("envelope names the wrong sender or recipient")
        if env.epoch != self._epoch:
            raise ReplayError("envelope of an epoch that is not the peer's current one")
        seq = env.seq
        if seq < self._expected or seq in self._buffer:
            self.duplicates += 1
            self._ack_needed = True
            return []
        if not self._fits(seq, len(data.raw)):
            self.overflows += 1
            self._ack_needed = True
            return []
        verify_envelope(self._their_key, data.raw, data.sig)
        if seq > self._expected:
            self._buffer[seq] = data
            self._envelopes[seq] = env
            self._buffered_bytes += len(data.raw)
            self._ack_needed = True
            return []
        if self._chain is not None and env.prev != self._chain:
            raise AuthenticationError(f"envelope {seq} does not chain to its predecessor")
        accepted = [self._accept(data, env)]
        self._drain(accepted)
        return accepted

    def on_committed(self, epoch: bytes, upto: int) -> None:
        """Everything <= ``upto`` of ``epoch`` is durable: ACKs may cover it.

        Raises:
            LocalProtocolError: ``upto`` was never accepted.
        """
        if epoch != self._epoch or upto <= self._committed:
            return
        if upto >= self._expected:
            raise LocalProtocolError(f"committed {upto}, but only {self._expected - 1} accepted")
        for seq in range(self._committed + 1, upto + 1):
            self._committed_chain = self._pending_chains.pop(seq)
        self._committed = upto
        self._ack_needed = True

    def rollback(self) -> None:
        """A commit failed: forget what was accepted and not committed (it is resent)."""
        if self._expected == self._committed + 1:
            return
        self._pending_chains.clear()
        self._expected = self._committed + 1
        known = self._committed == 0 or self._committed_chain != ZERO_HASH
        self._chain = self._committed_chain if known else None

    # --- outputs ------------------------------------------------------------------

    def request_ack(self) -> None:
        """Make ``ack_due`` answer once even with nothing new (a HELLO wants an answer)."""
        self._ack_needed = True

    def ack_due(self, now: float) -> Ack | None:
        """One ACK if one is due (new committed data, a duplicate, a gap), else None."""
        if not self._ack_needed or self._epoch is None:
            return None
        self._ack_needed = False
        return Ack(self._epoch, self.lane, self._committed, self._committed_chain,
                   self._ranges(), self.reorder_limit)

    def receipt_due(self, now: float, receipt_every: float = 1.0) -> tuple[int, bytes] | None:
        """``(upto, chain)`` to sign as a receipt, at most every ``receipt_every`` seconds
        and only when the committed upto advanced since the last one."""
        if self._committed <= self._receipted or self._committed_chain == ZERO_HASH:
            return None
        if self._last_receipt is not None and now - self._last_receipt < receipt_every:
            return None
        self._receipted = self._committed
        self._last_receipt = now
        return self._committed, self._committed_chain

    # --- internals ----------------------------------------------------------------

    def _restart(self, base: int, chain: bytes | None) -> None:
        self._committed = self._receipted = base - 1
        self._committed_chain = ZERO_HASH
        self._expected = base
        self._chain = chain
        self._pending_chains.clear()
        self._buffer.clear()
        self._envelopes.clear()
        self._buffered_bytes = 0
        self._ack_needed = True

    def _fits(self, seq: int, size: int) -> bool:
        if seq - self._expected >= self.reorder_limit:
            return False
        return seq == self._expected or self._buffered_bytes + size <= self.max_buffered_bytes

    def _accept(self, data: Data, env: Envelope) -> Accepted:
        chain = chain_hash(data.raw)
        self._chain = chain
        self._pending_chains[env.seq] = chain
        self._expected = env.seq + 1
        # No ack yet: it could only repeat the committed upto; on_committed asks for one.
        return Accepted(env.epoch, self.lane, env.seq, data.raw, data.sig, env, chain)

    def _drain(self, accepted: list[Accepted]) -> None:
        while self._expected in self._buffer:
            data = self._buffer.pop(self._expected)
            env = self._envelopes.pop(self._expected)
            self._buffered_bytes -= len(data.raw)
            if env.prev != self._chain:
                return  # signed by the peer, yet forked: drop it (it is resent or not)
            accepted.append(self._accept(data, env))

    def _ranges(self) -> tuple[tuple[int, int], ...]:
        """Runs of buffered seqs: the lowest ``MAX_RANGES - 1`` and the highest, so the
        sender always learns the newest arrival (its loss detection counts on it)."""
        ranges: list[tuple[int, int]] = []
        for seq in sorted(self._buffer):
            if ranges and ranges[-1][1] + 1 == seq:
                ranges[-1] = (ranges[-1][0], seq)
            else:
                ranges.append((seq, seq))
        if len(ranges) > MAX_RANGES:
            ranges = [*ranges[:MAX_RANGES - 1], ranges[-1]]
        return tuple(ranges)
