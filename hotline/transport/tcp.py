# hotline/transport/tcp.py — TCP paths: length-framed packets in and out, no protocol logic.
#
# Owns: the TCP connections of each TCP path of the peer, the dialler, the listener.
#
# How it works:
#   * Both daemons dial AND listen (DESIGN §2), so a TCP path may have several live
#     connections: the one it dialled (outbound) and those the peer dialled to us
#     (inbound, attributed to a path by the listener). Every connection is read by its
#     own task: bytes go through ``TcpFrameDecoder`` (4-byte big-endian length prefix,
#     proto/framing.py) and each packet becomes ``PacketIn`` in the ONE events channel.
#     A bad length prefix (``LimitError``) closes that connection, nothing else.
#   * Sending: ``send(data)`` appends to a bounded per-path queue and returns at once
#     (when full the OLDEST packet is dropped and counted: the newest acks and pings
#     matter most, and the reliable layer retransmits). One writer task per path
#     drains the queue onto the path's current connection — the outbound one if up,
#     else the newest inbound one — batching what is queued into one ``send_all``. A
#     write blocked longer than ``write_timeout`` declares that connection dead.
#     With no connection at all, ``send`` drops (and counts): stale packets are not
#     worth replaying onto a fresh connection, the link resends what matters.
#   * ``PathConnected`` when the path goes from zero live connections to one;
#     ``PathDisconnected(reason)`` when the last one goes. An inbound connection only
#     counts (and is used for sending) once it has delivered a well-framed packet;
#     until then it is closed after ``first_packet_timeout`` (an idle port scanner).
#   * ``run()`` keeps the outbound connection dialled: connect with a timeout, on
#     failure or after the connection ends sleep ``backoff.next_delay()`` and retry;
#     the backoff resets once an outbound connection delivers a packet or stays up
#     ``stable_after`` seconds (the peer may well answer on ITS outbound connection,
#     so ours may carry nothing back and still be perfectly good).
#   * ``reset()`` (the link declared the path dead, e.g. a black-holed connection):
#     closes every connection of the path; the dialler redials after its backoff.
#   * TCP_NODELAY is set on every connection (trio sets it too): packets are small and
#     latency-sensitive.
"""TCP transport: one ``TcpPath`` per TCP path of the peer, and the inbound listener."""

from __future__ import annotations

import contextlib
import ipaddress
import math
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from hotline.errors import LocalProtocolError, RemoteProtocolError
from hotline.proto.framing import TcpFrameDecoder, encode_tcp_frame
from hotline.proto.packet import TCP_MAX_PACKET
from hotline.transport.backoff import Backoff
from hotline.transport.events import (
    Address,
    PacketIn,
    PathConnected,
    PathDisconnected,
    TransportEvent,
)

RECEIVE_SIZE = 65536
WRITE_BATCH_BYTES = 65536
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass
class TcpStats:
    """Counters of one TCP path."""

    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dial_attempts: int = 0
    dial_failures: int = 0
    connects: int = 0
    inbound_accepted: int = 0
    disconnects: int = 0
    framing_errors: int = 0
    write_timeouts: int = 0
    write_errors: int = 0
    idle_timeouts: int = 0
    resets: int = 0
    dropped_queue_full: int = 0
    dropped_not_connected: int = 0


class _Conn:
    """One TCP connection of a path; its reader runs inside ``scope``."""

    def __init__(self, stream: trio.SocketStream, addr: Address | None, outbound: bool) -> None:
        self.stream = stream
        self.addr = addr
        self.outbound = outbound
        self.scope = trio.CancelScope()
        self.close_reason = ""

    def close(self, reason: str) -> None:
        """Ask the reader to close this connection (it is idempotent)."""
        if not self.close_reason:
            self.close_reason = reason
        self.scope.cancel()


def _set_nodelay(stream: trio.SocketStream) -> None:
    with contextlib.suppress(OSError):
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer_address(stream: trio.SocketStream) -> Address | None:
    try:
        addr: Address = stream.socket.getpeername()
    except OSError:
        return None
    return addr


