# hotline/testing/faultproxy.py — a fault-injecting TCP/UDP proxy for tests and `hotline demo`.
#
# Owns: a proxy that sits between a listen address and a target and misbehaves on
# command — drop, delay (+ jitter), duplicate, reorder, corrupt, black-hole, stall, a
# bandwidth limit with a bounded queue — with a seeded RNG so that what it does is
# reproducible (counts, not timings).
#
# How it works:
#   * Every byte unit crossing the proxy goes through a ``_Pipe`` (one per direction
#     per connection/session): ``submit(unit)`` decides its fate from the proxy's
#     ``Faults`` and RNG and schedules it at ``now + delay + U(0, jitter)``; the pipe's
#     sender task emits units when due. On TCP the release times are kept monotonic, so
#     delay never reorders the stream; only an explicit ``reorder`` lets later units
#     overtake (it holds the chosen unit back ``reorder_delay`` seconds longer).
#   * Bandwidth (``rate`` in bits/s, 0 = unlimited; ``queue`` in packets, default 50):
#     each direction of a proxy is one bottleneck shared by all its connections or
#     sessions, the model of hotline/testing/bottleneck.py in real time. Units are
#     serialised one after another at ``rate`` (a unit leaves when the ones queued
#     before it have, plus its own ``len * 8 / rate``); ``delay`` and ``jitter`` are
#     added after the bottleneck. A UDP datagram that finds ``queue`` datagrams held
#     (waiting or on the wire) is dropped: tail drop, counted as ``queue_dropped``, so
#     drops follow from queueing delay as at a router whose buffer is ``queue`` packets
#     (no AQM such as CoDel). TCP is a byte stream and is never dropped: while the
#     bottleneck holds ``queue`` x 1,500 bytes the proxy stops reading, so the
#     sender's own TCP flow control pushes back; reads are cut to the room left.
#     Faults that make copies (``duplicate``) put each copy through the bottleneck.
#   * Units: a UDP datagram; for TCP a whole chunk as read, or, with ``frame_aware``,
#     one ``length(4, BE) | packet`` frame. Drop, duplicate, reorder and corrupt apply
#     only to datagrams and whole frames (they would break a raw stream's framing);
#     corrupting a frame flips a bit of its packet, never of its length prefix.
#   * ``blackhole``: everything is swallowed in both directions (also units already
#     queued), connections stay OPEN (no FIN, no RST); a TCP client that connects during
#     a black hole is accepted but the proxy dials the target only once it lifts.
#     ``stall`` (TCP): the proxy stops reading, so the sender's socket buffers fill and
#     its writes eventually block (a black hole as a sender's kernel sees it).
#     ``close_connections()`` cuts every current TCP connection.
#   * Faults change at run time: in-process with ``proxy.set_faults(**changes)``, or
#     from another process through the control socket (JSON lines):
#         {"path": "tcp", "blackhole": true}        -> {"ok": true, "faults": {...}}
#         {"path": "*", "drop": 0.1}                (every proxy)
#         {"path": "udp", "rate": 1000000, "queue": 50}   (1 Mbit/s, 50-packet queue)
#         {"path": "tcp", "close": true}            (cut current connections)
#         {"cmd": "stats"}                          -> {"ok": true, "stats": {...}}
#
# Subprocess use (integration tests put it between daemon subprocesses):
#     python -m hotline.testing.faultproxy --config '{"seed": 1, "control": "127.0.0.1:0",
#         "proxies": [{"name": "tcp", "kind": "tcp", "listen": "127.0.0.1:0",
#                      "target": "127.0.0.1:7411", "frame_aware": true,
#                      "faults": {"delay": 0.01}}]}'
# prints ONE JSON line once listening: {"ready": true, "control": "127.0.0.1:PORT",
# "proxies": {"tcp": "127.0.0.1:PORT"}}, then runs until SIGTERM/SIGINT. ``control``
# may also be "unix:/path". ``FaultProxyProcess`` wraps all that for pytest.
"""Fault-injecting TCP/UDP proxy for tests: in-process (trio) or as a subprocess."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import itertools
import json
import math
import os
import random
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from hotline.testing.bottleneck import SerialQueue
from hotline.testing.process import read_line, terminate

Address = tuple[Any, ...]
MAX_FRAME = 1 << 24  # a frame_aware stream claiming more is passed through raw
RECEIVE_SIZE = 65536
MAX_UDP_SESSIONS = 64
TCP_QUEUE_PACKET = 1500  # a TCP bottleneck holds ``queue`` packets of this many bytes
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


# --- faults and counters -----------------------------------------------------------------


@dataclass
class Faults:
    """What the proxy does to each unit. Probabilities in [0, 1], times in seconds."""

    drop: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.05
    delay: float = 0.0
    jitter: float = 0.0
    blackhole: bool = False
    stall: bool = False
    rate: float = 0.0  # bits per second through each direction; 0: unlimited
    queue: int = 50  # packets the bottleneck holds (TCP: x 1,500 bytes) before tail drop

    def updated(self, changes: dict[str, Any]) -> Faults:
        """A copy with ``changes`` applied; ValueError on an unknown key or bad value."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault(s): {sorted(unknown)}")
        new = dataclasses.replace(self, **changes)
        for name in ("drop", "duplicate", "corrupt", "reorder"):
            value = getattr(new, name)
            if not (isinstance(value, int | float) and 0 <= value <= 1):
                raise ValueError(f"{name} must be a probability, not {value!r}")
        for name in ("reorder_delay", "delay", "jitter"):
            value = getattr(new, name)
            if not (isinstance(value, int | float) and 0 <= value < 3600):
                raise ValueError(f"{name} must be seconds >= 0, not {value!r}")
        for name in ("blackhole", "stall"):
            if not isinstance(getattr(new, name), bool):
                raise ValueError(f"{name} must be true or false")
        if isinstance(new.rate, bool) or not (isinstance(new.rate, int | float)
                                              and 0 <= new.rate < 1e12):
            raise ValueError(f"rate must be bits/s >= 0 (0: unlimited), not {new.rate!r}")
        if isinstance(new.queue, bool) or not (isinstance(new.queue, int)
                                               and 1 <= new.queue <= 1_000_000):
            raise ValueError(f"queue must be a whole number of packets >= 1, not {new.queue!r}")
        return new


