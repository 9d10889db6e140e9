"""``hotline bench``: measure handshake, RTT, latency, acked msgs/s, failover (bench.py)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the report (``--json``: one object)."""
    from hotline.bench import main

    return main(args.messages, args.json)
