"""daemon/alerts.py: alert lines and alert_command, with real subprocesses."""

from __future__ import annotations

import io
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import trio
import trio.testing

from hotline.daemon.alerts import PRIVATE_ENV, AlertRunner, command_environment
from hotline.daemon.logs import MESSAGE_IDS, JournalSocket, Logger
from hotline.proto.supervision import Alert

SH = "/bin/sh"
DOWN = Alert("link_down", "moscow", "critical", "link to moscow down: no path up for 30 s")
RESTORED = Alert("link_restored", "moscow", "notice", "link to moscow restored after 90 s")
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class Recorder:
    """A logger whose events are kept as their JSON objects."""

    def __init__(self) -> None:
        self.logger = Logger(io.StringIO(), "json")
        self.events: list[dict[str, Any]] = []
        self.logger.add_sink(self.events.append)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


async def run_alerts(runner: AlertRunner, *alerts: Alert) -> None:
    """Fire ``alerts``, then let the runner finish them (bounded by a generous timeout)."""
    for alert in alerts:
        runner.fire(alert)
    runner.close()
    with trio.fail_after(60):
        await runner.run()


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its parent does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


async def test_command_gets_one_json_object_per_alert(tmp_path: Path) -> None:
    rec = Recorder()
    out = tmp_path / "alerts"
    runner = AlertRunner([SH, "-c", 'cat >> "$0"', str(out)], rec.logger)
    await run_alerts(runner, DOWN, RESTORED)
    lines = out.read_text().splitlines()
    objects = [json.loads(line) for line in lines]
    assert [sorted(o) for o in objects] == [["event", "peer", "severity", "text", "ts"]] * 2
    assert [(o["event"], o["severity"]) for o in objects] == [
        ("link_down", "critical"), ("link_restored", "notice")]
    assert objects[0]["text"] == DOWN.text
    assert all(TS.fullmatch(o["ts"]) for o in objects)
    assert [(e["alert"], e["result"]) for e in rec.of("alert_command")] == [
        ("link_down", "ok"), ("link_restored", "ok")]


async def test_every_alert_is_a_log_event_at_priority_3_or_above(tmp_path: Path) -> None:
    rec = Recorder()
    await run_alerts(AlertRunner([], rec.logger), DOWN, RESTORED)  # no command: lines only
    assert [(e["alert"], e["priority"], e["severity"]) for e in rec.of("alert")] == [
        ("link_down", 2, "critical"), ("link_restored", 3, "notice")]
    assert rec.of("alert_command") == []


async def test_journal_fields(tmp_path: Path, unix_dgram: tuple[socket.socket, str]) -> None:
    sock, path = unix_dgram
    journal = JournalSocket(path)
    logger = Logger(io.StringIO(), priority_prefix=True, journal=journal)
    AlertRunner([], logger).fire(DOWN)
    data = sock.recv(65536)
    journal.close()
    for field in (b"PRIORITY=2", b"HOTLINE_EVENT=alert", b"HOTLINE_ALERT=link_down",
                  b"HOTLINE_SEVERITY=critical", b"HOTLINE_PEER=moscow",
                  b"MESSAGE_ID=" + MESSAGE_IDS["alert"].encode(),
                  b"HOTLINE_TEXT=" + DOWN.text.encode()):
        assert field + b"\n" in data, data


async def test_a_hanging_command_is_killed_with_its_children(tmp_path: Path) -> None:
    """The process group dies at the timeout; the runner carries on with the next alert."""
    rec = Recorder()
    pids = tmp_path / "pids"
    hang = 'sleep 60 & echo $$ $! > "$0"; wait'
    runner = AlertRunner([SH, "-c", hang, str(pids)], rec.logger, timeout=0.5)
    await run_alerts(runner, DOWN, RESTORED)
    results = [(e["alert"], e["result"], e["priority"]) for e in rec.of("alert_command")]
    assert results == [("link_down", "timeout", 3), ("link_restored", "timeout", 3)]
    assert rec.of("alert_command")[0]["reason"] == "killed after 0.5 s"
    for pid in map(int, pids.read_text().split()):
        assert await _dies(pid), pid


