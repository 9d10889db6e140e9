"""The store's audit: every stored signature, chain link and receipt re-checked
(``hotline verify``, and the simulator and tests after every scenario).

The store keeps the exact signed bytes of every envelope both ways, so the whole
transcript can be audited offline, on one consistent snapshot (the daemon may keep
running). ``verify_store`` checks every item and collects **every** bad one:

* **sent** (our streams: per epoch of ours and per precedence lane): seqs contiguous
  from 1; each envelope decodes and carries our signature (SSHSIG, namespace
  ``hotline``), names its stored seq, lane and epoch, is from our key to the pinned
  peer and links to the previous one (``prev`` = SHA-256 of its bytes, zeros for seq
  1); the peer's ack is not above our last seq.
* **received** (the peer's streams, per epoch and lane): the same checks with the roles
  swapped, seqs contiguous from the lane's first stored seq up to its
  ``delivered_upto``, and the stored chain hash there matches. A *gap* the daemon
  recorded (our store went back in time and the sender no longer held those seqs,
  DESIGN §4b) is not a failure: it is named in the summary, and the chain is checked
  again from the first message after it.
* **receipts**: each decodes, acknowledges our stream (sender = us) in the epoch and
  lane it is stored under, is signed by the peer (namespace ``hotline-receipt``), and
  its chain hash equals that of our stored envelope at ``upto``: the peer has signed
  the very transcript we hold.

One problem per bad item, naming its direction and seq. A chain link is checked
against the previous envelope only when that one's bytes are genuine (it decodes and
its signature verifies), so one altered message is reported once, not again at its
successor; a missing run of seqs is one problem. Each stream goes through its own
function that reports into the one ``VerifyReport`` (``add``), so more streams (e.g.
one per precedence lane) are more calls, not another structure.

``VerifyReport.summary`` is ``verified N sent, M received, R receipts: OK`` (plus
``, G known gaps``) or names the count of problems; ``problem_lines`` gives each
problem as one line escaped for the terminal (at most ``MAX_SHOWN``, then ``... and K
more``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from hotline.errors import RemoteProtocolError
from hotline.proto import envelope as ev
from hotline.proto.identity import PublicKey
from hotline.proto.lanes import lane_name
from hotline.proto.records import InRecord, ReceiptRecord
from hotline.store import Gap, LaneState, Store
from hotline.textsafe import escape

MAX_SHOWN = 20


@dataclass
class VerifyReport:
    """What ``verify_store`` checked, and the problems it found (the first ``MAX_SHOWN``)."""

    sent: int = 0
    received: int = 0
    receipts: int = 0
    gaps: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        """True if every stored item verified."""
        return self.problem_count == 0

    def add(self, problem: str) -> None:
        """Record one bad item; only the first ``MAX_SHOWN`` are kept (escaped), all counted."""
        self.problem_count += 1
        if len(self.problems) < MAX_SHOWN:
            self.problems.append(escape(problem))

    def problem_lines(self) -> list[str]:
        """The kept problems, then ``... and K more`` if some were not kept."""
        hidden = self.problem_count - len(self.problems)
        return self.problems + ([f"... and {hidden} more"] if hidden else [])

    def summary(self) -> str:
        """The one-line result."""
        counts = f"{self.sent} sent, {self.received} received, {self.receipts} receipts"
        if self.gaps:
            counts += f", {self.gaps} known gaps"
        if self.ok:
            return f"verified {counts}: OK"
        noun = "problem" if self.problem_count == 1 else "problems"
        return f"verify FAILED: {self.problem_count} {noun} in {counts}"


class _Bad(Exception):
    """One bad item; its message names direction and seq.

    ``genuine``: the item's bytes are still the signer's (they decode and the signature
    verifies), so its successor's chain link can be checked against them.
    """

    def __init__(self, message: str, genuine: bool = False) -> None:
        super().__init__(message)
        self.genuine = genuine


def verify_store(store: Store, our_public: PublicKey, peer_public: PublicKey) -> VerifyReport:
    """Check every stored envelope and receipt (see the module header). Never raises for
    a bad item: each one is added to the returned ``VerifyReport``."""
    report = VerifyReport()
    with store.snapshot():
        for epoch, _reason in store.out_epochs():
            for lane_state in store.out_lanes(epoch):
                _verify_sent(store, lane_state, our_public, peer_public, report)
        gaps = store.gaps()
        report.gaps = len(gaps)
        for epoch in store.peer_epochs():
            for lane_state in store.peer_lanes(epoch):
                _verify_received(store.iter_incoming(epoch, lane_state.lane), lane_state,
                                 [g for g in gaps if (g.epoch, g.lane) == (epoch, lane_state.lane)],
                                 peer_public, our_public, report)
        _verify_receipts(store, our_public, peer_public, report)
    return report


def _check_envelope(
    what: str, record: InRecord, prev: bytes | None, signer: PublicKey, recipient: PublicKey,
) -> None:
    """One envelope: schema, signature, then seq, epoch, from/to, chain link (if known).

    Raises:
        _Bad: the first problem; ``genuine`` once schema and signature have passed.
    """
    raw, seq = record.raw, record.seq
    try:
        env = ev.decode_envelope_untrusted(raw, max_message=len(raw))
    except RemoteProtocolError as err:
        raise _Bad(f"{what}: not a valid envelope: {err}") from err
    try:
        ev.verify_envelope(signer, raw, record.sig)
    except RemoteProtocolError as err:
        raise _Bad(f"{what}: signature does not verify") from err
    if (env.lane, env.seq) != (record.lane, seq):
        raise _Bad(f"{what}: the envelope says {lane_name(env.lane)} seq {env.seq}",
                   genuine=True)
    if env.epoch != record.epoch:
        raise _Bad(f"{what}: the envelope is from another epoch ({env.epoch.hex()})",
                   genuine=True)
    if env.sender != signer.raw or env.recipient != recipient.raw:
        raise _Bad(f"{what}: wrong from/to keys in the envelope", genuine=True)
    if prev is not None and env.prev != prev:
        raise _Bad(f"{what}: broken chain link (prev is not the hash of seq {seq - 1})",
                   genuine=True)


def _checked(report: VerifyReport, what: str, record: InRecord, prev: bytes | None,
             signer: PublicKey, recipient: PublicKey) -> bytes | None:
    """``_check_envelope``, its problem added to ``report``; returns the ``prev`` the
    next envelope must carry, or None if these bytes are not genuine."""
    try:
        _check_envelope(what, record, prev, signer, recipient)
    except _Bad as bad:
        report.add(str(bad))
        return ev.chain_hash(record.raw) if bad.genuine else None
    return ev.chain_hash(record.raw)


def _missing(direction: str, first: int, last: int, why: str, tag: str = "") -> str:
    """One problem line for a run of missing seqs, e.g. ``sent seqs 2-4: missing (…)``."""
    seqs = f"seq {first}" if first == last else f"seqs {first}-{last}"
    return f"{direction} {seqs}{tag}: missing ({why})"


def _verify_sent(store: Store, lane: LaneState, ours: PublicKey, peer: PublicKey,
                 report: VerifyReport) -> None:
    direction = f"sent {lane_name(lane.lane)}"
    tag = f" (our epoch {lane.epoch.hex()[:8]})"
    expected = 1
    prev: bytes | None = ev.ZERO_HASH
    for out in store.iter_outgoing(lane.epoch, lane.lane):
        record = InRecord(out.epoch, out.lane, out.seq, out.raw, out.sig)
        if record.seq != expected:
            report.add(_missing(direction, expected, record.seq - 1,
                                f"next stored is seq {record.seq}", tag))
            prev = None
        prev = _checked(report, f"{direction} seq {record.seq}{tag}", record, prev, ours, peer)
        if prev is not None and prev != out.chain:
            report.add(f"{direction} seq {record.seq}{tag}: stored chain hash does not match")
        expected = record.seq + 1
        report.sent += 1
    if lane.upto > expected - 1:
        report.add(_missing(direction, expected, lane.upto,
                            f"the peer acknowledged up to {lane.upto}", tag))


def _verify_received(
    records: Iterable[InRecord], lane: LaneState, gaps: list[Gap], peer: PublicKey,
    ours: PublicKey, report: VerifyReport,
) -> None:
    direction = f"received {lane_name(lane.lane)}"
    tag = f" (peer epoch {lane.epoch.hex()[:8]})"
    expected = lane.first_seq
    prev: bytes | None = ev.ZERO_HASH if expected == 1 else None  # unknown below first_seq
    for record in records:
        if record.seq != expected:
            explained = any(g.first <= expected and record.seq - 1 <= g.last for g in gaps)
            if expected <= lane.upto and not explained:
                last = min(record.seq - 1, lane.upto)
                report.add(_missing(direction, expected, last,
                                    f"next stored is seq {record.seq}", tag))
            prev = None  # nothing to check a link across
        what = f"{direction} seq {record.seq}{tag}"
        problems_before = report.problem_count
        prev = _checked(report, what, record, prev, peer, ours)
        good = report.problem_count == problems_before
        if good and record.seq == lane.upto and prev != lane.chain:
            report.add(f"{what}: the stored chain hash of the delivered head does not match")
        expected = record.seq + 1
        report.received += 1
    explained = any(g.first <= expected and lane.upto <= g.last for g in gaps)
    if expected <= lane.upto and not explained:
        report.add(_missing(direction, expected, lane.upto,
                            f"delivered up to {lane.upto}", tag))


def _verify_receipts(
    store: Store, ours: PublicKey, peer: PublicKey, report: VerifyReport,
) -> None:
    for record in store.iter_receipts():
        try:
            _check_receipt(store, record, ours, peer)
        except _Bad as bad:
            report.add(str(bad))
        report.receipts += 1


def _check_receipt(store: Store, record: ReceiptRecord, ours: PublicKey, peer: PublicKey) -> None:
    what = f"receipt upto sent {lane_name(record.lane)} seq {record.upto}"
    try:
        receipt = ev.decode_receipt_untrusted(record.raw)
        ev.verify_receipt(peer, record.raw, record.sig)
    except RemoteProtocolError as err:
        raise _Bad(f"{what}: bad receipt: {err}") from err
    if receipt.sender != ours.raw or receipt.recipient != peer.raw:
        raise _Bad(f"{what}: the receipt names other keys")
    if (receipt.upto, receipt.chain, receipt.lane) != (record.upto, record.chain, record.lane) \
            or receipt.epoch not in (None, record.epoch):
        raise _Bad(f"{what}: the receipt does not match its stored epoch/lane/upto/chain")
    out = store.get_outgoing(record.lane, record.upto, record.epoch)
    if out is None or ev.chain_hash(out.raw) != receipt.chain:
        raise _Bad(f"{what}: the peer signed a different transcript than we store")
