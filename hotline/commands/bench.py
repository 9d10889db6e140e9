"""``hotline bench``: the floor, throughput, send→ack, FLASH latency, failover, WAN (bench.py)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the report (``--json``: one object)."""
    from hotline.bench import Options, main

    given = {name: getattr(args, name)
             for name in ("messages", "backlog", "trials", "delay_ms", "rate_mbit", "queue")}
    opts = Options.quick(**given) if args.quick else Options().with_given(**given)
    return main(opts, args.json)
