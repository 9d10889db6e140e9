"""``hotline check``: validate a link's config, keys and permissions without running it.

Runs the same loading the daemon does, then checks what would only fail later:
the private key loads and is private (mode 0600, else exit 77), the pinned peer key
is a valid Ed25519 point and is not our own key, the state directory exists and is
writable (or its nearest existing parent is, so the daemon can create it), and the
control socket's directory likewise. It changes nothing on disk.

Prints ``config OK: link NAME, our key SHA256:…, peer key SHA256:…`` and exits 0;
otherwise one line on stderr and the error's exit code: 78 config, 77 permission,
1 for any other failed check (DESIGN §6).
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
    from hotline.keyfile import load_identity

    identity = load_identity(config.key_path)
    _check_peer_key(config, identity.public.raw)
    _check_writable_dir(config.state_dir, "state_dir")
    _check_writable_dir(config.control.parent, "control socket directory")
    print(f"config OK: link {config.peer_name}, our key {identity.public.fingerprint()}, "
          f"peer key {config.peer_key.fingerprint()}")
    return 0


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
