# hotline/transport/udp.py — UDP paths: datagrams in and out, no protocol logic.
#
# Owns: the UDP sockets of a daemon and the mapping between datagrams and UDP path ids.
#
# How it works:
#   * ``UdpEndpoint.run(listen)`` binds one socket per listen address (IPv6 sockets get
#     IPV6_V6ONLY so "0.0.0.0" and "::" can share a port), resolves every path's
#     configured ``host:port`` (retrying with backoff while DNS fails) and, when no
#     listen socket has the family of a path's remote, binds an ephemeral one. Each
#     socket has one receive task. Once a path has a remote and a socket it is announced
#     with ``PathConnected`` (a UDP path is "connected" as soon as it can send).
#   * A received datagram is read with a buffer of ``max_datagram + 1`` bytes: anything
#     longer than ``max_datagram`` (DESIGN §3: 1232) is dropped and counted, never
#     allocated in full. It is attributed to the UDP path whose current remote is the
#     source address, else whose host matches, else the first UDP path (the peer may
#     have roamed: the link decides). It goes into the events channel with
#     ``send_nowait`` (``PacketIn.conn`` is the socket it arrived on); a full channel
#     drops and counts.
#   * ``send(path_id, data)`` is synchronous and never blocks: it calls ``sendto`` on
#     the (non-blocking) socket the path's last authenticated packet arrived on — so
#     replies leave from the port the peer talks to — or the first socket of the
#     remote's family. EAGAIN drops and counts; other socket errors (unreachable, …)
#     count too. Loss is fine here: the reliable layer retransmits.
#   * Roaming (DESIGN §3): ``UdpPath.on_authenticated(packet)`` makes the packet's source
#     the path's remote — only for a packet that AUTHENTICATED (never an initiation: a
#     captured one can be replayed from anywhere); ``reset_remote`` goes back to the
#     configured one.
#   * Reply to the requester: ``UdpPath.on_answered(packet)`` (the link queued a
#     handshake reply to it) sends the next handshake-plane packet of the path (any type
#     but a transport packet) to that packet's source instead of the remote, without
#     roaming. So a peer that changed address still completes a handshake, and a
#     replayer of a captured initiation (accepted only once after our restart, when
#     the handshake timestamp is not persisted) gets just our reply to it: a response
#     useless without the initiator's keys, or on crossing initiations our initiation.
"""UDP transport: one endpoint, many UDP paths, one events channel."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from hotline.errors import LocalProtocolError
from hotline.proto.packet import PACKET_TRANSPORT, UDP_MAX_DATAGRAM
from hotline.transport.backoff import Backoff
from hotline.transport.events import (
    Address,
    EventSink,
    PacketIn,
    PathConnected,
)

# Requesters remembered for ``on_answered`` (the link answers in the same loop turn).
_MAX_ANSWERS = 16


@dataclass
class UdpStats:
    """Counters of one endpoint (all paths together)."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped_oversize: int = 0
    dropped_no_path: int = 0
    dropped_events_full: int = 0
    dropped_send_full: int = 0
    dropped_no_remote: int = 0
    send_errors: int = 0
    recv_errors: int = 0
    resolve_failures: int = 0
    bind_failures: int = 0


@dataclass
class _Socket:
    """One bound UDP socket: the trio side receives, the stdlib side sends (sync)."""

    tsock: trio.socket.SocketType
    raw: socket.socket
    family: int
    local: Address


@dataclass
class _UdpPathState:
    path_id: int
    host: str
    port: int
    configured: Address | None = None
    remote: Address | None = None
    last_sock: _Socket | None = None
    announced: bool = False
    norm_hosts: set[str] = field(default_factory=set)
    # (source, socket, deadline) of packets the link answers, oldest first.
    answer_to: deque[tuple[Address, _Socket, float]] = field(
        default_factory=lambda: deque(maxlen=_MAX_ANSWERS)
    )


def _norm(addr: Address) -> tuple[str, int]:
    """(canonical ip text, port) of a socket address, for comparisons."""
    host = str(addr[0]).split("%", 1)[0]
    with contextlib.suppress(ValueError):
        host = str(ipaddress.ip_address(host))
    return host, int(addr[1])


class UdpPath:
    """The runner-facing handle of one UDP path (implements ``PathTransport``)."""

    def __init__(self, endpoint: UdpEndpoint, path_id: int) -> None:
        self.path_id = path_id
        self._endpoint = endpoint

    def send(self, data: bytes, urgent: bool = False) -> None:
        """Send one packet as one datagram at once (so ``urgent`` changes nothing);
        never blocks (see ``UdpEndpoint.send``)."""
        self._endpoint.send(self.path_id, data)

    def reset(self) -> None:
        """Forget a roamed address: go back to the configured remote."""
        self._endpoint.reset_remote(self.path_id)

    def on_authenticated(self, packet: PacketIn) -> None:
        """Roam: ``packet`` authenticated, so send to its source from now on."""
        if packet.addr is not None and isinstance(packet.conn, _Socket):
            self._endpoint.set_remote(self.path_id, packet.addr, packet.conn)

    def on_answered(self, packet: PacketIn) -> None:
        """Send the reply the link queued to ``packet`` back to its source (no roaming)."""
        if packet.addr is not None and isinstance(packet.conn, _Socket):
            self._endpoint.answer(self.path_id, packet.addr, packet.conn)

    @property
    def remote(self) -> Address | None:
        """Where packets of this path go now (None until resolved)."""
        return self._endpoint.remote(self.path_id)


