"""``hotline pubkey PATH``: print the ``.pub`` line and fingerprint of a key.

``PATH`` may be a private key (an OpenSSH ``-----BEGIN`` file: its permissions are
checked as the daemon checks them, and the comment stored inside it is used) or a
``.pub`` file. Output, two lines: the ``ssh-ed25519 AAAA… comment`` line to pin in the
peer's config, then the fingerprint as ``ssh-keygen -lf`` prints it
(``256 SHA256:… comment (ED25519)``).
"""

from __future__ import annotations

import argparse
import os


def run(args: argparse.Namespace) -> int:
    """Print the public line and the fingerprint line of the key at ``args.path``."""
    from hotline.commands.keygen import fingerprint_line
    from hotline.keyfile import (
        is_private_key_file,
        load_identity_with_comment,
        load_public_key_file,
    )

    path = os.fspath(args.path)
    if is_private_key_file(path):
        identity, comment = load_identity_with_comment(path)
        public = identity.public
    else:
        public, comment = load_public_key_file(path)
    print(public.openssh_line(comment))
    print(fingerprint_line(public.fingerprint(), comment))
    return 0
