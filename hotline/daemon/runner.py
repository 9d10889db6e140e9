"""The runner: the one trio task that pumps the endpoint. It holds no protocol rule.

Everything that happens to the daemon — a packet or a path change from a transport, a
client's request, a finished store job — arrives on ONE memory channel (``calls.py``).
Each loop turn the runner takes the first item (or wakes at the endpoint's deadline),
drains whatever else is already queued with ``receive_nowait``, feeds it all to the
endpoint, then carries out ``Endpoint.poll``: packets to the transports, answers to
the waiting clients, notices to the log, jobs to the store worker. So work is batched
per event-loop turn and there is no task per message.

The idle fast path: when the store's thread has nothing to do, the turn's store jobs
are held; if the turn handed packets or answers to other tasks the runner yields (so
they leave first: a waiting client is never kept behind this turn's new commits), then
runs the jobs right here and pumps again, without a thread hand-off. And the way in:
the transports and the control server put their items through ``RunnerInbox``, which
hands an item offered while the runner waits for input (nothing queued, the store's
thread idle) straight to ``take_now`` — the turn runs in the offering task, with no
wake-up of the runner in between; then it nudges the runner, which settles what that
turn left (held jobs behind its answers, the next deadline) while anything arriving
meanwhile queues and is batched as usual.

Nothing a peer or a client sends can end the daemon: an unexpected exception raised
while handling one input is contained — logged with its traceback at debug and
counted in ``status`` ``dropped`` — and the loop goes on.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from hotline.daemon.calls import (
    ClientCall,
    ConversationClosed,
    Reply,
    StoreDone,
    StoreFailed,
)
from hotline.daemon.logs import Logger
from hotline.daemon.notify import Notifier
from hotline.daemon.storeworker import StoreWorker
from hotline.daemon.supervision import Supervision, metrics_snapshot
from hotline.proto.endpoint import Endpoint, Outputs
from hotline.proto.guard import Source, source_of
from hotline.proto.link import Received
from hotline.proto.records import StoreJob
from hotline.transport.events import PacketIn, PathConnected, PathDisconnected, PathTransport


@dataclass(frozen=True, slots=True)
class Nudge:
    """Wakes the runner after ``take_now`` (it carries nothing)."""


RunnerInput = PacketIn | PathConnected | PathDisconnected | ClientCall | ConversationClosed \
    | StoreDone | StoreFailed | Nudge
_NUDGE = Nudge()
# Backstop: wake at least this far ahead, so that a deadline the endpoint failed to move
# on (a bug) costs a little latency instead of a core spinning at 100%.
_MIN_SLEEP = 0.0005
# Rounds of held store jobs per turn (each result may make the next job); the rest go
# to the store's thread.
_INLINE_ROUNDS = 4


class Runner:
    """Pumps one endpoint; see the module header."""

    def __init__(
        self,
        endpoint: Endpoint,
        inputs: trio.MemoryReceiveChannel[RunnerInput],
        store: StoreWorker,
        transports: dict[int, PathTransport],
        logger: Logger,
        notifier: Notifier,
        supervision: Supervision,
        inbox_changed: Callable[[], None] = lambda: None,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.endpoint = endpoint
        self._supervision = supervision
        self._started = trio.current_time()
        self._inbox_changed = inbox_changed
        self._inputs = inputs
        self._store = store
        self._transports = transports
        self._logger = logger
        self._notifier = notifier
        self._wall_ns = wall_ns
        self._idle = trio.Event()
        self._answering: dict[Source, PacketIn] = {}  # this turn's answered requesters
        self._held: list[StoreJob] = []  # this turn's jobs for the idle fast path
        self._handed_out = False  # this turn gave packets or answers to other tasks
        self._busy = False  # in a turn (take_now must not start another inside it)
        self._wedged = False
        self.heartbeat_alive_at = 0.0

    async def drain(self) -> None:
        """Return once nothing waits to be committed (graceful shutdown)."""
        while not self.endpoint.idle:
            self._idle = trio.Event()
            await self._idle.wait()

    async def wedge_after(self, seconds: float) -> None:
        """Fault injection for the watchdog test: stop the loop from turning."""
        await trio.sleep(seconds)
        self._wedged = True

    async def run(self) -> None:
        """Run until cancelled."""
        heartbeat = self.endpoint.settings.link.heartbeat
        while True:
            now = trio.current_time()
            # The loop turns at least every heartbeat even when idle: the watchdog feeds
            # systemd only while turns keep coming (a wedged loop must stop the pings).
            deadline = min(self.endpoint.get_timer() or math.inf, now + heartbeat)
            items: list[RunnerInput] = []
            with trio.move_on_at(max(deadline, now + _MIN_SLEEP)):
                items.append(await self._inputs.receive())
            while True:
                try:
                    items.append(self._inputs.receive_nowait())
                except trio.WouldBlock:
                    break
            if self._wedged:
                await trio.sleep_forever()
            self.turn(items)
            for _ in range(_INLINE_ROUNDS):
                if not self._held:
                    break
                if self._handed_out:
                    # What this turn handed over leaves first: trio may run a batch's
                    # tasks in either order, so yield twice to be behind those woken.
                    await trio.lowlevel.checkpoint()
                    await trio.lowlevel.checkpoint()
                self._handed_out = False
                self.run_held()
            for job in self._held:  # still more: the store's thread takes them
                self._store.submit(job)
            self._held = []

    def take_now(self, item: RunnerInput) -> bool:
        """Run a turn for ``item`` here, in the caller's task, if the runner waits for
        input with nothing queued and the store's thread is idle (module header); the
        held jobs run here too unless the turn handed something out. False: not taken
        (queue it). The caller then nudges the runner."""
        stats = self._inputs.statistics()
        if self._busy or self._wedged or not self._store.idle \
                or stats.tasks_waiting_receive != 1 or stats.current_buffer_used:
            return False
        self.turn([item])
        for _ in range(_INLINE_ROUNDS):
            if not self._held or self._handed_out:
                break
            self.run_held()
        return True

    def turn(self, items: Sequence[RunnerInput]) -> None:
        """One loop turn: feed every input, then carry out what the endpoint wants
        (store jobs for the idle fast path are left in ``_held``)."""
        now = trio.current_time()
        if not self._held:  # else what an earlier turn handed out may still be leaving
            self._handed_out = False
        self._busy = True
        try:
            self.endpoint.set_wall_clock(now, self._wall_ns())
            for item in items:
                try:
                    self._feed(item, now)
                except Exception as err:  # contained: one input must not end the daemon
                    self._contain(type(item).__name__, err)
            self._pump(now)
        finally:
            self._busy = False

    def run_held(self) -> None:
        """Run the held store jobs here (or on the store's thread if it got work
        meanwhile, after that work), feed their results, pump again."""
        now = trio.current_time()
        held, self._held = self._held, []
        self._busy = True
        try:
            for job in held:
                if self._store.idle:
                    try:
                        self._feed(self._store.run_inline(job), now)
                    except Exception as err:
                        self._contain("StoreDone", err)
                else:
                    self._store.submit(job)
            self._pump(now)
        finally:
            self._busy = False

    def _pump(self, now: float) -> None:
        try:
            out = self.endpoint.poll(now)
        except Exception as err:
            self._contain("poll", err)
            out = Outputs()
        self._act(out, now)
        self.heartbeat_alive_at = now
        if self.endpoint.idle:
            self._idle.set()

    def _feed(self, item: RunnerInput, now: float) -> None:
        endpoint = self.endpoint
        if isinstance(item, PacketIn):
            source = source_of(item.addr)
            received = endpoint.packet(item.path_id, item.data, now, source)
            transport = self._transports.get(item.path_id)
            if transport is not None and received is Received.AUTHENTICATED:
                transport.on_authenticated(item)
            elif received is Received.ANSWERED and source is not None:
                self._answering[source] = item
        elif isinstance(item, PathConnected):
            endpoint.path_connected(item.path_id, now)
        elif isinstance(item, PathDisconnected):
            endpoint.path_disconnected(item.path_id, now)
        elif isinstance(item, ClientCall):
            endpoint.request(item.request, item.reply, item.conversation, now)
        elif isinstance(item, ConversationClosed):
            endpoint.forget_conversation(item.conversation)
        elif isinstance(item, StoreDone):
            endpoint.store_done(item.job, item.result, now)
        elif isinstance(item, StoreFailed):
            endpoint.store_failed(item.job, item.error, now)

    def _act(self, out: Outputs, now: float) -> None:
        """Carry out ``out``: packets, answers, then store jobs (held if the store's
        thread is idle, else submitted to it)."""
        for packet in out.packets:
            transport = self._transports.get(packet.path_id)
            if transport is None:
                continue
            if packet.reply_to is not None:
                request = self._answering.get(packet.reply_to)
                if request is None:
                    continue  # nowhere to answer: the requester is unknown
                transport.on_answered(request)  # the next handshake packet goes there
            transport.send(packet.packet, packet.urgent)
        self._answering.clear()
        for path_id in out.resets:
            transport = self._transports.get(path_id)
            if transport is not None:
                transport.reset()
        for token, outcome in out.replies:
            if isinstance(token, Reply):
                token.set(outcome)
        self._handed_out = self._handed_out or bool(out.packets or out.replies)
        for job in out.jobs:
            if self._held or self._store.idle:  # behind the held ones, in order
                self._held.append(job)
            else:
                self._store.submit(job)
        for notice in out.notices:
            self._logger.emit(notice.kind, notice.priority, notice.fields, notice.json)
        if out.status_line is not None:
            self._notifier.status(out.status_line)
        if out.inbox_grew:
            self._inbox_changed()
        self._supervision.after_turn(
            now, out.alerts, lambda: metrics_snapshot(self.endpoint, now, self._started))

    def _contain(self, what: str, err: Exception) -> None:
        detail = "".join(traceback.format_exception(err)).strip()
        notice = self.endpoint.narrator.internal(what, detail)
        self._logger.emit(notice.kind, notice.priority, notice.fields)


class RunnerInbox:
    """The send side of the runner's input channel, with the fast path in: an item the
    runner can take now (``Runner.take_now``) is fed at once, and the runner nudged;
    any other is queued (module header). Transports and the control server send
    through it; the store worker's results go to the channel itself."""

    def __init__(self, channel: trio.MemorySendChannel[RunnerInput]) -> None:
        self._channel = channel
        self.runner: Runner | None = None  # set once the runner exists

    async def send(self, value: RunnerInput, /) -> None:
        """Feed or queue ``value``."""
        if not self._took(value):
            await self._channel.send(value)

    def send_nowait(self, value: RunnerInput, /) -> None:
        """Feed or queue ``value`` without waiting (the channel is unbounded)."""
        if not self._took(value):
            self._channel.send_nowait(value)

    def _took(self, value: RunnerInput) -> bool:
        if self.runner is None or not self.runner.take_now(value):
            return False
        self._channel.send_nowait(_NUDGE)
        return True
