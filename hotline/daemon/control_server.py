"""The control socket: a Unix stream socket where local clients talk to the daemon.

Each connection gets one task that decodes framed msgpack requests
(``proto/control.py``) and turns them into runner inputs; replies go back in order.
The socket file is mode 0660 so access is granted by owner and group (under systemd
``PrivateUsers=`` every peer looks like uid 65534, so SO_PEERCRED cannot authorise;
we only log the peer's uid). A client that sends garbage gets an error reply and is
disconnected; it never affects the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket as stdsocket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from hotline.daemon import runner as rq
from hotline.daemon.logs import Logger
from hotline.daemon.storeworker import StoreWorker
from hotline.errors import AccessDeniedError, ConfigError, RemoteProtocolError
from hotline.proto import control as ctl
from hotline.store import InRecord, Store

_READ_SIZE = 65536
_MAX_CLIENTS = 64
# The longest a client may wait for an acknowledgement on one request.
MAX_WAIT = 3600.0
_EVENT_BACKLOG = 256
# Send requests one connection may have in flight (pipelined) before we stop reading it.
_PIPELINE = 256


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
    """Serves control clients for one runner (see the module header).

    Replies go out in request order. After an error reply the connection is closed,
    and the runner refuses every later send of that conversation, so a client that
    pipelines (``send --lines``) knows exactly which lines went in: those it was told.
    """

    def __init__(self, runner: rq.Runner, store: StoreWorker, logger: Logger,
                 log_uid: Any = None) -> None:
        self._runner = runner
        self._store = store
        self._logger = logger
        self._log_uid = log_uid
        self.clients = 0
        self.closing = False
        self._unwritten = 0  # accepted sends whose reply has not been written yet

    async def serve(self, listener: trio.SocketListener) -> None:
        """Accept clients until cancelled."""
        await trio.serve_listeners(self._handle, [listener])

    async def quiesce(self) -> None:
        """Refuse new requests; return once every accepted ``send`` has its reply written.

        Call after the runner has committed what it holds (``Runner.drain``).
        """
        self.closing = True
        while self._unwritten:  # noqa: ASYNC110 - written by the connections' tasks
            await trio.sleep(0.01)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.clients += 1
        try:
            if self._log_uid is not None:
                self._log_uid(_peer_uid(stream))
            async with stream:
                if self.clients > _MAX_CLIENTS:
                    await stream.send_all(ctl.encode_reply(ctl.error_reply(
                        f"too many control clients (over {_MAX_CLIENTS})", 3)))
                    return
                await self._serve_client(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.clients -= 1

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        """Read requests; plain sends are pipelined, everything else waits its turn.

        A plain ``send`` goes to the runner at once and its reply is queued for the
        writer task, so the lines of ``send --lines`` share group commits. Any other
        request first waits until every queued reply has gone out (replies stay in
        order), then is answered here. An error reply ends the conversation.
        """
        conversation = rq.Conversation()
        queue_in, queue_out = trio.open_memory_channel[rq.Reply | trio.Event](_PIPELINE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_queued, stream, queue_out, nursery.cancel_scope)
            await self._read_requests(stream, conversation, queue_in)
            await self._barrier(queue_in)
            nursery.cancel_scope.cancel()

    async def _read_requests(
        self, stream: trio.SocketStream, conversation: rq.Conversation,
        queue: trio.MemorySendChannel[rq.Reply | trio.Event],
    ) -> None:
        buffer = ctl.FrameBuffer()
        while True:
            data = await stream.receive_some(_READ_SIZE)
            if not data:
                return
            try:
                for payload in buffer.feed_untrusted(data):
                    request = ctl.decode_request_untrusted(payload)
                    if self.closing:
                        await self._barrier(queue)
                        await _send_reply(stream, ctl.error_reply(
                            "the daemon is shutting down; nothing was stored", 3))
                        return
                    if isinstance(request, ctl.SendRequest) and not request.wait:
                        await self._queue_send(request, conversation, queue)
                        continue
                    await self._barrier(queue)
                    if not await self._reply_all(stream, request, conversation):
                        return
            except RemoteProtocolError as err:
                await self._barrier(queue)
                await _send_reply(stream, ctl.error_reply(f"bad request: {err}", 2))
                return

    async def _submit_send(self, request: ctl.SendRequest,
                           conversation: rq.Conversation) -> rq.Reply:
        item = rq.SendRequest(request.bodies, request.type, rq.Reply(), conversation)
        await self._runner.submit.send(item)
        return item.reply

    async def _queue_send(self, request: ctl.SendRequest, conversation: rq.Conversation,
                          queue: trio.MemorySendChannel[rq.Reply | trio.Event]) -> None:
        self._unwritten += 1
        try:
            await queue.send(await self._submit_send(request, conversation))
        except BaseException:
            self._unwritten -= 1
            raise

    async def _write_queued(self, stream: trio.SocketStream,
                            queue: trio.MemoryReceiveChannel[rq.Reply | trio.Event],
                            scope: trio.CancelScope) -> None:
        """Write pipelined replies in order; end the conversation after an error."""
        try:
            async for item in queue:
                if isinstance(item, trio.Event):
                    item.set()
                    continue
                try:
                    reply = await item.wait()
                    await _send_reply(stream, reply)
                finally:
                    self._unwritten -= 1
                if not reply.get("ok"):
                    scope.cancel()
                    return
        finally:
            self._unwritten -= _count_replies(queue)
            queue.close()

    @staticmethod
    async def _barrier(queue: trio.MemorySendChannel[rq.Reply | trio.Event]) -> None:
        """Return once every reply queued before now has been written."""
        done = trio.Event()
        await queue.send(done)
        await done.wait()

    async def _reply_all(self, stream: trio.SocketStream, request: ctl.Request,
                         conversation: rq.Conversation) -> bool:
        """Answer one request in place; False if an error reply ended the conversation."""
        async for reply in self._answer(request, conversation):
            await _send_reply(stream, reply)
            if not reply.get("ok"):
                return False
        return True

    async def _answer(self, request: ctl.Request, conversation: rq.Conversation
                      ) -> AsyncIterator[dict[str, Any]]:
        if isinstance(request, ctl.SendRequest):
            async for reply in self._send(request, conversation):
                yield reply
        elif isinstance(request, ctl.WaitRequest):
            yield await self._wait(request.upto, request.timeout, trio.current_time())
        elif isinstance(request, ctl.StatusRequest):
            yield await self._ask(rq.StatusRequest(rq.Reply()))
        elif isinstance(request, ctl.InboxRequest):
            async for reply in self._inbox(request):
                yield reply
        else:
            async for reply in self._events():
                yield reply

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

    async def _ask(self, item: rq.SendRequest | rq.WaitRequest | rq.StatusRequest
                   ) -> dict[str, Any]:
        await self._runner.submit.send(item)
        return await item.reply.wait()

    async def _send(self, request: ctl.SendRequest,
                    conversation: rq.Conversation) -> AsyncIterator[dict[str, Any]]:
        started = trio.current_time()
        self._unwritten += 1
        try:
            reply = await (await self._submit_send(request, conversation)).wait()
        finally:
            self._unwritten -= 1
        yield reply
        seqs = reply.get("seqs")
        if request.wait and reply.get("ok") and isinstance(seqs, list) and seqs:
            yield await self._wait(max(seqs), None, started)

    async def _wait(self, upto: int, limit: float | None, started: float) -> dict[str, Any]:
        # No wait is unbounded: a client that left is noticed by MAX_WAIT at the latest.
        limit = MAX_WAIT if limit is None else min(limit, MAX_WAIT)
        reply = await self._ask(rq.WaitRequest(upto, trio.current_time() + limit, rq.Reply()))
        if reply.get("ok"):
            reply = {**reply, "ack_ms": (trio.current_time() - started) * 1000}
        return reply

    async def _inbox(self, request: ctl.InboxRequest) -> AsyncIterator[dict[str, Any]]:
        epoch: bytes | None = None
        since = request.since
        while True:
            delivered = self._runner.delivered
            epoch, since, records = await self._store.call(_inbox_page, self._store.store,
                                                           epoch, since)
            for record in records:
                since = record.seq
                yield ctl.ok_reply(msg=_message(record.raw, record.seq))
            if records:
                continue
            if not request.follow:
                yield ctl.ok_reply(end=True)
                return
            await delivered.wait()


def _count_replies(queue: trio.MemoryReceiveChannel[rq.Reply | trio.Event]) -> int:
    """Replies still queued (never to be written): drained so quiesce can count them."""
    count = 0
    while True:
        try:
            item = queue.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return count
        count += isinstance(item, rq.Reply)


async def _send_reply(stream: trio.SocketStream, reply: dict[str, Any]) -> None:
    await stream.send_all(ctl.encode_reply(reply))


def _inbox_page(store: Store, epoch: bytes | None, since: int
                ) -> tuple[bytes | None, int, list[InRecord]]:
    """The next messages of the peer's latest epoch; a new epoch restarts at seq 0."""
    stream = store.peer_stream()
    if stream is None:
        return epoch, since, []
    if epoch is not None and stream.epoch != epoch:
        since = 0
    return stream.epoch, since, store.inbox_since(since)


def _message(raw: bytes, seq: int) -> dict[str, Any]:
    from hotline.proto.envelope import decode_envelope_untrusted

    env = decode_envelope_untrusted(raw, max_message=len(raw))
    return {"seq": seq, "ts": env.ts, "type": env.type, "body": env.body}


def _peer_uid(stream: trio.SocketStream) -> int | None:
    with contextlib.suppress(OSError, AttributeError):
        creds = stream.socket.getsockopt(
            stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, struct.calcsize("3i")
        )
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    return None
