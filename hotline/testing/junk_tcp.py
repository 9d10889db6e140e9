# hotline/testing/junk_tcp.py — a stranger on a daemon's TCP port that counts what it gets.
#
# Owns: the junk-connection attacker of the tests (issue 8, DESIGN §2b): it knows the
# daemon's listen port and nothing else.
#
# How it works:
#   * It keeps up to ``connections`` TCP connections open to ``host:port`` and opens a
#     new one whenever it holds fewer (the daemon closed or evicted one), at most
#     ``rate`` attempts per second. With ``churn`` it opens one every ``1/rate`` seconds
#     no matter what, closing its own oldest when it holds ``connections`` (a stranger
#     that keeps re-opening, e.g. every 0.1 s).
#   * What each connection sends (``payload``): "framed" — a well-framed 5-byte packet
#     of random bytes (4-byte length prefix, as hotline frames them) on connect and every
#     ``interval`` seconds; "loris" — a length prefix promising 1000 bytes, then one byte
#     every ``interval`` seconds; "silent" — nothing; "mixed" — framed and loris
#     alternately.
#   * Every byte the daemon writes to any of its connections is counted
#     (``bytes_received``): a daemon that writes our traffic to a stranger shows here.
#   * Bounded: loopback addresses only, at most MAX_RATE attempts per second,
#     MAX_CONNECTIONS at once, MAX_SECONDS of running.
#
# Subprocess use (integration tests):
#     python -m hotline.testing.junk_tcp --port 7411 --connections 32 --payload mixed \
#         --rate 50 --seconds 60
# prints {"ready": true} once running, one JSON line of ``JunkStats`` every ``--report``
# seconds, and a last one on SIGTERM/SIGINT or after ``--seconds``. ``JunkTcpProcess``
# wraps that for pytest.
"""A junk-TCP stranger for tests: holds connections to a daemon and counts bytes received."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import random
import signal
import struct
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

MAX_RATE = 200.0
MAX_CONNECTIONS = 256
MAX_SECONDS = 600.0
PAYLOADS = ("framed", "loris", "silent", "mixed")
_JUNK_PACKET = 5
_LORIS_PROMISE = 1000
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass
class JunkStats:
    """What the stranger did and got."""

    attempts: int = 0
    opened: int = 0
    connect_failures: int = 0
    closed_by_daemon: int = 0
    open_now: int = 0
    max_open: int = 0
    packets_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


class JunkTcp:
    """Junk TCP connections to ``host:port`` (see the module header).

    Args:
        host, port: the daemon's TCP listen address; a loopback IP address.
        connections: connections held at once.
        payload: "framed", "loris", "silent" or "mixed".
        rate: connection attempts per second at most.
        churn: open a new connection every ``1/rate`` s, closing our oldest when full.
        interval: seconds between junk packets (framed) or bytes (loris).
        seed: for the junk bytes.

    Raises:
        ValueError: a non-loopback host or a bound out of range.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connections: int = 32,
        payload: str = "mixed",
        rate: float = 20.0,
        churn: bool = False,
        interval: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"junk_tcp attacks loopback only, not {host}")
        if not (1 <= connections <= MAX_CONNECTIONS and 0 < rate <= MAX_RATE and interval > 0):
            raise ValueError("connections, rate or interval out of bounds")
        if payload not in PAYLOADS:
            raise ValueError(f"payload must be one of {PAYLOADS}")
        self.host, self.port = host, port
        self.connections, self.payload, self.rate = connections, payload, rate
        self.churn, self.interval = churn, interval
        self.stats = JunkStats()
        self._rng = random.Random(seed)
        self._held: deque[trio.CancelScope] = deque()  # connecting or open, oldest first
        self._changed = trio.Event()

    async def run(self, seconds: float) -> JunkStats:
        """Attack for ``seconds`` (at most MAX_SECONDS); returns the counters.

        Raises:
            ValueError: ``seconds`` out of bounds.
        """
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be in (0, {MAX_SECONDS}]")
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                while True:
                    await self._make_room()
                    nursery.start_soon(self._connection, self.stats.attempts)
                    self.stats.attempts += 1
                    await trio.sleep(1 / self.rate)
        return self.stats

    async def _make_room(self) -> None:
        if self.churn and len(self._held) >= self.connections:
            self._held.popleft().cancel()
        while len(self._held) >= self.connections:
            await self._changed.wait()
            self._changed = trio.Event()

    async def _connection(self, index: int) -> None:
        scope = trio.CancelScope()
        self._held.append(scope)
        try:
            with scope:
                await self._connect_and_hold(index)
        finally:
            if scope in self._held:
                self._held.remove(scope)
            self._changed.set()

    async def _connect_and_hold(self, index: int) -> None:
        try:
            stream = await trio.open_tcp_stream(self.host, self.port)
        except OSError:
            self.stats.connect_failures += 1
            return
        self.stats.opened += 1
        self.stats.open_now += 1
        self.stats.max_open = max(self.stats.max_open, self.stats.open_now)
        try:
            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(self._talk, stream, self._kind(index))
                await self._count(stream)
                nursery.cancel_scope.cancel()
        finally:
            self.stats.open_now -= 1

    def _kind(self, index: int) -> str:
        if self.payload == "mixed":
            return ("framed", "loris")[index % 2]
        return self.payload

    async def _count(self, stream: trio.SocketStream) -> None:
        """Count what the daemon sends until it closes the connection."""
        try:
            while data := await stream.receive_some(65536):
                self.stats.bytes_received += len(data)
        except _STREAM_ERRORS:
            pass
        self.stats.closed_by_daemon += 1

    async def _talk(self, stream: trio.SocketStream, kind: str) -> None:
        if kind == "silent":
            return
        try:
            if kind == "loris":
                await self._send(stream, struct.pack(">I", _LORIS_PROMISE))
            while True:
                if kind == "framed":
                    junk = self._rng.randbytes(_JUNK_PACKET)
                    await self._send(stream, struct.pack(">I", len(junk)) + junk)
                    self.stats.packets_sent += 1
                else:
                    await self._send(stream, self._rng.randbytes(1))
                await trio.sleep(self.interval)
        except _STREAM_ERRORS:
            return  # the reader sees the close

    async def _send(self, stream: trio.SocketStream, data: bytes) -> None:
        await stream.send_all(data)
        self.stats.bytes_sent += len(data)


