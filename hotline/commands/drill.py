"""``hotline drill``: run a drill now and report its result (DESIGN §10).

The daemon stores and sends a drill (``application/vnd.hotline.drill``, lane
``priority``); the far daemon answers it at once, and with ``drill_operator = true``
the far operator must also acknowledge it (``hotline ack P7``) within
``drill_deadline``. This command prints the drill's id once it is stored, then waits
for its result (``status`` ``last_drill``, asked every ``POLL`` seconds) and prints
it: exit 0 if it succeeded, 1 if it failed (the daemon also logs ``drill_failed``), 75
if it has no result within ``--timeout`` (default: the config's ``drill_deadline`` plus
``SLACK`` seconds; the drill goes on and its result is logged). ``--json`` prints the
``last_drill`` object instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from hotline.commands._client import load, open_client, print_json
from hotline.control_client import ControlClient
from hotline.errors import CheckFailedError, NotAcknowledgedError
from hotline.proto.lanes import message_id
from hotline.proto.requests import DrillRequest, StatusRequest

POLL = 0.2
SLACK = 5.0


def run(args: argparse.Namespace) -> int:
    """Run one drill; print and return its result."""
    config = load(args)
    timeout = args.timeout if args.timeout is not None else config.drill_deadline + SLACK
    with open_client(config, timeout=30) as client:
        lane, seq = client.request(DrillRequest())["ids"][0]
        drill = message_id(lane, seq)
        if not args.json:
            print(f"drill {drill} sent", flush=True)
        result = _wait_result(client, drill, timeout)
    if args.json:
        print_json(result)
    else:
        sys.stdout.write(_describe(result) + "\n")
    if not result["ok"]:
        raise CheckFailedError(f"drill {drill} failed: {_failure(result)}")
    return 0


def _wait_result(client: ControlClient, drill: str, timeout: float) -> dict[str, Any]:
    give_up = time.monotonic() + timeout
    while True:
        last = client.request(StatusRequest())["status"].get("last_drill")
        if isinstance(last, dict) and last.get("id") == drill and last.get("ok") is not None:
            return last
        if time.monotonic() >= give_up:
            raise NotAcknowledgedError(
                f"drill {drill}: no result within {timeout:g}s (it goes on; the daemon "
                "logs its result)")
        time.sleep(POLL)


def _seconds(value: object) -> str:
    return f"{value:.3f} s" if isinstance(value, int | float) else "-"


def _describe(result: dict[str, Any]) -> str:
    verdict = "OK" if result["ok"] else "FAILED"
    return (f"drill {result['id']}: {verdict} (answered after "
            f"{_seconds(result.get('answered_s'))}, acknowledged by the far operator after "
            f"{_seconds(result.get('operator_s'))})")


def _failure(result: dict[str, Any]) -> str:
    if result.get("answered_s") is None:
        return "the far daemon did not answer in time"
    return "the far operator did not acknowledge it in time"
