"""The store worker: runs ``Store.apply`` off the event loop, one batch at a time.

The SQLite connection lives on one worker thread (``trio.to_thread`` with a limiter of
one), so fsync never blocks the trio loop. The runner submits a batch only when the
previous one has committed, and everything that arrived in between is the next batch:
a group commit whose size follows the load. A commit failure (disk full, I/O error) is
fatal: it propagates and stops the daemon rather than let it answer clients falsely.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from hotline.store import Batch, Store

if TYPE_CHECKING:
    from hotline.daemon.runner import Reply

T = TypeVar("T")


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
        self._limiter = trio.CapacityLimiter(1)
        send, self._queue = trio.open_memory_channel[tuple[Batch, list[Any]]](math.inf)
        self._submit = send
        self.commits = 0
        self.committed_items = 0

    def submit(self, batch: Batch, replies: list[tuple[Reply, list[int]]]) -> None:
        """Queue a batch for commit; a ``Committed`` goes to the runner when it is durable."""
        self._submit.send_nowait((batch, replies))

    async def run(self) -> None:
        """Commit batches in order until cancelled."""
        async for batch, replies in self._queue:
            await self.call(self.store.apply, batch)
            self.commits += 1
            self.committed_items += len(batch.outgoing) + len(batch.incoming)
            await self._done.send(Committed(batch, replies))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store function on the store's thread (reads for the control socket too)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
