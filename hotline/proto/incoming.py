"""The receiver half of the reliable message stream (DESIGN §4). Sans-IO.

Owns sequencing on the wire: which DATA frames to (re)send and when, and which
envelopes to accept, in what order, and what to acknowledge. The store owns
durability; the daemon (through ``link.py``) stands between the two and keeps this
rule: **a message is pushed only after it is durable, and acknowledged only after it
is durable** — so an ACK is a promise that survives a crash of either end.

The sender half is ``outgoing.py``.

``IncomingStream``. Knows the peer's current epoch and the next expected
seq. A DATA is decoded, checked for its keys and epoch, deduplicated (anything below
the expected seq is a duplicate: re-ack it, return nothing), bounded (at most
``reorder_limit`` seqs ahead and ``max_buffered_bytes`` buffered), then its
signature verified; an in-order one must chain to the previous one (``prev`` =
SHA-256 of the previous envelope; trusted only for the first message of an epoch we
join mid-way after losing our store) and is returned with everything it unblocks
from the reorder buffer. Buffered messages have their signature checked on arrival
and their chain link when they become in order. ACKs carry only the *committed*
upto (``on_committed``), never merely accepted seqs, plus selective ranges of the
buffer. A HELLO with an unknown epoch starts a new epoch at its ``base_seq`` and
yields a ``NewEpoch`` event to log loudly; epochs we left are never re-entered.

"""

from __future__ import annotations

from dataclasses import dataclass

from hotline.errors import AuthenticationError, LocalProtocolError, ReplayError
from hotline.proto.envelope import (
    ZERO_HASH,
    Envelope,
    chain_hash,
    decode_envelope_untrusted,
    verify_envelope,
)
from hotline.proto.frames import MAX_RANGES, Ack, Data, Hello
from hotline.proto.identity import PublicKey

DEFAULT_REORDER_LIMIT = 4096
DEFAULT_MAX_MESSAGE = 65536
DEFAULT_MAX_BUFFERED_BYTES = 32 * 1024 * 1024
# Epochs of the peer we left behind and refuse to re-enter (late packets of old sessions).
_RETIRED_EPOCHS = 16


