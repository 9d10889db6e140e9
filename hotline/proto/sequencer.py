"""Our outgoing stream's head: assigns seq and prev, builds and signs envelopes.

The daemon seals each message the moment ``send`` asks for it, then commits the batch
to the outbox and only then answers the client and hands the records to the Link.
Sealing advances the head in memory; if the commit fails the daemon stops (the store is
the authority on restart), so a seq is never sent twice with different bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from hotline.errors import LocalProtocolError
from hotline.proto.envelope import chain_hash, encode_envelope, sign_envelope
from hotline.proto.identity import Identity, PublicKey


@dataclass(frozen=True)
class Sealed:
    """One signed envelope ready for the outbox."""

    seq: int
    raw: bytes
    sig: bytes


class Sequencer:
    """Numbers, chains and signs our messages (DESIGN §4 envelope contract)."""

    def __init__(
        self,
        our: Identity,
        their: PublicKey,
        epoch: bytes,
        last_seq: int,
        last_chain: bytes,
        max_message: int,
    ) -> None:
        self._our = our
        self._their = their
        self._epoch = epoch
        self.last_seq = last_seq
        self._last_chain = last_chain
        self.max_message = max_message

    def seal(self, body: bytes, media_type: str, ts_ns: int) -> Sealed:
        """Make the next envelope. Raises LocalProtocolError if ``body`` is too large."""
        if len(body) > self.max_message:
            raise LocalProtocolError(
                f"message of {len(body)} bytes is over max_message ({self.max_message})"
            )
        seq = self.last_seq + 1
        raw = encode_envelope(
            epoch=self._epoch,
            sender=self._our.public.raw,
            recipient=self._their.raw,
            seq=seq,
            ts=ts_ns,
            prev=self._last_chain,
            type=media_type,
            body=body,
        )
        sig = sign_envelope(self._our, raw)
        self.last_seq = seq
        self._last_chain = chain_hash(raw)
        return Sealed(seq, raw, sig)
