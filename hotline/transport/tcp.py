# hotline/transport/tcp.py — TCP paths: length-framed packets in and out, no protocol logic.
#
# Owns: the TCP connections of each TCP path of the peer, the dialler, and which
# connection may carry our packets (DESIGN §2b).
#
# How it works:
#   * Both daemons dial AND listen (DESIGN §2), so a TCP path may have several live
#     connections: the one it dialled (outbound) and those dialled to us (inbound,
#     attributed to a path by the listener). Every connection is read by its own task:
#     bytes go through ``TcpFrameDecoder`` (4-byte big-endian length prefix,
#     proto/framing.py) and each packet becomes ``PacketIn`` (carrying its connection as
#     an opaque token) in the ONE events channel. A bad length prefix (``LimitError``)
#     closes that connection, nothing else.
#   * Trust. Anyone can connect and send well-framed bytes, so an inbound connection is
#     the peer's only once the link says a packet on it AUTHENTICATED
#     (``on_authenticated``: a transport packet, or a response completing our handshake).
#     Until then it has a deadline (``auth_timeout``), counts toward the listener's
#     per-source cap, is the first to be evicted when the listener is full, and is never
#     written to — with one exception, below. An authenticated connection is never
#     evicted for a newcomer; nor is one that carried a valid initiation, until its
#     deadline, so that the handshake can finish on it.
#   * Sending: ``send(data)`` appends to a bounded per-path queue and returns at once
#     (when full the OLDEST packet is dropped and counted: the newest acks and pings
#     matter most, and the reliable layer retransmits). One writer task per path drains
#     the queue, batching into one ``send_all``, onto the connection with the most
#     recent authenticated packet; with none authenticated, onto our own outbound
#     connection (a handshake has to go somewhere: we chose that address); with neither,
#     the packet is dropped and counted (the link resends what matters).
#   * The idle fast path: when nothing is queued and the writer waits for work, ``send``
#     writes the packet to the socket itself, non-blocking (no hop to the writer task:
#     an idle link's DATA and ACK leave in the turn that made them). Once per writer
#     cycle: the packets that follow in the same turn queue (urgent first) and the
#     writer, woken, sends them in one batch. Whatever the kernel does not take at once
#     becomes the writer's ``_partial`` and goes before anything queued, so the byte
#     stream stays framed.
#   * Reply to the requester. ``on_answered(packet)``: the link queued a handshake reply
#     to this packet (a valid initiation). The next handshake-plane packet sent on the
#     path (any type but a transport packet) goes to THAT packet's connection, even if
#     it is not authenticated: that is how a peer that can dial us but cannot be dialled
#     gets our response. A stranger cannot make an initiation that passes our Noise
#     check; it can only replay one it captured, which the link refuses as not newer
#     than the last — except once after our restart if the handshake timestamp was not
#     persisted. So what a replayer can get is exactly the one packet answering its
#     replay: our handshake response (useless without the initiator's private keys),
#     or on crossing initiations our own initiation (readable only by the peer). It
#     never gets a transport packet, and its connection gains no trust (only a slot
#     that is not evicted, until its deadline).
#   * A write blocked longer than ``write_timeout`` declares that connection dead.
#   * ``PathConnected`` when the path goes from no usable connection (outbound, or
#     authenticated inbound) to one; ``PathDisconnected(reason)`` when the last one goes.
#   * ``run()`` keeps the outbound connection dialled: connect with a timeout, on
#     failure or after the connection ends sleep ``backoff.next_delay()`` and retry;
#     the backoff resets once an outbound connection delivers a packet or stays up
#     ``stable_after`` seconds (the peer may well answer on ITS outbound connection,
#     so ours may carry nothing back and still be perfectly good).
#   * ``reset()`` (the link declared the path dead, e.g. a black-holed connection):
#     closes every connection of the path; the dialler redials after its backoff.
#   * Inbound connections come from ``TcpListener`` (tcp_listener.py), which limits and
#     evicts them; a connection it evicts is closed with the reason "evicted".
#   * TCP_NODELAY is set on every connection (trio sets it too): packets are small and
#     latency-sensitive.
"""TCP transport: one ``TcpPath`` per TCP path of the peer."""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections import deque
from dataclasses import dataclass

import trio

