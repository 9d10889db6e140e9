"""The runner: the one trio task that owns the Link and moves bytes, time and events.

Theory of operation. Everything that happens to the daemon — a packet or a path
change from a transport, a request from the control socket, a finished store commit —
arrives on ONE memory channel. Each loop turn the runner takes the first item (or
wakes at ``Link.get_timer()``), drains whatever else is already queued with
``receive_nowait``, feeds it all to the Link, then flushes: packets to the
transports, and one store batch to the store worker. So work is batched per event-loop
turn and there is no task per message.

Durability rules (DESIGN §4), enforced here:
* ``send``: each message is sealed (seq, chain, signature) at once, added to the
  pending batch, and the client is answered only after that batch has committed; the
  records are handed to the Link for transmission only then.
* receive: messages the Link accepted go into the batch; only after the commit does the
  runner call ``Link.on_inbox_committed``, which lets acknowledgements cover them.
* One commit is in flight at a time; whatever arrives meanwhile waits for the next
  one — that is the group commit.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from hotline.daemon.logs import DEBUG, NOTICE, WARNING, LinkSnapshot, Logger, PathSnapshot
from hotline.daemon.notify import Notifier
from hotline.daemon.storeworker import Committed, StoreWorker
from hotline.proto.envelope import is_media_type
from hotline.proto.events import (
    Acked,
    Delivered,
    Dropped,
    Event,
    HandshakeComplete,
    InitiationAccepted,
    PathDown,
    PathUp,
    PrimaryChanged,
    ReceiptReceived,
    ResetPath,
)
from hotline.proto.guard import source_of
from hotline.proto.incoming import NewEpoch
from hotline.proto.link import Link
from hotline.proto.sequencer import Sequencer
from hotline.store import Batch, InRecord, OutRecord, ReceiptRecord
from hotline.transport.events import (
    PacketIn,
    PathConnected,
    PathDisconnected,
    PathTransport,
    TransportEvent,
)

# Flow control toward clients: `send` is refused (exit 75) once this many bytes of
# envelopes, or the config's `max_backlog` messages, await the peer's ack — the sender
# keeps each in memory, so a dead peer cannot grow our memory without bound.
MAX_BACKLOG_BYTES = 256 * 1024 * 1024
AUTH_LOG_EVERY = 10.0
_MIN_SLEEP = 0.0005


class Reply:
    """A one-shot answer slot that a control-socket task awaits."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self.value: dict[str, object] = {}

    def set(self, value: dict[str, object]) -> None:
        """Answer (first answer wins)."""
        if not self._event.is_set():
            self.value = value
            self._event.set()

    async def wait(self) -> dict[str, object]:
        """Wait for the answer."""
        await self._event.wait()
        return self.value


@dataclass
class Conversation:
    """One client connection's state, shared with the runner.

    Once the runner refuses a send of a conversation it refuses every later one, so a
    client that pipelines requests knows that exactly the seqs it was told went in.
    """

    refused: bool = False


@dataclass
class SendRequest:
    """Seal and durably store these bodies; reply with their seqs after the commit."""

    bodies: Sequence[bytes]
    media_type: str
    reply: Reply
    conversation: Conversation = field(default_factory=Conversation)


@dataclass
class WaitRequest:
    """Reply once the peer acknowledged everything up to ``upto`` (or at ``deadline``)."""

    upto: int
    deadline: float
    reply: Reply


@dataclass
class StatusRequest:
    """Reply with the link snapshot (``status --json``)."""

    reply: Reply


RunnerInput = TransportEvent | SendRequest | WaitRequest | StatusRequest | Committed


@dataclass
class _Counters:
    in_seq: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


