"""The store worker: one dedicated thread that owns the SQLite store, off the event loop.

Every store call — the runner's group commits and the control socket's reads — runs
on this one thread, in submission order, so fsync never blocks the trio loop and the
connection is only ever used by one thread at a time. Jobs go in through a
``queue.SimpleQueue`` (no task hop on the way in); results come back with
``TrioToken.run_sync_soon`` straight into the runner's input channel (no task hop on
the way out). That keeps a durable send→ack to two fsyncs plus little else.

The runner submits a batch only when the previous one has committed, and everything
that arrived in between is the next batch: a group commit whose size follows the load.
A commit failure (disk full, I/O error) is fatal: ``run`` raises it and the daemon
stops, rather than answer clients falsely.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from hotline.store import Batch, Store

if TYPE_CHECKING:
    from hotline.daemon.runner import Reply

T = TypeVar("T")
# A job's result: (value, None) or (None, the exception it raised).
_Result = tuple[Any, BaseException | None]
_Job = tuple[Callable[[], Any], Callable[[_Result], None]]


@dataclass
class Committed:
    """A batch is durable; ``replies`` are the send requests it answers (with their seqs)."""

    batch: Batch
    replies: list[tuple[Reply, list[int]]]


class StoreWorker:
    """Serialises all store access onto one thread; see the module header."""

    def __init__(self, store: Store, done: trio.MemorySendChannel[Any]) -> None:
        self.store = store
        self._done = done
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._failed = trio.Event()
        self._failure: BaseException | None = None
        self.commits = 0

    def submit(self, batch: Batch, replies: list[tuple[Reply, list[int]]]) -> None:
        """Queue a batch for commit; a ``Committed`` goes to the runner when it is durable."""

        def finished(result: _Result) -> None:
            if result[1] is not None:
                self._fail(result[1])
                return
            self.commits += 1
            self._done.send_nowait(Committed(batch, replies))

        self._jobs.put((lambda: self.store.apply(batch), finished))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store function on the store's thread, after everything queued before it."""
        done = trio.Event()
        box: list[_Result] = []

        def finished(result: _Result) -> None:
            box.append(result)
            done.set()

        self._jobs.put((lambda: fn(*args), finished))
        await done.wait()
        value, error = box[0]
        if error is not None:
            raise error
        result: T = value
        return result

    async def run(self) -> None:
        """Run the store thread until cancelled; raise if a commit failed."""
        token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(target=self._serve, args=(token,), name="hotline-store",
                                  daemon=True)
        thread.start()
        try:
            await self._failed.wait()
            assert self._failure is not None
            raise self._failure
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
            except BaseException as error:  # handed to the event loop, which raises it
                result = (None, error)
            try:
                token.run_sync_soon(finished, result)
            except trio.RunFinishedError:
                return

    def _fail(self, error: BaseException) -> None:
        self._failure = error
        self._failed.set()
