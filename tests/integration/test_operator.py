"""Operator acknowledgement and drills with two real daemons, through the real CLI.

The "done when" checks of DESIGN §9/§10: ``send -p flash --wait-operator`` returns once
the far operator runs ``hotline ack``; an unacknowledged FLASH is ``operator_overdue``
at its deadline (once); ``verify`` passes at both ends and the exported ack verifies
with stock ``ssh-keygen``; scheduled drills are all answered; a drill whose far
operator does not acknowledge it fails at its deadline. Waits are generous and
nothing asserts a duration.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotline.testing.loopback import LoopbackPair

OPERATOR = {"operator_deadline": {"flash": 2, "immediate": 1800}, "drill_operator": True,
            "drill_deadline": 20, "drill_every": 0}


def started(root: Path, settings: dict[str, Any]) -> LoopbackPair:
    pair = LoopbackPair(root, settings=settings)
    pair.start_all()
    pair.wait_up()
    return pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackPair]:
    p = started(tmp_path_factory.mktemp("operator"), OPERATOR)
    try:
        yield p
    finally:
        p.stop_all()


def background(p: LoopbackPair, index: int, *args: str) -> subprocess.Popen[str]:
    node = p[index]
    return subprocess.Popen(
        [sys.executable, "-m", "hotline", args[0], "-c", str(node.config), *args[1:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ok(p: LoopbackPair, index: int, *args: str) -> str:
    out = p.cli(index, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode()


def pending_ids(p: LoopbackPair, index: int) -> list[str]:
    lines = ok(p, index, "inbox", "--pending", "--json").splitlines()
    return [json.loads(line)["id"] for line in lines]


def awaiting(p: LoopbackPair, index: int, message: str) -> None:
    """Wait until daemon ``index``'s operator owes an ack for ``message``."""
    p.wait_for(lambda: message in pending_ids(p, index), 30, f"{message} to be owed")


def inbox_line(p: LoopbackPair, index: int, message: str) -> str:
    return next(line for line in ok(p, index, "inbox").splitlines()
                if line.startswith(f"#{message} "))


def log_lines(p: LoopbackPair, index: int, kind: str, message: str) -> list[str]:
    return [line for line in p[index].log_lines(kind) if f" id={message} " in f"{line} "]


def test_send_wait_operator_returns_once_the_far_operator_acks(pair: LoopbackPair) -> None:
    send = background(pair, 0, "send", "-p", "flash", "--wait-operator", "--timeout", "120",
                      "launch detected")
    try:
        assert send.stdout is not None
        message = send.stdout.readline().strip()
        assert message.startswith("Z")
        awaiting(pair, 1, message)
        assert send.poll() is None  # stored by the peer, not yet seen by a person
        status = pair.status(0)
        assert status is not None
        assert message in [item["id"] for item in status["operator_pending"]]
        assert inbox_line(pair, 1, message).endswith("[awaiting your ack] launch detected")
        acked = ok(pair, 1, "ack", message, "--comment", "seen, standing by")
        ack_id = acked.split(": ")[1].strip()
        assert acked == f"{message} acknowledged: {ack_id}\n"
        assert send.wait(timeout=60) == 0
    finally:
        send.kill()
        send.communicate()
    assert f"[acked by {ack_id}] launch detected" in inbox_line(pair, 1, message)
    assert message not in pending_ids(pair, 1)
    assert inbox_line(pair, 0, ack_id).endswith(
        f"[ack] acknowledges {message}: seen, standing by")
    status = pair.status(0)
    assert status is not None
    assert message not in [item["id"] for item in status["operator_pending"]]


def test_wait_operator_gives_up_with_75(pair: LoopbackPair) -> None:
    out = pair.cli(0, "send", "-p", "immediate", "--wait-operator", "--timeout", "2",
                   "please confirm")
    assert out.returncode == 75
    assert b"not acknowledged by the peer's operator" in out.stderr


