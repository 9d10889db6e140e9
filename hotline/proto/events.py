"""Events the Link hands to the daemon (``Link.next_events``): plain frozen dataclasses.

The daemon turns them into store writes (``Delivered``, ``Acked``,
``ReceiptReceived``), log lines (``PathUp``/``PathDown``/``PrimaryChanged``/
``HandshakeComplete``/``NewEpoch``/``Dropped``) and transport actions
(``ResetPath``: drop the TCP connection and re-dial); ``InitiationAccepted`` carries
the handshake replay floor for the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from hotline.proto.incoming import Accepted, NewEpoch


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
    """A Noise session was established (and confirmed) over ``path_id``."""

    path_id: int
    initiator: bool


@dataclass(frozen=True)
class Dropped:
    """A packet from the network was refused; ``kind`` is the error class name."""

    path_id: int
    kind: str
    reason: str


@dataclass(frozen=True)
class InitiationAccepted:
    """A peer's initiation authenticated; its timestamp is the new replay floor.

    The daemon persists it and passes the last one back as ``timestamp_floor_ns`` at
    start-up, so a captured initiation is refused after a restart too (DESIGN §2b).
    """

    timestamp_ns: int


@dataclass(frozen=True)
class ResetPath:
    """The transport should drop this path's connection and re-dial it."""

    path_id: int


@dataclass(frozen=True)
class Delivered:
    """Messages accepted in order; the daemon commits them, then calls on_inbox_committed."""

    messages: tuple[Accepted, ...]


@dataclass(frozen=True)
class Acked:
    """The peer acknowledged (stored) our messages up to ``upto``."""

    upto: int


@dataclass(frozen=True)
class ReceiptReceived:
    """A verified signed receipt from the peer for our stream ``epoch`` up to ``upto``."""

    epoch: bytes
    upto: int
    chain: bytes
    raw: bytes
    sig: bytes


Event = (
    PathUp | PathDown | PrimaryChanged | HandshakeComplete | Dropped | ResetPath
    | Delivered | Acked | ReceiptReceived | NewEpoch | InitiationAccepted
)
