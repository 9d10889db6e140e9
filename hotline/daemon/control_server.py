"""The control socket: a Unix stream socket where local clients talk to the daemon.

Each connection gets one task that decodes framed msgpack requests
(``proto/control.py``) into the one request vocabulary (``proto/requests.py``) and
hands them to the runner as ``ClientCall`` items; outcomes are encoded back at this
edge only. The socket file is mode 0660 so access is granted by owner and group (under
systemd ``PrivateUsers=`` every peer looks like uid 65534, so SO_PEERCRED cannot
authorise; we only log the peer's uid). A client that sends garbage gets an error reply
and is disconnected; it never affects the daemon.

Plain sends are pipelined (``send --lines``): each goes to the runner at once and its
reply is queued for a writer task, so the lines share group commits; replies stay in
request order. Any other request first waits until every queued reply has gone out.
An error reply ends the conversation, and the endpoint refuses every later send of it,
so a pipelining client knows exactly which lines went in: those it was told.

``inbox`` pages through the store (on the store thread) by inbox cursor — one order
across the peer's epochs and lanes, so nothing is skipped when the peer's epoch
changes — and with ``follow`` waits for the next commit that delivered something.
Each message carries its operator-acknowledgement state (DESIGN §9): ``ack_state``
``"owed"`` (our operator owes an ack: ``operator_lanes``, the config's
``operator_ack``) or ``"acked"`` (``acked_by``: our ack's id), and for hotline's own
types (acks, drills) a ``note`` saying what it is; ``pending`` pages through only the
messages still owed an ack.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket as stdsocket
import struct
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

import trio

from hotline.daemon.calls import CallSink, ClientCall, ConversationClosed, Reply
from hotline.daemon.logs import Logger
from hotline.daemon.storeworker import StoreWorker
from hotline.errors import (
    AccessDeniedError,
    ConfigError,
    DaemonUnreachableError,
    RemoteProtocolError,
    UsageError,
)
from hotline.proto import control as ctl
from hotline.proto.bodies import describe, needs_operator_ack
from hotline.proto.envelope import decode_envelope_untrusted
from hotline.proto.lanes import FLASH, IMMEDIATE, NAMES, PRIORITY, message_id
from hotline.proto.requests import (
    Acknowledged,
    EndpointRequest,
    EventsRequest,
    InboxRequest,
    Outcome,
    Request,
    SendRequest,
    Stored,
    WaitRequest,
)
from hotline.store import InboxEntry

_READ_SIZE = 65536
_MAX_CLIENTS = 64
_EVENT_BACKLOG = 256
# Send requests one connection may have in flight (pipelined) before we stop reading it.
_PIPELINE = 256
_Queued = Reply | trio.Event


class _Pipeline:
    """One client's queue of pipelined send replies, and how many of them are not
    written yet."""

    def __init__(self, queue: trio.MemorySendChannel[_Queued]) -> None:
        self.queue = queue
        self.unwritten = 0


async def bind_control_socket(path: Path) -> trio.SocketListener:
    """Bind ``path`` (0660), replacing a stale socket file left by a crashed daemon.

    Raises:
        ConfigError: another daemon is already listening there.
        AccessDeniedError: the directory does not let us create the socket.
    """
    await trio.to_thread.run_sync(_remove_stale, path)
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        await sock.bind(str(path))
    except PermissionError as err:
        sock.close()
        raise AccessDeniedError(f"cannot create control socket {path}: {err.strerror}") from err
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o660)
    sock.listen(_MAX_CLIENTS)
    return trio.SocketListener(sock)


def _remove_stale(path: Path) -> None:
    if not os.path.lexists(path):
        return
    with stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError as err:
            if err.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                raise ConfigError(f"control socket {path}: {err.strerror}") from err
        else:
            raise ConfigError(f"control socket {path} is in use: is another daemon running?")
    os.unlink(path)


class ControlServer:
    """Serves control clients for one runner (see the module header)."""

    def __init__(self, submit: CallSink, store: StoreWorker,
                 logger: Logger, log_uid: Callable[[int | None], None] | None = None,
                 operator_lanes: Collection[int] = (FLASH, IMMEDIATE)) -> None:
        self._submit = submit
        self._operator_lanes = tuple(operator_lanes)
        self._store = store
        self._logger = logger
        self._log_uid = log_uid
        self.clients = 0
        self.closing = False
        self._unwritten = 0  # accepted sends whose reply has not been written yet
        self._all_written = trio.Event()
        self._inbox_grew = trio.Event()

    def inbox_changed(self) -> None:
        """A commit delivered messages: wake ``inbox --follow`` readers."""
        self._inbox_grew.set()
        self._inbox_grew = trio.Event()

    async def serve(self, listener: trio.SocketListener) -> None:
        """Accept clients until cancelled."""
        await trio.serve_listeners(self._handle, [listener])

    async def quiesce(self) -> None:
        """Refuse new requests; return once every accepted send has its reply written."""
        self.closing = True
        while self._unwritten:
            self._all_written = trio.Event()
            await self._all_written.wait()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.clients += 1
        conversation = object()
        try:
            if self._log_uid is not None:
                self._log_uid(_peer_uid(stream))
            async with stream:
                if self.clients > _MAX_CLIENTS:
                    await _send_reply(stream, ctl.error_reply(
                        DaemonUnreachableError, f"too many control clients (over {_MAX_CLIENTS})"))
                    return
                await self._serve_client(stream, conversation)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.clients -= 1
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self._submit.send_nowait(ConversationClosed(conversation))

    async def _serve_client(self, stream: trio.SocketStream, conversation: object) -> None:
        queue_in, queue_out = trio.open_memory_channel[_Queued](_PIPELINE)
        pipeline = _Pipeline(queue_in)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_queued, stream, queue_out, pipeline,
                               nursery.cancel_scope)
            await self._read_requests(stream, conversation, pipeline)
            await self._barrier(pipeline)
            nursery.cancel_scope.cancel()

    async def _read_requests(self, stream: trio.SocketStream, conversation: object,
                             pipeline: _Pipeline) -> None:
        buffer = ctl.FrameBuffer()
        while True:
            data = await stream.receive_some(_READ_SIZE)
            if not data:
                return
            try:
                for payload in buffer.feed_untrusted(data):
                    request = ctl.decode_request_untrusted(payload)
                    if self.closing:
                        await self._barrier(pipeline)
                        await _send_reply(stream, ctl.error_reply(
                            DaemonUnreachableError,
                            "the daemon is shutting down; nothing was stored"))
                        return
                    if _pipelined(request):
                        await self._queue_send(request, conversation, pipeline)
                        continue
                    await self._barrier(pipeline)
                    if not await self._reply_all(stream, request, conversation):
                        return
            except RemoteProtocolError as err:
                await self._barrier(pipeline)
                await _send_reply(stream, ctl.error_reply(UsageError, f"bad request: {err}"))
                return

    async def _call(self, request: EndpointRequest, conversation: object) -> Reply:
        reply = Reply()
        await self._submit.send(ClientCall(request, reply, conversation))
        return reply

    async def _queue_send(self, request: Request, conversation: object,
                          pipeline: _Pipeline) -> None:
        assert isinstance(request, SendRequest)
        self._unwritten += 1
        pipeline.unwritten += 1
        try:
            await pipeline.queue.send(await self._call(request, conversation))
        except BaseException:
            self._written(1)
            pipeline.unwritten -= 1
            raise

    def _written(self, count: int) -> None:
        self._unwritten -= count
        if not self._unwritten:
            self._all_written.set()

    async def _write_queued(self, stream: trio.SocketStream,
                            queue: trio.MemoryReceiveChannel[_Queued],
                            pipeline: _Pipeline, scope: trio.CancelScope) -> None:
        """Write pipelined replies in order; end the conversation after an error."""
        try:
            async for item in queue:
                if isinstance(item, trio.Event):
                    item.set()
                    continue
                try:
                    reply = ctl.outcome_reply(await item.wait())
                    await _send_reply(stream, reply)
                finally:
                    self._written(1)
                    pipeline.unwritten -= 1
                if not reply.get("ok"):
                    scope.cancel()
                    return
        finally:
            self._written(_count_replies(queue))
            queue.close()

    @staticmethod
    async def _barrier(pipeline: _Pipeline) -> None:
        """Return once every reply queued before now has been written (at once when
        none is waiting: no hop to the writer task)."""
        if not pipeline.unwritten:
            return
        done = trio.Event()
        await pipeline.queue.send(done)
        await done.wait()

    async def _reply_all(self, stream: trio.SocketStream, request: Request,
                         conversation: object) -> bool:
        """Answer one request in place; False if an error reply ended the conversation."""
        async for reply in self._answer(request, conversation):
            await _send_reply(stream, reply)
            if not reply.get("ok"):
                return False
        return True

    async def _answer(self, request: Request, conversation: object
                      ) -> AsyncIterator[dict[str, Any]]:
        if isinstance(request, SendRequest):
            async for reply in self._send(request, conversation):
                yield reply
        elif isinstance(request, InboxRequest):
            async for reply in self._inbox(request):
                yield reply
        elif isinstance(request, EventsRequest):
            async for reply in self._events():
                yield reply
        else:
            started = trio.current_time()
            outcome = await (await self._call(request, conversation)).wait()
            yield _with_ack_ms(outcome, started)

    async def _send(self, request: SendRequest, conversation: object
                    ) -> AsyncIterator[dict[str, Any]]:
        started = trio.current_time()
        self._unwritten += 1
        try:
            outcome = await (await self._call(request, conversation)).wait()
        finally:
            self._written(1)
        yield ctl.outcome_reply(outcome)
        if not isinstance(outcome, Stored) or not outcome.ids:
            return
        lane = request.lane
        seqs = [seq for id_lane, seq in outcome.ids if id_lane == lane]
        wait = WaitRequest(lane, max(seqs), request.timeout, request.wait_operator,
                           min(seqs))
        yield _with_ack_ms(await (await self._call(wait, conversation)).wait(), started)

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        """Every log event as it happens; a client too slow to keep up misses some."""
        send, receive = trio.open_memory_channel[dict[str, Any]](_EVENT_BACKLOG)

        def sink(obj: dict[str, Any]) -> None:
            with contextlib.suppress(trio.WouldBlock):
                send.send_nowait(obj)

        remove = self._logger.add_sink(sink)
        try:
            async for obj in receive:
                yield ctl.ok_reply(event=obj)
        finally:
            remove()

    async def _inbox(self, request: InboxRequest) -> AsyncIterator[dict[str, Any]]:
        cursor = request.cursor
        if request.since is not None:
            cursor = await self._store.call(self._store.store.inbox_cursor, *request.since)
        while True:
            grew = self._inbox_grew
            entries, latest = await self._store.call(self._inbox_page, cursor, request.pending)
            for entry in entries:
                cursor = entry.n
                msg = inbox_message(entry, self._operator_lanes, latest)
                if not request.pending or msg["ack_state"] == "owed":
                    yield ctl.ok_reply(msg=msg)
            if entries:
                continue
            if not request.follow:
                yield ctl.ok_reply(end=True)
                return
            await grew.wait()


    def _inbox_page(self, cursor: int, pending: bool
                    ) -> tuple[list[InboxEntry], bytes | None]:
        """(On the store thread.) The next page after ``cursor`` and the peer's latest
        epoch (only its messages can still be acknowledged)."""
        store = self._store.store
        epochs = store.peer_epochs()
        lanes = (*self._operator_lanes, PRIORITY)  # PRIORITY: drills may ask for an ack
        entries = (store.inbox_unacked(cursor, lanes) if pending
                   else store.inbox_after(cursor))
        return entries, epochs[-1] if epochs else None


def _pipelined(request: Request) -> bool:
    return isinstance(request, SendRequest) and not (request.wait or request.wait_operator)


def _with_ack_ms(outcome: Outcome, started: float) -> dict[str, Any]:
    reply = ctl.outcome_reply(outcome)
    if isinstance(outcome, Acknowledged):
        reply["ack_ms"] = (trio.current_time() - started) * 1000
    return reply


def inbox_message(entry: InboxEntry, operator_lanes: Collection[int] = (FLASH, IMMEDIATE),
                  latest: bytes | None = None) -> dict[str, Any]:
    """One inbox message as the control socket sends it; ``operator_lanes``: the lanes
    whose messages our operator acknowledges, ``latest``: the peer's latest epoch (the
    only one whose messages can still be acknowledged; None: the entry's)."""
    env = decode_envelope_untrusted(entry.raw, max_message=len(entry.raw))
    ack_state = None
    if entry.acked_by is not None:
        ack_state = "acked"
    elif entry.epoch == (latest or entry.epoch) and needs_operator_ack(env, operator_lanes):
        ack_state = "owed"
    msg = {"n": entry.n, "epoch": entry.epoch.hex(), "lane": entry.lane,
           "precedence": NAMES[entry.lane], "seq": entry.seq,
           "id": message_id(entry.lane, entry.seq), "ts": env.ts, "type": env.type,
           "body": env.body, "ack_state": ack_state,
           "acked_by": None if entry.acked_by is None else message_id(*entry.acked_by)}
    note = describe(env)
    if note is not None:
        msg["note"] = note
    return msg


def _count_replies(queue: trio.MemoryReceiveChannel[_Queued]) -> int:
    """Replies still queued (never to be written): drained so quiesce can count them."""
    count = 0
    while True:
        try:
            item = queue.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return count
        count += isinstance(item, Reply)


async def _send_reply(stream: trio.SocketStream, reply: dict[str, Any]) -> None:
    await stream.send_all(ctl.encode_reply(reply))


def _peer_uid(stream: trio.SocketStream) -> int | None:
    with contextlib.suppress(OSError, AttributeError):
        creds = stream.socket.getsockopt(
            stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, struct.calcsize("3i")
        )
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    return None
