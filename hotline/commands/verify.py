"""``hotline verify``: re-check every stored signature, chain link and receipt
(``hotline/verify.py``) on one consistent snapshot of the store (the daemon may keep
running).

Prints ``verified N sent, M received, R receipts: OK`` (plus ``, G known gaps``). On
failure: each problem as one line on stdout (at most ``MAX_SHOWN``, then ``... and K
more``), escaped for the terminal, then one summary line on stderr, exit 1
(``CheckFailedError``).
"""

from __future__ import annotations

import argparse

from hotline.errors import CheckFailedError
from hotline.store import Store
from hotline.verify import verify_store


def run(args: argparse.Namespace) -> int:
    """Entry point of ``hotline verify -c FILE | -i LINK``."""
    from hotline.config import find_config, load_config
    from hotline.keyfile import load_identity

    config = load_config(find_config(args.config, args.link))
    our_public = load_identity(config.key_path).public
    store = Store.open(config.state_dir, our_public.raw, config.peer_key.raw, create=False)
    try:
        report = verify_store(store, our_public, config.peer_key)
    finally:
        store.close()
    if not report.ok:
        print("\n".join(report.problem_lines()), flush=True)
        raise CheckFailedError(report.summary())
    print(report.summary())
    return 0
