# hotline/transport/events.py — what the transports tell the runner, and what they offer it.
#
# Owns: the event dataclasses every transport puts into the ONE trio memory channel the
# runner reads (so the runner can drain everything that arrived in one loop turn with
# ``receive_nowait``), and the ``PathTransport`` protocol the runner sends through.
#
#   PacketIn(path_id, data, addr, conn) one whole packet (a TCP frame or a UDP datagram),
#                                       not authenticated: the link decides that. ``conn``
#                                       is an opaque token of the TCP connection it came
#                                       on (None for UDP), handed back to the transport.
#   PathConnected(path_id)              the path can carry packets now (TCP: the first
#                                       usable connection is up — one we dialled, or an
#                                       inbound one that authenticated; UDP: socket bound
#                                       and the remote address resolved).
#   PathDisconnected(path_id, reason)   the last usable connection of a TCP path went away.
#
# ``path_id`` is the index of the path in the peer's ``paths`` list from the config.
# Transports put events through an ``EventSink``: that channel's send side, or the
# daemon's ``RunnerInbox`` (daemon/runner.py), which hands an event to an idle runner at
# once instead of waking it.
#
# The runner tells a transport what the link made of a packet (DESIGN §2b, §3):
# ``on_authenticated`` (it proves the peer holds the keys: trust where it came from — UDP
# roams there, TCP trusts that connection) and ``on_answered`` (a handshake reply to it
# is queued: send that reply back where it came from, trusting nothing else about it).
"""Transport events and the interface the runner drives paths through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

# A socket address as the socket module gives it: (host, port) for IPv4,
# (host, port, flowinfo, scope_id) for IPv6.
Address: TypeAlias = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class PacketIn:
    """One packet received on a path (unauthenticated bytes)."""

    path_id: int
    data: bytes
    addr: Address | None
    conn: object | None = None


@dataclass(frozen=True, slots=True)
class PathConnected:
    """The path can carry packets now."""

    path_id: int


@dataclass(frozen=True, slots=True)
class PathDisconnected:
    """The path lost its last connection; ``reason`` is a short word for the log."""

    path_id: int
    reason: str


TransportEvent: TypeAlias = PacketIn | PathConnected | PathDisconnected


T_contra = TypeVar("T_contra", contravariant=True)


class Sink(Protocol[T_contra]):
    """Where a task puts items for the runner: a trio memory channel's send side fits,
    and so does the daemon's ``RunnerInbox``."""

    async def send(self, value: T_contra, /) -> None:
        """Put one item, waiting for room."""

    def send_nowait(self, value: T_contra, /) -> None:
        """Put one item now (``trio.WouldBlock`` when there is no room)."""


EventSink: TypeAlias = Sink[TransportEvent]  # what a transport puts its events into


class PathTransport(Protocol):
    """What the runner calls on each path (``TcpPath`` and ``UdpPath`` implement it)."""

    path_id: int

    def send(self, data: bytes, urgent: bool = False) -> None:
        """Queue one packet (``urgent``: ahead of ordinary ones); never blocks; drops (and
        counts) when it cannot keep up."""

    def reset(self) -> None:
        """The link declared the path dead: drop its connections and start over."""

    def on_authenticated(self, packet: PacketIn) -> None:
        """``packet`` (from this path) authenticated: trust where it came from."""

    def on_answered(self, packet: PacketIn) -> None:
        """A handshake reply to ``packet`` is queued: the next handshake-plane packet sent
        on this path goes back where ``packet`` came from. Grants no trust."""
