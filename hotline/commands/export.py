"""``hotline export ID DIR``: one stored message as files stock OpenSSH can verify.

Writes three files (mode 0600) into DIR (created 0700 if missing):

* ``msg`` — the exact envelope bytes as signed, sent and stored (msgpack, DESIGN §4);
* ``msg.sig`` — the armored SSHSIG signature, byte for byte what ``ssh-keygen -Y sign
  -n hotline`` would have written for that key and message;
* ``allowed_signers`` — one line ``NAME namespaces="hotline" ssh-ed25519 AAAA…`` for
  the signer, so the printed command works as is:
  ``ssh-keygen -Y verify -f DIR/allowed_signers -I NAME -n hotline -s DIR/msg.sig < DIR/msg``.

ID is a message id (``Z17``, ``O4``, ``P9``, or a bare routine seq, DESIGN §9).
``--direction in`` (default) exports a message received from the peer (latest peer
epoch), signed by the pinned peer key and named by ``peer.name``; ``out`` exports one
we sent (our current epoch), signed by our key and named by its comment (``self`` if
it has none usable). An operator acknowledgement is a message like any other, so
``hotline export --direction out Z3`` exports the ack our operator signed.
The signature is checked before anything is written.

**Never through a link, never where others can swap the files.** DIR is opened with
``O_DIRECTORY | O_NOFOLLOW`` and each file created relative to it with ``O_CREAT |
O_EXCL | O_NOFOLLOW``, so no symlink is ever followed and no existing file is ever
written into. Refused, before anything is written, with one line on stderr and **exit
77** (``AccessDeniedError``): DIR itself a symbolic link (give its real path); DIR not
ours or root's; DIR writable by group or others without the sticky bit (someone else
could replace the files after us); a ``msg``, ``msg.sig`` or ``allowed_signers``
already in DIR that is a symlink or anything but our own regular file. Our own
regular files there (an earlier export) are unlinked and created afresh. Any other
failure to create the files (no space, read-only, no permission) is also exit 77; a
file already created by this export is removed again.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hotline.errors import AccessDeniedError, CheckFailedError, RemoteProtocolError, UsageError
from hotline.proto import envelope as ev
from hotline.proto.identity import PublicKey
from hotline.proto.lanes import message_id
from hotline.store import Store

_PRINCIPAL = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_MODE = 0o600
DIR_MODE = 0o700


@dataclass(frozen=True)
class Signer:
    """Who signed the exported message: the principal name and key for allowed_signers."""

    name: str
    public: PublicKey


def run(args: argparse.Namespace) -> int:
    """Entry point of ``hotline export -c FILE ID DIR [--direction in|out]``."""
    from hotline.config import find_config, load_config
    from hotline.keyfile import load_identity_with_comment

    config = load_config(find_config(args.config, args.link))
    identity, comment = load_identity_with_comment(config.key_path)
    outgoing = args.direction == "out"
    signer = (Signer(comment if _PRINCIPAL.fullmatch(comment) else "self", identity.public)
              if outgoing else Signer(config.peer_name, config.peer_key))
    store = Store.open(config.state_dir, identity.public.raw, config.peer_key.raw,
                       create=False)
    lane, seq = args.id
    try:
        directory = Path(args.dir)
        export_message(store, lane, seq, outgoing, directory, signer)
    finally:
        store.close()
    print(f"wrote {directory / 'msg'}, msg.sig and allowed_signers "
          f"({'sent' if outgoing else 'received'} {message_id(lane, seq)}, "
          f"signed by {signer.name})")
    print("verify with: " + verify_command(directory, signer.name))
    return 0


def verify_command(directory: Path, name: str) -> str:
    """The stock OpenSSH command that checks an export in ``directory``."""
    q = shlex.quote
    return (f"ssh-keygen -Y verify -f {q(str(directory / 'allowed_signers'))} -I {q(name)} "
            f"-n {ev.NAMESPACE_ENVELOPE} -s {q(str(directory / 'msg.sig'))} "
            f"< {q(str(directory / 'msg'))}")


def export_message(
    store: Store, lane: int, seq: int, outgoing: bool, directory: Path, signer: Signer,
) -> None:
    """Write ``msg``, ``msg.sig`` and ``allowed_signers`` for one stored message.

    Raises:
        UsageError: no such message in the store.
        CheckFailedError: its stored signature does not verify (nothing is written).
        AccessDeniedError: DIR is unsafe or cannot be written (``write_files``).
    """
    record = store.get_outgoing(lane, seq) if outgoing else store.get_incoming(lane, seq)
    name = message_id(lane, seq)
    if record is None:
        what = "sent message" if outgoing else "received message (latest peer epoch)"
        raise UsageError(f"no {what} {name} in {store.path}")
    try:
        ev.verify_envelope(signer.public, record.raw, record.sig)
    except RemoteProtocolError as err:
        raise CheckFailedError(
            f"{name}: the stored signature does not verify; not exporting it") from err
    armored = ev.armor_signature(signer.public, ev.NAMESPACE_ENVELOPE, record.sig)
    allowed = (f'{signer.name} namespaces="{ev.NAMESPACE_ENVELOPE}" '
               f"{signer.public.openssh_line()}\n")
    write_files(directory, {"msg": record.raw, "msg.sig": armored.encode(),
                            "allowed_signers": allowed.encode()})


def write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    """Create each named file in ``directory`` (made 0700 if missing), never following a
    symlink and never writing into an existing file (see the module header).

    Args:
        directory: where to write; it must not be a symlink.
        files: file name (no slash) to its exact bytes; each is created mode 0600.

    Raises:
        AccessDeniedError: ``directory`` or a name in it is unsafe, or a file cannot be
            created; no file of ``files`` is left behind then.
    """
    dir_fd = _open_own_directory(directory)
    created: list[str] = []
    try:
        for name in files:
            _clear_earlier_export(dir_fd, directory, name)
        for name, data in files.items():
            _create(dir_fd, directory, name, data)
            created.append(name)
    except AccessDeniedError:
        for name in created:
            os.unlink(name, dir_fd=dir_fd)
        raise
    finally:
        os.close(dir_fd)


def _open_own_directory(directory: Path) -> int:
    """An fd of ``directory``, created if missing, checked to be safe to create files in."""
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(directory, _DIR_FLAGS)
    except OSError as err:
        raise AccessDeniedError(_why_not_a_directory(directory, err)) from err
    info = os.fstat(fd)
    problem = None
    if info.st_uid not in (os.geteuid(), 0):
        problem = f"it belongs to another user (uid {info.st_uid})"
    elif info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        problem = "group or others may write to it and it has no sticky bit"
    if problem is not None:
        os.close(fd)
        raise AccessDeniedError(f"refusing to export into {directory}: {problem}")
    return fd


def _why_not_a_directory(directory: Path, err: OSError) -> str:
    if directory.is_symlink():
        return (f"refusing to export into {directory}: it is a symbolic link "
                "(give the real directory)")
    return f"cannot use {directory} as the export directory: {err.strerror}"


def _clear_earlier_export(dir_fd: int, directory: Path, name: str) -> None:
    """Unlink ``name`` if it is our own regular file; refuse a symlink or anything else."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise AccessDeniedError(
            f"refusing to export: {directory / name} is a symbolic link (not following it)")
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        raise AccessDeniedError(
            f"refusing to export: {directory / name} exists and is not our own regular file")
    os.unlink(name, dir_fd=dir_fd)


def _create(dir_fd: int, directory: Path, name: str, data: bytes) -> None:
    """Create ``name`` (it must not exist, whatever it would be) and write ``data``."""
    try:
        fd = os.open(name, _FILE_FLAGS, FILE_MODE, dir_fd=dir_fd)
    except FileExistsError as err:
        raise AccessDeniedError(
            f"refusing to export: {directory / name} appeared while writing") from err
    except OSError as err:
        raise AccessDeniedError(f"cannot create {directory / name}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as err:
        os.unlink(name, dir_fd=dir_fd)
        raise AccessDeniedError(f"cannot write {directory / name}: {err.strerror}") from err
