"""The store worker: the endpoint's store jobs run in order on the store's own thread;
a failing job is reported as ``StoreFailed`` (one line) and the worker keeps serving."""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from hotline.daemon.calls import StoreDone, StoreFailed
from hotline.daemon.storeworker import StoreWorker
from hotline.errors import LocalProtocolError
from hotline.proto.envelope import ZERO_HASH
from hotline.proto.identity import Identity
from hotline.proto.lanes import FLASH, ROUTINE
from hotline.proto.records import (
    Commit,
    Committed,
    LookupSendIds,
    OutRecord,
    ReadChain,
    ReadOutgoing,
    StoreBatch,
    StoreJob,
    StoreResult,
)
from hotline.proto.sequencer import LaneSequencer
from hotline.store import Store

OURS = Identity.from_seed(bytes([5]) * 32)
THEIRS = Identity.from_seed(bytes([6]) * 32)
WAIT = 30  # seconds; generous, nothing here is timed


class RecordingStore(Store):
    """The real store, noting which thread ran each job."""

    threads: list[str]

    def execute(self, job: StoreJob) -> StoreResult:
        self.threads.append(threading.current_thread().name)
        return super().execute(job)


def open_store(tmp_path: Path) -> RecordingStore:
    store = RecordingStore.open(tmp_path, OURS.public.raw, THEIRS.public.raw)
    assert isinstance(store, RecordingStore)
    store.threads = []
    return store


def sealed(store: Store, lane: int, n: int, ids: str | None = None) -> list[OutRecord]:
    """``n`` real signed envelopes of ``lane`` continuing the store's head."""
    head, chain = store.out_head(lane)
    seq = LaneSequencer(OURS, THEIRS.public, store.epoch, lane, head, chain, 65536)
    return [seq.seal(f"m{i}".encode(), "text/plain", 1_700_000_000 * 10**9 + i,
                     f"{ids}:{i}" if ids else None) for i in range(1, n + 1)]


@dataclass
class Running:
    """A store worker serving ``store`` on its thread; ``done`` gets its job results."""

    store: RecordingStore
    worker: StoreWorker
    done: trio.MemoryReceiveChannel[Any]

    async def results(self, n: int) -> list[Any]:
        """The next ``n`` results (``StoreDone``/``StoreFailed``) in arrival order."""
        with trio.fail_after(WAIT):
            return [await self.done.receive() for _ in range(n)]


@asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """Open a store and run its worker; on exit stop the worker (as the daemon does, by
    cancellation), then close the store."""
    store = open_store(tmp_path)
    send, receive = trio.open_memory_channel[Any](math.inf)
    worker = StoreWorker(store, send)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await worker.call(threading.current_thread)  # the thread is serving
            yield Running(store, worker, receive)
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_jobs_run_in_order_on_the_store_thread(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        store = r.store
        records = sealed(store, ROUTINE, 6, ids="batch")
        flash = sealed(store, FLASH, 1)
        jobs: list[StoreJob] = [
            Commit(StoreBatch(outgoing=records[:3])),
            Commit(StoreBatch(outgoing=records[3:] + flash)),
            ReadOutgoing(store.epoch, ROUTINE, 2, 3),  # reads see the commits before them
            ReadChain(store.epoch, ROUTINE, 6),
            ReadChain(store.epoch, FLASH, 2),
            LookupSendIds(("batch:1", "batch:6", "other")),
        ]
        for job in jobs:
            r.worker.submit(job)
        done = await r.results(len(jobs))
        assert all(isinstance(d, StoreDone) for d in done)
        assert [d.job for d in done] == jobs  # answered in submission order
        assert [d.result for d in done] == [
            Committed(), Committed(), records[2:5], records[5].chain, None,
            {"batch:1": (ROUTINE, 1), "batch:6": (ROUTINE, 6)},
        ]
        assert await r.worker.call(store.out_head, FLASH) == (1, flash[0].chain)
        assert await r.worker.call(threading.current_thread) is not threading.current_thread()
    assert store.threads == ["hotline-store"] * len(jobs)


async def test_a_failing_job_gives_one_line_and_the_worker_keeps_serving(
        tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        records = sealed(r.store, ROUTINE, 3)
        bad = Commit(StoreBatch(outgoing=records[1:2]))  # seq 2 without seq 1: refused
        good = Commit(StoreBatch(outgoing=records))
        r.worker.submit(bad)
        r.worker.submit(ReadOutgoing(r.store.epoch, ROUTINE, 0, 10))
        r.worker.submit(good)
        failed, read, committed = await r.results(3)
        assert isinstance(failed, StoreFailed)
        assert failed.job == bad
        assert failed.error == "LocalProtocolError: outgoing lane 3 seq 2 does not follow 0"
        assert read == StoreDone(read.job, [])  # nothing of the failed batch was kept
        assert committed == StoreDone(good, Committed())
        assert await r.worker.call(r.store.out_head, ROUTINE) == (3, records[2].chain)


async def test_disk_full_is_reported_and_the_store_recovers_when_space_returns(
        tmp_path: Path) -> None:
    """A real SQLITE_FULL (the file may not grow past its current pages): one line, nothing
    kept, the worker still serving; once space returns the same records commit."""
    async with running(tmp_path) as r:
        store = r.store
        big = LaneSequencer(OURS, THEIRS.public, store.epoch, ROUTINE, 0, ZERO_HASH, 1 << 20)
        records = [big.seal(bytes(200_000), "application/octet-stream", i) for i in (1, 2)]
        db = store._db  # the test needs the connection to cap the file's size
        pages = (await r.worker.call(db.execute, "PRAGMA page_count")).fetchone()[0]
        await r.worker.call(db.execute, f"PRAGMA max_page_count = {pages}")
        job = Commit(StoreBatch(outgoing=records))
        r.worker.submit(job)
        (failed,) = await r.results(1)
        assert isinstance(failed, StoreFailed)
        assert failed.job == job
        assert failed.error.startswith("StoreError: ")
        assert "full" in failed.error
        assert "\n" not in failed.error
        assert await r.worker.call(store.out_head, ROUTINE) == (0, ZERO_HASH)
        await r.worker.call(db.execute, "PRAGMA max_page_count = 1073741823")
        r.worker.submit(job)
        assert await r.results(1) == [StoreDone(job, Committed())]
        assert await r.worker.call(store.out_head, ROUTINE) == (2, records[1].chain)


async def test_call_raises_the_error_of_its_function_and_the_worker_goes_on(
        tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        with pytest.raises(LocalProtocolError):
            await r.worker.call(r.store.apply,
                                StoreBatch(outgoing=sealed(r.store, FLASH, 2)[1:]))
        assert await r.worker.call(r.store.lookup_send_ids, ["x"]) == {}


async def test_jobs_queued_before_shutdown_are_finished(tmp_path: Path) -> None:
    """Cancelling the worker lets the thread finish what it holds before it stops."""
    async with running(tmp_path) as r:
        records = sealed(r.store, ROUTINE, 50)
        for record in records:
            r.worker.submit(Commit(StoreBatch(outgoing=[record])))
        # leaving the block cancels the worker at once, with the commits still queued
    assert not any(t.name == "hotline-store" for t in threading.enumerate())
    store = Store.open(tmp_path, OURS.public.raw, THEIRS.public.raw, create=False)
    assert store.out_head(ROUTINE) == (50, records[-1].chain)
    store.close()