class Runner:
    """Owns the Link; see the module header."""

    def __init__(
        self,
        link: Link,
        sequencer: Sequencer,
        store: StoreWorker | None,
        transports: dict[int, PathTransport],
        logger: Logger,
        notifier: Notifier,
        peer_name: str,
        log_every: float,
        acked_upto: int,
        in_seq: int,
        unacked_sizes: Sequence[tuple[int, int]] = (),
        max_backlog: int = 100_000,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.link = link
        self._sequencer = sequencer
        self._store = store
        self._wedged = False
        self._shape: tuple[object, ...] = ()
        self._max_backlog = max_backlog
        # (seq, envelope bytes) of every unacknowledged message, for the byte bound.
        self._unacked_sizes: deque[tuple[int, int]] = deque(unacked_sizes)
        self._backlog_bytes = sum(size for _, size in unacked_sizes)
        self._auth_log: dict[str, tuple[float, int]] = {}
        self._transports = transports
        self._logger = logger
        self._notifier = notifier
        self._peer_name = peer_name
        self._log_every = log_every
        self._wall_ns = wall_ns
        send, self.inputs = trio.open_memory_channel[RunnerInput](math.inf)
        self.submit: trio.MemorySendChannel[RunnerInput] = send
        self.acked_upto = acked_upto
        self._counters = _Counters(in_seq=in_seq)
        self._batch = Batch()
        self._batch_replies: list[tuple[Reply, list[int]]] = []
        self._committing = False
        self._waiters: list[WaitRequest] = []
        self._next_log = 0.0
        self.delivered = trio.Event()
        self.heartbeat_alive_at = 0.0

    def attach_store(self, store: StoreWorker) -> None:
        """Set the store worker (it needs our input channel, so it is made after us)."""
        self._store = store

    async def drain(self) -> None:
        """Return once nothing is waiting to be committed (graceful shutdown)."""
        while self._committing or not _empty(self._batch):  # noqa: ASYNC110
            await trio.sleep(0.01)  # polls state that the runner loop changes

    async def wedge_after(self, seconds: float) -> None:
        """Fault injection for the watchdog test: stop the loop from turning."""
        await trio.sleep(seconds)
        self._wedged = True

    # --- main loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled."""
        self._next_log = trio.current_time()
        while True:
            deadline = self._next_deadline()
            items: list[RunnerInput] = []
            with trio.move_on_at(deadline):
                items.append(await self.inputs.receive())
            while True:
                try:
                    items.append(self.inputs.receive_nowait())
                except trio.WouldBlock:
                    break
            if self._wedged:
                await trio.sleep_forever()
            self._turn(items)

    def _turn(self, items: Sequence[RunnerInput]) -> None:
        now = trio.current_time()
        self.link.set_wall_clock(now, self._wall_ns())
        for item in items:
            self._handle(item, now)
        self.link.handle_timer(now)
        self._handle_events(self.link.next_events(), now)
        self._flush(now)
        self._expire_waiters(now)
        self.heartbeat_alive_at = now
        if now >= self._next_log:
            self._next_log = now + self._log_every
            self._logger.heartbeat(self.snapshot(now))

    def _next_deadline(self) -> float:
        # Backstop: wake at least 0.5 ms ahead, so that a deadline the Link failed to
        # move on (a bug) costs a little latency instead of a core spinning at 100%.
        # The loop turns at least every heartbeat even when idle: the watchdog feeds
        # systemd only while turns keep coming (a wedged loop must stop the pings).
        timers = [self._next_log, trio.current_time() + self.link.settings.heartbeat]
        link_timer = self.link.get_timer()
        if link_timer is not None:
            timers.append(link_timer)
        timers.extend(w.deadline for w in self._waiters)
        return max(min(timers), trio.current_time() + _MIN_SLEEP)

    # --- inputs -------------------------------------------------------------------

    def _handle(self, item: RunnerInput, now: float) -> None:
        if isinstance(item, PacketIn):
            ok = self.link.receive_untrusted(item.path_id, item.data, now,
                                             source_of(item.addr))
            if ok and item.addr is not None:
                transport = self._transports.get(item.path_id)
                set_remote = getattr(transport, "set_remote", None)
                if set_remote is not None:
                    set_remote(item.addr)
        elif isinstance(item, PathConnected):
            self.link.path_connected(item.path_id, now)
        elif isinstance(item, PathDisconnected):
            self.link.path_disconnected(item.path_id, now)
        elif isinstance(item, SendRequest):
            self._on_send(item)
        elif isinstance(item, WaitRequest):
            self._waiters.append(item)
        elif isinstance(item, StatusRequest):
            item.reply.set({"ok": True, "status": self.snapshot(now).to_json_dict()})
        else:
            self._on_committed(item, now)

    def _on_send(self, request: SendRequest) -> None:
        backlog = self._sequencer.last_seq - self.acked_upto
        error = None
        if request.conversation.refused:
            error = {"code": 3, "error": "not stored: an earlier request was refused"}
        elif not request.bodies:
            error = {"code": 2, "error": "nothing to send"}
        elif not is_media_type(request.media_type):
            error = {"code": 2, "error": f"type {request.media_type!r} is not a media type"}
        elif (backlog + len(request.bodies) > self._max_backlog
              or self._backlog_bytes + sum(map(len, request.bodies)) > MAX_BACKLOG_BYTES):
            error = {"code": 75, "error": (
                f"backlog of {backlog} unacknowledged messages ({self._backlog_bytes} bytes) "
                "is full; is the peer down?")}
        elif max(len(b) for b in request.bodies) > self._sequencer.max_message:
            error = {"code": 2, "error": (
                f"message over max_message ({self._sequencer.max_message} bytes)")}
        if error is not None:
            request.conversation.refused = True
            request.reply.set({"ok": False, **error})
            return
        ts = self._wall_ns()
        seqs: list[int] = []
        for body in request.bodies:
            sealed = self._sequencer.seal(body, request.media_type, ts)
            self._batch.outgoing.append(OutRecord(sealed.seq, sealed.raw, sealed.sig))
            self._unacked_sizes.append((sealed.seq, len(sealed.raw)))
            self._backlog_bytes += len(sealed.raw)
            seqs.append(sealed.seq)
        self._batch_replies.append((request.reply, seqs))

    def _on_committed(self, done: Committed, now: float) -> None:
        self._committing = False
        batch = done.batch
        if batch.outgoing:
            self.link.queue_messages(
                [(r.seq, r.raw, r.sig) for r in batch.outgoing], now
            )
        for reply, seqs in done.replies:
            reply.set({"ok": True, "seqs": seqs})
        if batch.incoming:
            last = batch.incoming[-1]
            self.link.on_inbox_committed(last.epoch, last.seq, now)
            self._counters.in_seq = last.seq
            self.delivered.set()
            self.delivered = trio.Event()

    # --- link events --------------------------------------------------------------

    def _handle_events(self, events: Sequence[Event], now: float) -> None:
        state_changed = False
        for event in events:
            if isinstance(event, Delivered):
                for m in event.messages:
                    self._batch.incoming.append(InRecord(m.epoch, m.seq, m.raw, m.sig))
            elif isinstance(event, Acked):
                self._on_acked(event.upto)
            elif isinstance(event, ReceiptReceived):
                self._batch.receipts.append(
                    ReceiptRecord(event.epoch, event.upto, event.chain, event.raw, event.sig)
                )
            elif isinstance(event, ResetPath):
                transport = self._transports.get(event.path_id)
                if transport is not None:
                    transport.reset()
            elif isinstance(event, Dropped):
                self._on_dropped(event)
            elif isinstance(event, InitiationAccepted):
                # The replay floor; the store does not keep it yet (the lead wires it:
                # persist it, pass it back as Link(timestamp_floor_ns=...)).
                continue
            else:
                state_changed = True
                self._log_change(event)
        shape = (self.link.state, self.link.primary, tuple(p.up for p in self.link.paths))
        if state_changed and shape != self._shape:
            # A change of link state, active path or path states (DESIGN §5) — not every
            # rekey handshake, which is logged on its own line.
            self._shape = shape
            snapshot = self.snapshot(now)
            self._logger.heartbeat(snapshot)
            self._notifier.status(status_text(snapshot))

    def _on_dropped(self, event: Dropped) -> None:
        dropped = self._counters.dropped
        dropped[event.kind] = dropped.get(event.kind, 0) + 1
        url = self.link.specs[event.path_id].url
        # Replays are counted, not logged as failures: duplicates are normal on lossy or
        # redundant paths, and a replayed packet changes nothing.
        if event.kind not in ("AuthenticationError", "HandshakeError"):
            self._logger.event("debug", DEBUG, peer=self._peer_name, path=url,
                               dropped=event.kind, reason=event.reason)
            return
        # At most one auth line per reason every AUTH_LOG_EVERY seconds, so a flood of
        # forged packets cannot flood the journal; the next line says how many were held.
        now = trio.current_time()
        key = f"{event.kind}: {event.reason}"
        last, held = self._auth_log.get(key, (-math.inf, 0))
        if now - last < AUTH_LOG_EVERY:
            self._auth_log[key] = (last, held + 1)
            return
        self._auth_log[key] = (now, 0)
        reason = key if not held else f"{key} (and {held} more since the last line)"
        self._logger.auth(self._peer_name, reason, url)

    def _log_change(
        self, event: PathUp | PathDown | PrimaryChanged | HandshakeComplete | NewEpoch
    ) -> None:
        peer = self._peer_name
        if isinstance(event, PathUp):
            self._logger.state(peer, event.url, "up")
        elif isinstance(event, PathDown):
            self._logger.state(peer, event.url, "down", event.reason)
        elif isinstance(event, PrimaryChanged):
            self._log_primary(event)
        elif isinstance(event, HandshakeComplete):
            self._logger.event("handshake", NOTICE, peer=peer,
                               path=self.link.specs[event.path_id].url, result="ok",
                               role="initiator" if event.initiator else "responder")
        elif event.old is None:
            self._logger.event("epoch", NOTICE, peer=peer, change="first contact",
                               epoch=event.epoch.hex(), first_seq=event.base_seq)
        else:
            self._logger.event("epoch", WARNING, peer=peer,
                               change="peer started a new epoch (its store was lost or reset)",
                               old=event.old.hex(), epoch=event.epoch.hex(),
                               first_seq=event.base_seq)

    def _log_primary(self, event: PrimaryChanged) -> None:
        """``failover`` when traffic moves to a later path, ``primary`` when it moves back."""
        urls = [spec.url for spec in self.link.specs]
        if event.new is None:
            self._logger.state(self._peer_name, event.old, "down", "no path is up")
            return
        rank_new = urls.index(event.new)
        moved_down = event.old is not None and urls.index(event.old) < rank_new
        self._logger.state(self._peer_name, event.new, "failover" if moved_down else "primary",
                           f"active was {event.old or 'none'}")

    def _on_acked(self, upto: int) -> None:
        if upto <= self.acked_upto:
            return
        self.acked_upto = upto
        self._batch.acked_upto = upto
        while self._unacked_sizes and self._unacked_sizes[0][0] <= upto:
            self._backlog_bytes -= self._unacked_sizes.popleft()[1]
        still: list[WaitRequest] = []
        for waiter in self._waiters:
            if waiter.upto <= upto:
                waiter.reply.set({"ok": True, "acked": upto})
            else:
                still.append(waiter)
        self._waiters = still

    def _expire_waiters(self, now: float) -> None:
        still: list[WaitRequest] = []
        for waiter in self._waiters:
            if waiter.upto <= self.acked_upto:
                waiter.reply.set({"ok": True, "acked": self.acked_upto})
            elif now >= waiter.deadline:
                waiter.reply.set({"ok": False, "code": 75, "acked": self.acked_upto,
                                  "error": f"not acknowledged (peer has up to {self.acked_upto})"})
            else:
                still.append(waiter)
        self._waiters = still

    # --- outputs ------------------------------------------------------------------

    def _flush(self, now: float) -> None:
        for path_id, packet in self.link.packets_to_send(now):
            transport = self._transports.get(path_id)
            if transport is not None:
                transport.send(packet)
        for path_id, source, packet in self.link.replies_to_send():
            # Only UDP paths get replies addressed to one source (``UdpPath.send_to``).
            send_to = getattr(self._transports.get(path_id), "send_to", None)
            if send_to is not None:
                send_to(source, packet)
        if not self._committing and not _empty(self._batch) and self._store is not None:
            self._committing = True
            batch, self._batch = self._batch, Batch()
            replies, self._batch_replies = self._batch_replies, []
            self._store.submit(batch, replies)

    # --- status -------------------------------------------------------------------

    def snapshot(self, now: float) -> LinkSnapshot:
        """The link as ``status`` and the heartbeat log show it."""
        link = self.link
        paths = [
            PathSnapshot(
                url=p.url,
                state="up" if p.up else "down",
                rtt_ms=p.rtt_ms(),
                last_heard_s=p.last_heard_age(now),
            )
            for p in link.paths
        ]
        primary = link.paths[link.primary] if link.primary is not None else None
        skews = [p.skew_ns for p in link.paths if p.up and p.skew_ns is not None]
        return LinkSnapshot(
            peer=self._peer_name,
            state=link.state,
            active=primary.url if primary is not None else None,
            paths=paths,
            out_seq=self._sequencer.last_seq,
            acked=self.acked_upto,
            in_seq=self._counters.in_seq,
            backlog=self._sequencer.last_seq - self.acked_upto,
            skew_ms=skews[0] / 1e6 if skews else None,
            session_age_s=link.sessions.session_age(now),
            dropped=dict(self._counters.dropped),
        )


def _empty(batch: Batch) -> bool:
    return not (batch.outgoing or batch.incoming or batch.receipts
                or batch.acked_upto is not None)


def status_text(snap: LinkSnapshot) -> str:
    """One line for systemd's STATUS= (``systemctl status``)."""
    return (f"link {snap.state} to {snap.peer} via {snap.active or 'no path'}; "
            f"sent {snap.out_seq} acked {snap.acked} received {snap.in_seq}")
