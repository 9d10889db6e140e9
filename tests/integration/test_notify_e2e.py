"""sd_notify end to end: a real daemon subprocess talks to a socket the test binds.

The test plays systemd's part: it binds an AF_UNIX datagram socket (a path, or an
abstract ``@name``), starts a daemon with ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` set,
and reads what arrives: READY=1 once (without the peer running), STATUS= lines as the
link comes up, WATCHDOG=1 at half of WATCHDOG_USEC, none once the runner is wedged
(``HOTLINE_FAULT_WEDGE_RUNNER_AFTER``), STOPPING=1 and exit 0 on SIGTERM, and
``WATCHDOG_PID`` honoured.

Every datagram is stamped by the kernel on arrival (SO_TIMESTAMP), so the windows the
assertions count in are measured at the receiving socket, not when this process got
round to reading it. Counts are loose ranges, never exact timings.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotline.testing.loopback import LoopbackPair

# Python does not export these; 29 is SO_TIMESTAMP (== SCM_TIMESTAMP) in
# asm-generic/socket.h, used by x86, arm and most other Linux architectures.
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)
WATCHDOG_USEC = 1_000_000  # WatchdogSec=1: the daemon pings every 0.5 s
PERIOD = WATCHDOG_USEC / 1e6


class NotifySocket:
    """What systemd would listen on: collects (arrival time, message) pairs."""

    def __init__(self, abstract: bool) -> None:
        self._dir = tempfile.mkdtemp(prefix="hn-")  # short: sun_path is 108 bytes
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        if abstract:
            name = f"hotline-notify-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            path = os.path.join(self._dir, "notify")
            self.sock.bind(path)
            self.env_value = path
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        size = struct.calcsize("ll")
        while not self._stop.is_set():
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(size))
            except TimeoutError:
                continue
            except OSError:
                return
            stamp = time.time()
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP:
                    sec, usec = struct.unpack("ll", value[:size])
                    stamp = sec + usec / 1e6
            with self._lock:
                self.messages.append((stamp, data.decode()))

    def env(self, **extra: str) -> dict[str, str]:
        """The environment systemd would give the service."""
        return {"NOTIFY_SOCKET": self.env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC), **extra}

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.messages)

    def with_field(self, key: str, value: str | None = None) -> list[float]:
        """Arrival times of messages carrying ``key`` (``=value`` if given)."""
        out = []
        for stamp, message in self.snapshot():
            for line in message.split("\n"):
                k, _, v = line.partition("=")
                if k == key and (value is None or v == value):
                    out.append(stamp)
        return out

    def wait_for(self, key: str, value: str | None = None, contains: str = "",
                 timeout: float = 20.0, what: str = "") -> float:
        """Wait for a message with ``key`` (its value containing ``contains``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for stamp, message in self.snapshot():
                for line in message.split("\n"):
                    k, _, v = line.partition("=")
                    if k == key and (value is None or v == value) and contains in v:
                        return stamp
            time.sleep(0.02)
        raise AssertionError(f"no {what or key} within {timeout:g}s; got {self.snapshot()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        path = os.path.join(self._dir, "notify")
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(self._dir)


def _count(stamps: list[float], start: float, end: float) -> int:
    return sum(1 for s in stamps if start <= s < end)


def _sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


def _log(pair: LoopbackPair, index: int) -> str:
    return "\n".join(pair[index].log_lines()[-30:])


def _running(pair: LoopbackPair, index: int) -> bool:
    proc = pair[index].proc
    return proc is not None and proc.poll() is None


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[LoopbackPair]:
    # The watchdog pings while the runner turned within max(3·heartbeat, WatchdogSec).
    # heartbeat 0.2 s makes that WatchdogSec (1 s), so a wedge shows within one period;
    # with the default heartbeat (1 s) it would take 3 s.
    p = LoopbackPair(tmp_path, settings={"heartbeat": 0.2, "dead_after": 1.0})
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def path_socket() -> Iterator[NotifySocket]:
    s = NotifySocket(abstract=False)
    yield s
    s.close()


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    s = NotifySocket(abstract=True)
    yield s
    s.close()


def test_ready_status_watchdog_stopping(pair: LoopbackPair, path_socket: NotifySocket) -> None:
    """READY without the peer; pings at ~2/s; STATUS on link up; STOPPING and exit 0."""
    n = path_socket
    pair.start(0, n.env())
    ready = n.wait_for("READY", "1", what="READY=1 (the peer is not running)")
    assert _running(pair, 0), _log(pair, 0)

    # 3 s of pings at 0.5 s: 6 expected; a loose range tolerates a loaded machine.
    _sleep_until(ready + 3.25)
    pings = _count(n.with_field("WATCHDOG", "1"), ready + 0.25, ready + 3.25)
    assert 3 <= pings <= 9, (pings, n.snapshot())

    pair.start(1)
    n.wait_for("STATUS", contains="link up", what="STATUS=link up …")
    statuses = [m for _, m in n.snapshot() if m.startswith("STATUS=")]
    assert any("to moscow" in s for s in statuses), statuses

    assert pair.kill(0, signal.SIGTERM) == 0, _log(pair, 0)
    n.wait_for("STOPPING", "1", timeout=5)
    assert len(n.with_field("READY")) == 1, n.snapshot()


def test_wedged_runner_stops_the_pings(pair: LoopbackPair,
                                       abstract_socket: NotifySocket) -> None:
    """With the runner wedged after 2 s, no WATCHDOG=1 from wedge+period to wedge+3·period.

    The process itself stays alive (its other tasks still run): only the watchdog
    notices, which is what lets systemd restart it. SIGTERM still shuts it down.
    """
    n = abstract_socket
    wedge_after = 2.0
    pair.start(0, n.env(HOTLINE_FAULT_WEDGE_RUNNER_AFTER=str(wedge_after)))
    ready = n.wait_for("READY", "1")
    wedge = ready + wedge_after  # the wedge timer starts right after READY=1 is sent
    _sleep_until(wedge + 3 * PERIOD + 0.2)
    pings = n.with_field("WATCHDOG", "1")
    assert _count(pings, ready, wedge) >= 2, n.snapshot()  # healthy before the wedge
    # Half a second of slack on the start: the wedge timer is armed just after READY.
    late = [p - wedge for p in pings if wedge + PERIOD + 0.5 <= p < wedge + 3 * PERIOD]
    assert not late, f"pings {late} s after the wedge: {n.snapshot()}"
    assert _running(pair, 0), _log(pair, 0)

    assert pair.kill(0, signal.SIGTERM) == 0, _log(pair, 0)
    n.wait_for("STOPPING", "1", timeout=5)


@pytest.mark.parametrize(("watchdog_pid", "expect_pings"), [("$$", True), ("1", False)])
def test_watchdog_pid(pair: LoopbackPair, path_socket: NotifySocket, watchdog_pid: str,
                      expect_pings: bool) -> None:
    """WATCHDOG_PID naming us enables pings; naming another process disables them.

    As systemd does, the PID is that of the process it execs: a shell sets
    ``WATCHDOG_PID=$$`` and then execs the daemon in its place.
    """
    n = path_socket
    node = pair[0]
    cmd = [sys.executable, "-m", "hotline", "run", "-c", str(node.config)]
    wrapper = f'WATCHDOG_PID={watchdog_pid} exec "$@"'
    with node.log_path.open("ab") as log:
        node.proc = subprocess.Popen(["sh", "-c", wrapper, "sh", *cmd], stdout=log,
                                     stderr=subprocess.STDOUT, env={**os.environ, **n.env()})
    ready = n.wait_for("READY", "1")
    _sleep_until(ready + 2 * PERIOD + 0.3)
    pings = _count(n.with_field("WATCHDOG", "1"), ready, ready + 2 * PERIOD + 0.3)
    if expect_pings:
        assert pings >= 1, n.snapshot()
    else:
        assert pings == 0, n.snapshot()
    assert pair.kill(0, signal.SIGTERM) == 0, _log(pair, 0)
    n.wait_for("STOPPING", "1", timeout=5)
