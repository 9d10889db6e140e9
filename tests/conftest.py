"""Shared pytest options and fixtures.

``--run-slow`` enables tests marked ``slow`` (long soaks, fuzz runs); the default
suite stays under five minutes on two cores.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow test: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def unix_dgram(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket (5 s timeout) and its path: a stand-in for the
    socket of journald or of systemd's NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "dgram.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


@pytest.fixture
def no_dac_override() -> list[str]:
    """A command prefix that runs a subprocess *without* the right to bypass file modes.

    As a normal user that is nothing; as root (CI) it is ``setpriv`` dropping
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so permission checks apply to root too.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        if os.environ.get("CI"):
            pytest.fail("setpriv missing in CI: .ci/run should have installed util-linux")
        pytest.skip("running as root without setpriv (util-linux) to drop DAC override")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, "--bounding-set", caps, "--inh-caps", caps]


@pytest.fixture
def ssh_keygen() -> str:
    """Path of the stock OpenSSH ``ssh-keygen``; skips the test where it is missing."""
    path = shutil.which("ssh-keygen")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("ssh-keygen missing in CI: .ci/run should have installed openssh-client")
        pytest.skip("ssh-keygen is not installed (apt-get install openssh-client)")
    return path