@dataclass
class DirectionStats:
    """Counters of one direction of a proxy (all connections/sessions together)."""

    units_in: int = 0
    units_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: int = 0
    duplicated: int = 0
    corrupted: int = 0
    reordered: int = 0
    blackholed: int = 0
    queue_dropped: int = 0  # UDP datagrams that found the bottleneck's queue full
    send_errors: int = 0


@dataclass
class ProxyStats:
    """``up`` is client -> target, ``down`` is target -> client."""

    up: DirectionStats = field(default_factory=DirectionStats)
    down: DirectionStats = field(default_factory=DirectionStats)
    connections: int = 0
    connect_failures: int = 0
    sessions: int = 0


# --- the pipe: fault decisions and scheduled emission ------------------------------------


class _Pipe:
    """One direction of one connection/session: decides each unit's fate, emits when due.

    ``direction`` is "up" (client -> target) or "down": it names the counters and the
    bottleneck the pipe shares with the proxy's other pipes of that direction.
    """

    def __init__(
        self,
        proxy: _Proxy,
        direction: str,
        emit: Callable[[bytes], Awaitable[None]],
        *,
        ordered: bool,
        unit_faults: bool,
        corrupt_from: int = 0,
    ) -> None:
        self._proxy = proxy
        self._stats: DirectionStats = getattr(proxy.stats, direction)
        self._bottleneck = proxy.bottlenecks[direction]
        self._emit = emit
        self._ordered = ordered
        self._unit_faults = unit_faults
        self._corrupt_from = corrupt_from
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self._last_release = -math.inf
        self._wake = trio.Event()
        self._closing = False

    def submit(self, unit: bytes) -> None:
        """Take one unit from the reader; schedule zero, one or two copies of it."""
        faults, rng, stats = self._proxy.faults, self._proxy.rng, self._stats
        stats.units_in += 1
        stats.bytes_in += len(unit)
        if faults.blackhole:
            stats.blackholed += 1
            return
        copies, reorder = 1, False
        if self._unit_faults:
            if faults.drop and rng.random() < faults.drop:
                stats.dropped += 1
                return
            if faults.corrupt and rng.random() < faults.corrupt and len(unit) > self._corrupt_from:
                unit = self._corrupted(unit)
            if faults.duplicate and rng.random() < faults.duplicate:
                stats.duplicated += 1
                copies = 2
            reorder = bool(faults.reorder) and rng.random() < faults.reorder
        self._schedule(unit, copies, reorder)

    def _corrupted(self, unit: bytes) -> bytes:
        rng = self._proxy.rng
        index = rng.randrange(self._corrupt_from, len(unit))
        data = bytearray(unit)
        data[index] ^= 1 << rng.randrange(8)
        self._stats.corrupted += 1
        return bytes(data)

    def _schedule(self, unit: bytes, copies: int, reorder: bool) -> None:
        faults = self._proxy.faults
        if reorder:
            self._stats.reordered += 1
        for _ in range(copies):
            sent = self._serialised(unit)
            if sent is None:
                continue
            release = sent + faults.delay
            if faults.jitter:
                release += self._proxy.rng.random() * faults.jitter
            if self._ordered:
                release = max(release, self._last_release)
            if reorder:
                release += faults.reorder_delay  # later units overtake it
            elif self._ordered:
                self._last_release = release
            heapq.heappush(self._heap, (release, next(self._seq), unit))
        self._wake.set()

    def _serialised(self, unit: bytes) -> float | None:
        """When ``unit`` has crossed the bottleneck (now if unlimited); None if a
        datagram found the queue full. TCP readers wait for room before submitting."""
        now, faults = trio.current_time(), self._proxy.faults
        if not faults.rate:
            return now
        if not self._ordered and self._bottleneck.held(now) >= faults.queue:
            self._stats.queue_dropped += 1
            return None
        return self._bottleneck.admit(len(unit), now, faults.rate)

    def read_size(self) -> int:
        """How many bytes a TCP reader may take now (0: wait for room)."""
        faults = self._proxy.faults
        if not faults.rate:
            return RECEIVE_SIZE
        held = self._bottleneck.held_bytes(trio.current_time())
        return max(0, min(RECEIVE_SIZE, faults.queue * TCP_QUEUE_PACKET - held))

    async def wait_for_room(self) -> int:
        """Wait until the bottleneck has room (or the faults change); the read size."""
        while (size := self.read_size()) == 0:
            deadline = self._bottleneck.next_departure()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._proxy.faults_changed()
        return size

    def close(self) -> None:
        """The reader saw EOF: emit what is queued, then end ``run``."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        """Emit units when due, until closed and empty (or the emit side breaks)."""
        while self._heap or not self._closing:
            if not self._heap:
                await self._wait(math.inf)
                continue
            release, _, unit = self._heap[0]
            if release > trio.current_time():
                await self._wait(release)
                continue
            heapq.heappop(self._heap)
            if self._proxy.faults.blackhole:
                self._stats.blackholed += 1
                continue
            await self._emit(unit)
            self._stats.units_out += 1
            self._stats.bytes_out += len(unit)

    async def _wait(self, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await self._wake.wait()
        if self._wake.is_set():
            self._wake = trio.Event()


class _FrameSplitter:
    """Splits a stream into ``length(4, BE) | packet`` units (prefix included)."""

    def __init__(self) -> None:
        self._buffer = b""
        self.raw = False  # gave up on framing: pass chunks through as they come

    def feed(self, data: bytes) -> list[bytes]:
        if self.raw:
            return [data]
        self._buffer += data
        units: list[bytes] = []
        while len(self._buffer) >= 4:
            (length,) = struct.unpack_from(">I", self._buffer)
            if length > MAX_FRAME:
                self.raw = True
                units.append(self._buffer)
                self._buffer = b""
                break
            if len(self._buffer) < 4 + length:
                break
            units.append(self._buffer[: 4 + length])
            self._buffer = self._buffer[4 + length :]
        return units


# --- proxies -------------------------------------------------------------------------------


class _Proxy:
    """What TCP and UDP proxies share: name, addresses, faults, RNG, stats."""

    kind = ""

    def __init__(
        self,
        name: str,
        listen: Address,
        target: Address,
        *,
        faults: Faults | None = None,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.listen = listen
        self.target = target
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.stats = ProxyStats()
        self.address: Address | None = None  # bound listen address, once running
        self._changed = trio.Event()
        self.bottlenecks = {"up": SerialQueue(), "down": SerialQueue()}  # per direction

    async def faults_changed(self) -> None:
        """Return at the next ``set_faults``."""
        await self._changed.wait()

    def set_faults(self, **changes: Any) -> Faults:
        """Change faults at run time (ValueError on a bad one); returns the new set."""
        self.faults = self.faults.updated(changes)
        self._changed.set()
        self._changed = trio.Event()
        return self.faults

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.faults_changed()

    def close_connections(self) -> int:
        """Cut current connections (TCP); returns how many."""
        return 0

    async def run(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and proxy until cancelled; ``started`` gets the bound address."""
        raise NotImplementedError


