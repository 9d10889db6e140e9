"""``hotline keygen PATH [--comment C] [--force]``: make an Ed25519 identity.

Writes ``PATH`` (OpenSSH private key, mode 0600) and ``PATH.pub`` (mode 0644), the
same files ``ssh-keygen -t ed25519 -N '' -f PATH`` writes, then prints where they are,
the ``.pub`` line to pin in the peer's config, and the fingerprint.

The default comment is the key file's name (``hotline keygen keys/washington`` gives
``washington``), not ssh-keygen's ``user@host``: a hotline key names one end of a
line, and the daemon runs as a service user on a host that is rarely the operator's.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hotline.errors import UsageError


def run(args: argparse.Namespace) -> int:
    """Generate and save a key pair; print the .pub path, line and fingerprint."""
    from hotline.keyfile import PRIVATE_MODE, public_path, save_identity
    from hotline.proto.identity import Identity

    path = os.fspath(args.path)
    comment: str = Path(path).name if args.comment is None else args.comment
    if "\n" in comment or "\r" in comment:
        raise UsageError("hotline keygen: --comment cannot contain a line break")
    identity = Identity.generate()
    save_identity(path, identity, comment, force=bool(args.force))
    print(f"wrote private key {path} (mode {PRIVATE_MODE:04o}) and public key "
          f"{public_path(path)}")
    print(identity.public.openssh_line(comment))
    print(fingerprint_line(identity.public.fingerprint(), comment))
    return 0


def fingerprint_line(fingerprint: str, comment: str) -> str:
    """``256 SHA256:… comment (ED25519)``, exactly as ``ssh-keygen -lf`` prints it."""
    return f"256 {fingerprint} {comment or 'no comment'} (ED25519)"
