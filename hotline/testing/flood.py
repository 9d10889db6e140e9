# hotline/testing/flood.py — a handshake flooder that knows only the two .pub lines.
#
# Owns: the attacker of DESIGN §2b for tests and measurements. It holds no private key:
# from the victim's public key it computes mac1 (so its initiations pass the cheap
# filter) and the cookie-reply key (so it can use cookies, as an attacker at a real
# address would). It sends, at a bounded rate for a bounded time, to loopback only:
#
#   * forged initiations: valid mac1, random Noise (each one different);
#   * replays of captured initiations (the caller passes genuine ones, e.g. made with
#     the real identity to stand in for captures);
#   * junk datagrams (random bytes of every packet type).
#
# Over UDP it sends from one socket per source address (``sources``: 127.0.0.x, so
# each is a distinct address as the victim sees it). With ``farm_cookies`` it answers
# cookie replies as a real attacker would: it keeps the cookie of each socket and puts
# a valid mac2 on everything that socket sends next (forged and replayed alike). Over
# TCP it keeps ``tcp_connections`` connections to the victim (from the first source
# address, reconnecting when closed) and writes length-framed forged initiations and
# replays on them.
#
# Subprocess use (integration tests):
#     python -m hotline.testing.flood --plan '{"victim_pub": "ssh-ed25519 …",
#         "udp_port": 7411, "tcp_port": 7411, "rate": 1000, "duration": 8}'
# prints ONE JSON line {"ready": true} once its sockets are up, then, when done (or on
# SIGTERM), one JSON line of counters (``FloodStats``). ``FloodProcess`` wraps that.
"""A bounded, loopback-only handshake flooder (forged and replayed initiations, junk)."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hotline.errors import RemoteProtocolError
from hotline.proto.cookie import (
    COOKIE_REPLY_LEN,
    MACS_LEN,
    TYPE_COOKIE_REPLY,
    CookieJar,
    add_macs,
    compute_mac,
    mac1_key,
)
from hotline.proto.framing import encode_tcp_frame
from hotline.proto.handshake import INITIATION_MAX, TYPE_INITIATION
from hotline.proto.identity import PublicKey
from hotline.testing.process import read_line, terminate

_MODULE = "hotline.testing.flood"
_KINDS = ("forged", "replay", "junk")
_MAX_RATE = 20_000.0
_MAX_DURATION = 600.0
_REMEMBERED = 512  # mac1 of our recent initiations per socket, to open cookie replies

Rng = Callable[[int], bytes]


def forged_initiation(victim: PublicKey, sender_index: int, rng: Rng = os.urandom,
                      cookie: bytes | None = None) -> bytes:
    """An initiation that passes the victim's mac1 (and mac2 with ``cookie``) but whose
    Noise part is random: it costs the victim a DH if it gets that far, then fails."""
    noise_part = rng(INITIATION_MAX - 5 - MACS_LEN)
    body = struct.pack(">BI", TYPE_INITIATION, sender_index) + noise_part
    return add_macs(body, mac1_key(victim.x25519()), cookie)


def with_mac2(packet: bytes, cookie: bytes) -> bytes:
    """``packet`` (any handshake packet) with its mac2 recomputed from ``cookie``."""
    covered = packet[:-16]
    return covered + compute_mac(cookie, covered)


@dataclass
class FloodPlan:
    """What to send, where, how fast and for how long.

    ``mix`` weighs the kinds (``forged``, ``replay``, ``junk``); replays need
    ``captured`` (hex of genuine initiations). ``tcp_port`` None: UDP only; else every
    ``tcp_every``-th initiation goes over TCP (junk is UDP only).
    """

    victim_pub: str
    host: str = "127.0.0.1"
    udp_port: int | None = None
    tcp_port: int | None = None
    rate: float = 1000.0
    duration: float = 5.0
    mix: dict[str, int] = field(default_factory=lambda: {"forged": 2, "replay": 2, "junk": 1})
    captured: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=lambda: ["127.0.0.2"])
    farm_cookies: bool = True
    tcp_connections: int = 2
    tcp_every: int = 5

    def check(self) -> None:
        """Refuse anything but a bounded flood on loopback.

        Raises:
            ValueError: a non-loopback address (or a source of another family), an
                unbounded rate or duration, a mix that names an unknown kind or
                replays nothing.
        """
        version = ipaddress.ip_address(self.host).version
        for host in (self.host, *self.sources):
            address = ipaddress.ip_address(host)
            if not address.is_loopback:
                raise ValueError(f"{host} is not a loopback address: loopback only")
            if address.version != version:
                raise ValueError(f"source {host} is not of the target's address family")
        if not 0 < self.rate <= _MAX_RATE or not 0 < self.duration <= _MAX_DURATION:
            raise ValueError("rate and duration must be positive and bounded")
        if set(self.mix) - set(_KINDS) or sum(self.mix.values()) <= 0:
            raise ValueError(f"mix weighs {sorted(self.mix)}; kinds are {_KINDS}")
        if self.mix.get("replay") and not self.captured:
            raise ValueError("a mix with replays needs captured initiations")
        if self.tcp_every < 1:
            raise ValueError("tcp_every must be >= 1")


@dataclass
class FloodStats:
    """What the flooder did and saw."""

    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_KINDS, 0))
    sent_with_mac2: int = 0
    tcp_sent: int = 0
    tcp_connects: int = 0
    send_errors: int = 0
    cookie_replies: int = 0
    cookies_accepted: int = 0
    other_replies: int = 0  # datagrams back that are not cookie replies (responses)
    tcp_bytes_received: int = 0
    seconds: float = 0.0


class _UdpSource:
    """One socket at one source address, with the cookie the victim gave it."""

    def __init__(self, host: str, family: int, victim: PublicKey) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.jar = CookieJar(victim.x25519())
        self.mac1_by_index: dict[int, bytes] = {}

    def remember(self, packet: bytes) -> None:
        (index,) = struct.unpack_from(">I", packet, 1)
        self.mac1_by_index[index] = packet[-MACS_LEN:-16]
        while len(self.mac1_by_index) > _REMEMBERED:
            del self.mac1_by_index[next(iter(self.mac1_by_index))]


class Flooder:
    """Runs one ``FloodPlan`` (synchronously). See the module header."""

    def __init__(self, plan: FloodPlan, rng: Rng = os.urandom) -> None:
        plan.check()
        self.plan = plan
        self.stats = FloodStats()
        self._rng = rng
        self._victim = PublicKey.from_openssh_line(plan.victim_pub)
        self._captured = [bytes.fromhex(c) for c in plan.captured]
        self._schedule = [k for k in _KINDS for _ in range(plan.mix.get(k, 0))]
        family = socket.AF_INET6 if ":" in plan.host else socket.AF_INET
        self._family = family
        self._udp = [_UdpSource(h, family, self._victim) for h in plan.sources] \
            if plan.udp_port is not None else []
        self._tcp: list[socket.socket] = []
        self._next_index = 1
        self._replays = 0
        self._stopped = False

    def stop(self) -> None:
        """End ``run`` early (e.g. from a signal handler)."""
        self._stopped = True

    def close(self) -> None:
        """Close every socket."""
        for source in self._udp:
            source.sock.close()
        for conn in self._tcp:
            conn.close()

    def run(self) -> FloodStats:
        """Flood for ``plan.duration`` seconds at ``plan.rate`` packets/s; returns counters."""
        start = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - start) < self.plan.duration and not self._stopped:
            due = min(int(elapsed * self.plan.rate) - sent, 1000)
            for _ in range(due):
                self._send_one(sent)
                sent += 1
            self._receive()
            if due <= 0:
                time.sleep(0.0005)
        self.stats.seconds = time.monotonic() - start
        return self.stats

    # --- sending --------------------------------------------------------------------

    def _send_one(self, n: int) -> None:
        kind = self._schedule[n % len(self._schedule)]
        on_tcp = (self.plan.tcp_port is not None and kind != "junk"
                  and (not self._udp or n % self.plan.tcp_every == 0))
        if on_tcp:
            self._send_tcp(self._packet(kind, None))
        elif self._udp:
            source = self._udp[n % len(self._udp)]
            self._send_udp(source, kind)
        else:
            return
        self.stats.sent[kind] += 1

    def _packet(self, kind: str, cookie: bytes | None) -> bytes:
        if kind == "junk":
            size = 1 + self._rng(1)[0] * 4
            return bytes([self._rng(1)[0] % 6]) + self._rng(size)
        if kind == "replay":
            packet = self._captured[self._replays % len(self._captured)]
            self._replays += 1
            return packet if cookie is None else with_mac2(packet, cookie)
        self._next_index = (self._next_index + 1) & 0xFFFFFFFF
        return forged_initiation(self._victim, self._next_index, self._rng, cookie)

    def _send_udp(self, source: _UdpSource, kind: str) -> None:
        cookie = source.jar.cookie(time.monotonic()) if self.plan.farm_cookies else None
        packet = self._packet(kind, cookie if kind != "junk" else None)
        if kind != "junk":
            source.remember(packet)
            self.stats.sent_with_mac2 += cookie is not None
        assert self.plan.udp_port is not None
        try:
            source.sock.sendto(packet, (self.plan.host, self.plan.udp_port))
        except OSError:
            self.stats.send_errors += 1

    def _send_tcp(self, packet: bytes) -> None:
        conn = self._tcp_connection()
        if conn is None:
            return
        frame = encode_tcp_frame(packet)
        try:
            whole = conn.send(frame) == len(frame)
        except BlockingIOError:
            self.stats.send_errors += 1
            return
        except OSError:
            whole = False
        if whole:
            self.stats.tcp_sent += 1
            return
        self.stats.send_errors += 1  # a broken or half-sent frame: start a new connection
        self._tcp.remove(conn)
        conn.close()

    def _tcp_connection(self) -> socket.socket | None:
        """A connected socket, round robin; (re)connects up to ``tcp_connections``."""
        if len(self._tcp) < self.plan.tcp_connections:
            conn = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                conn.bind((self.plan.sources[0], 0))
                conn.settimeout(1.0)
                conn.connect((self.plan.host, self.plan.tcp_port))
                conn.setblocking(False)
            except OSError:
                conn.close()
                self.stats.send_errors += 1
                return self._tcp[0] if self._tcp else None
            self._tcp.append(conn)
            self.stats.tcp_connects += 1
        self._tcp.append(self._tcp.pop(0))
        return self._tcp[-1]

    # --- receiving ------------------------------------------------------------------

    def _receive(self) -> None:
        for source in self._udp:
            while True:
                try:
                    data = source.sock.recv(2048)
                except OSError:  # BlockingIOError, or an ICMP error surfacing
                    break
                self._on_datagram(source, data)
        for conn in list(self._tcp):
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            self.stats.tcp_bytes_received += len(data)
            if not data:
                self._tcp.remove(conn)
                conn.close()

    def _on_datagram(self, source: _UdpSource, data: bytes) -> None:
        if len(data) != COOKIE_REPLY_LEN or data[0] != TYPE_COOKIE_REPLY:
            self.stats.other_replies += 1
            return
        self.stats.cookie_replies += 1
        (index,) = struct.unpack_from(">I", data, 1)
        mac1 = source.mac1_by_index.get(index)
        if mac1 is None or not self.plan.farm_cookies:
            return
        try:
            source.jar.consume_reply_untrusted(data, mac1, time.monotonic())
        except RemoteProtocolError:
            return
        self.stats.cookies_accepted += 1


class FloodProcess:
    """``python -m hotline.testing.flood`` as a subprocess.

    Usage::

        with FloodProcess(plan) as flood:   # returns once its sockets are up
            ...                             # the daemons are flooded meanwhile
            stats = flood.stop()            # or flood.wait() for the whole duration
    """

    def __init__(self, plan: FloodPlan, startup_timeout: float = 10.0) -> None:
        plan.check()
        self.plan = plan
        self.stats: dict[str, Any] = {}
        self.process = subprocess.Popen(
            [sys.executable, "-m", _MODULE, "--plan", json.dumps(dataclasses.asdict(plan))],
            stdout=subprocess.PIPE, text=True,
        )
        self._startup_timeout = startup_timeout
        ready = self._readline(startup_timeout)
        if not json.loads(ready).get("ready"):
            self.close()
            raise RuntimeError(f"flooder did not start: {ready!r}")

    def _readline(self, timeout: float) -> str:
        try:
            return read_line(self.process, timeout) or "{}"
        except TimeoutError:
            self.close()
            raise

    def __enter__(self) -> FloodProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """True while the flooder is still sending."""
        return self.process.poll() is None

    def wait(self) -> dict[str, Any]:
        """Wait for the flood to end (its duration, plus slack); returns its counters."""
        line = self._readline(self.plan.duration + 30.0)
        self.stats = json.loads(line)
        self.process.wait(10)
        return self.stats

    def stop(self) -> dict[str, Any]:
        """End the flood now (SIGTERM); returns its counters."""
        if self.running:
            self.process.terminate()
        return self.wait()

    def close(self) -> None:
        """Stop the flooder now if it is still running (its counters are lost)."""
        terminate(self.process)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m hotline.testing.flood --plan JSON``."""
    parser = argparse.ArgumentParser(prog=_MODULE, description=__doc__)
    parser.add_argument("--plan", required=True, help="a FloodPlan as JSON")
    args = parser.parse_args(argv)
    flooder = Flooder(FloodPlan(**json.loads(args.plan)))
    signal.signal(signal.SIGTERM, lambda _sig, _frame: flooder.stop())
    try:
        print(json.dumps({"ready": True}), flush=True)
        stats = flooder.run()
    finally:
        flooder.close()
    print(json.dumps(dataclasses.asdict(stats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
