"""Key files on disk: load and save Ed25519 identities with ssh's permission rules.

Owns the file side of DESIGN §1 (``proto/identity.py`` owns the formats):

* ``load_identity(path)`` opens the private key once, checks the mode of *that open
  file* (``fstat``, so no race between check and read) and refuses it if group or
  others have any access, as ssh does — but with a message that says how to fix it,
  and regardless of the file's owner (stricter than ssh, which checks only files the
  caller owns). Works on any path, e.g. ``$CREDENTIALS_DIRECTORY/identity``.
* ``save_identity(path, identity, comment)`` writes ``PATH`` (0600) and ``PATH.pub``
  (0644), like ``ssh-keygen``. Without ``force`` it never overwrites anything: the
  private file is created with ``O_CREAT | O_EXCL`` and mode 0600 from the start, so it
  is never readable by others, not even for an instant. With ``force`` each file is
  written to a fresh temporary name and renamed over the old one.
* ``load_public_key(spec, base_dir)`` reads a pinned key from config: either the
  ``ssh-ed25519 AAAA…`` line itself or the path of a ``.pub`` file.
* ``load_psk(path)`` reads the optional ``psk_file`` secret (DESIGN §11): 32 random
  bytes, raw or base64 (``openssl rand -base64 32``, ``wg genpsk``), with the private
  key's permission rule.

Every failure is a ``UserError`` subclass naming the file: ``KeyFileError`` (exit 78)
or ``KeyPermissionError`` (exit 77).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

from hotline.errors import KeyFileError, KeyPermissionError
from hotline.proto.identity import (
    MAX_PRIVATE_FILE,
    MAX_PUBLIC_LINE,
    Identity,
    PublicKey,
    parse_openssh_line,
)

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def public_path(path: str | os.PathLike[str]) -> Path:
    """``PATH.pub``, where ``save_identity`` writes the public line."""
    return Path(f"{os.fspath(path)}.pub")


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Read an unencrypted OpenSSH Ed25519 private key file.

    Raises:
        KeyFileError: the file is missing, unreadable, or not such a key.
        KeyPermissionError: group or others have any access to it (mode & 0o077).
    """
    return load_identity_with_comment(path)[0]


def load_identity_with_comment(path: str | os.PathLike[str]) -> tuple[Identity, str]:
    """``load_identity`` that also returns the key's comment."""
    text = _read_private(os.fspath(path))
    try:
        return Identity.from_openssh_private(text)
    except KeyFileError as err:
        raise KeyFileError(f"private key {os.fspath(path)}: {err}") from err


def _read_private(path: str, what: str = "private key", limit: int = MAX_PRIVATE_FILE) -> bytes:
    """Open once, check the mode of the open file, read at most the size limit."""
    fd, st = _open_regular(path, what)
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyPermissionError(
                f"{what} {path} is readable by group/others (mode {mode:04o}); "
                f"fix with: chmod 600 {path}")
        return _read(f, path, what, limit)


PSK_LEN = 32
_PSK_FILE_MAX = 128


def load_psk(path: str | os.PathLike[str]) -> bytes:
    """Read the ``psk_file`` secret: exactly 32 bytes, raw or as one base64 line.

    Raises:
        KeyFileError: missing, unreadable, or not 32 bytes (raw or base64), or all zeros.
        KeyPermissionError: group or others have any access to it (mode & 0o077).
    """
    name = os.fspath(path)
    data = _read_private(name, "psk_file", _PSK_FILE_MAX)
    secret = data if len(data) == PSK_LEN else _base64_secret(data)
    if secret is None:
        raise KeyFileError(f"psk_file {name}: want 32 random bytes, raw or base64 "
                           "(make one with: openssl rand -base64 32 > FILE)")
    if secret == bytes(PSK_LEN):
        raise KeyFileError(f"psk_file {name}: all zeros is no secret")
    return secret


def _base64_secret(data: bytes) -> bytes | None:
    try:
        secret = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return secret if len(secret) == PSK_LEN else None


