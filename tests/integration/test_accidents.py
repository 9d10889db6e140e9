"""Operators' accidents against real daemons: the "done when" of issue 9 (DESIGN §4b).

Two real daemon subprocesses on loopback (``LoopbackPair``; ``ProxiedPair`` where the
network has to hold packets back), driven through the real CLI, logging JSON so that
priorities can be checked. Each test does to a store what an operator or a hypervisor
does — restores a backup or a VM snapshot (``snapshot_store`` uses SQLite's online
backup API: the file as it was at one instant), wipes it, fills its disk, kills the
daemon in the middle of a command — and then checks outcomes, never timings:

* every message whose ``send --wait`` succeeded is in the peer's inbox, or the lost range
  is named in a priority-2 log line; later messages flow both ways; ``verify`` passes at
  both ends (a recorded gap is reported, not a failure);
* an acknowledgement of a previous session frees nothing; a receipt for an epoch we
  left never reaches ``verify``;
* ``inbox --follow`` and ``inbox --since`` skip nothing across a new peer epoch;
* a full disk gives exit 74 and one line, a priority-2 ``store`` event, a daemon that
  stays up and loses nothing it was sent;
* ``send --lines --id`` re-run after a SIGKILL stores each line once;
* the daemon's memory does not grow with its backlog (1,000,000 messages, the READY time
  and the drain rate are measured in the ``slow`` test).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hotline.testing.accidents import (
    fill_filesystem,
    log_events,
    restore_store,
    rss_mib,
    small_filesystem,
    snapshot_store,
    stored_inbox,
    wipe_store,
)
from hotline.testing.loopback import LoopbackPair, Node, ProxiedPair

WASHINGTON, MOSCOW = 0, 1
CRIT = 2


# --- driving the pair ----------------------------------------------------------------


@dataclass
class Sent:
    """What ``hotline send --lines`` did: exit code, the ids it printed, its stderr."""

    code: int
    ids: list[str]
    stderr: str


def _send(pair: LoopbackPair, index: int, bodies: Sequence[str], *args: str,
          wait: bool = False, timeout: float = 30.0) -> Sent:
    """``send --lines`` of ``bodies`` at node ``index`` (``--wait`` for the peer's ack)."""
    flags = ["--wait", "--timeout", f"{timeout:g}"] if wait else []
    out = pair.cli(index, "send", "--lines", *flags, *args,
                   input="".join(f"{b}\n" for b in bodies).encode(), timeout=timeout + 120)
    return Sent(out.returncode, out.stdout.decode().split(), out.stderr.decode())


def _acked(pair: LoopbackPair, index: int, bodies: Sequence[str], *args: str) -> list[str]:
    """Send and wait for the peer's ack; fails the test unless acknowledged."""
    sent = _send(pair, index, bodies, *args, wait=True)
    assert sent.code == 0, sent.stderr
    return sent.ids


def _inbox(pair: LoopbackPair, index: int, *args: str) -> list[dict[str, Any]]:
    out = pair.cli(index, "inbox", "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def _bodies(pair: LoopbackPair, index: int) -> list[str]:
    return [str(m["body"]) for m in _inbox(pair, index)]


def _wait_inbox(pair: LoopbackPair, index: int, count: int, timeout: float = 60.0
                ) -> list[str]:
    """Node ``index``'s inbox once it holds at least ``count`` messages."""
    pair.wait_for(lambda: len(_inbox(pair, index)) >= count, timeout,
                  f"{count} messages in {pair[index].name}'s inbox")
    return _bodies(pair, index)


def _lines(prefix: str, count: int) -> list[str]:
    return [f"{prefix} {i:06d}" for i in range(1, count + 1)]


def _answering(pair: LoopbackPair, index: int) -> None:
    pair.wait_for(lambda: pair.status(index) is not None, 30,
                  f"{pair[index].name}'s control socket")


def _status(pair: LoopbackPair, index: int) -> dict[str, Any]:
    status = pair.status(index)
    assert status is not None, f"{pair[index].name} does not answer"
    return status


def _dropped(pair: LoopbackPair, index: int, kind: str) -> int:
    return int(_status(pair, index)["dropped"].get(kind, 0))


def _critical(node: Node) -> list[dict[str, Any]]:
    """The priority-2 events a daemon logged."""
    return [e for e in log_events(node) if e.get("priority") == CRIT]


def _verify(pair: LoopbackPair, index: int) -> str:
    out = pair.cli(index, "verify")
    assert out.returncode == 0, (out.stdout + out.stderr).decode()
    return out.stdout.decode()


def _pause(pair: LoopbackPair, index: int) -> None:
    """SIGSTOP a daemon: what is sent to it waits in its kernel buffers (a paused VM)."""
    proc = pair[index].proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)


def _resume(pair: LoopbackPair, index: int) -> None:
    proc = pair[index].proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGCONT)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[LoopbackPair]:
    p = LoopbackPair(tmp_path, log_format="json")
    p.start_all()
    try:
        yield p
    finally:
        p.stop_all()


