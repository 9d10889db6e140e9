"""The blocking control-socket client used by the CLI's client commands.

``send``, ``status``, ``inbox`` and ``wait`` talk to the running daemon over its Unix
control socket (schema in ``hotline.proto.control``). They must start fast, so this
module uses only the stdlib ``socket`` and msgpack: no trio, no cryptography.

* ``connect(path, link=None, timeout=None) -> ControlClient`` maps the OS's answers
  to operator errors: no socket or nobody listening → ``DaemonUnreachableError``
  (exit 3, naming the path and the service to start); not allowed to connect →
  ``AccessDeniedError`` (exit 77: the socket is mode 0660, join its group).
* ``ControlClient.request(req)`` sends one request and returns its first reply;
  ``replies()`` iterates over the following ones (``inbox --follow``, ``events``, the
  second reply of ``send`` with ``wait``). An ``{"ok": false, "kind": K}`` reply
  raises the ``UserError`` subclass named K (``errors.py``), whose exit code it is.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from hotline.errors import (
    AccessDeniedError,
    DaemonUnreachableError,
    RemoteProtocolError,
    UserError,
    user_error_class,
)
from hotline.proto.control import FrameBuffer, decode_reply_untrusted, encode_request
from hotline.proto.requests import Request

_READ_SIZE = 65536
_UNREACHABLE = {errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK, errno.ENOTDIR}


def connect(path: str | Path, link: str | None = None,
            timeout: float | None = None) -> ControlClient:
    """Connect to the daemon's control socket at ``path``.

    Args:
        path: the control socket (``Config.control``).
        link: the link's name, only to make the error message name the service.
        timeout: socket timeout in seconds for every later read and write (None: block).

    Raises:
        DaemonUnreachableError: no socket at ``path``, or no daemon listening on it.
        AccessDeniedError: the socket's mode or group does not let us connect.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except PermissionError as err:
        sock.close()
        raise AccessDeniedError(
            f"not allowed to connect to the daemon at {path}: {err.strerror} "
            "(join the socket's group, e.g. the hotline group)") from err
    except OSError as err:
        sock.close()
        raise _unreachable(path, link, err) from err
    return ControlClient(sock, str(path))


def _unreachable(path: str | Path, link: str | None, err: OSError) -> DaemonUnreachableError:
    service = f"hotline@{link}" if link else "hotline@NAME"
    why = "" if err.errno in _UNREACHABLE else f" ({err.strerror or err})"
    return DaemonUnreachableError(
        f"daemon not reachable at {path}{why}: is `hotline run` / {service} running?")


class ControlClient:
    """One connection to the daemon; blocking; use as a context manager."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self._sock = sock
        self._path = path
        self._frames = FrameBuffer()
        self._ready: list[bytes] = []

    def request(self, req: Request) -> dict[str, Any]:
        """Send ``req`` and return its first reply (raising if it is an error reply)."""
        self.send(req)
        return self.read_reply()

    def send(self, req: Request) -> None:
        """Send one request without waiting for a reply."""
        try:
            self._sock.sendall(encode_request(req))
        except OSError as err:
            raise self._lost(err) from err

    def read_reply(self) -> dict[str, Any]:
        """Block for the next reply.

        Raises:
            DaemonUnreachableError: the daemon closed the connection or sent garbage.
            UserError: the daemon answered ``ok: false``; ``exit_code`` is its code.
        """
        while not self._ready:
            self._ready.extend(self._feed(self._recv()))
        reply = self._decode(self._ready.pop(0))
        if not reply["ok"]:
            raise _error_from_reply(reply)
        return reply

    def replies(self) -> Iterator[dict[str, Any]]:
        """Replies as they come, until the daemon closes the connection cleanly."""
        while True:
            if not self._ready:
                data = self._recv(eof_ok=True)
                if not data:
                    return
                self._ready.extend(self._feed(data))
                continue
            yield self.read_reply()

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _recv(self, eof_ok: bool = False) -> bytes:
        try:
            data = self._sock.recv(_READ_SIZE)
        except TimeoutError as err:
            raise DaemonUnreachableError(
                f"daemon at {self._path} did not answer in time") from err
        except OSError as err:
            raise self._lost(err) from err
        if not data and not (eof_ok and self._frames.pending == 0):
            raise DaemonUnreachableError(f"daemon at {self._path} closed the connection")
        return data

    def _feed(self, data: bytes) -> list[bytes]:
        try:
            return self._frames.feed_untrusted(data)
        except RemoteProtocolError as err:
            raise DaemonUnreachableError(f"bad reply from daemon at {self._path}: {err}") from err

    def _decode(self, payload: bytes) -> dict[str, Any]:
        try:
            return decode_reply_untrusted(payload)
        except RemoteProtocolError as err:
            raise DaemonUnreachableError(f"bad reply from daemon at {self._path}: {err}") from err

    def _lost(self, err: OSError) -> DaemonUnreachableError:
        return DaemonUnreachableError(
            f"lost the connection to the daemon at {self._path}: {err.strerror or err}")


def _error_from_reply(reply: dict[str, Any]) -> UserError:
    """The ``UserError`` named by ``{"ok": false, "error": E, "kind": K}`` (its class
    fixes the exit code)."""
    return user_error_class(reply["kind"])(reply["error"])
