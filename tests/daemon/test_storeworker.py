"""The store worker: commits in order off the event loop; a failed commit stops the daemon."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import trio

from hotline.daemon.storeworker import Committed, StoreWorker
from hotline.errors import LocalProtocolError
from hotline.proto.envelope import chain_hash, encode_envelope
from hotline.store import Batch, OutRecord, Store


def _records(store: Store, n: int) -> list[OutRecord]:
    out, prev = [], bytes(32)
    for seq in range(1, n + 1):
        raw = encode_envelope(store.epoch, b"a" * 32, b"b" * 32, seq, 1, prev, "text/plain",
                              b"x")
        out.append(OutRecord(seq, raw, b"s" * 64))
        prev = chain_hash(raw)
    return out


async def test_batches_commit_in_order_and_reads_follow_them(tmp_path: Path) -> None:
    store = Store.open(tmp_path, b"a" * 32, b"b" * 32, os.urandom)
    send, receive = trio.open_memory_channel[Committed](math.inf)
    worker = StoreWorker(store, send)
    records = _records(store, 6)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        worker.submit(Batch(outgoing=records[:3]), [])
        worker.submit(Batch(outgoing=records[3:]), [])
        first, second = await receive.receive(), await receive.receive()
        assert [r.seq for r in first.batch.outgoing] == [1, 2, 3]
        assert [r.seq for r in second.batch.outgoing] == [4, 5, 6]
        assert (await worker.call(store.out_head))[0] == 6
        nursery.cancel_scope.cancel()
    assert worker.commits == 2
    store.close()


async def test_a_failed_commit_is_raised_not_swallowed(tmp_path: Path) -> None:
    store = Store.open(tmp_path, b"a" * 32, b"b" * 32, os.urandom)
    send, _receive = trio.open_memory_channel[Committed](math.inf)
    worker = StoreWorker(store, send)
    bad = _records(store, 2)[1:]  # seq 2 without seq 1: the store refuses the gap
    with pytest.RaisesGroup(LocalProtocolError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            worker.submit(Batch(outgoing=bad), [])
    assert worker.commits == 0
    assert store.out_head()[0] == 0  # nothing of the failed batch was kept
    store.close()