def _print_stats(stats: JunkStats) -> None:
    print(json.dumps(dataclasses.asdict(stats)), flush=True)


async def _run_until_signal(junk: JunkTcp, seconds: float, report: float) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            print(json.dumps({"ready": True}), flush=True)

            async def attack() -> None:
                await junk.run(seconds)
                nursery.cancel_scope.cancel()

            async def reporter() -> None:
                while True:
                    await trio.sleep(report)
                    _print_stats(junk.stats)

            nursery.start_soon(attack)
            nursery.start_soon(reporter)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    _print_stats(junk.stats)


def main(argv: list[str] | None = None) -> int:
    """Run the stranger (see the module header); prints its counters as JSON at the end."""
    parser = argparse.ArgumentParser(prog="python -m hotline.testing.junk_tcp",
                                     description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--payload", choices=PAYLOADS, default="mixed")
    parser.add_argument("--rate", type=float, default=20.0, help="attempts per second")
    parser.add_argument("--churn", action="store_true", help="re-open every 1/rate s")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=float, default=0.5, help="seconds between stats lines")
    args = parser.parse_args(argv)
    junk = JunkTcp(args.host, args.port, connections=args.connections, payload=args.payload,
                   rate=args.rate, churn=args.churn, interval=args.interval, seed=args.seed)
    trio.run(_run_until_signal, junk, args.seconds, args.report)
    return 0


# The module to run with ``-m``: this one, wherever it lives.
_MODULE = __spec__.name if __spec__ is not None and __name__ == "__main__" else __name__


class JunkTcpProcess:
    """``python -m hotline.testing.junk_tcp`` as a subprocess, for integration tests.

    Usage::

        junk = JunkTcpProcess(port, connections=32, rate=50, seconds=60)
        junk.latest()["opened"]      # the counters as last reported (a dict)
        stats = junk.stop()          # SIGTERM; the final counters
        stats["bytes_received"]

    Args:
        port: the daemon's TCP listen port on ``host``.
        options: ``JunkTcp`` arguments and ``seconds`` (``churn=True`` is a flag).
    """

    def __init__(self, port: int, host: str = "127.0.0.1", startup_timeout: float = 10.0,
                 **options: Any) -> None:
        cmd = [sys.executable, "-m", _MODULE, "--host", host, "--port", str(port)]
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                cmd.append(flag)
            elif value is not False:
                cmd += [flag, str(value)]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self._last: dict[str, Any] = dataclasses.asdict(JunkStats())
        self._started = False
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_lines, daemon=True)
        self._reader.start()
        if not self._ready.wait(startup_timeout) or not self._started:
            self.process.kill()
            self.process.wait()
            raise RuntimeError("junk_tcp did not start")

    def _read_lines(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if self._started:
                self._last = json.loads(line)
            else:
                self._started = bool(json.loads(line).get("ready"))
                self._ready.set()
        self._ready.set()  # it exited

    def latest(self) -> dict[str, Any]:
        """The counters as last reported (``JunkStats`` as a dict)."""
        return self._last

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """Stop it (SIGTERM) and return its final counters (``JunkStats`` as a dict)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        self._reader.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self._last


if __name__ == "__main__":
    sys.exit(main())