@contextlib.contextmanager
def _udp_only_pair(tmp_path: Path, settings: dict[str, Any] | None = None
                   ) -> Iterator[ProxiedPair]:
    """A pair whose only working path is UDP through the fault proxy (TCP black-holed),
    so that a ``delay`` holds back every packet between them."""
    p = ProxiedPair(tmp_path, settings=settings, log_format="json")
    p.set_faults("tcp", blackhole=True)
    p.start_all()
    try:
        p.wait_up(all_paths=False)
        yield p
    finally:
        p.close()


# --- a store restored from an older copy ----------------------------------------------


def test_store_restored_at_the_sender(pair: LoopbackPair, tmp_path: Path) -> None:
    """Washington's store goes back in time; it must not reuse seqs with other bytes."""
    pair.wait_up()
    first, second, third, fourth = (_lines(p, 5) for p in ("first", "second", "third",
                                                             "fourth"))
    _acked(pair, WASHINGTON, first)
    snapshot = snapshot_store(pair[WASHINGTON].state_dir, tmp_path / "snapshot.db")
    assert _acked(pair, WASHINGTON, second) == ["6", "7", "8", "9", "10"]
    pair.kill(MOSCOW)  # away, so the restored washington stores `third` before it hears
    pair.kill(WASHINGTON)
    restore_store(pair[WASHINGTON].state_dir, snapshot)
    pair.start(WASHINGTON)
    _answering(pair, WASHINGTON)
    stored = _send(pair, WASHINGTON, third)
    assert (stored.code, stored.ids) == (0, ["6", "7", "8", "9", "10"])  # seqs reused
    pair.start(MOSCOW)
    pair.wait_up()
    _acked(pair, WASHINGTON, fourth)
    _acked(pair, MOSCOW, ["moscow still gets through"])

    # Every message acknowledged (first, second, fourth) is there, and third too: it was
    # re-sent in the new epoch washington started, not "acknowledged" as a duplicate.
    assert _wait_inbox(pair, MOSCOW, 20) == first + second + third + fourth
    assert _bodies(pair, WASHINGTON) == ["moscow still gets through"]
    [went_back] = [e for e in _critical(pair[WASHINGTON]) if e["event"] == "epoch"]
    assert went_back["change"] == "our store went back in time"
    assert went_back["resent"] == "routine:6..10"
    assert "up to 10" in went_back["peer_holds"]
    assert [e["event"] for e in _critical(pair[MOSCOW])] == ["epoch"]
    for index in (WASHINGTON, MOSCOW):
        _verify(pair, index)


def test_store_restored_at_the_receiver(pair: LoopbackPair, tmp_path: Path) -> None:
    """Moscow's store goes back in time: what it lost is a named gap, nothing stalls."""
    pair.wait_up()
    first, second, third = (_lines(p, 5) for p in ("first", "second", "third"))
    _acked(pair, WASHINGTON, first)
    _acked(pair, MOSCOW, ["m1", "m2"])
    snapshot = snapshot_store(pair[MOSCOW].state_dir, tmp_path / "snapshot.db")
    assert _acked(pair, WASHINGTON, second) == ["6", "7", "8", "9", "10"]
    _acked(pair, MOSCOW, ["m3", "m4"])
    pair.kill(MOSCOW)  # the VM dies; its snapshot is put back
    restore_store(pair[MOSCOW].state_dir, snapshot)
    pair.start(MOSCOW)
    pair.wait_up()
    assert _acked(pair, WASHINGTON, third) == ["11", "12", "13", "14", "15"]
    _acked(pair, MOSCOW, ["m5"])

    # `second` was acknowledged, then lost with moscow's newer state: a named gap.
    assert _bodies(pair, MOSCOW) == first + third
    [gap] = [e for e in _critical(pair[MOSCOW]) if e["event"] == "gap"]
    assert (gap["lane"], gap["lost"]) == ("routine", "6..10")
    # Moscow's own stream went back in time too (m3, m4 are at washington already).
    assert _bodies(pair, WASHINGTON) == ["m1", "m2", "m3", "m4", "m5"]
    assert any(e["event"] == "epoch" for e in _critical(pair[MOSCOW]))
    assert any(e["event"] == "epoch" for e in _critical(pair[WASHINGTON]))
    assert "1 known gaps" in _verify(pair, MOSCOW)
    _verify(pair, WASHINGTON)
    # DESIGN §4b / issue 9: the lost range is named at priority 2 at BOTH ends, so the
    # sender's operator, whose `send --wait` succeeded for 6..10, learns of the loss too.
    named = [e for e in _critical(pair[WASHINGTON]) if "6..10" in json.dumps(e)]
    assert named, ("washington logged no priority-2 line naming 6..10, which it was told "
                   f"moscow stored: {_critical(pair[WASHINGTON])}")


