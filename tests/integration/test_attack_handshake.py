"""Handshake floods against two real daemons on loopback (issue 8, DESIGN §2b).

The attacker knows only the two ``.pub`` lines. At 1,000 packets/s it sends moscow
forged initiations (valid mac1, random Noise), replays of genuine old initiations of
washington's (made here with the real key, standing in for captures) and junk, over
UDP from four addresses (127.0.0.2-5, each answering cookie replies and then flooding
with a valid mac2 from its own address) and over TCP from 127.0.0.2.

Done when (issue 8): a fresh pair comes up within 10 s; an established pair with
``rekey_after = 5`` stays up through every rekey, ``send --wait`` succeeds and the
heartbeat RTT stays under 50 ms. The default suite runs a short flood, ``--run-slow``
the issue's 20 s. Figures (time to up, RTT, the victim's CPU) are printed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hotline.keyfile import load_identity
from hotline.proto.handshake import Initiation
from hotline.testing.flood import FloodPlan, FloodProcess
from hotline.testing.loopback import LoopbackPair

RATE = 1000.0
SHORT = 8.0
FULL = 20.0
UP_WITHIN = 10.0  # the bound for a fresh pair
RTT_BOUND_MS = 50.0  # the bound during the flood
VICTIM = 1  # moscow
SOURCES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


def _plan(pair: LoopbackPair, duration: float) -> FloodPlan:
    washington, moscow = pair[0], pair[VICTIM]
    real = load_identity(washington.key)
    moscow_pub = load_identity(moscow.key).public
    an_hour_ago = time.time_ns() - 3600 * 10**9
    captured = [
        Initiation.start(real, moscow_pub, i, an_hour_ago + i, 0.0, os.urandom)[1].hex()
        for i in range(20)
    ]
    return FloodPlan(
        victim_pub=(moscow.key.parent / f"{moscow.name}.pub").read_text().strip(),
        udp_port=moscow.port, tcp_port=moscow.port, rate=RATE, duration=duration,
        captured=captured, sources=SOURCES,
    )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _victim_pid(pair: LoopbackPair) -> int:
    proc = pair[VICTIM].proc
    assert proc is not None
    return proc.pid


def _check_defence_engaged(pair: LoopbackPair, stats: dict[str, object]) -> None:
    """The flood got through to the victim and met the guard, not the DH budget."""
    sent = stats["sent"]
    assert isinstance(sent, dict)
    assert min(sent.values()) > 0
    assert stats["cookies_accepted"]  # the attacker farmed cookies from its addresses
    assert stats["sent_with_mac2"]
    status = pair.status(VICTIM)
    assert status is not None
    dropped = status["dropped"]
    print(f"flood: {stats}\nvictim dropped: {dropped}")
    assert dropped.get("CookieRequired", 0) > 0  # cookies were asked for
    assert dropped.get("HandshakeError", 0) > 0  # and the farmers' budgets ran out
    assert dropped.get("ReplayError", 0) > 0  # replays were refused


@pytest.mark.parametrize("whole", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["short", "full"])
def test_fresh_pair_comes_up_during_a_flood(tmp_path: Path, whole: bool) -> None:
    """The flood outlasts the 10 s bound; the short run ends it once the pair is up."""
    pair = LoopbackPair(tmp_path)
    try:
        with FloodProcess(_plan(pair, FULL)) as flood:
            pair.start_all()
            took = pair.wait_up(timeout=UP_WITHIN)
            print(f"fresh pair up {took:.2f}s after start, during a {RATE:g}/s flood")
            out = pair.cli(0, "send", "--wait", "--timeout", "10", "up under attack")
            assert out.returncode == 0, out.stderr
            assert flood.running, "the flood must still be on"
            stats = flood.wait() if whole else flood.stop()
        _check_defence_engaged(pair, stats)
    finally:
        pair.stop_all()


@pytest.mark.parametrize("duration", [SHORT, pytest.param(FULL, marks=pytest.mark.slow)],
                         ids=["short", "full"])
def test_established_pair_stays_up_and_rekeys_during_a_flood(tmp_path: Path,
                                                             duration: float) -> None:
    pair = LoopbackPair(tmp_path, settings={"rekey_after": 5})
    try:
        pair.start_all()
        pair.wait_up()
        handshakes_before = len(pair[VICTIM].log_lines("handshake"))
        pid = _victim_pid(pair)
        with FloodProcess(_plan(pair, duration)) as flood:
            cpu_start, started = _cpu_seconds(pid), time.monotonic()
            states, rtts, sent = _watch(pair, flood)
            cpu = (_cpu_seconds(pid) - cpu_start) / (time.monotonic() - started)
            stats = flood.wait()
        rekeys = len(pair[VICTIM].log_lines("handshake")) - handshakes_before
        print(f"{len(states)} status polls: states {set(states)}, heartbeat RTT max "
              f"{max(rtts):.2f} ms; {rekeys} handshakes; victim CPU {100 * cpu:.0f}% "
              f"of a core during the {RATE:g}/s flood")
        assert sent
        assert set(states) == {"up"}
        assert max(rtts) < RTT_BOUND_MS
        assert rekeys >= max(1, int(duration // 5) - 1)  # rekey_after = 5
        _check_defence_engaged(pair, stats)
    finally:
        pair.stop_all()


def _watch(pair: LoopbackPair, flood: FloodProcess) -> tuple[list[str], list[float], bool]:
    """Poll both daemons while the flood runs; ``send --wait`` once half-way."""
    states: list[str] = []
    rtts: list[float] = []
    sent = False
    half = time.monotonic() + flood.plan.duration / 2
    while flood.running:
        for index in (0, 1):
            status = pair.status(index)
            assert status is not None
            states.append(str(status["state"]))
            rtts += [p["rtt_ms"] for p in status["paths"] if p["rtt_ms"] is not None]
        if not sent and time.monotonic() >= half:
            out = pair.cli(0, "send", "--wait", "--timeout", "10", "during the flood")
            assert out.returncode == 0, out.stderr
            sent = True
        time.sleep(0.2)
    return states, rtts, sent
