# hotline/transport/tcp_listener.py — the TCP listener: who gets an inbound slot (DESIGN §2b).
#
# Owns: the inbound connections being served, and the choice of which to evict.
#
# How it works:
#   * Every accepted connection is attributed to one of the peer's TCP paths
#     (``choose_inbound_path``) and served by that ``TcpPath`` (tcp.py), which gives it
#     ``auth_timeout`` seconds to carry an authenticated packet. Only the link can tell
#     that, so until then the connection may be anyone's.
#   * Limits: at most ``max_inbound`` inbound connections, and at most
#     ``max_unauthenticated_per_source`` evictable ones per source (an IPv4 address, or
#     an IPv6 /64: one host commonly has a whole /64). Evictable: nothing on it passed
#     any check of ours — neither an authenticated packet nor a valid initiation (which
#     the link answered; a replay of a captured one passes only once after our restart,
#     so that buys a replayer one slot until its deadline). A newcomer over the
#     per-source limit evicts the oldest evictable connection of its source; over the
#     total, the oldest evictable connection of all. It is refused only when no slot is
#     evictable: an authenticated connection is never evicted for a newcomer, who may
#     be a stranger.
#   * Why evict rather than refuse: a stranger may share the peer's source address
#     (NAT, the same host), and the peer's fresh connection must still get in. It then
#     lives until ``max_unauthenticated_per_source`` newer ones from its source arrive
#     (or ``max_inbound`` from anywhere) unless it carries the peer's initiation first;
#     its first authenticated packet makes it permanent.
"""The TCP listener: accepts inbound connections, limits and evicts the unauthenticated."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from hotline.errors import LocalProtocolError
from hotline.transport.events import Address
from hotline.transport.tcp import TcpConn, TcpPath, peer_address


@dataclass
class ListenerStats:
    """Counters of one TCP listener."""

    accepted: int = 0
    evicted_source_cap: int = 0
    evicted_full: int = 0
    refused_full: int = 0
    refused_no_path: int = 0


def choose_inbound_path(paths: Sequence[TcpPath], addr: Address | None) -> TcpPath | None:
    """The TCP path an inbound connection from ``addr`` belongs to.

    The path whose host is that IP address if there is one, else the first TCP path,
    else None (the peer has no TCP path: refuse).
    """
    if not paths:
        return None
    if addr is not None:
        source = str(addr[0]).split("%", 1)[0]
        for path in paths:
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(path.host) == ipaddress.ip_address(source):
                    return path
    return paths[0]


def source_key(addr: Address | None) -> str:
    """Who a connection comes from, for the per-source limit: the IPv4 address (also
    when IPv4-mapped), or the IPv6 /64."""
    if addr is None:
        return ""
    host = str(addr[0]).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class TcpListener:
    """Accepts inbound connections, makes room for them, and hands each to its ``TcpPath``.

    Args:
        host, port: where to listen (port 0 picks a free one; see ``run``).
        paths: the peer's TCP paths (see ``choose_inbound_path``).
        max_inbound: inbound connections served at once.
        max_unauthenticated_per_source: evictable inbound connections at once from
            one source (IPv4 address or IPv6 /64); see the module header.
        auth_timeout: seconds an inbound connection may stay unauthenticated. Two
            handshake retry intervals (5 s each): a peer that dials while its last
            initiation is in flight on another path sends the next one within 5 s.

    Raises:
        LocalProtocolError: unless 1 <= max_unauthenticated_per_source <= max_inbound.
    """

    def __init__(
        self,
        host: str,
        port: int,
        paths: Sequence[TcpPath],
        *,
        max_inbound: int = 16,
        max_unauthenticated_per_source: int = 4,
        auth_timeout: float = 10.0,
    ) -> None:
        if not 1 <= max_unauthenticated_per_source <= max_inbound:
            raise LocalProtocolError("need 1 <= max_unauthenticated_per_source <= max_inbound")
        self.host = host
        self.port = port
        self.paths = list(paths)
        self.max_inbound = max_inbound
        self.max_unauthenticated_per_source = max_unauthenticated_per_source
        self.auth_timeout = auth_timeout
        self.stats = ListenerStats()
        self._inbound: list[tuple[TcpConn, str]] = []  # (connection, source), oldest first

    @property
    def active(self) -> int:
        """Inbound connections served now (evicted ones no longer count)."""
        return len(self._inbound)

    @property
    def unauthenticated(self) -> int:
        """Inbound connections served now that no authenticated packet vouched for."""
        return sum(1 for conn, _ in self._inbound if not conn.authenticated)

    async def run(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled; ``started`` gets the trio listeners.

        Raises:
            OSError: the address cannot be bound (before ``started``).
        """
        listeners = await trio.open_tcp_listeners(self.port, host=self.host or None)
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        addr = peer_address(stream)
        path = choose_inbound_path(self.paths, addr)
        if path is None:
            self.stats.refused_no_path += 1
            await trio.aclose_forcefully(stream)
            return
        source = source_key(addr)
        if not self._make_room(source):
            self.stats.refused_full += 1
            await trio.aclose_forcefully(stream)
            return
        self.stats.accepted += 1
        entry = (TcpConn(stream, addr, outbound=False), source)
        self._inbound.append(entry)
        try:
            await path.serve_inbound(entry[0], self.auth_timeout)
        finally:
            with contextlib.suppress(ValueError):  # evicted: already gone
                self._inbound.remove(entry)

    def _make_room(self, source: str) -> bool:
        """Evict for a newcomer from ``source``; False if no slot is evictable."""
        strangers = [entry for entry in self._inbound if entry[0].evictable]
        same_source = [entry for entry in strangers if entry[1] == source]
        if len(same_source) >= self.max_unauthenticated_per_source:
            self.stats.evicted_source_cap += 1
            self._evict(same_source[0])
        elif len(self._inbound) >= self.max_inbound:
            if not strangers:
                return False
            self.stats.evicted_full += 1
            self._evict(strangers[0])
        return True

    def _evict(self, entry: tuple[TcpConn, str]) -> None:
        self._inbound.remove(entry)
        entry[0].close("evicted")