# --- old sessions, old epochs ----------------------------------------------------------

OLD_ACK_DELAY = 4.5  # how long the proxy holds the wiped moscow's last ACKs
NEW_LINK_DELAY = 0.3  # while the new moscow shakes hands: time to pause it in between


def test_a_delayed_previous_session_ack_after_a_wipe_frees_nothing(tmp_path: Path) -> None:
    """Moscow's ACKs are held in the network while its store is wiped and it restarts;
    when they reach washington, the new session is current: they free nothing."""
    with _udp_only_pair(tmp_path, settings={"dead_after": 15.0}) as p:
        warm = _lines("warm", 3)
        _acked(p, WASHINGTON, warm)
        p.set_faults("udp", delay=OLD_ACK_DELAY)
        held = _lines("held", 100)
        assert _send(p, WASHINGTON, held).code == 0
        p.wait_for(lambda: len(_inbox(p, MOSCOW)) > len(warm), 30, "moscow to store some")
        time.sleep(0.3)  # moscow has acknowledged them; the proxy holds the ACKs
        replays_before = _dropped(p, WASHINGTON, "ReplayError")
        p.kill(MOSCOW)
        old_store = [m.body.decode() for m in stored_inbox(p[MOSCOW].state_dir)]
        wipe_store(p[MOSCOW].state_dir)
        p.set_faults("udp", delay=NEW_LINK_DELAY)
        handshakes = len(log_events(p[MOSCOW], "handshake"))
        p.start(MOSCOW)
        p.wait_for(lambda: len(log_events(p[MOSCOW], "handshake")) > handshakes, 20,
                   "the new moscow's handshake")
        # Paused before washington's re-sent DATA reach it: the new store holds none.
        _pause(p, MOSCOW)
        acked_at_new_session = _status(p, WASHINGTON)["acked"]
        p.wait_for(lambda: _dropped(p, WASHINGTON, "ReplayError") > replays_before,
                   OLD_ACK_DELAY + 15, "the old session's ACKs to reach washington")
        assert _status(p, WASHINGTON)["acked"] == acked_at_new_session
        p.kill(MOSCOW)  # it never stored what it was sent while paused
        p.set_faults("udp", delay=0)
        p.start(MOSCOW)
        p.wait_up(all_paths=False)
        _acked(p, WASHINGTON, ["after"])
        _acked(p, MOSCOW, ["from the new moscow"])
        sent = warm + held + ["after"]
        new_store = _bodies(p, MOSCOW)
        # Only what was acknowledged before the new session may be missing, and the old
        # store had it (lost with the wipe, as expected).
        assert new_store == sent[acked_at_new_session:]
        assert set(sent[:acked_at_new_session]) <= set(old_store)
        for index in (WASHINGTON, MOSCOW):
            _verify(p, index)


STALE_RECEIPT_DELAY = 0.3  # > moscow's commit: its receipt is signed before our new epoch


