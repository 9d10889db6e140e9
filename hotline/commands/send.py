"""``hotline send``: hand messages to the daemon, which stores them before answering.

A seq is printed only once the daemon has committed that message to its outbox, so
every printed seq survives a crash of either end. With ``--lines`` each stdin line is
its own message; up to ``_WINDOW`` requests are pipelined on one connection for speed
and each seq is printed the moment its commit is confirmed. If the daemon dies
mid-way the command exits 3: every printed seq went in; lines after the last printed
one did not (at most the in-flight window may have been stored without its answer
arriving — ``hotline status`` shows ``out_seq``).

``--wait`` then waits until the peer acknowledged the last message (exit 75 after
``--timeout`` seconds, default 30).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Iterator

from hotline.commands._client import load, open_client, print_json
from hotline.control_client import ControlClient
from hotline.errors import DaemonUnreachableError, NotAcknowledgedError, UsageError
from hotline.proto.control import SendRequest, WaitRequest

_WINDOW = 64
DEFAULT_TIMEOUT = 30.0


def run(args: argparse.Namespace) -> int:
    """Send TEXT, stdin, or each stdin line; print seqs (``--json``: objects)."""
    config = load(args)
    if args.lines and args.text is not None:
        raise UsageError("hotline send: --lines reads stdin; do not also give TEXT")
    bodies = _lines() if args.lines else iter([_single(args.text)])
    timeout = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT
    with open_client(config) as client:
        show = "none" if args.json and args.wait else ("json" if args.json else "text")
        sent = _send_all(client, bodies, args.type, show)
        if args.wait and sent:
            _wait(client, sent, timeout, args.json)
    return 0


def _single(text: str | None) -> bytes:
    if text is not None:
        return text.encode()
    return sys.stdin.buffer.read()


def _lines() -> Iterator[bytes]:
    for line in sys.stdin.buffer:
        yield line.rstrip(b"\n").rstrip(b"\r")


def _send_all(client: ControlClient, bodies: Iterator[bytes], media_type: str,
              show: str) -> list[tuple[int, float]]:
    """Pipeline send requests; print each seq when its commit is confirmed."""
    sent: list[tuple[int, float]] = []
    in_flight: deque[float] = deque()
    for body in bodies:
        try:
            client.send(SendRequest(type=media_type, bodies=(body,)))
        except DaemonUnreachableError:
            # The daemon closes the connection after refusing a request: the replies
            # already on their way say why (e.g. backlog full, exit 75), so read them.
            while in_flight:
                sent.append(_confirm(client, in_flight.popleft(), show))
            raise
        in_flight.append(time.monotonic())
        if len(in_flight) >= _WINDOW:
            sent.append(_confirm(client, in_flight.popleft(), show))
    while in_flight:
        sent.append(_confirm(client, in_flight.popleft(), show))
    return sent


def _confirm(client: ControlClient, started: float, show: str) -> tuple[int, float]:
    seq = int(client.read_reply()["seqs"][0])
    if show == "json":
        print_json({"seq": seq, "acked": False, "ack_ms": None})
    elif show == "text":
        sys.stdout.write(f"{seq}\n")
        sys.stdout.flush()
    return seq, started


def _wait(client: ControlClient, sent: list[tuple[int, float]], timeout: float,
          as_json: bool) -> None:
    """Wait for the cumulative ack of the last seq; print JSON objects once acked."""
    last = max(seq for seq, _ in sent)
    try:
        client.request(WaitRequest(upto=last, timeout=timeout))
    except NotAcknowledgedError as err:
        raise NotAcknowledgedError(
            f"seq {last} not acknowledged within {timeout:g}s ({err})") from err
    acked_at = time.monotonic()
    if as_json:
        for seq, started in sent:
            print_json({"seq": seq, "acked": True,
                        "ack_ms": round((acked_at - started) * 1000, 3)})
