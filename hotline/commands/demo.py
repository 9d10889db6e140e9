"""``hotline demo``: two daemons on loopback, messages, failover, logs (see demo.py)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """Run the narrated demo; exit 0 when every check in it held."""
    from hotline.demo import main

    return main(keep=args.keep)