def test_a_stale_receipt_never_breaks_verify(tmp_path: Path) -> None:
    """Moscow signs a receipt for washington's old epoch after washington, restored from
    a snapshot, started a new one; washington refuses it and ``verify`` passes."""
    with _udp_only_pair(tmp_path) as p:
        _acked(p, WASHINGTON, ["before the snapshot"])
        snapshot = snapshot_store(p[WASHINGTON].state_dir, tmp_path / "snapshot.db")
        _acked(p, WASHINGTON, ["after the snapshot"])
        _pause(p, MOSCOW)  # washington comes back first, so it starts the handshake
        p.kill(WASHINGTON)
        restore_store(p[WASHINGTON].state_dir, snapshot)
        p.start(WASHINGTON)
        _answering(p, WASHINGTON)
        # Stored in the old epoch, on a lane both stores agree on: moscow takes them in
        # that epoch and signs a receipt, while its HELLO (routine holds 2, washington 1)
        # makes washington leave that epoch.
        assert _send(p, WASHINGTON, ["a", "b"], "-p", "priority").ids == ["P1", "P2"]
        p.set_faults("udp", delay=STALE_RECEIPT_DELAY)
        _resume(p, MOSCOW)
        p.wait_for(lambda: _dropped(p, WASHINGTON, "ReplayError") > 0, 30,
                   "moscow's receipt for the old epoch to reach washington")
        p.set_faults("udp", delay=0)
        _acked(p, WASHINGTON, ["later"])
        _acked(p, MOSCOW, ["moscow too"])
        [went_back] = [e for e in _critical(p[WASHINGTON]) if e["event"] == "epoch"]
        assert went_back["change"] == "our store went back in time"
        bodies = _bodies(p, MOSCOW)
        assert bodies[:2] == ["before the snapshot", "after the snapshot"]
        assert bodies[-1] == "later"
        assert {"a", "b"} <= set(bodies)
        print(f"stored at moscow: a x{bodies.count('a')}, b x{bodies.count('b')} "
              "(once per epoch when the old epoch's ACK came after the new epoch began)")
        for index in (WASHINGTON, MOSCOW):
            _verify(p, index)


# --- the inbox across a new peer epoch --------------------------------------------------


class _Follower:
    """``hotline inbox --follow`` running, its output lines collected by a thread."""

    def __init__(self, pair: LoopbackPair, index: int, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hotline", "inbox", "-c", str(pair[index].config),
             "--follow", *args], stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def first(self, pair: LoopbackPair, count: int) -> list[str]:
        """The first ``count`` lines it printed (waits for them)."""
        pair.wait_for(lambda: len(self.lines) >= count, 60, f"{count} lines followed")
        return self.lines[:count]

    def stop(self) -> None:
        self.process.kill()
        self.process.communicate()


