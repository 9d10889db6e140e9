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

_READ_SIZE = 65536
_MAX_CLIENTS = 64
_EVENT_BACKLOG = 256


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

    def __init__(self, runner: rq.Runner, store: StoreWorker, logger: Logger,
                 log_uid: Any = None) -> None:
        self._runner = runner
        self._store = store
        self._logger = logger
        self._log_uid = log_uid
        self.clients = 0

    async def serve(self, listener: trio.SocketListener) -> None:
        """Accept clients until cancelled."""
        await trio.serve_listeners(self._handle, [listener])

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.clients += 1
        try:
            if self._log_uid is not None:
                self._log_uid(_peer_uid(stream))
            async with stream:
                await self._serve_client(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.clients -= 1

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        buffer = ctl.FrameBuffer()
        while True:
            data = await stream.receive_some(_READ_SIZE)
            if not data:
                return
            try:
                payloads = buffer.feed_untrusted(data)
                for payload in payloads:
                    request = ctl.decode_request_untrusted(payload)
                    async for reply in self._answer(request):
                        await stream.send_all(ctl.encode_reply(reply))
            except RemoteProtocolError as err:
                await stream.send_all(ctl.encode_reply(ctl.error_reply(f"bad request: {err}", 2)))
                return

    async def _answer(self, request: ctl.Request) -> AsyncIterator[dict[str, Any]]:
        if isinstance(request, ctl.SendRequest):
            async for reply in self._send(request):
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

    async def _send(self, request: ctl.SendRequest) -> AsyncIterator[dict[str, Any]]:
        started = trio.current_time()
        reply = await self._ask(rq.SendRequest(request.bodies, request.type, rq.Reply()))
        yield reply
        seqs = reply.get("seqs")
        if request.wait and reply.get("ok") and isinstance(seqs, list) and seqs:
            yield await self._wait(max(seqs), None, started)

    async def _wait(self, upto: int, limit: float | None, started: float) -> dict[str, Any]:
        deadline = trio.current_time() + limit if limit is not None else float("inf")
        reply = await self._ask(rq.WaitRequest(upto, deadline, rq.Reply()))
        if reply.get("ok"):
            reply = {**reply, "ack_ms": (trio.current_time() - started) * 1000}
        return reply

    async def _inbox(self, request: ctl.InboxRequest) -> AsyncIterator[dict[str, Any]]:
        since = request.since
        while True:
            delivered = self._runner.delivered
            records = await self._store.call(self._store.store.inbox_since, since)
            for record in records:
                since = record.seq
                yield ctl.ok_reply(msg=_message(record.raw, record.seq))
            if records:
                continue
            if not request.follow:
                yield ctl.ok_reply(end=True)
                return
            await delivered.wait()


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