def test_an_unacknowledged_flash_is_overdue_at_its_deadline_once(pair: LoopbackPair) -> None:
    message = ok(pair, 0, "send", "-p", "flash", "--wait", "nobody reads this").strip()
    pair.wait_for(lambda: bool(log_lines(pair, 0, "operator_overdue", message)), 30,
                  "operator_overdue")
    [line] = log_lines(pair, 0, "operator_overdue", message)
    assert "peer=moscow" in line
    assert "lane=flash" in line
    assert "deadline_s=2" in line
    status = pair.status(0)
    assert status is not None
    [item] = [i for i in status["operator_pending"] if i["id"] == message]
    assert item["deadline_s"] < 0
    time.sleep(1.5)
    assert len(log_lines(pair, 0, "operator_overdue", message)) == 1


def test_verify_and_the_exported_ack_verify(pair: LoopbackPair, ssh_keygen: str,
                                            tmp_path: Path) -> None:
    message = ok(pair, 0, "send", "-p", "flash", "--wait", "verify me").strip()
    awaiting(pair, 1, message)
    ack_id = ok(pair, 1, "ack", message).split(": ")[1].strip()
    for index in (0, 1):
        assert "OK" in ok(pair, index, "verify")
    ok(pair, 1, "export", "--direction", "out", ack_id, str(tmp_path / "ack"))
    raw = (tmp_path / "ack" / "msg").read_bytes()
    result = subprocess.run(
        [ssh_keygen, "-Y", "verify", "-f", str(tmp_path / "ack" / "allowed_signers"),
         "-I", "moscow", "-n", "hotline", "-s", str(tmp_path / "ack" / "msg.sig")],
        input=raw, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    assert b"application/vnd.hotline.ack" in raw


def test_a_drill_the_far_operator_acknowledges_succeeds(pair: LoopbackPair) -> None:
    drill = background(pair, 0, "drill")
    try:
        assert drill.stdout is not None
        sent = drill.stdout.readline().split()
        assert sent[0] == "drill"
        message = sent[1]
        awaiting(pair, 1, message)
        assert "acknowledge it with 'hotline ack" in inbox_line(pair, 1, message)
        ok(pair, 1, "ack", message)
        out, err = drill.communicate(timeout=60)
        assert drill.returncode == 0, err
    finally:
        drill.kill()
        drill.communicate()
    assert out.startswith(f"drill {message}: OK (answered after ")
    [line] = log_lines(pair, 0, "drill", message)
    assert "result=ok" in line
    status = pair.status(0)
    assert status is not None
    assert status["last_drill"]["id"] == message
    assert status["last_drill"]["ok"] is True


def test_a_drill_the_far_operator_ignores_fails_at_its_deadline(tmp_path: Path) -> None:
    p = started(tmp_path, {**OPERATOR, "drill_deadline": 2})
    try:
        out = p.cli(0, "drill")
        assert out.returncode == 1, out.stderr
        assert b"the far operator did not acknowledge it in time" in out.stderr
        message = out.stdout.split()[1].decode()
        [line] = log_lines(p, 0, "drill_failed", message)
        assert "reason=" in line
        assert "did not acknowledge" in line
        status = p.status(0)
        assert status is not None
        assert status["last_drill"]["ok"] is False
        assert status["last_drill"]["answered_s"] is not None
    finally:
        p.stop_all()


def _drills_all_answered(tmp_path: Path, count: int) -> None:
    p = started(tmp_path, {"drill_every": 2.5, "drill_deadline": 10})
    try:
        p.wait_for(lambda: len(p[0].log_lines("drill")) >= count, 30 + 4 * count,
                   f"{count} drills")
        for index in (0, 1):
            assert p[index].log_lines("drill_failed") == []
            assert all("result=ok" in line for line in p[index].log_lines("drill"))
        status = p.status(0)
        assert status is not None
        assert not status["operator_owed"]
    finally:
        p.stop_all()


def test_scheduled_drills_are_answered(tmp_path: Path) -> None:
    _drills_all_answered(tmp_path, 4)


@pytest.mark.slow
def test_a_minute_of_drills_every_few_seconds_all_answered(tmp_path: Path) -> None:
    _drills_all_answered(tmp_path, 24)
