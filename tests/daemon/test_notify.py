"""sd_notify over real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from hotline.daemon.notify import Notifier


@pytest.fixture
def listener(unix_dgram: tuple[socket.socket, str]) -> tuple[socket.socket, str]:
    return unix_dgram


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready()
    assert _recv(sock) == "READY=1"
    assert n.ready("listening on 2 paths")
    assert _recv(sock) == "READY=1\nSTATUS=listening on 2 paths"
    assert n.status("link up\nvia tcp")
    assert _recv(sock) == "STATUS=link up via tcp"
    assert n.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    assert n.stopping()
    assert _recv(sock) == "STOPPING=1"
    n.close()


def test_abstract_socket() -> None:
    name = f"hotline-test-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.watchdog()
        assert _recv(sock) == "WATCHDOG=1"
        n.close()
    finally:
        sock.close()


def test_no_socket_is_a_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready()
    assert n.watchdog_interval() is None


def test_unsupported_address_is_a_noop() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_send_failure_never_raises(tmp_path: Path) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.enabled
    assert not n.ready()
    assert not n.watchdog()
    n.close()


def test_watchdog_interval_is_half() -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": "10000000"}).watchdog_interval() == 5.0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({}, None),
    ],
)
def test_watchdog_env(env: dict[str, str], expected: float | None) -> None:
    assert Notifier.from_env(env).watchdog_interval() == expected