from hotline.errors import LocalProtocolError, RemoteProtocolError
from hotline.proto.framing import TcpFrameDecoder, encode_tcp_frame
from hotline.proto.packet import PACKET_TRANSPORT, TCP_MAX_PACKET
from hotline.transport.backoff import Backoff
from hotline.transport.events import (
    Address,
    EventSink,
    PacketIn,
    PathConnected,
    PathDisconnected,
    TransportEvent,
)

RECEIVE_SIZE = 65536
WRITE_BATCH_BYTES = 65536
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's value
NOTSENT_LOWAT = 16384
# Requesters remembered for ``on_answered`` (the link answers in the same loop turn).
_MAX_ANSWERS = 16
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
    inbound_authenticated: int = 0
    answers_sent: int = 0
    disconnects: int = 0
    framing_errors: int = 0
    write_timeouts: int = 0
    write_errors: int = 0
    auth_timeouts: int = 0
    resets: int = 0
    dropped_queue_full: int = 0
    dropped_not_connected: int = 0


class TcpConn:
    """One TCP connection of a path; its reader runs inside ``scope``.

    It is the opaque ``PacketIn.conn`` of the packets read from it.
    """

    def __init__(self, stream: trio.SocketStream, addr: Address | None, outbound: bool) -> None:
        self.stream = stream
        self.addr = addr
        self.outbound = outbound
        self.scope = trio.CancelScope()
        self.close_reason = ""
        self.closed = False
        self.authenticated = False
        self.answered = False  # it carried a valid initiation (not proof: maybe a replay)
        self.trusted_at = 0  # order of its latest authenticated packet on the path

    @property
    def evictable(self) -> bool:
        """May make room for a newcomer: nothing on it passed any of our checks yet."""
        return not (self.authenticated or self.answered)

    @property
    def usable(self) -> bool:
        """Ours to write on: we dialled it, or a packet on it authenticated."""
        return self.outbound or self.authenticated

    def close(self, reason: str) -> None:
        """Ask the reader to close this connection (it is idempotent)."""
        if not self.close_reason:
            self.close_reason = reason
        self.scope.cancel()


def _set_nodelay(stream: trio.SocketStream) -> None:
    """TCP_NODELAY (small, latency-sensitive packets) and a short unsent queue: the
    kernel holds at most ``NOTSENT_LOWAT`` unsent bytes, so our own queue — where
    urgent packets go first — is where packets wait (DESIGN §9 pre-emption)."""
    with contextlib.suppress(OSError):
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(OSError):
        stream.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)


def peer_address(stream: trio.SocketStream) -> Address | None:
    """The remote address of ``stream`` (None if the socket already lost it)."""
    try:
        addr: Address = stream.socket.getpeername()
    except OSError:
        return None
    return addr


