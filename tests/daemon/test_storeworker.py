"""The store worker: the endpoint's store jobs run in order on the store's own thread;
a failing job is reported as ``StoreFailed`` (one line) and the worker keeps serving."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

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


async def results(receive: trio.MemoryReceiveChannel[Any], n: int) -> list[Any]:
    with trio.fail_after(WAIT):
        return [await receive.receive() for _ in range(n)]


async def test_jobs_run_in_order_on_the_store_thread(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    send, receive = trio.open_memory_channel[Any](math.inf)
    worker = StoreWorker(store, send)
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
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        for job in jobs:
            worker.submit(job)
        done = await results(receive, len(jobs))
        assert all(isinstance(d, StoreDone) for d in done)
        assert [d.job for d in done] == jobs  # answered in submission order
        assert [d.result for d in done] == [
            Committed(), Committed(), records[2:5], records[5].chain, None,
            {"batch:1": (ROUTINE, 1), "batch:6": (ROUTINE, 6)},
        ]
        assert await worker.call(store.out_head, FLASH) == (1, flash[0].chain)
        assert await worker.call(threading.current_thread) is not threading.current_thread()
        nursery.cancel_scope.cancel()
    assert store.threads == ["hotline-store"] * len(jobs)
    store.close()


async def test_a_failing_job_gives_one_line_and_the_worker_keeps_serving(
        tmp_path: Path) -> None:
    store = open_store(tmp_path)
    send, receive = trio.open_memory_channel[Any](math.inf)
    worker = StoreWorker(store, send)
    records = sealed(store, ROUTINE, 3)
    bad = Commit(StoreBatch(outgoing=records[1:2]))  # seq 2 without seq 1: refused
    good = Commit(StoreBatch(outgoing=records))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        worker.submit(bad)
        worker.submit(ReadOutgoing(store.epoch, ROUTINE, 0, 10))
        worker.submit(good)
        failed, read, committed = await results(receive, 3)
        assert isinstance(failed, StoreFailed)
        assert failed.job == bad
        assert failed.error == "LocalProtocolError: outgoing lane 3 seq 2 does not follow 0"
        assert read == StoreDone(read.job, [])  # nothing of the failed batch was kept
        assert committed == StoreDone(good, Committed())
        assert await worker.call(store.out_head, ROUTINE) == (3, records[2].chain)
        nursery.cancel_scope.cancel()
    store.close()


async def test_disk_full_is_reported_and_the_store_recovers_when_space_returns(
        tmp_path: Path) -> None:
    """A real SQLITE_FULL (the file may not grow past its current pages): one line, nothing
    kept, the worker still serving; once space returns the same records commit."""
    store = open_store(tmp_path)
    send, receive = trio.open_memory_channel[Any](math.inf)
    worker = StoreWorker(store, send)
    big = LaneSequencer(OURS, THEIRS.public, store.epoch, ROUTINE, 0, ZERO_HASH, 1 << 20)
    records = [big.seal(bytes(200_000), "application/octet-stream", i) for i in (1, 2)]
    db = store._db  # the test needs the connection to cap the file's size
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    job = Commit(StoreBatch(outgoing=records))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        worker.submit(job)
        (failed,) = await results(receive, 1)
        assert isinstance(failed, StoreFailed)
        assert failed.job == job
        assert failed.error.startswith("StoreError: ")
        assert "full" in failed.error
        assert "\n" not in failed.error
        assert await worker.call(store.out_head, ROUTINE) == (0, ZERO_HASH)
        await worker.call(db.execute, "PRAGMA max_page_count = 1073741823")
        worker.submit(job)
        (done,) = await results(receive, 1)
        assert done == StoreDone(job, Committed())
        nursery.cancel_scope.cancel()
    assert store.out_head(ROUTINE) == (2, records[1].chain)
    store.close()


async def test_call_raises_the_error_of_its_function_and_the_worker_goes_on(
        tmp_path: Path) -> None:
    store = open_store(tmp_path)
    send, _receive = trio.open_memory_channel[Any](math.inf)
    worker = StoreWorker(store, send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        with pytest.raises(LocalProtocolError):
            await worker.call(store.apply, StoreBatch(outgoing=sealed(store, FLASH, 2)[1:]))
        assert await worker.call(store.lookup_send_ids, ["x"]) == {}
        nursery.cancel_scope.cancel()
    store.close()


async def test_jobs_queued_before_shutdown_are_finished(tmp_path: Path) -> None:
    """Cancelling the worker lets the thread finish what it holds before it stops."""
    store = open_store(tmp_path)
    send, _receive = trio.open_memory_channel[Any](math.inf)
    worker = StoreWorker(store, send)
    records = sealed(store, ROUTINE, 50)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await worker.call(threading.current_thread)  # the thread is serving
        for record in records:
            worker.submit(Commit(StoreBatch(outgoing=[record])))
        nursery.cancel_scope.cancel()
    assert store.out_head(ROUTINE) == (50, records[-1].chain)
    assert not any(t.name == "hotline-store" for t in threading.enumerate())
    store.close()