class TcpPath:
    """One TCP path of the peer: dials it, adopts inbound connections, frames packets.

    Args:
        path_id: index of the path in the peer's ``paths``.
        host, port: where to dial (``tcp://host:port`` from the config).
        events: the runner's events channel.
        backoff: re-dial schedule (a fresh ``Backoff()`` by default).
        queue_limit: packets held for sending at most; beyond, the oldest is dropped.
        connect_timeout: seconds a dial may take.
        write_timeout: seconds one blocked write may take before the connection is
            declared dead.
        max_packet: largest packet accepted from the wire.
        stable_after: seconds an outbound connection must last for the re-dial
            backoff to start over (as it does when the connection delivers a packet).
    """

    def __init__(
        self,
        path_id: int,
        host: str,
        port: int,
        events: trio.MemorySendChannel[TransportEvent],
        *,
        backoff: Backoff | None = None,
        queue_limit: int = 256,
        connect_timeout: float = 5.0,
        write_timeout: float = 5.0,
        max_packet: int = TCP_MAX_PACKET,
        stable_after: float = 5.0,
    ) -> None:
        if queue_limit < 1:
            raise LocalProtocolError("queue_limit must be >= 1")
        self.path_id = path_id
        self.host = host
        self.port = port
        self.backoff = backoff or Backoff()
        self.queue_limit = queue_limit
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.max_packet = max_packet
        self.stable_after = stable_after
        self.stats = TcpStats()
        self.last_error = ""
        self._events = events
        self._queue: deque[bytes] = deque()
        self._conns: list[_Conn] = []  # live and counted, in the order they came up
        self._pending: set[_Conn] = set()  # inbound, no packet yet
        self._wake = trio.Event()
        self._announced = False  # PathConnected told and PathDisconnected not yet

    # --- the runner's side ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while at least one connection of this path is up."""
        return bool(self._conns)

    @property
    def connection_count(self) -> int:
        """Live connections (outbound and inbound) counted for this path."""
        return len(self._conns)

    def send(self, data: bytes) -> None:
        """Queue one packet for sending; never blocks.

        Dropped and counted (not raised) when no connection is up; when the queue is
        full the oldest queued packet is dropped and counted.

        Raises:
            LocalProtocolError: empty ``data`` or over TCP_MAX_PACKET.
        """
        if not 0 < len(data) <= TCP_MAX_PACKET:
            raise LocalProtocolError(f"cannot send a TCP packet of {len(data)} bytes")
        if not self._conns:
            self.stats.dropped_not_connected += 1
            return
        if len(self._queue) >= self.queue_limit:
            self._queue.popleft()
            self.stats.dropped_queue_full += 1
        self._queue.append(data)
        self._wake.set()

    def reset(self) -> None:
        """Close every connection of this path; the dialler redials after its backoff."""
        self.stats.resets += 1
        for conn in [*self._conns, *self._pending]:
            conn.close("reset")

    # --- running --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep an outbound connection dialled and write queued packets, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            task_status.started()
            await self._dial_loop()

    async def _dial_loop(self) -> None:
        while True:
            stream = await self._dial()
            if stream is not None:
                conn = _Conn(stream, _peer_address(stream), outbound=True)
                up_since = trio.current_time()
                await self._attach(conn)
                await self._serve(conn)
                if trio.current_time() - up_since >= self.stable_after:
                    self.backoff.reset()
            await trio.sleep(self.backoff.next_delay())

    async def _dial(self) -> trio.SocketStream | None:
        self.stats.dial_attempts += 1
        with trio.move_on_after(self.connect_timeout):
            try:
                stream = await trio.open_tcp_stream(self.host, self.port)
            except OSError as exc:
                self.stats.dial_failures += 1
                self.last_error = str(exc) or type(exc).__name__
                return None
            _set_nodelay(stream)
            return stream
        self.stats.dial_failures += 1
        self.last_error = "connect timeout"
        return None

    async def serve_inbound(self, stream: trio.SocketStream, first_packet_timeout: float) -> None:
        """Serve an inbound connection of this path until it ends (the listener calls it).

        It only counts for ``PathConnected`` and sending once it delivered a packet, and
        is closed if that does not happen within ``first_packet_timeout`` seconds.
        """
        _set_nodelay(stream)
        conn = _Conn(stream, _peer_address(stream), outbound=False)
        conn.scope.deadline = trio.current_time() + first_packet_timeout
        self._pending.add(conn)
        await self._serve(conn)

    async def _serve(self, conn: _Conn) -> None:
        """Read ``conn`` until it ends, then close it and account for it."""
        try:
            reason = await self._read_loop(conn)
        finally:
            self._pending.discard(conn)
            was_last = self._detach(conn)
            await trio.aclose_forcefully(conn.stream)
        self.stats.disconnects += 1
        if was_last:
            await self._emit(PathDisconnected(self.path_id, reason))

    async def _read_loop(self, conn: _Conn) -> str:
        """Returns the reason the connection ended."""
        decoder = TcpFrameDecoder(self.max_packet)
        with conn.scope:
            try:
                while True:
                    data = await conn.stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        return "eof"
                    await self._deliver(conn, decoder.feed_untrusted(data))
            except RemoteProtocolError:
                self.stats.framing_errors += 1
                return "bad-framing"
            except _STREAM_ERRORS:
                return conn.close_reason or "broken"
        if not conn.close_reason and conn in self._pending:
            self.stats.idle_timeouts += 1
            return "idle-timeout"
        return conn.close_reason or "cancelled"

    async def _deliver(self, conn: _Conn, packets: list[bytes]) -> None:
        if not packets:
            return
        if conn in self._pending:
            self._pending.discard(conn)
            conn.scope.deadline = math.inf
            self.stats.inbound_accepted += 1
            await self._attach(conn)
        elif conn.outbound:
            self.backoff.reset()
        for packet in packets:
            self.stats.packets_in += 1
            self.stats.bytes_in += len(packet)
            await self._emit(PacketIn(self.path_id, packet, conn.addr))

    async def _attach(self, conn: _Conn) -> None:
        self._conns.append(conn)
        self.stats.connects += 1
        self._wake.set()
        if not self._announced:
            self._announced = True
            await self._emit(PathConnected(self.path_id))

    def _detach(self, conn: _Conn) -> bool:
        """Forget ``conn``; True if PathDisconnected is due (it was the last one)."""
        if conn not in self._conns:
            return False
        self._conns.remove(conn)
        if self._conns or not self._announced:
            return False
        self._queue.clear()
        self._announced = False
        return True

    async def _emit(self, event: TransportEvent) -> None:
        # A closed events channel means the runner is gone: nothing left to tell.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._events.send(event)

    # --- writing --------------------------------------------------------------------

    def _current(self) -> _Conn | None:
        """The connection to write on: outbound if up, else the newest inbound."""
        for conn in self._conns:
            if conn.outbound:
                return conn
        return self._conns[-1] if self._conns else None

    async def _writer(self) -> None:
        while True:
            conn = self._current()
            if conn is None or not self._queue:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            await self._write_batch(conn, self._take_batch())

    def _take_batch(self) -> list[bytes]:
        batch: list[bytes] = []
        size = 0
        while self._queue and size < WRITE_BATCH_BYTES:
            packet = self._queue.popleft()
            batch.append(packet)
            size += len(packet)
        return batch

    async def _write_batch(self, conn: _Conn, batch: list[bytes]) -> None:
        data = b"".join(encode_tcp_frame(packet) for packet in batch)
        with trio.move_on_after(self.write_timeout) as scope:
            try:
                await conn.stream.send_all(data)
            except _STREAM_ERRORS:
                self.stats.write_errors += 1
                conn.close("write-error")
                return
        if scope.cancelled_caught:
            self.stats.write_timeouts += 1
            conn.close("write-timeout")
            return
        self.stats.packets_out += len(batch)
        self.stats.bytes_out += len(data)


