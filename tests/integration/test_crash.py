"""SIGKILL of either daemon mid-stream, then restart: nothing lost, nothing twice.

2,000 messages go in with ``hotline send --lines --wait`` while the sender's and the
receiver's daemons are killed with SIGKILL and restarted several times. The client
follows the documented recovery rule: every printed seq went in; after a failure
(exit 3), ``status`` tells ``out_seq`` — the lines up to it are stored — and sending
resumes from the next line. At the end the receiver's inbox holds each line exactly
once, in order, and ``hotline verify`` passes at both ends.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hotline.testing.loopback import LoopbackPair

TOTAL = 2000
KILLS = 6


def _killer(pair: LoopbackPair, stop: threading.Event, log: list[str], kills: int) -> None:
    rng = random.Random(7)
    for n in range(kills):
        if stop.wait(rng.uniform(0.4, 1.2)):
            return
        victim = n % 2  # alternate: sender's daemon, receiver's daemon
        pair.kill(victim, signal.SIGKILL)
        log.append(f"killed {pair[victim].name}")
        time.sleep(rng.uniform(0.0, 0.3))
        pair.start(victim)


def _out_seq(pair: LoopbackPair) -> int:
    status = None
    pair.wait_for(lambda: pair.status(0) is not None, 30, "washington to answer")
    status = pair.status(0)
    assert status is not None
    return int(status["out_seq"])


def test_sigkill_both_ends_mid_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    _soak(tmp_path, TOTAL, KILLS)


@pytest.mark.slow
def test_soak_sigkill_many_times(tmp_path: Path) -> None:
    """Ten times the messages and five times the kills (``--run-slow``)."""
    _soak(tmp_path, 10 * TOTAL, 5 * KILLS)


def _soak(tmp_path: Path, total: int, kills: int) -> None:
    pair = LoopbackPair(tmp_path)
    pair.start_all()
    lines = [f"line {i:05d}" for i in range(1, total + 1)]
    stop = threading.Event()
    killed: list[str] = []
    killer = threading.Thread(target=_killer, args=(pair, stop, killed, kills), daemon=True)
    try:
        pair.wait_up()
        killer.start()
        next_line, attempts = 0, 0
        while next_line < total:
            attempts += 1
            assert attempts < 50 + 10 * kills, "send never finished"
            chunk = "".join(x + "\n" for x in lines[next_line:]).encode()
            cmd = [sys.executable, "-m", "hotline", "send", "-c", str(pair[0].config),
                   "--lines", "--wait", "--timeout", "60"]
            result = subprocess.run(cmd, input=chunk, capture_output=True, timeout=120)
            printed = [int(s) for s in result.stdout.split()]
            if result.returncode == 0:
                assert printed[-1] == total
                next_line = total
                break
            assert result.returncode in (3, 75), result.stderr
            # Documented recovery: every stored line is below out_seq (seq == line no.).
            next_line = _out_seq(pair)
            assert next_line >= (printed[-1] if printed else 0)
        stop.set()
        killer.join()
        for i in (0, 1):
            if pair[i].proc is None:
                pair.start(i)
        pair.wait_up(timeout=30)
        wait = pair.cli(0, "send", "--wait", "--timeout", "60", "final")
        assert wait.returncode == 0, wait.stderr
        inbox = pair.cli(1, "inbox", "--json")
        bodies = [json.loads(x)["body"] for x in inbox.stdout.decode().splitlines()]
        print(f"{len(killed)} kills: {killed}; {attempts} send invocations")
        assert bodies == [*lines, "final"]
        for i in (0, 1):
            verify = pair.cli(i, "verify")
            assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        stop.set()
        pair.stop_all()


def test_sigterm_answers_every_stored_send(tmp_path: Path) -> None:
    """Graceful shutdown: each stored message was reported to its client, no more, no less."""
    pair = LoopbackPair(tmp_path)
    pair.start_all()
    try:
        pair.wait_up()
        lines = "".join(f"graceful {i}\n" for i in range(20000)).encode()
        cmd = [sys.executable, "-m", "hotline", "send", "-c", str(pair[0].config), "--lines"]
        client = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        results: list[tuple[bytes, bytes]] = []
        talk = threading.Thread(target=lambda: results.append(client.communicate(lines)))
        talk.start()
        pair.wait_for(lambda: (_out_seq(pair) or 0) > 100, 30, "a stream under way")
        pair.kill(0, signal.SIGTERM)
        talk.join(60)
        out, err = results[0]
        printed = [int(s) for s in out.split()]
        assert client.returncode == 3, err
        assert printed == list(range(1, len(printed) + 1))
        pair.start(0)
        stored = _out_seq(pair)
        print(f"{len(printed)} lines stored before SIGTERM; out_seq after restart {stored}")
        assert stored == len(printed)
    finally:
        pair.stop_all()