async def _dies(pid: int, within: float = 10.0) -> bool:
    """True once ``pid`` no longer runs: SIGKILL is delivered asynchronously, so a
    process of the killed group may still show as running for a moment."""
    for _ in range(int(within / 0.01)):
        if not _alive(pid):
            return True
        await trio.sleep(0.01)
    return not _alive(pid)


async def test_a_failing_command_is_logged_with_its_stderr(tmp_path: Path) -> None:
    rec = Recorder()
    flood = "head -c 100000 /dev/zero | tr '\\0' x >&2; echo 'cannot reach pager' >&2; exit 1"
    await run_alerts(AlertRunner([SH, "-c", flood], rec.logger), DOWN)
    [event] = rec.of("alert_command")
    assert (event["result"], event["priority"]) == ("exit 1", 3)
    assert event["stderr"].endswith("cannot reach pager")
    assert len(event["stderr"]) <= 512


async def test_a_command_killed_by_a_signal(tmp_path: Path) -> None:
    rec = Recorder()
    await run_alerts(AlertRunner([SH, "-c", "kill -TERM $$"], rec.logger), DOWN)
    assert [e["result"] for e in rec.of("alert_command")] == ["killed by SIGTERM"]


async def test_a_missing_command_is_logged(tmp_path: Path) -> None:
    rec = Recorder()
    missing = str(tmp_path / "no-such-pager")
    await run_alerts(AlertRunner([missing], rec.logger), DOWN)
    [event] = rec.of("alert_command")
    assert event["result"] == "cannot run"
    assert event["reason"] == f"{missing}: No such file or directory"


async def test_a_command_that_ignores_stdin_is_fine(tmp_path: Path) -> None:
    rec = Recorder()
    await run_alerts(AlertRunner([SH, "-c", "exec 0<&-; exit 0"], rec.logger), DOWN)
    assert [e["result"] for e in rec.of("alert_command")] == ["ok"]


async def test_fire_never_blocks_a_full_queue_drops(tmp_path: Path) -> None:
    """With the one worker hung and the queue full, fire() drops, logs, and returns."""
    rec = Recorder()
    runner = AlertRunner([SH, "-c", "sleep 60"], rec.logger, timeout=0.5, queue_size=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        runner.fire(DOWN)
        await trio.testing.wait_all_tasks_blocked()  # the worker took it and hangs
        for _ in range(3):
            runner.fire(RESTORED)  # one is queued, two find the queue full
        runner.close()
    results = [(e["alert"], e["result"]) for e in rec.of("alert_command")]
    assert results.count(("link_restored", "queue full")) == 2
    assert ("link_down", "timeout") in results
    assert ("link_restored", "timeout") in results
    assert len(rec.of("alert")) == 4  # every alert still has its journal line


async def test_cancelling_the_runner_kills_the_command(tmp_path: Path) -> None:
    rec = Recorder()
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    runner = AlertRunner([SH, "-c", 'echo $$ > "$0"; exec sleep 60', str(fifo)], rec.logger)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        runner.fire(DOWN)
        with trio.fail_after(30):
            pid = int(await trio.to_thread.run_sync(fifo.read_text))  # the command runs
        nursery.cancel_scope.cancel()
    assert not _alive(pid)


def test_command_environment_hides_systemd_private_variables() -> None:
    env = {"PATH": "/usr/bin", "LANG": "C.UTF-8", **dict.fromkeys(PRIVATE_ENV, "x")}
    assert command_environment(env) == {"PATH": "/usr/bin", "LANG": "C.UTF-8"}


async def test_the_command_runs_with_that_environment(tmp_path: Path) -> None:
    out = tmp_path / "env"
    environ = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": "/run/credentials/x"}
    runner = AlertRunner([SH, "-c", 'env > "$0"', str(out)], Recorder().logger,
                         environ=environ)
    await run_alerts(runner, DOWN)
    assert "CREDENTIALS_DIRECTORY" not in out.read_text()
    assert "PATH=/usr/bin:/bin" in out.read_text()