# --- the listener -----------------------------------------------------------------------


@dataclass
class ListenerStats:
    """Counters of one TCP listener."""

    accepted: int = 0
    refused_limit: int = 0
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


class TcpListener:
    """Accepts the peer's inbound connections and hands each to its ``TcpPath``.

    Args:
        host, port: where to listen (port 0 picks a free one; see ``run``).
        paths: the peer's TCP paths (see ``choose_inbound_path``).
        max_inbound: connections served at once; more are closed at once.
        first_packet_timeout: seconds an inbound connection may stay silent at first.
    """

    def __init__(
        self,
        host: str,
        port: int,
        paths: Sequence[TcpPath],
        *,
        max_inbound: int = 16,
        first_packet_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.paths = list(paths)
        self.max_inbound = max_inbound
        self.first_packet_timeout = first_packet_timeout
        self.stats = ListenerStats()
        self.active = 0

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
        if self.active >= self.max_inbound:
            self.stats.refused_limit += 1
            await trio.aclose_forcefully(stream)
            return
        path = choose_inbound_path(self.paths, _peer_address(stream))
        if path is None:
            self.stats.refused_no_path += 1
            await trio.aclose_forcefully(stream)
            return
        self.stats.accepted += 1
        self.active += 1
        try:
            await path.serve_inbound(stream, self.first_packet_timeout)
        finally:
            self.active -= 1


async def serve_tcp_listener(
    host: str,
    port: int,
    paths: Sequence[TcpPath],
    *,
    max_inbound: int = 16,
    first_packet_timeout: float = 10.0,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a ``TcpListener`` (see there) until cancelled."""
    listener = TcpListener(
        host, port, paths, max_inbound=max_inbound, first_packet_timeout=first_packet_timeout
    )
    await listener.run(task_status=task_status)
