"""``hotline check``: validate a link's config, keys and permissions without running it.

Runs the same loading the daemon does, then checks what would only fail later:
the private key loads and is private (mode 0600, else exit 77), the pinned peer key
is a valid Ed25519 point and is not our own key, the state directory exists and is
writable (or its nearest existing parent is, so the daemon can create it), and the
control socket's directory likewise; that ML-KEM-768 runs here and the ``psk_file``
(if any) is a private 32-byte secret (DESIGN §11). It changes nothing on disk.

Prints ``config OK: link NAME, our key SHA256:…, peer key SHA256:…`` and a
``post-quantum:`` line (the ML-KEM backend, the psk_file, how many ratchet secrets the
store holds) and exits 0; otherwise one line on stderr and the error's exit code:
78 config (ML-KEM unavailable included), 77 permission, 1 for any other failed check
(DESIGN §6).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hotline.config import Config, find_config, load_config
from hotline.errors import AccessDeniedError, CheckFailedError


def run(args: argparse.Namespace) -> int:
    """Entry point of ``hotline check -c FILE | -i LINK``."""
    config = load_config(find_config(args.config, args.link))
    from hotline.keyfile import load_identity, load_psk
    from hotline.proto.pq import require_mlkem

    identity = load_identity(config.key_path)
    _check_peer_key(config, identity.public.raw)
    if config.psk_file is not None:
        load_psk(config.psk_file)
    _check_writable_dir(config.state_dir, "state_dir")
    _check_writable_dir(config.control.parent, "control socket directory")
    require_mlkem()
    print(f"config OK: link {config.peer_name}, our key {identity.public.fingerprint()}, "
          f"peer key {config.peer_key.fingerprint()}")
    print(_pq_line(config))
    return 0


def _pq_line(config: Config) -> str:
    """The post-quantum state: backend, psk_file, ratchet secrets in the store."""
    from hotline.proto.pq import backend_description
    from hotline.store import peek_ratchet

    if config.psk_file is not None:
        psk = f"psk_file {config.psk_file}: every session is pq"
    else:
        psk = "no psk_file: sessions are pq from the first rekey"
    held = peek_ratchet(config.state_dir)
    ratchet = {None: "no store yet", 0: "no ratchet secret stored yet"}.get(
        held, f"{held} ratchet secret{'s' if held != 1 else ''} stored")
    return f"post-quantum: ML-KEM-768 ({backend_description()}); {psk}; {ratchet}"


def _check_peer_key(config: Config, our_raw: bytes) -> None:
    if config.peer_key.raw == our_raw:
        raise CheckFailedError(
            f"{config.path}: peer.key is our own key ({config.key_path}); "
            "pin the other end's public key")
    if not config.peer_key.is_valid_point():
        raise CheckFailedError(f"{config.path}: peer.key is not a valid Ed25519 key")


def _check_writable_dir(directory: Path, what: str) -> None:
    """``directory`` is a writable directory, or could be created under one."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CheckFailedError(f"{what} {directory}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AccessDeniedError(f"{what} {directory}: {existing} is not writable by us "
                                f"(uid {os.geteuid()})")