class TcpFaultProxy(_Proxy):
    """TCP proxy: one upstream connection per accepted client connection.

    Args:
        frame_aware: split the stream into length-prefixed frames so that drop,
            duplicate, reorder and corrupt can act on whole frames.
    """

    kind = "tcp"

    def __init__(
        self,
        name: str,
        listen: Address,
        target: Address,
        *,
        faults: Faults | None = None,
        seed: int = 0,
        frame_aware: bool = False,
    ) -> None:
        super().__init__(name, listen, target, faults=faults, seed=seed)
        self.frame_aware = frame_aware
        self._scopes: set[trio.CancelScope] = set()

    async def run(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and proxy until cancelled; ``started`` gets the bound address."""
        listeners = await trio.open_tcp_listeners(self.listen[1], host=self.listen[0])
        self.address = listeners[0].socket.getsockname()
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.address)

    def close_connections(self) -> int:
        count = len(self._scopes)
        for scope in list(self._scopes):
            scope.cancel()
        return count

    async def _handle(self, client: trio.SocketStream) -> None:
        self.stats.connections += 1
        scope = trio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await self._proxy_connection(client)
        finally:
            self._scopes.discard(scope)
            await trio.aclose_forcefully(client)

    async def _proxy_connection(self, client: trio.SocketStream) -> None:
        if not await self._swallow_while_blackholed(client):
            return
        try:
            upstream = await trio.open_tcp_stream(self.target[0], self.target[1])
        except OSError:
            self.stats.connect_failures += 1
            return
        try:
            async with trio.open_nursery() as nursery:
                self._pump(nursery, client, upstream, "up")
                self._pump(nursery, upstream, client, "down")
        finally:
            await trio.aclose_forcefully(upstream)

    async def _swallow_while_blackholed(self, client: trio.SocketStream) -> bool:
        """Read and discard while black-holed; False if the client went away."""
        while self.faults.blackhole:
            with trio.move_on_after(0.05):
                try:
                    data = await client.receive_some(RECEIVE_SIZE)
                except _STREAM_ERRORS:
                    return False
                if not data:
                    return False
                self.stats.up.units_in += 1
                self.stats.up.bytes_in += len(data)
                self.stats.up.blackholed += 1
        return True

    def _pump(
        self,
        nursery: trio.Nursery,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        direction: str,
    ) -> None:
        pipe = _Pipe(
            self,
            direction,
            sink.send_all,
            ordered=True,
            unit_faults=self.frame_aware,
            corrupt_from=4,
        )
        nursery.start_soon(self._emit_loop, pipe, nursery.cancel_scope)
        nursery.start_soon(self._read_loop, source, pipe, nursery.cancel_scope)

    async def _emit_loop(self, pipe: _Pipe, scope: trio.CancelScope) -> None:
        with contextlib.suppress(*_STREAM_ERRORS):
            await pipe.run()
        scope.cancel()  # one side is done: close the whole connection pair

    async def _read_loop(
        self, source: trio.SocketStream, pipe: _Pipe, scope: trio.CancelScope
    ) -> None:
        splitter = _FrameSplitter() if self.frame_aware else None
        try:
            while True:
                await self._wait_until(lambda: not self.faults.stall)
                data = await source.receive_some(await pipe.wait_for_room())
                if not data:
                    break
                for unit in splitter.feed(data) if splitter else [data]:
                    pipe.submit(unit)
        except _STREAM_ERRORS:
            scope.cancel()
            return
        pipe.close()


class UdpFaultProxy(_Proxy):
    """UDP proxy: one upstream socket per client address (so replies find the client)."""

    kind = "udp"

    async def run(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and proxy until cancelled; ``started`` gets the bound address."""
        dgram = socket.SOCK_DGRAM
        target_info = await trio.socket.getaddrinfo(self.target[0], self.target[1], type=dgram)
        self._family: int = target_info[0][0]
        self._target_addr: Address = target_info[0][4]
        listen_info = await trio.socket.getaddrinfo(self.listen[0], self.listen[1], type=dgram)
        sock = trio.socket.socket(listen_info[0][0], socket.SOCK_DGRAM)
        self._sessions: dict[Address, trio.CancelScope] = {}
        with sock:
            await sock.bind(listen_info[0][4])
            self.address = sock.getsockname()
            async with trio.open_nursery() as nursery:
                task_status.started(self.address)
                await self._receive_loop(sock, nursery)

    async def _receive_loop(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        pipes: dict[Address, _Pipe] = {}
        while True:
            try:
                data, client = await sock.recvfrom(RECEIVE_SIZE)
            except OSError:
                continue
            pipe = pipes.get(client)
            if pipe is None or client not in self._sessions:
                pipe = await nursery.start(self._session, sock, client)
                pipes[client] = pipe
                self._evict(pipes)
            pipe.submit(data)

    def _evict(self, pipes: dict[Address, _Pipe]) -> None:
        while len(self._sessions) > MAX_UDP_SESSIONS:
            oldest = next(iter(self._sessions))
            self._sessions.pop(oldest).cancel()
            pipes.pop(oldest, None)

    async def _session(
        self,
        listen_sock: trio.socket.SocketType,
        client: Address,
        *,
        task_status: trio.TaskStatus[_Pipe] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.stats.sessions += 1
        upstream = trio.socket.socket(self._family, socket.SOCK_DGRAM)
        with upstream, trio.CancelScope() as scope:
            self._sessions[client] = scope
            await upstream.bind(("::" if self._family == socket.AF_INET6 else "0.0.0.0", 0))
            up_emit = self._sender(upstream, self._target_addr, self.stats.up)
            up = _Pipe(self, "up", up_emit, ordered=False, unit_faults=True)
            down_emit = self._sender(listen_sock, client, self.stats.down)
            down = _Pipe(self, "down", down_emit, ordered=False, unit_faults=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(up.run)
                nursery.start_soon(down.run)
                task_status.started(up)
                while True:
                    try:
                        data, _ = await upstream.recvfrom(RECEIVE_SIZE)
                    except OSError:
                        continue
                    down.submit(data)

    @staticmethod
    def _sender(
        sock: trio.socket.SocketType, addr: Address, stats: DirectionStats
    ) -> Callable[[bytes], Awaitable[None]]:
        async def emit(data: bytes) -> None:
            try:
                await sock.sendto(data, addr)
            except OSError:
                stats.send_errors += 1

        return emit


# --- control socket -------------------------------------------------------------------------


def handle_request(proxies: dict[str, _Proxy], request: Any) -> dict[str, Any]:
    """Apply one control request (see the module header); never raises."""
    try:
        if not isinstance(request, dict):
            raise ValueError("request must be a JSON object")
        if request.get("cmd") == "stats":
            stats = {name: dataclasses.asdict(p.stats) for name, p in proxies.items()}
            return {"ok": True, "stats": stats}
        changes = dict(request)
        name = changes.pop("path", None)
        if name == "*":
            targets = list(proxies.values())
        elif isinstance(name, str) and name in proxies:
            targets = [proxies[name]]
        else:
            raise ValueError(f"no proxy named {name!r}")
        close = bool(changes.pop("close", False))
        faults = {p.name: dataclasses.asdict(p.set_faults(**changes)) for p in targets}
        closed = sum(p.close_connections() for p in targets) if close else 0
        return {"ok": True, "faults": faults, "closed": closed}
    except (ValueError, TypeError) as exc:
        return {"ok": False, "error": str(exc)}


async def serve_control(
    proxies: dict[str, _Proxy],
    address: str,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve JSON-line control requests on ``host:port`` or ``unix:/path``."""
    if address.startswith("unix:"):
        path = address[5:]
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        await sock.bind(path)
        sock.listen(16)
        listeners: list[trio.SocketListener] = [trio.SocketListener(sock)]
        bound = address
    else:
        host, port = parse_address(address)
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = format_address(listeners[0].socket.getsockname())

    async def handler(stream: trio.SocketStream) -> None:
        buffer = b""
        with contextlib.suppress(*_STREAM_ERRORS):
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    try:
                        reply = handle_request(proxies, json.loads(line))
                    except ValueError as exc:
                        reply = {"ok": False, "error": f"bad JSON: {exc}"}
                    await stream.send_all(json.dumps(reply).encode() + b"\n")

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def format_address(addr: Address) -> str:
    host = str(addr[0])
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


# --- configuration, subprocess entry point and client ------------------------------------


def build_proxies(config: dict[str, Any]) -> dict[str, _Proxy]:
    """Proxies from a config dict (see the module header)."""
    seed = int(config.get("seed", 0))
    proxies: dict[str, _Proxy] = {}
    for index, spec in enumerate(config["proxies"]):
        faults = Faults().updated(dict(spec.get("faults", {})))
        listen, target = parse_address(spec["listen"]), parse_address(spec["target"])
        name = spec.get("name", spec["kind"])
        if spec["kind"] == "tcp":
            proxies[name] = TcpFaultProxy(name, listen, target, faults=faults, seed=seed + index,
                                          frame_aware=bool(spec.get("frame_aware", False)))
        elif spec["kind"] == "udp":
            proxies[name] = UdpFaultProxy(name, listen, target, faults=faults, seed=seed + index)
        else:
            raise ValueError(f"unknown proxy kind {spec['kind']!r}")
    return proxies


async def run_config(config: dict[str, Any], ready: Callable[[dict[str, Any]], None]) -> None:
    """Run every proxy of ``config`` and its control socket until SIGTERM/SIGINT."""
    proxies = build_proxies(config)
    async with trio.open_nursery() as nursery:
        bound = {name: format_address(await nursery.start(p.run)) for name, p in proxies.items()}
        control = await nursery.start(serve_control, proxies, config.get("control", "127.0.0.1:0"))
        ready({"ready": True, "control": control, "proxies": bound})
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotline.testing.faultproxy",
                                     description=__doc__)
    parser.add_argument("--config", required=True, help="JSON text, or @FILE")
    args = parser.parse_args(argv)
    text = Path(args.config[1:]).read_text() if args.config.startswith("@") else args.config
    config = json.loads(text)

    def ready(info: dict[str, Any]) -> None:
        print(json.dumps(info), flush=True)

    trio.run(run_config, config, ready)
    return 0


def control(address: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one control request (blocking stdlib sockets) and return the reply."""
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address[5:])
    else:
        sock = socket.create_connection(parse_address(address), timeout=timeout)
    with sock, sock.makefile("rwb") as f:
        f.write(json.dumps(request).encode() + b"\n")
        f.flush()
        reply: dict[str, Any] = json.loads(f.readline())
    return reply


async def acontrol(address: str, request: dict[str, Any]) -> dict[str, Any]:
    """``control`` for trio code (runs it in a worker thread)."""
    return await trio.to_thread.run_sync(control, address, request)


# The module to run with ``-m``: this one, wherever it lives (a copy may ship in hotline/).
_MODULE = __spec__.name if __spec__ is not None and __name__ == "__main__" else __name__


class FaultProxyProcess:
    """``python -m hotline.testing.faultproxy`` as a subprocess (integration tests, the demo).

    Usage::

        with FaultProxyProcess({"proxies": [...], "seed": 1}) as fp:
            fp.addresses["tcp"]            # "127.0.0.1:PORT" to point a daemon at
            fp.set("tcp", blackhole=True)  # change faults
            fp.stats()["tcp"]["up"]["blackholed"]
    """

    def __init__(self, config: dict[str, Any], startup_timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", _MODULE, "--config", json.dumps(config)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self._readline(startup_timeout)
        info = json.loads(line)
        self.control_address: str = info["control"]
        self.addresses: dict[str, str] = info["proxies"]

    def _readline(self, timeout: float) -> str:
        try:
            line = read_line(self.process, timeout)
        except TimeoutError:
            self.close()
            raise TimeoutError("fault proxy did not start") from None
        if not line:
            self.close()
            raise RuntimeError("fault proxy exited before it was ready")
        return line

    def set(self, path: str, **changes: Any) -> dict[str, Any]:
        """Change faults of proxy ``path`` ("*" for all); ``close=True`` cuts connections."""
        reply = control(self.control_address, {"path": path, **changes})
        if not reply["ok"]:
            raise ValueError(reply["error"])
        return reply

    def stats(self) -> dict[str, Any]:
        """Counters of every proxy (see ``ProxyStats``)."""
        stats: dict[str, Any] = control(self.control_address, {"cmd": "stats"})["stats"]
        return stats

    def close(self) -> None:
        """Stop the subprocess (SIGTERM, then kill after 5 s)."""
        terminate(self.process)

    def __enter__(self) -> FaultProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