def test_inbox_follow_and_since_skip_nothing_across_an_epoch_change(
        pair: LoopbackPair) -> None:
    """Washington is SIGKILLed mid-stream and loses its store: a new epoch, seqs from 1."""
    pair.wait_up()
    follow_json = _Follower(pair, MOSCOW, "--json")
    follow_text = _Follower(pair, MOSCOW)
    try:
        old_stream = subprocess.Popen(
            [sys.executable, "-m", "hotline", "send", "-c", str(pair[WASHINGTON].config),
             "--lines"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        feeder = threading.Thread(target=old_stream.communicate,
                                  args=("".join(f"{b}\n" for b in _lines("old", 3000))
                                        .encode(),))
        feeder.start()
        pair.wait_for(lambda: _status(pair, MOSCOW)["in_seq"] >= 300, 30, "a stream")
        pair.kill(WASHINGTON)
        feeder.join(60)
        pair.wait_for(lambda: _status(pair, MOSCOW)["state"] == "down", 30, "link down")
        polled = _inbox(pair, MOSCOW)  # a script polling with --since: its first read
        wipe_store(pair[WASHINGTON].state_dir)
        pair.start(WASHINGTON)
        pair.wait_up()
        _acked(pair, WASHINGTON, _lines("new", 20))
        stored = _inbox(pair, MOSCOW)
        old_count = len(stored) - 20
        assert [m["body"] for m in stored[old_count:]] == _lines("new", 20)
        assert [m["body"] for m in stored[:old_count]] == _lines("old", old_count)

        followed = [json.loads(line) for line in follow_json.first(pair, len(stored))]
        assert [(m["seq"], m["body"]) for m in followed] == [
            (m["seq"], m["body"]) for m in stored]
        assert [i for i, m in enumerate(followed) if "epoch" in m] == [0, old_count]
        text = follow_text.first(pair, len(stored) + 2)
        epochs = [i for i, line in enumerate(text) if line.startswith("-- peer epoch ")]
        assert epochs == [0, old_count + 1]
        assert [line.split(" ", 3)[-1] for line in text if line.startswith("#")] == [
            m["body"] for m in stored]

        # The script's next poll: everything received after the last message it saw.
        since = _inbox(pair, MOSCOW, "--since", str(polled[-1]["id"]))
        assert [m["body"] for m in since] == [m["body"] for m in stored[len(polled):]], (
            f"inbox --since {polled[-1]['id']} (a message of the old epoch) after the "
            "epoch change skipped messages")
    finally:
        follow_json.stop()
        follow_text.stop()


# --- a full disk --------------------------------------------------------------------------


def test_disk_full_refuses_with_one_line_and_loses_nothing(tmp_path: Path) -> None:
    pair = LoopbackPair(tmp_path, log_format="json")
    with contextlib.ExitStack() as stack:
        try:
            disk = stack.enter_context(small_filesystem(pair[MOSCOW].state_dir, "1m"))
        except PermissionError as err:
            pytest.skip(f"a small filesystem needs a tmpfs mount: {err}")
        stack.callback(pair.stop_all)
        pair.start_all()
        pair.wait_up()
        _acked(pair, WASHINGTON, ["before"])
        _acked(pair, MOSCOW, ["before"])
        filler = fill_filesystem(disk)

        refused = pair.cli(MOSCOW, "send", "while the disk is full")
        assert refused.returncode == 74, refused.stderr
        assert refused.stdout == b""
        assert refused.stderr.count(b"\n") == 1
        assert b"Traceback" not in refused.stderr
        assert [e for e in log_events(pair[MOSCOW], "store") if e["priority"] == CRIT]
        full = _lines("sent to a full disk", 20)
        unstored = _send(pair, WASHINGTON, full, wait=True, timeout=3)
        assert unstored.code == 75, unstored.stderr  # moscow cannot store, so no ack
        assert pair[MOSCOW].proc is not None
        assert pair[MOSCOW].proc.poll() is None
        assert _status(pair, MOSCOW)["state"] == "up"

        filler.unlink()  # space comes back
        _acked(pair, MOSCOW, ["after"])
        _acked(pair, WASHINGTON, ["after"])
        assert _wait_inbox(pair, MOSCOW, 22) == ["before", *full, "after"]
        assert _bodies(pair, WASHINGTON) == ["before", "after"]
        for index in (WASHINGTON, MOSCOW):
            _verify(pair, index)


# --- idempotent sends -----------------------------------------------------------------


def test_send_lines_with_an_id_rerun_after_a_sigkill_stores_each_line_once(
        pair: LoopbackPair) -> None:
    pair.wait_up()
    lines = _lines("line", 8000)
    data = "".join(f"{line}\n" for line in lines).encode()
    command = [sys.executable, "-m", "hotline", "send", "-c", str(pair[WASHINGTON].config),
               "--lines", "--id", "nightly-report"]
    client = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    answers: list[tuple[bytes, bytes]] = []
    talk = threading.Thread(target=lambda: answers.append(client.communicate(data)))
    talk.start()
    pair.wait_for(lambda: _status(pair, WASHINGTON)["out_seq"] >= 2000, 60, "a stream")
    pair.kill(WASHINGTON)
    talk.join(60)
    printed = answers[0][0].split()
    assert client.returncode == 3, answers[0][1]
    assert printed == [str(seq).encode() for seq in range(1, len(printed) + 1)]
    pair.start(WASHINGTON)
    _answering(pair, WASHINGTON)
    stored_before_rerun = _status(pair, WASHINGTON)["out_seq"]
    print(f"{len(printed)} ids printed before the SIGKILL, {stored_before_rerun} stored")

    rerun = subprocess.run([*command, "--wait", "--timeout", "120"], input=data,
                           capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.split() == [str(seq).encode() for seq in range(1, len(lines) + 1)]
    assert _wait_inbox(pair, MOSCOW, len(lines)) == lines
    assert _status(pair, WASHINGTON)["out_seq"] == len(lines)


# --- the backlog: memory, restart, drain ------------------------------------------------


def _queue(pair: LoopbackPair, start: int, count: int) -> float:
    """Queue ``count`` messages at washington with ``send --lines``; msgs/s."""
    data = "".join(f"queued while moscow is away {i:07d}\n"
                   for i in range(start + 1, start + count + 1)).encode()
    began = time.monotonic()
    out = pair.cli(WASHINGTON, "send", "--lines", input=data, timeout=3600)
    assert out.returncode == 0, out.stderr
    return count / (time.monotonic() - began)


def _rss(pair: LoopbackPair, index: int) -> float:
    proc = pair[index].proc
    assert proc is not None
    return rss_mib(proc.pid)


def _restart_to_ready(pair: LoopbackPair, index: int) -> float:
    """SIGTERM and start node ``index``; seconds from the start to its control socket
    answering (it answers only after READY)."""
    pair.kill(index, signal.SIGTERM)
    began = time.monotonic()
    pair.start(index)
    pair.wait_for(lambda: pair.status(index) is not None, 60, "the daemon to answer")
    return time.monotonic() - began


SMALL_BACKLOG, BACKLOG = 5_000, 50_000
MEMORY_SLACK_MIB = 5.0


def test_memory_does_not_grow_with_the_backlog(tmp_path: Path) -> None:
    """50,000 queued messages cost no more memory than 5,000, running or restarted."""
    pair = LoopbackPair(tmp_path, settings={"max_backlog": BACKLOG})
    pair.start(WASHINGTON)  # moscow stays down: everything waits in the backlog
    try:
        _answering(pair, WASHINGTON)
        _queue(pair, 0, SMALL_BACKLOG)
        small = _rss(pair, WASHINGTON)
        _queue(pair, SMALL_BACKLOG, BACKLOG - SMALL_BACKLOG)
        large = _rss(pair, WASHINGTON)
        _restart_to_ready(pair, WASHINGTON)
        restarted = _rss(pair, WASHINGTON)
        print(f"RSS MiB: {small:.1f} at {SMALL_BACKLOG}, {large:.1f} at {BACKLOG}, "
              f"{restarted:.1f} restarted with {BACKLOG} queued")
        assert _status(pair, WASHINGTON)["backlog"] == BACKLOG
        assert large - small <= MEMORY_SLACK_MIB
        assert restarted - small <= MEMORY_SLACK_MIB
    finally:
        pair.stop_all()


MILLION = 1_000_000
MAX_RSS_MIB = 60.0
MAX_READY_S = 2.0
# Issue 9: no slower than before the endpoint. It quotes ~7,000 msgs/s; on the shared
# 2-core test machine the code before it (main) drained 1,000,000 at 6,030 msgs/s and
# 200,000 at 4,870-5,690 msgs/s (this branch: 6,000 and 6,200-6,270), so the floor is
# what the old code reaches there, not the quoted figure.
MIN_DRAIN_PER_S = 5_000
_QUEUE_CHUNK = 100_000


@pytest.mark.slow
def test_a_million_queued_messages(tmp_path: Path) -> None:
    """Issue 9's measurement: peer down, 1,000,000 queued (with ``send --lines``)."""
    pair = LoopbackPair(tmp_path, settings={"max_backlog": 2 * MILLION})
    pair.start(WASHINGTON)
    try:
        _answering(pair, WASHINGTON)
        rates = [_queue(pair, start, _QUEUE_CHUNK) for start in range(0, MILLION, _QUEUE_CHUNK)]
        queued_rss = _rss(pair, WASHINGTON)
        ready_s = _restart_to_ready(pair, WASHINGTON)
        restarted_rss = _rss(pair, WASHINGTON)
        pair.start(MOSCOW)
        began = time.monotonic()
        pair.wait_for(lambda: _status(pair, WASHINGTON)["acked"] >= MILLION, 3600, "drain")
        drain = MILLION / (time.monotonic() - began)
        drained_rss = _rss(pair, WASHINGTON)
        print(f"queued at {min(rates):.0f}-{max(rates):.0f} msgs/s; RSS {queued_rss:.1f} MiB "
              f"with 1,000,000 queued, {restarted_rss:.1f} MiB restarted, "
              f"{drained_rss:.1f} MiB drained; READY in {ready_s:.2f} s; "
              f"drain {drain:.0f} msgs/s")
        [last] = _inbox(pair, MOSCOW, "--since", str(MILLION - 1))
        assert last["body"] == f"queued while moscow is away {MILLION:07d}"
        assert max(queued_rss, restarted_rss, drained_rss) <= MAX_RSS_MIB
        assert ready_s <= MAX_READY_S
        assert drain >= MIN_DRAIN_PER_S
    finally:
        pair.stop_all()