def _open_regular(path: str, what: str) -> tuple[int, os.stat_result]:
    """Open read-only without blocking (a FIFO would) and insist on a regular file."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise KeyFileError(f"cannot read {what} {path}: {err.strerror}") from err
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise KeyFileError(f"{what} {path} is not a regular file")
    return fd, st


def _read(f: BinaryIO, path: str, what: str, limit: int) -> bytes:
    try:
        return f.read(limit + 1)
    except OSError as err:
        raise KeyFileError(f"cannot read {what} {path}: {err.strerror}") from err


def is_private_key_file(path: str | os.PathLike[str]) -> bool:
    """True if the file starts like a PEM private key (``-----BEGIN``), judging by its
    first bytes only; for commands that accept a private key or a ``.pub`` file.

    Raises:
        KeyFileError: missing, unreadable or not a regular file.
    """
    name = os.fspath(path)
    fd, _ = _open_regular(name, "key")
    with os.fdopen(fd, "rb") as f:
        return _read(f, name, "key", 64).lstrip().startswith(b"-----BEGIN")


def save_identity(
    path: str | os.PathLike[str], identity: Identity, comment: str, force: bool = False
) -> None:
    """Write ``PATH`` (private, 0600) and ``PATH.pub`` (public line + newline, 0644).

    Raises:
        KeyFileError: a file exists and ``force`` is false, or writing failed.
    """
    priv, pub = Path(os.fspath(path)), public_path(path)
    private_text = identity.to_openssh_private(comment, secrets.randbits(32))
    public_text = (identity.public.openssh_line(comment) + "\n").encode()
    if not force:
        for p in (priv, pub):
            if os.path.lexists(p):
                raise KeyFileError(f"{p} already exists; not overwriting it (use --force)")
    _write(priv, private_text, PRIVATE_MODE, force)
    _write(pub, public_text, PUBLIC_MODE, force)


def _write(path: Path, data: bytes, mode: int, replace: bool) -> None:
    """Create ``path`` with ``mode`` (never wider, whatever the umask) and fsync it."""
    target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp") if replace else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError as err:
        raise KeyFileError(f"{path} already exists; not overwriting it (use --force)") from err
    except OSError as err:
        raise KeyFileError(f"cannot create {path}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(target, path)
    except OSError as err:
        if replace:
            target.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write {path}: {err.strerror}") from err


def load_public_key(spec: str, base_dir: Path) -> PublicKey:
    """A pinned public key from config: a ``ssh-ed25519 …`` line, or a ``.pub`` path.

    A relative path is taken relative to ``base_dir`` (the config file's directory).

    Raises:
        KeyFileError: unreadable file, or not an ssh-ed25519 public key line.
    """
    if spec.lstrip().startswith("ssh-"):
        return PublicKey.from_openssh_line(spec)
    return load_public_key_file(base_dir / Path(spec).expanduser())[0]


def load_public_key_file(path: str | os.PathLike[str]) -> tuple[PublicKey, str]:
    """Read a ``.pub`` file: the first line that is not blank or a ``#`` comment.

    Returns (key, comment).

    Raises:
        KeyFileError: unreadable, a private key, or no valid ssh-ed25519 line.
    """
    name = os.fspath(path)
    fd, _ = _open_regular(name, "public key")
    with os.fdopen(fd, "rb") as f:
        data = _read(f, name, "public key", MAX_PUBLIC_LINE)
    if data.lstrip().startswith(b"-----BEGIN"):
        raise KeyFileError(f"{name} is a private key; give its .pub file (or the line)")
    try:
        lines = [s.strip() for s in data.decode("utf-8").splitlines()]
        line = next(s for s in lines if s and not s.startswith("#"))
        return parse_openssh_line(line)
    except (UnicodeDecodeError, StopIteration) as err:
        raise KeyFileError(f"public key {name}: no 'ssh-ed25519 AAAA…' line") from err
    except KeyFileError as err:
        raise KeyFileError(f"public key {name}: {err}") from err