class UdpEndpoint:
    """All UDP sockets of the daemon, and the UDP paths of its peer.

    Args:
        events: the runner's events channel (``PacketIn``, ``PathConnected``).
        max_datagram: largest datagram accepted or sent (DESIGN §3: 1232).
        resolve_backoff: schedule of DNS retries (a fresh ``Backoff()`` by default).
        answer_timeout: seconds after ``answer`` within which the reply must be sent to
            go back to the requester (the link answers in the same loop turn).
    """

    def __init__(
        self,
        events: EventSink,
        *,
        max_datagram: int = UDP_MAX_DATAGRAM,
        resolve_backoff: Backoff | None = None,
        answer_timeout: float = 1.0,
    ) -> None:
        self.stats = UdpStats()
        self.max_datagram = max_datagram
        self.answer_timeout = answer_timeout
        self._events = events
        self._paths: dict[int, _UdpPathState] = {}
        self._sockets: list[_Socket] = []
        self._resolve_backoff = resolve_backoff or Backoff()
        self._nursery: trio.Nursery | None = None

    # --- configuration --------------------------------------------------------------

    def add_path(self, path_id: int, host: str, port: int) -> UdpPath:
        """Declare the peer's UDP path ``path_id`` at ``host:port`` (before or during ``run``).

        Raises:
            LocalProtocolError: ``path_id`` already added.
        """
        if path_id in self._paths:
            raise LocalProtocolError(f"UDP path {path_id} added twice")
        state = _UdpPathState(path_id, host, port)
        self._paths[path_id] = state
        if self._nursery is not None:
            self._nursery.start_soon(self._resolve_path, state)
        return UdpPath(self, path_id)

    @property
    def local_addresses(self) -> list[Address]:
        """Addresses of the bound sockets (listen ones first, then ephemeral ones)."""
        return [s.local for s in self._sockets]

    # --- running --------------------------------------------------------------------

    async def run(
        self,
        listen: Sequence[tuple[str, int]] = (),
        *,
        task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind the listen sockets, receive forever, resolve and announce the paths.

        Reports ``started`` with the bound listen addresses (useful with port 0).

        Raises:
            OSError: a listen address cannot be bound (before ``started``).
        """
        try:
            async with trio.open_nursery() as nursery:
                for host, port in listen:
                    sock = await self._bind(host, port)
                    nursery.start_soon(self._receive_loop, sock)
                for state in self._paths.values():
                    nursery.start_soon(self._resolve_path, state)
                self._nursery = nursery
                task_status.started(self.local_addresses)
                await trio.sleep_forever()  # paths may be added later, even with no socket
        finally:
            self._nursery = None
            for sock in self._sockets:
                sock.tsock.close()
            self._sockets.clear()

    async def _bind(self, host: str, port: int) -> _Socket:
        infos = await trio.socket.getaddrinfo(
            host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )
        family, _type, proto, _canon, sockaddr = infos[0]
        raw = socket.socket(family, socket.SOCK_DGRAM, proto)
        try:
            if family == socket.AF_INET6:
                raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            raw.setblocking(False)
            raw.bind(sockaddr)
        except OSError:
            raw.close()
            raise
        sock = _Socket(trio.socket.from_stdlib_socket(raw), raw, family, raw.getsockname())
        self._sockets.append(sock)
        return sock

    async def _resolve_path(self, state: _UdpPathState) -> None:
        """Resolve the configured remote (retrying), make sure a socket fits, announce."""
        while True:
            try:
                infos = await trio.socket.getaddrinfo(
                    state.host, state.port, type=socket.SOCK_DGRAM
                )
                break
            except OSError:
                self.stats.resolve_failures += 1
                await trio.sleep(self._resolve_backoff.next_delay())
        family, _type, _proto, _canon, sockaddr = infos[0]
        state.configured = sockaddr
        state.norm_hosts = {_norm(info[4])[0] for info in infos}
        if state.remote is None:
            state.remote = sockaddr
        await self._ensure_socket(family)
        state.announced = True
        await self._events.send(PathConnected(state.path_id))

    async def _ensure_socket(self, family: int) -> None:
        """Bind an ephemeral socket of ``family`` unless one exists (retrying on error)."""
        while self._socket_for_family(family) is None:
            try:
                sock = await self._bind("::" if family == socket.AF_INET6 else "0.0.0.0", 0)
            except OSError:
                self.stats.bind_failures += 1
                await trio.sleep(self._resolve_backoff.next_delay())
                continue
            assert self._nursery is not None
            self._nursery.start_soon(self._receive_loop, sock)

    async def _receive_loop(self, sock: _Socket) -> None:
        bufsize = self.max_datagram + 1
        while True:
            try:
                data, addr = await sock.tsock.recvfrom(bufsize)
            except OSError:
                # e.g. an ICMP error surfaced on the socket; nothing to do but go on.
                self.stats.recv_errors += 1
                await trio.lowlevel.checkpoint()
                continue
            self._on_datagram(sock, data, addr)

    def _on_datagram(self, sock: _Socket, data: bytes, addr: Address) -> None:
        if len(data) > self.max_datagram:
            self.stats.dropped_oversize += 1
            return
        state = self._path_for(addr)
        if state is None:
            self.stats.dropped_no_path += 1
            return
        self.stats.datagrams_in += 1
        self.stats.bytes_in += len(data)
        try:
            self._events.send_nowait(PacketIn(state.path_id, data, addr, sock))
        except trio.WouldBlock:
            self.stats.dropped_events_full += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.stats.dropped_events_full += 1

    def _path_for(self, addr: Address) -> _UdpPathState | None:
        """The UDP path a datagram from ``addr`` belongs to (see the module header)."""
        if not self._paths:
            return None
        source = _norm(addr)
        states = list(self._paths.values())
        for state in states:
            if state.remote is not None and _norm(state.remote) == source:
                return state
        for state in states:
            if source[0] in state.norm_hosts:
                return state
        return states[0]

    def _socket_for_family(self, family: int) -> _Socket | None:
        for sock in self._sockets:
            if sock.family == family:
                return sock
        return None

    # --- the runner's side ----------------------------------------------------------

    def send(self, path_id: int, data: bytes) -> None:
        """Send ``data`` as one datagram to the path's current remote. Never blocks.

        A handshake-plane packet (any type but a transport packet) answering an
        ``answer``ed packet goes to that packet's source instead. Dropped and counted
        (not raised): no remote yet, a full socket buffer (EAGAIN), any other socket
        error.

        Raises:
            LocalProtocolError: an unknown ``path_id``, empty ``data`` or ``data`` over
                ``max_datagram``.
        """
        state = self._state(path_id)
        if not 0 < len(data) <= self.max_datagram:
            raise LocalProtocolError(f"cannot send a datagram of {len(data)} bytes")
        requester = self._take_requester(state) if data[0] != PACKET_TRANSPORT else None
        remote, sock = requester or (state.remote, self._socket_for_remote(state))
        if remote is None or sock is None:
            self.stats.dropped_no_remote += 1
            return
        try:
            sock.raw.sendto(data, remote)
        except BlockingIOError:
            self.stats.dropped_send_full += 1
            return
        except OSError:
            self.stats.send_errors += 1
            return
        self.stats.datagrams_out += 1
        self.stats.bytes_out += len(data)

    def _socket_for_remote(self, state: _UdpPathState) -> _Socket | None:
        if state.remote is None:
            return None
        family = socket.AF_INET6 if len(state.remote) == 4 else socket.AF_INET
        if state.last_sock is not None and state.last_sock.family == family:
            return state.last_sock
        return self._socket_for_family(family)

    def _take_requester(self, state: _UdpPathState) -> tuple[Address, _Socket] | None:
        now = trio.current_time()
        while state.answer_to:
            addr, sock, deadline = state.answer_to.popleft()
            if now < deadline:
                return addr, sock
        return None

    def set_remote(self, path_id: int, addr: Address, sock: _Socket | None = None) -> None:
        """Roam: send this path's packets to ``addr`` (from ``sock``) from now on.

        Raises:
            LocalProtocolError: an unknown ``path_id``.
        """
        state = self._state(path_id)
        state.remote = addr
        if sock is not None:
            state.last_sock = sock

    def answer(self, path_id: int, addr: Address, sock: _Socket) -> None:
        """The next handshake-plane packet of ``path_id`` goes to ``addr`` from ``sock``.

        Raises:
            LocalProtocolError: an unknown ``path_id``.
        """
        deadline = trio.current_time() + self.answer_timeout
        self._state(path_id).answer_to.append((addr, sock, deadline))

    def reset_remote(self, path_id: int) -> None:
        """Go back to the configured remote address (undo roaming)."""
        state = self._state(path_id)
        if state.configured is not None:
            state.remote = state.configured

    def remote(self, path_id: int) -> Address | None:
        """The current remote address of a path (None until resolved)."""
        return self._state(path_id).remote

    def _state(self, path_id: int) -> _UdpPathState:
        try:
            return self._paths[path_id]
        except KeyError:
            raise LocalProtocolError(f"no UDP path {path_id}") from None

