"""Our stream's heads: assigns seq and prev per lane, builds and signs envelopes.

The endpoint seals each message the moment ``send`` asks for it, commits the batch to
the outbox, and only then answers the client and pushes the record to the lane's
``OutgoingStream``. Sealing advances the head in memory; if the commit fails the
endpoint calls ``rollback`` to the last committed head, so a seq is never sent with
two different byte strings (nothing is sent before its commit).
"""

from __future__ import annotations

from hotline.errors import LocalProtocolError
from hotline.proto.envelope import chain_hash, encode_envelope, sign_envelope
from hotline.proto.identity import Identity, PublicKey
from hotline.proto.records import OutRecord


class LaneSequencer:
    """Numbers, chains and signs our messages of one lane (DESIGN §4, §9 contract)."""

    def __init__(self, our: Identity, their: PublicKey, epoch: bytes, lane: int,
                 last_seq: int, last_chain: bytes, max_message: int) -> None:
        self._our = our
        self._their = their
        self.epoch = epoch
        self.lane = lane
        self.last_seq = last_seq
        self.last_chain = last_chain
        self.max_message = max_message

    def seal(self, body: bytes, media_type: str, ts_ns: int,
             send_id: str | None = None) -> OutRecord:
        """Make the next envelope of this lane.

        Raises:
            LocalProtocolError: ``body`` is over ``max_message`` or ``media_type`` is
                not a media type.
        """
        if len(body) > self.max_message:
            raise LocalProtocolError(
                f"message of {len(body)} bytes is over max_message ({self.max_message})")
        seq = self.last_seq + 1
        raw = encode_envelope(self.epoch, self._our.public.raw, self._their.raw, seq, ts_ns,
                              self.last_chain, media_type, body, lane=self.lane)
        chain = chain_hash(raw)
        record = OutRecord(self.epoch, self.lane, seq, raw, sign_envelope(self._our, raw),
                           chain, send_id)
        self.last_seq, self.last_chain = seq, chain
        return record

    def rollback(self, last_seq: int, last_chain: bytes) -> None:
        """Forget everything sealed after ``last_seq`` (its commit failed)."""
        self.last_seq, self.last_chain = last_seq, last_chain