# --- receiver -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """An envelope accepted in order: verified, chained, not seen before.

    The daemon commits it to the inbox, then calls ``IncomingStream.on_committed``.
    ``chain`` is ``chain_hash(raw)``, the ``prev`` of the next envelope.
    """

    epoch: bytes
    seq: int
    raw: bytes
    sig: bytes
    envelope: Envelope
    chain: bytes


@dataclass(frozen=True, slots=True)
class NewEpoch:
    """The peer's stream started a new epoch (its store was created anew): log loudly.

    ``old`` is the epoch we knew (None: none); seqs restart at ``base_seq``.
    """

    old: bytes | None
    epoch: bytes
    base_seq: int


class IncomingStream:
    """Receiver half: verify, chain, dedup, reorder, ack what is committed (module header)."""

    def __init__(
        self,
        our_key: PublicKey,
        their_key: PublicKey,
        state: tuple[bytes, int, bytes] | None,
        *,
        reorder_limit: int = DEFAULT_REORDER_LIMIT,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
    ) -> None:
        """Resume from the store.

        Args:
            our_key: our public key (envelopes must be addressed to it).
            their_key: the pinned peer key (envelopes must come from and be signed by it).
            state: ``(epoch, delivered_upto, chain)`` of the peer's stream as durably
                stored (``chain`` = chain hash of envelope ``delivered_upto``, or 32 zero
                bytes when it is 0), or None if we never stored anything from the peer.
            reorder_limit: how many seqs beyond the expected one we buffer (our window).
            max_message: largest envelope body accepted.
            max_buffered_bytes: cap on the bytes held in the reorder buffer.
        """
        self._our = our_key.raw
        self._their_key = their_key
        self._their = their_key.raw
        self.reorder_limit = reorder_limit
        self.max_message = max_message
        self.max_buffered_bytes = max_buffered_bytes
        self._epoch: bytes | None = None
        self._committed = 0
        self._committed_chain: bytes | None = None
        self._chain: bytes | None = None  # prev of the expected seq; None = trust it
        if state is not None:
            self._epoch, self._committed, self._committed_chain = state
            self._chain = self._committed_chain
        self._expected = self._committed + 1
        self._pending_chains: dict[int, bytes] = {}  # accepted, not yet committed
        self._buffer: dict[int, tuple[Data, Envelope]] = {}
        self._buffered_bytes = 0
        self._retired: list[bytes] = []
        self._ack_needed = False
        self._receipted = 0
        self._last_receipt: float | None = None
        self.duplicates = 0
        self.overflows = 0
        self.chain_breaks = 0

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

    def position(self) -> tuple[bytes, int] | None:
        """For our HELLO: ``(seen_epoch, delivered_upto)`` — committed only — or None."""
        return None if self._epoch is None else (self._epoch, self._committed)

    # --- inputs -------------------------------------------------------------------

    def on_hello(self, hello: Hello) -> NewEpoch | None:
        """Learn the peer's epoch from its HELLO.

        Returns:
            ``NewEpoch`` if ``hello.epoch`` is not the epoch we know: its stream now
            restarts at ``hello.base_seq`` (normally 1). None otherwise, including for a
            late HELLO of an epoch we already left.
        """
        if hello.epoch == self._epoch or hello.epoch in self._retired:
            return None
        old = self._epoch
        if old is not None:
            self._retired = [*self._retired[-(_RETIRED_EPOCHS - 1) :], old]
        base = max(hello.base_seq, 1)
        self._epoch = hello.epoch
        self._committed = self._receipted = base - 1
        self._expected = base
        self._chain = self._committed_chain = ZERO_HASH if base == 1 else None
        self._pending_chains.clear()
        self._buffer.clear()
        self._buffered_bytes = 0
        self._ack_needed = True
        return NewEpoch(old, hello.epoch, base)

    def on_data_untrusted(self, data: Data, now: float) -> list[Accepted]:
        """Handle one DATA frame from the peer.

        Returns:
            The envelopes now deliverable in order (possibly several, when this one
            fills a gap), or an empty list (duplicate, buffered, or over a limit).

        Raises:
            DecodeError, LimitError: malformed envelope.
            AuthenticationError: wrong keys, bad signature, or a broken chain.
            ReplayError: an envelope of an epoch other than the current one.
        """
        env = decode_envelope_untrusted(data.raw, self.max_message)
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
            self._buffer[seq] = (data, env)
            self._buffered_bytes += len(data.raw)
            self._ack_needed = True
            return []
        if self._chain is not None and env.prev != self._chain:
            self.chain_breaks += 1
            raise AuthenticationError(f"envelope {seq} does not chain to its predecessor")
        accepted = [self._accept(data, env)]
        self._drain(accepted)
        return accepted

    def on_committed(self, epoch: bytes, upto: int, now: float) -> None:
        """The daemon made everything <= ``upto`` of ``epoch`` durable: ACKs may cover it.

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

    # --- outputs ------------------------------------------------------------------

    def request_ack(self) -> None:
        """Make ``ack_due`` answer once even with nothing new (a HELLO wants an answer)."""
        self._ack_needed = True

    def ack_due(self, now: float) -> Ack | None:
        """One ACK if one is due (new committed data, a duplicate, a gap), else None.

        Cumulative ``upto`` is the committed upto; ``ranges`` the first 32 runs of
        buffered seqs; ``window`` our reorder limit.
        """
        if not self._ack_needed or self._epoch is None:
            return None
        self._ack_needed = False
        return Ack(self._epoch, self._committed, self._ranges(), self.reorder_limit)

    def receipt_due(self, now: float, receipt_every: float = 1.0) -> tuple[int, bytes] | None:
        """``(upto, chain)`` to sign as a receipt, at most every ``receipt_every`` seconds
        and only when the committed upto advanced since the last one."""
        if self._committed <= self._receipted or self._committed_chain is None:
            return None
        if self._last_receipt is not None and now - self._last_receipt < receipt_every:
            return None
        self._receipted = self._committed
        self._last_receipt = now
        return self._committed, self._committed_chain

    # --- internals ----------------------------------------------------------------

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
        return Accepted(env.epoch, env.seq, data.raw, data.sig, env, chain)

    def _drain(self, accepted: list[Accepted]) -> None:
        while self._expected in self._buffer:
            data, env = self._buffer.pop(self._expected)
            self._buffered_bytes -= len(data.raw)
            if env.prev != self._chain:
                self.chain_breaks += 1  # signed by the peer, yet forked: drop it
                return
            accepted.append(self._accept(data, env))

    def _ranges(self) -> tuple[tuple[int, int], ...]:
        ranges: list[tuple[int, int]] = []
        for seq in sorted(self._buffer):
            if ranges and ranges[-1][1] + 1 == seq:
                ranges[-1] = (ranges[-1][0], seq)
            elif len(ranges) == MAX_RANGES:
                break
            else:
                ranges.append((seq, seq))
        return tuple(ranges)
