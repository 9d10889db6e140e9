"""The runner's way in (``RunnerInbox``): an item offered while the runner waits for
input is fed in the offering task — answered, and a send committed, before that task
yields — and anything offered while the runner has work on hand queues behind it."""

from __future__ import annotations

import io
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

from hotline.daemon.calls import ClientCall, Reply
from hotline.daemon.logs import Logger
from hotline.daemon.notify import Notifier
from hotline.daemon.runner import Runner, RunnerInbox, RunnerInput
from hotline.daemon.storeworker import StoreWorker
from hotline.daemon.supervision import Supervision
from hotline.proto.endpoint import Endpoint, EndpointSettings
from hotline.proto.identity import Identity
from hotline.proto.lanes import ROUTINE
from hotline.proto.requests import SendRequest, StatusReport, StatusRequest, Stored
from hotline.store import Store
from hotline.testing.endpoints import PATHS, RESUME_WINDOW, seeded_rng

OURS = Identity.from_seed(bytes([7]) * 32)
THEIRS = Identity.from_seed(bytes([8]) * 32)


@dataclass
class Daemon:
    runner: Runner
    inbox: RunnerInbox
    store: Store


@asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Daemon]:
    """A runner over a real endpoint and store (no paths up: nothing goes on a wire)."""
    store = Store.open(tmp_path, OURS.public.raw, THEIRS.public.raw)
    endpoint = Endpoint(OURS, THEIRS.public, PATHS, EndpointSettings(),
                        store.resume(RESUME_WINDOW), seeded_rng(1), trio.current_time(), 0)
    submit, inputs = trio.open_memory_channel[RunnerInput](math.inf)
    worker = StoreWorker(store, submit)
    logger = Logger(io.StringIO(), "json")
    config: Any = SimpleNamespace(alert_command=(), alert_timeout=10.0, metrics=None)
    runner = Runner(endpoint, inputs, worker, {}, logger, Notifier(None),
                    Supervision(config, logger, trio.current_time()))
    inbox = RunnerInbox(submit)
    inbox.runner = runner
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            nursery.start_soon(runner.run)
            await trio.testing.wait_all_tasks_blocked()
            yield Daemon(runner, inbox, store)
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def call(daemon: Daemon, request: StatusRequest | SendRequest) -> Reply:
    reply = Reply()
    daemon.inbox.send_nowait(ClientCall(request, reply, None))
    return reply


async def test_an_item_offered_to_a_waiting_runner_is_fed_in_the_offering_task(
        tmp_path: Path) -> None:
    async with running(tmp_path) as daemon:
        status = call(daemon, StatusRequest())
        assert isinstance(status.outcome, StatusReport)  # no checkpoint in between
        await trio.testing.wait_all_tasks_blocked()  # the runner settles (nudged)

        send = call(daemon, SendRequest("text/plain", (b"at once",)))
        # Sealed, committed on this task (the store's thread idle), answered: no hop.
        assert send.outcome == Stored(((ROUTINE, 1),))
        record = daemon.store.get_outgoing(ROUTINE, 1)
        assert record is not None
        assert b"at once" in record.raw


async def test_items_offered_while_the_runner_has_work_queue_in_order(
        tmp_path: Path) -> None:
    async with running(tmp_path) as daemon:
        first = call(daemon, SendRequest("text/plain", (b"first",)))
        assert first.outcome == Stored(((ROUTINE, 1),))
        # The runner was nudged and has not run yet: these queue, and go in order.
        second = call(daemon, SendRequest("text/plain", (b"second",)))
        third = call(daemon, SendRequest("text/plain", (b"third",)))
        assert second.outcome is None
        assert third.outcome is None
        with trio.fail_after(30):
            assert await second.wait() == Stored(((ROUTINE, 2),))
            assert await third.wait() == Stored(((ROUTINE, 3),))
