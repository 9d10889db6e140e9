"""``hotline verify``: re-check every stored signature, chain link and receipt.

The store keeps the exact signed bytes of every envelope both ways, so the whole
transcript can be audited offline, on one consistent snapshot (the daemon may keep
running). ``verify_store`` checks, and stops at the first bad item:

* **sent** (our stream, one epoch): seqs contiguous from 1; each envelope decodes, names
  its stored seq and our epoch, is from our key to the pinned peer, links to the
  previous one (``prev`` = SHA-256 of its bytes, zeros for seq 1) and carries our
  signature (SSHSIG, namespace ``hotline``); the peer's ack is not above our last seq.
* **received** (the peer's streams, one per epoch): the same checks with the roles
  swapped, seqs contiguous from the epoch's first stored seq up to its
  ``delivered_upto`` (a gap above it is legal: those wait for a retransmission; the
  chain is checked across every pair of neighbours), and the stored chain hash at
  ``delivered_upto`` matches.
* **receipts**: each decodes, acknowledges our stream (sender = us) and is signed by the
  peer (namespace ``hotline-receipt``), and its chain hash equals that of our stored
  envelope at ``upto``: the peer has signed the very transcript we hold.

Prints ``verified N sent, M received, R receipts: OK``; on a failure, the first bad item
as one line naming direction and seq, exit 1 (``CheckFailedError``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass

from hotline.errors import CheckFailedError, RemoteProtocolError
from hotline.proto import envelope as ev
from hotline.proto.identity import PublicKey
from hotline.store import InRecord, PeerStream, ReceiptRecord, Store


@dataclass
class VerifyReport:
    """What ``verify_store`` checked, and the first problem found (None if all is well)."""

    sent: int = 0
    received: int = 0
    receipts: int = 0
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """True if every stored item verified."""
        return self.problem is None

    def summary(self) -> str:
        """The one-line result."""
        counts = f"{self.sent} sent, {self.received} received, {self.receipts} receipts"
        if self.problem is None:
            return f"verified {counts}: OK"
        return f"verify FAILED: {self.problem} (after {counts} verified)"


class _Bad(Exception):
    """The first bad item; its message names direction and seq."""


def run(args: argparse.Namespace) -> int:
    """Entry point of ``hotline verify -c FILE | -i LINK``."""
    from hotline.config import find_config, load_config
    from hotline.keyfile import load_identity

    config = load_config(find_config(args.config, args.link))
    our_public = load_identity(config.key_path).public
    store = Store.open(config.state_dir, our_public.raw, config.peer_key.raw, create=False)
    try:
        report = verify_store(store, our_public, config.peer_key)
    finally:
        store.close()
    if not report.ok:
        raise CheckFailedError(report.summary())
    print(report.summary())
    return 0


def verify_store(store: Store, our_public: PublicKey, peer_public: PublicKey) -> VerifyReport:
    """Check every stored envelope and receipt (see the module header). Never raises for
    a bad item: the first one is reported in ``VerifyReport.problem``."""
    report = VerifyReport()
    with store.snapshot():
        try:
            _verify_sent(store, our_public, peer_public, report)
            for stream in store.peer_epochs():
                _verify_received(store.iter_incoming(stream.epoch), stream,
                                 peer_public, our_public, report)
            _verify_receipts(store, our_public, peer_public, report)
        except _Bad as bad:
            report.problem = str(bad)
    return report


def _check_envelope(
    what: str, raw: bytes, sig: bytes, seq: int, epoch: bytes, prev: bytes | None,
    signer: PublicKey, recipient: PublicKey,
) -> None:
    """One envelope: schema, seq, epoch, from/to, chain link (if known), signature."""
    try:
        env = ev.decode_envelope_untrusted(raw, max_message=len(raw))
    except RemoteProtocolError as err:
        raise _Bad(f"{what}: not a valid envelope: {err}") from err
    if env.seq != seq:
        raise _Bad(f"{what}: the envelope says seq {env.seq}")
    if env.epoch != epoch:
        raise _Bad(f"{what}: the envelope is from another epoch ({env.epoch.hex()})")
    if env.sender != signer.raw or env.recipient != recipient.raw:
        raise _Bad(f"{what}: wrong from/to keys in the envelope")
    if prev is not None and env.prev != prev:
        raise _Bad(f"{what}: broken chain link (prev is not the hash of seq {seq - 1})")
    try:
        ev.verify_envelope(signer, raw, sig)
    except RemoteProtocolError as err:
        raise _Bad(f"{what}: signature does not verify") from err


def _verify_sent(store: Store, ours: PublicKey, peer: PublicKey, report: VerifyReport) -> None:
    expected, prev = 1, ev.ZERO_HASH
    for record in store.iter_outgoing():
        if record.seq != expected:
            raise _Bad(f"sent seq {expected}: missing (next stored is seq {record.seq})")
        _check_envelope(f"sent seq {record.seq}", record.raw, record.sig, record.seq,
                        store.epoch, prev, ours, peer)
        prev = ev.chain_hash(record.raw)
        expected += 1
        report.sent += 1
    acked = store.acked_upto()
    if acked > expected - 1:
        raise _Bad(f"sent seq {expected}: missing (the peer acknowledged up to {acked})")


def _verify_received(
    records: Iterable[InRecord], stream: PeerStream, peer: PublicKey, ours: PublicKey,
    report: VerifyReport,
) -> None:
    tag = f"(peer epoch {stream.epoch.hex()[:8]})"
    expected = stream.first_seq
    prev: bytes | None = ev.ZERO_HASH if expected == 1 else None  # unknown below first_seq
    for record in records:
        if record.seq != expected:
            if expected <= stream.delivered_upto or record.seq < expected:
                raise _Bad(f"received seq {expected} {tag}: missing "
                           f"(next stored is seq {record.seq})")
            prev = None  # a legal gap above delivered_upto: no link to check across it
        what = f"received seq {record.seq} {tag}"
        _check_envelope(what, record.raw, record.sig, record.seq, record.epoch, prev,
                        peer, ours)
        prev = ev.chain_hash(record.raw)
        if record.seq == stream.delivered_upto and prev != stream.chain:
            raise _Bad(f"{what}: the stored chain hash of the delivered head does not match")
        expected = record.seq + 1
        report.received += 1
    if expected <= stream.delivered_upto:
        raise _Bad(f"received seq {expected} {tag}: missing "
                   f"(delivered up to {stream.delivered_upto})")


def _verify_receipts(
    store: Store, ours: PublicKey, peer: PublicKey, report: VerifyReport,
) -> None:
    for record in store.iter_receipts():
        _check_receipt(store, record, ours, peer)
        report.receipts += 1


def _check_receipt(store: Store, record: ReceiptRecord, ours: PublicKey, peer: PublicKey) -> None:
    what = f"receipt upto sent seq {record.upto}"
    try:
        receipt = ev.decode_receipt_untrusted(record.raw)
        ev.verify_receipt(peer, record.raw, record.sig)
    except RemoteProtocolError as err:
        raise _Bad(f"{what}: bad receipt: {err}") from err
    if receipt.sender != ours.raw or receipt.recipient != peer.raw:
        raise _Bad(f"{what}: the receipt names other keys")
    if (receipt.upto, receipt.chain, record.epoch) != (record.upto, record.chain, store.epoch):
        raise _Bad(f"{what}: the receipt does not match its stored upto/chain/epoch")
    out = store.get_outgoing(record.upto)
    if out is None or ev.chain_hash(out.raw) != receipt.chain:
        raise _Bad(f"{what}: the peer signed a different transcript than we store")
