# hotline/transport/events.py — what the transports tell the runner, and what they offer it.
#
# Owns: the event dataclasses every transport puts into the ONE trio memory channel the
# runner reads (so the runner can drain everything that arrived in one loop turn with
# ``receive_nowait``), and the ``PathTransport`` protocol the runner sends through.
#
#   PacketIn(path_id, data, addr)       one whole packet (a TCP frame or a UDP datagram),
#                                       not authenticated: the link decides that.
#   PathConnected(path_id)              the path can carry packets now (TCP: the first
#                                       connection of the path is up; UDP: socket bound
#                                       and the remote address resolved).
#   PathDisconnected(path_id, reason)   the last connection of a TCP path went away.
#
# ``path_id`` is the index of the path in the peer's ``paths`` list from the config.
"""Transport events and the interface the runner drives paths through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

# A socket address as the socket module gives it: (host, port) for IPv4,
# (host, port, flowinfo, scope_id) for IPv6.
Address: TypeAlias = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class PacketIn:
    """One packet received on a path (unauthenticated bytes)."""

    path_id: int
    data: bytes
    addr: Address | None


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


class PathTransport(Protocol):
    """What the runner calls on each path (``TcpPath`` and ``UdpPath`` implement it)."""

    path_id: int

    def send(self, data: bytes) -> None:
        """Queue one packet; never blocks; drops (and counts) when it cannot keep up."""

    def reset(self) -> None:
        """The link declared the path dead: drop its connections and start over."""
