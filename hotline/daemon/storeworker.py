"""The store worker: one dedicated thread that owns the SQLite store, off the event loop.

Every store call — the endpoint's jobs (group commits, window reads, id lookups) and
the control socket's reads — runs on this one thread, in submission order, so fsync
never blocks the trio loop, a read submitted after a commit sees it, and the
connection is only ever used by one thread at a time. Jobs go in through a
``queue.SimpleQueue`` (no task hop on the way in); results come back with
``TrioToken.run_sync_soon`` straight into the runner's input channel as ``StoreDone``
or ``StoreFailed`` (no task hop on the way out).

A failing job (disk full, I/O error) is reported, never fatal: the endpoint refuses
what it cannot store and the daemon stays up until space returns.

``run_inline`` is the idle fast path: when nothing is queued or running on the store's
thread, the runner executes a job right there on the event loop (only the trio thread
submits jobs, so none can start meanwhile). An idle link's send → ack then costs its
commits and no thread hand-offs; under load jobs take the thread as above.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from hotline.daemon.calls import StoreDone, StoreFailed
from hotline.errors import LocalProtocolError
from hotline.proto.records import StoreJob
from hotline.store import Store

T = TypeVar("T")
# A job's result: (value, None) or (None, the exception it raised).
_Result = tuple[Any, BaseException | None]
_Job = tuple[Callable[[], Any], Callable[[_Result], None]]


class StoreWorker:
    """Serialises all store access onto one thread; see the module header."""

    def __init__(self, store: Store, done: trio.MemorySendChannel[Any]) -> None:
        self.store = store
        self._done = done
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._busy = 0  # jobs submitted whose result has not come back yet

    def submit(self, job: StoreJob) -> None:
        """Run an endpoint job; its ``StoreDone``/``StoreFailed`` goes to the runner."""

        def finished(result: _Result) -> None:
            self._busy -= 1
            value, error = result
            item = StoreDone(job, value) if error is None else StoreFailed(job, _line(error))
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self._done.send_nowait(item)  # closed: the runner is gone, shutting down

        self._busy += 1
        self._jobs.put((lambda: self.store.execute(job), finished))

    @property
    def idle(self) -> bool:
        """Nothing queued or running on the store's thread."""
        return self._busy == 0

    def run_inline(self, job: StoreJob) -> StoreDone | StoreFailed:
        """Run ``job`` now, on the calling (event-loop) thread; only while ``idle``.

        Raises:
            LocalProtocolError: the store's thread is busy.
        """
        if not self.idle:
            raise LocalProtocolError("run_inline while the store thread is busy")
        try:
            return StoreDone(job, self.store.execute(job))
        except Exception as error:  # reported like a job on the thread
            return StoreFailed(job, _line(error))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store function on the store's thread, after everything queued before it."""
        done = trio.Event()
        box: list[_Result] = []

        def finished(result: _Result) -> None:
            self._busy -= 1
            box.append(result)
            done.set()

        self._busy += 1
        self._jobs.put((lambda: fn(*args), finished))
        await done.wait()
        value, error = box[0]
        if error is not None:
            raise error
        result: T = value
        return result

    async def run(self) -> None:
        """Run the store thread until cancelled."""
        token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(target=self._serve, args=(token,), name="hotline-store",
                                  daemon=True)
        thread.start()
        try:
            await trio.sleep_forever()
        finally:
            # Let the thread finish what it holds before the store is closed (shielded:
            # this runs while the daemon is being cancelled).
            self._jobs.put(None)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)

    def _serve(self, token: trio.lowlevel.TrioToken) -> None:
        while (job := self._jobs.get()) is not None:
            fn, finished = job
            try:
                result: _Result = (fn(), None)
            except Exception as error:  # handed to the event loop as a failed job
                result = (None, error)
            try:
                token.run_sync_soon(finished, result)
            except trio.RunFinishedError:
                return


def _line(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
