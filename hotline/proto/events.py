"""Events the Link hands to the endpoint (``Link.next_events``): plain frozen dataclasses.

The endpoint turns them into store writes (``Delivered``, ``Acked``,
``ReceiptReceived``, ``NewEpoch``, ``GapFound``, ``Forked``, ``RatchetDerived`` —
defined in ``pq.py``), store reads
(``ChainWanted``), log lines (``PathUp``/``PathDown``/``PrimaryChanged``/
``HandshakeComplete``/``Dropped`` and the above) and transport actions (``ResetPath``:
drop the TCP connection and re-dial).
"""

from __future__ import annotations

from dataclasses import dataclass

from hotline.proto.incoming import Accepted, Gap
from hotline.proto.outgoing import Fork
from hotline.proto.pq import RatchetDerived


@dataclass(frozen=True)
class PathUp:
    """An authenticated packet arrived on a path that was down."""

    path_id: int
    url: str


@dataclass(frozen=True)
class PathDown:
    """A path stopped carrying authenticated packets (or its connection closed)."""

    path_id: int
    url: str
    reason: str


@dataclass(frozen=True)
class PrimaryChanged:
    """The path that carries data changed (failover, or the first path came back)."""

    old: str | None
    new: str | None


@dataclass(frozen=True)
class HandshakeComplete:
    """A Noise session was established (and confirmed) over ``path_id``; ``pq``: its
    keys depend on a post-quantum secret too (DESIGN §11)."""

    path_id: int
    initiator: bool
    pq: bool = False


@dataclass(frozen=True)
class Dropped:
    """Something from the network was refused; ``kind`` is the error class name."""

    path_id: int
    kind: str
    reason: str


@dataclass(frozen=True)
class InitiationAccepted:
    """A peer's initiation authenticated; its timestamp is the new replay floor, which
    the endpoint stores so a captured initiation is refused after a restart too."""

    timestamp_ns: int


@dataclass(frozen=True)
class ResetPath:
    """The transport should drop this path's connection and re-dial it."""

    path_id: int


@dataclass(frozen=True)
class Delivered:
    """Messages accepted in order; the endpoint commits them, then tells the Link."""

    messages: tuple[Accepted, ...]


@dataclass(frozen=True)
class Acked:
    """The peer holds our ``lane`` of ``epoch`` up to ``upto`` (chain hash ``chain``)."""

    epoch: bytes
    lane: int
    upto: int
    chain: bytes


@dataclass(frozen=True)
class ReceiptReceived:
    """A signed receipt from the peer for our ``lane`` of ``epoch`` up to ``upto``
    (its signature verified; whether it signs our transcript the store checks)."""

    epoch: bytes
    lane: int
    upto: int
    chain: bytes
    raw: bytes
    sig: bytes


@dataclass(frozen=True)
class NewEpoch:
    """The peer's stream started a new epoch (its store was created anew): log loudly.

    ``old`` is the epoch we knew (None: none); its lanes restart at ``base_seqs``.
    ``old_delivered`` is how far we held each lane of ``old``.
    """

    old: bytes | None
    epoch: bytes
    base_seqs: tuple[int, ...]
    old_delivered: tuple[int, ...]


@dataclass(frozen=True)
class GapFound:
    """Seqs of the peer's lane we will never get (our store went back in time)."""

    gap: Gap


@dataclass(frozen=True)
class Forked:
    """The peer holds more of our ``lane`` of ``epoch``, or other bytes, than our store:
    our store went back in time. The endpoint starts a new epoch."""

    epoch: bytes
    lane: int
    fork: Fork


@dataclass(frozen=True)
class PeerLostOurs:
    """The peer's store lost our ``lane`` of ``epoch`` from ``first`` to ``last`` after
    acknowledging it (restored from an older copy): name it, it cannot be re-sent."""

    epoch: bytes
    lane: int
    first: int
    last: int


@dataclass(frozen=True)
class ChainWanted:
    """Read our stored chain hash at ``upto`` of ``lane`` and call ``Link.on_chain``."""

    epoch: bytes
    lane: int
    upto: int


Event = (
    PathUp | PathDown | PrimaryChanged | HandshakeComplete | Dropped | ResetPath
    | Delivered | Acked | ReceiptReceived | NewEpoch | GapFound | Forked | ChainWanted
    | PeerLostOurs | InitiationAccepted | RatchetDerived
)
