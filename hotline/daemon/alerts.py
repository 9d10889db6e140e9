"""Alerts that reach a person: the journal line and ``alert_command`` (DESIGN §10).

``AlertRunner.fire(alert)`` is called from the runner's loop turn with each alert the
policy (hotline/proto/supervision.py) raised. It never blocks and never raises:

1. it writes the alert's log event at once — kind ``alert`` at the alert's journal
   priority (3 or 2), so journald has ``HOTLINE_EVENT=alert``, ``HOTLINE_ALERT=EVENT``,
   ``HOTLINE_SEVERITY``, ``HOTLINE_TEXT``, ``MESSAGE_ID`` (the event name is logged as
   ``alert=…`` because ``event`` is the log record's own kind);
2. with an ``alert_command``, it puts the alert's JSON object (ts stamped now) into a
   bounded queue (``queue_size``, 32). A full queue drops the alert for the command
   (its journal line is written anyway) and logs that.

``run()`` (a task in the daemon's nursery) takes alerts off the queue and runs the
command for each, with at most ``max_running`` at a time (default 1: alerts reach the
pager in the order they were raised, so a ``link_restored`` never overtakes its
``link_down``; the policy's rate limit keeps the queue short). Each run: argv as
configured (no shell), ONE JSON object on stdin, stdout discarded, stderr kept (its
last 512 bytes), its own process group, an environment without systemd's private
variables (``$CREDENTIALS_DIRECTORY``, ``$NOTIFY_SOCKET``, …). After ``timeout``
seconds (10) the whole process group is killed with SIGKILL. Every outcome is an
``alert_command`` log event: ``result=ok`` (priority 6), or at priority 3 ``exit N``,
``killed by SIGNAME``, ``timeout``, ``cannot run`` (exec failed), ``queue full``.
A command that hangs, crashes or floods stderr costs one worker slot for at most
``timeout`` seconds, never the daemon's loop.

``close()`` ends the queue: ``run()`` returns once the alerts already queued have run
(for a daemon that raises a last alert, e.g. ``store_error``, before it exits).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

import trio

from hotline.daemon.logs import ERR, INFO, Logger, utc_stamp
from hotline.proto.supervision import Alert

DEFAULT_TIMEOUT = 10.0
QUEUE_SIZE = 32
STDERR_KEEP = 512
# Variables systemd hands to the service that a paging script must not see or use.
PRIVATE_ENV = (
    "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
    "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "JOURNAL_STREAM",
)


def command_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment without ``PRIVATE_ENV``."""
    return {k: v for k, v in environ.items() if k not in PRIVATE_ENV}


class AlertRunner:
    """Writes each alert to the log and runs ``alert_command`` for it; see the header."""

    def __init__(self, command: Sequence[str], logger: Logger, *,
                 timeout: float = DEFAULT_TIMEOUT, queue_size: int = QUEUE_SIZE,
                 max_running: int = 1, clock: Callable[[], float] = time.time,
                 environ: Mapping[str, str] | None = None) -> None:
        """
        Args:
            command: ``alert_command`` (argv, absolute path first), or () for none.
            logger: where the alert lines and the command's failures go.
            timeout: seconds before the command's process group is killed.
            queue_size: alerts waiting for a worker before new ones are dropped.
            max_running: commands running at once.
            clock: wall-clock seconds, for the JSON object's ``ts``.
            environ: the environment to pass on (less ``PRIVATE_ENV``); default ours.
        """
        self._command = list(command)
        self._logger = logger
        self._timeout = timeout
        self._max_running = max_running
        self._clock = clock
        self._env = command_environment(os.environ if environ is None else environ)
        self._send, self._receive = trio.open_memory_channel[tuple[Alert, bytes]](queue_size)

    def fire(self, alert: Alert) -> None:
        """Log ``alert`` now and queue it for the command; never blocks or raises."""
        self._logger.emit("alert", alert.journal_priority, {
            "alert": alert.event, "peer": alert.peer, "severity": alert.severity,
            "text": alert.text})
        if not self._command:
            return
        payload = json.dumps(alert.to_json_dict(utc_stamp(self._clock())),
                             ensure_ascii=False).encode() + b"\n"
        try:
            self._send.send_nowait((alert, payload))
        except trio.WouldBlock:
            self._failed(alert, "queue full", f"{self._max_running} command(s) still running")
        except trio.ClosedResourceError:
            self._failed(alert, "not run", "the daemon is stopping")

    def close(self) -> None:
        """No more alerts for the command; ``run()`` returns when the queue is done."""
        self._send.close()

    async def run(self) -> None:
        """Run the command for each queued alert, ``max_running`` at a time."""
        async with self._receive, trio.open_nursery() as nursery:
            for _ in range(self._max_running):
                nursery.start_soon(self._worker, self._receive.clone())

    async def _worker(self, queue: trio.MemoryReceiveChannel[tuple[Alert, bytes]]) -> None:
        async with queue:
            async for alert, payload in queue:
                await self._run_one(alert, payload)

    async def _run_one(self, alert: Alert, payload: bytes) -> None:
        try:
            proc = await trio.lowlevel.open_process(
                self._command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=True, env=self._env)
        except OSError as err:
            self._failed(alert, "cannot run", f"{self._command[0]}: {err.strerror or err}")
            return
        stderr = bytearray()
        finished = False
        try:
            with trio.move_on_after(self._timeout):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_feed, proc, payload)
                    nursery.start_soon(_collect, proc, stderr)
                    await proc.wait()
                finished = True
        finally:
            if not finished:
                _kill_group(proc)
            with trio.CancelScope(shield=True):
                await _close(proc)
        self._report(alert, proc.returncode, finished, bytes(stderr))

    def _report(self, alert: Alert, code: int | None, finished: bool, stderr: bytes) -> None:
        if finished and code == 0:
            self._logger.event("alert_command", INFO, alert=alert.event, result="ok")
        elif not finished:
            self._failed(alert, "timeout", f"killed after {self._timeout:g} s", stderr)
        elif code is not None and code < 0:
            self._failed(alert, f"killed by {signal.Signals(-code).name}", "", stderr)
        else:
            self._failed(alert, f"exit {code}", "", stderr)

    def _failed(self, alert: Alert, result: str, reason: str, stderr: bytes = b"") -> None:
        text = stderr.decode("utf-8", "replace").strip()
        self._logger.event("alert_command", ERR, alert=alert.event, result=result,
                           reason=reason or None, stderr=text or None)


async def _feed(proc: trio.Process, payload: bytes) -> None:
    """Write the JSON object and close stdin; a command that ignores stdin is fine."""
    assert proc.stdin is not None
    try:
        async with proc.stdin:
            await proc.stdin.send_all(payload)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _collect(proc: trio.Process, keep: bytearray) -> None:
    """Read stderr to its end, keeping only its last STDERR_KEEP bytes."""
    assert proc.stderr is not None
    while chunk := await proc.stderr.receive_some(4096):
        keep += chunk
        del keep[:-STDERR_KEEP]


async def _close(proc: trio.Process) -> None:
    """Close our ends of the pipes and reap the process."""
    for stream in (proc.stdin, proc.stderr):
        if stream is not None:
            await stream.aclose()
    await proc.wait()


def _kill_group(proc: trio.Process) -> None:
    """SIGKILL the command's process group (it leads it: ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