class TcpPath:
    """One TCP path of the peer: dials it, serves inbound connections, frames packets.

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
        answer_timeout: seconds after ``on_answered`` within which the reply must be
            sent to go back to the requester (the link answers in the same loop turn).
    """

    def __init__(
        self,
        path_id: int,
        host: str,
        port: int,
        events: EventSink,
        *,
        backoff: Backoff | None = None,
        queue_limit: int = 256,
        connect_timeout: float = 5.0,
        write_timeout: float = 5.0,
        max_packet: int = TCP_MAX_PACKET,
        stable_after: float = 5.0,
        answer_timeout: float = 1.0,
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
        self.answer_timeout = answer_timeout
        self.stats = TcpStats()
        self.last_error = ""
        self._events = events
        # (packet, the requester it answers or None for "the write target").
        self._queue: deque[tuple[bytes, TcpConn | None]] = deque()
        self._urgent: deque[tuple[bytes, TcpConn | None]] = deque()  # sent before _queue
        self._conns: list[TcpConn] = []  # every live connection, in the order they came
        self._answer_to: deque[tuple[TcpConn, float]] = deque(maxlen=_MAX_ANSWERS)
        self._trust_clock = 0
        self._wake = trio.Event()
        self._writer_idle = False  # the writer waits for work (the fast path may write)
        self._partial: tuple[TcpConn, bytes] | None = None  # a fast-path write's rest
        self._announced = False  # PathConnected told and PathDisconnected not yet

    # --- the runner's side ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a usable connection (outbound, or authenticated inbound) is up."""
        return any(conn.usable for conn in self._conns)

    def send(self, data: bytes, urgent: bool = False) -> None:
        """Queue one packet for sending; never blocks.

        An ``urgent`` packet (flash or immediate traffic, handshakes, heartbeats) goes
        ahead of every queued ordinary one. A handshake-plane packet (any type but a
        transport packet) answering an ``on_answered`` packet goes to that packet's
        connection; everything else to the write target (see the module header).
        Dropped and counted (not raised) when there is nowhere to send it; when the
        queue is full the oldest queued ordinary packet is dropped and counted.

        Raises:
            LocalProtocolError: empty ``data`` or over TCP_MAX_PACKET.
        """
        if not 0 < len(data) <= TCP_MAX_PACKET:
            raise LocalProtocolError(f"cannot send a TCP packet of {len(data)} bytes")
        requester = self._take_requester() if data[0] != PACKET_TRANSPORT else None
        if requester is None and self._target() is None:
            self.stats.dropped_not_connected += 1
            return
        if self._writer_idle and not (self._queue or self._urgent):
            conn = self._destination(requester)
            if conn is not None:
                self._write_now(conn, data, requester is not None)
                return
        if len(self._queue) + len(self._urgent) >= self.queue_limit:
            (self._queue or self._urgent).popleft()
            self.stats.dropped_queue_full += 1
        (self._urgent if urgent else self._queue).append((data, requester))
        self._wake.set()

    def _write_now(self, conn: TcpConn, packet: bytes, answer: bool) -> None:
        """The idle fast path (module header): write ``packet`` to ``conn`` without
        blocking; the rest, if the kernel took only part, is left to the writer."""
        data = encode_tcp_frame(packet)
        self._writer_idle = False  # until the writer has run: what follows is batched
        self._wake.set()
        try:
            written = os.write(conn.stream.socket.fileno(), data)
        except BlockingIOError:
            written = 0
        except OSError:
            self.stats.write_errors += 1
            conn.close("write-error")
            return
        if written < len(data):
            self._partial = (conn, data[written:])
        self.stats.packets_out += 1
        self.stats.bytes_out += len(data)
        if answer:
            self.stats.answers_sent += 1

    def on_authenticated(self, packet: PacketIn) -> None:
        """A packet from this path authenticated: trust its connection and write there.

        Its connection becomes the peer's (no deadline, never evicted) and the write
        target, as the one with the most recent authenticated packet.
        """
        conn = self._own(packet)
        if conn is None:
            return
        self._trust_clock += 1
        conn.trusted_at = self._trust_clock
        if not conn.authenticated:
            conn.authenticated = True
            conn.scope.deadline = math.inf
            if not conn.outbound:
                self.stats.inbound_authenticated += 1
            self._wake.set()  # the writer announces the path and may switch target

    def on_answered(self, packet: PacketIn) -> None:
        """The link queued a handshake reply to ``packet``: send it back where it came from.

        Grants no trust: the packet may be a replay (see the module header). Its
        connection is no longer evicted for a newcomer, so the handshake can finish on
        it, but keeps its deadline.
        """
        conn = self._own(packet)
        if conn is not None:
            conn.answered = True
            self._answer_to.append((conn, trio.current_time() + self.answer_timeout))

    def reset(self) -> None:
        """Close every connection of this path; the dialler redials after its backoff."""
        self.stats.resets += 1
        for conn in self._conns:
            conn.close("reset")

    def _own(self, packet: PacketIn) -> TcpConn | None:
        """The live connection of this path that ``packet`` came on, if any."""
        conn = packet.conn
        if isinstance(conn, TcpConn) and not conn.closed and conn in self._conns:
            return conn
        return None

    def _take_requester(self) -> TcpConn | None:
        now = trio.current_time()
        while self._answer_to:
            conn, deadline = self._answer_to.popleft()
            if not conn.closed and now < deadline:
                return conn
        return None

    def _target(self) -> TcpConn | None:
        """Where packets go: the most recently authenticated connection, else our
        outbound one; never an unauthenticated inbound connection."""
        trusted = [conn for conn in self._conns if conn.authenticated]
        if trusted:
            return max(trusted, key=lambda conn: conn.trusted_at)
        return next((conn for conn in self._conns if conn.outbound), None)

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
                conn = TcpConn(stream, peer_address(stream), outbound=True)
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

    async def serve_inbound(self, conn: TcpConn, auth_timeout: float) -> None:
        """Serve an inbound connection of this path until it ends (the listener calls it).

        It is closed if no packet on it authenticated within ``auth_timeout`` seconds.
        """
        _set_nodelay(conn.stream)
        conn.scope.deadline = trio.current_time() + auth_timeout
        await self._attach(conn)
        await self._serve(conn)

    async def _serve(self, conn: TcpConn) -> None:
        """Read ``conn`` until it ends, then close it and account for it."""
        try:
            reason = await self._read_loop(conn)
        finally:
            conn.closed = True
            self._conns.remove(conn)
            await trio.aclose_forcefully(conn.stream)
        self.stats.disconnects += 1
        await self._announce_down(reason)

    async def _read_loop(self, conn: TcpConn) -> str:
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
        if not conn.close_reason and not conn.usable:
            self.stats.auth_timeouts += 1
            return "auth-timeout"
        return conn.close_reason or "cancelled"

    async def _deliver(self, conn: TcpConn, packets: list[bytes]) -> None:
        if packets and conn.outbound:
            self.backoff.reset()
        for packet in packets:
            self.stats.packets_in += 1
            self.stats.bytes_in += len(packet)
            await self._emit(PacketIn(self.path_id, packet, conn.addr, conn))

    async def _attach(self, conn: TcpConn) -> None:
        self._conns.append(conn)
        self.stats.connects += 1
        await self._announce_up()

    async def _announce_up(self) -> None:
        """Tell the runner once the path has its first usable connection."""
        if self._announced or not self.connected:
            return
        self._announced = True
        await self._emit(PathConnected(self.path_id))

    async def _announce_down(self, reason: str) -> None:
        """Tell the runner once the path lost its last usable connection."""
        if not self._announced or self.connected:
            return
        self._announced = False
        self._queue.clear()
        self._urgent.clear()
        self._partial = None
        await self._emit(PathDisconnected(self.path_id, reason))

    async def _emit(self, event: TransportEvent) -> None:
        # A closed events channel means the runner is gone: nothing left to tell.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._events.send(event)

    # --- writing --------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            await self._announce_up()  # an inbound connection may have authenticated
            if self._partial is not None:
                (partial_conn, rest), self._partial = self._partial, None
                if not partial_conn.closed:
                    await self._write_all(partial_conn, rest)
                continue
            conn, batch = self._take_batch()
            if conn is None:
                self._writer_idle = True
                try:
                    await self._wake.wait()
                finally:
                    self._writer_idle = False
                self._wake = trio.Event()
                continue
            await self._write_batch(conn, batch)

    def _destination(self, requester: TcpConn | None) -> TcpConn | None:
        if requester is not None and not requester.closed:
            return requester
        return self._target()

    def _take_batch(self) -> tuple[TcpConn | None, list[bytes]]:
        """Queued packets with one destination (up to WRITE_BATCH_BYTES), and it;
        urgent ones first."""
        queue = self._urgent or self._queue
        conn = None
        while queue and conn is None:
            conn = self._destination(queue[0][1])
            if conn is None:
                queue.popleft()
                self.stats.dropped_not_connected += 1
                queue = self._urgent or self._queue
        batch: list[bytes] = []
        size = 0
        while queue and size < WRITE_BATCH_BYTES:
            packet, requester = queue[0]
            if self._destination(requester) is not conn:
                break
            queue.popleft()
            if requester is not None:
                self.stats.answers_sent += 1
            batch.append(packet)
            size += len(packet)
        return conn, batch

    async def _write_batch(self, conn: TcpConn, batch: list[bytes]) -> None:
        data = b"".join(encode_tcp_frame(packet) for packet in batch)
        if await self._write_all(conn, data):
            self.stats.packets_out += len(batch)
            self.stats.bytes_out += len(data)

    async def _write_all(self, conn: TcpConn, data: bytes) -> bool:
        """Write ``data`` to ``conn``; False (and the connection closed) if it failed."""
        with trio.move_on_after(self.write_timeout) as scope:
            try:
                await conn.stream.send_all(data)
            except _STREAM_ERRORS:
                self.stats.write_errors += 1
                conn.close("write-error")
                return False
        if scope.cancelled_caught:
            self.stats.write_timeouts += 1
            conn.close("write-timeout")
            return False
        return True
