"""Helpers for the test tools that run as subprocesses and speak JSON lines on stdout.

``read_line`` waits (bounded) for the next line a tool prints; ``terminate`` stops it
(SIGTERM, then SIGKILL) and closes its pipe. Used by ``FaultProxyProcess`` and
``FloodProcess``.
"""

from __future__ import annotations

import selectors
import subprocess


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line of ``process``'s stdout ("" once it has exited).

    Raises:
        TimeoutError: nothing to read within ``timeout`` seconds.
    """
    assert process.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no line from {process.args!r} within {timeout:g}s")
    return process.stdout.readline()


def terminate(process: subprocess.Popen[str], grace: float = 5.0) -> None:
    """Stop ``process`` if it runs (SIGTERM, SIGKILL after ``grace`` s); close its stdout."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
