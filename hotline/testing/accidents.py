"""Accidents done to a real daemon's files, the way operators cause them (DESIGN §4b tests).

The integration tests of issue 9 break real daemons' stores as an operator or a
hypervisor would, and read back what the daemons wrote:

* ``snapshot_store`` copies a daemon's SQLite store WHILE it runs, with SQLite's online
  backup API: one consistent state of the file, which is what a VM snapshot or a
  nightly backup holds. ``restore_store`` puts such a copy back (daemon stopped): the
  store goes back in time. ``wipe_store`` deletes it (the next start makes a new epoch).
* ``stored_inbox`` reads the messages a store holds straight from its file (a stopped
  daemon's, e.g. the store about to be wiped).
* ``small_filesystem`` mounts a tmpfs of a given size on a directory (root only) and
  ``fill_filesystem`` fills what is left of it: a full disk under a running daemon.
* ``rss_mib`` reads a process's resident memory (``VmRSS`` in ``/proc/PID/status``).
* ``log_events`` parses a daemon's ``--log-format json`` log into dicts.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotline.proto.envelope import decode_envelope_untrusted
from hotline.store import DB_NAME
from hotline.testing.loopback import Node

_DB_FILES = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm")
_FILL_CHUNK = 64 * 1024


def snapshot_store(state_dir: Path, dest: Path) -> Path:
    """Copy the store in ``state_dir`` to the file ``dest`` while its daemon may run.

    SQLite's backup API copies one committed state of the database (WAL included),
    as a VM snapshot would hold it. Returns ``dest``.
    """
    source = sqlite3.connect(state_dir / DB_NAME)
    target = sqlite3.connect(dest)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return dest


def restore_store(state_dir: Path, snapshot: Path) -> None:
    """Put ``snapshot`` back as the store of ``state_dir`` (its daemon must be stopped)."""
    wipe_store(state_dir)
    (state_dir / DB_NAME).write_bytes(snapshot.read_bytes())
    os.chmod(state_dir / DB_NAME, 0o600)


def wipe_store(state_dir: Path) -> None:
    """Delete the store of ``state_dir`` (its daemon must be stopped)."""
    for name in _DB_FILES:
        (state_dir / name).unlink(missing_ok=True)


@dataclass(frozen=True)
class StoredMessage:
    """One message of a store's inbox, as the file holds it."""

    epoch: bytes
    lane: int
    seq: int
    body: bytes


def stored_inbox(state_dir: Path) -> list[StoredMessage]:
    """The messages the store in ``state_dir`` holds from the peer, in inbox order."""
    db = sqlite3.connect(f"file:{state_dir / DB_NAME}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT epoch, lane, seq, raw FROM incoming ORDER BY n").fetchall()
    finally:
        db.close()
    return [StoredMessage(bytes(epoch), lane, seq,
                          decode_envelope_untrusted(raw, len(raw)).body)
            for epoch, lane, seq, raw in rows]


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``mount -o size=``, e.g. "1m") on ``path`` (root only).

    Raises:
        PermissionError: not root, or the mount was refused (e.g. in a container).
    """
    if os.geteuid() != 0:
        raise PermissionError("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True, text=True)
    if mounted.returncode != 0:
        raise PermissionError(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill_filesystem(directory: Path) -> Path:
    """Write a file in ``directory`` until the filesystem is full; returns the file
    (delete it to give the space back)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    chunk = _FILL_CHUNK
    try:
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError:
                chunk //= 2  # the last blocks: smaller writes until not one byte fits
    finally:
        os.close(fd)
    return filler


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no VmRSS for process {pid}")


def log_events(node: Node, kind: str | None = None) -> list[dict[str, Any]]:
    """The events of a daemon run with ``--log-format json`` (optionally one kind)."""
    if not node.log_path.exists():
        return []
    events = []
    for line in node.log_path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # not an event (e.g. an interpreter's message)
        if isinstance(event, dict) and (kind is None or event.get("event") == kind):
            events.append(event)
    return events
