"""``hotline send``: hand messages to the daemon, which stores them before answering.

A message id is printed only once the daemon has committed that message to its
outbox, so every printed id survives a crash of either end. ``-p`` picks the
precedence lane (DESIGN §9); ids are ``Z17``, ``O4``, ``P9`` or a bare routine seq.

``--lines``: each stdin line is its own message. Whatever stdin already holds is sent
as one request (at most ``BATCH_LINES`` lines / ``BATCH_BYTES`` bytes), up to
``WINDOW`` requests are pipelined on one connection, and each line's id is printed the
moment its request's commit is confirmed. If the daemon dies mid-way the command exits
3: every printed id went in; lines after the last printed one did not, except at most
the requests in flight (``WINDOW`` times ``BATCH_LINES`` lines) whose answer was lost —
``hotline status`` shows ``out_seq``, and with ``--id`` simply re-run the same command:
line k carries id ``ID:k`` and a line already stored is not stored again (its first
id is printed). A refused request (backlog full, exit 75) refuses every later one.

``--wait`` then waits until the peer acknowledged the last message (stored it);
``--wait-operator`` until the peer's operator acknowledged every message sent
(``hotline ack``); exit 75 after ``--timeout`` seconds (default 30).
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
from hotline.proto.lanes import NAMES, message_id
from hotline.proto.requests import SendRequest, WaitRequest

WINDOW = 16
BATCH_LINES = 256
BATCH_BYTES = 256 * 1024
DEFAULT_TIMEOUT = 30.0
_READ = 65536


def run(args: argparse.Namespace) -> int:
    """Send TEXT, stdin, or each stdin line; print ids (``--json``: objects)."""
    config = load(args)
    if args.lines and args.text is not None:
        raise UsageError("hotline send: --lines reads stdin; do not also give TEXT")
    batches = _line_batches() if args.lines else iter([[_single(args.text)]])
    timeout = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT
    waiting = args.wait or args.wait_operator
    with open_client(config) as client:
        show = "none" if args.json and waiting else ("json" if args.json else "text")
        sender = _Sender(client, args, show)
        sent = sender.send_all(batches)
        if waiting and sent:
            _wait(client, args, sent, timeout)
    return 0


def _single(text: str | None) -> bytes:
    if text is not None:
        return text.encode()
    return sys.stdin.buffer.read()


def _line_batches() -> Iterator[list[bytes]]:
    """Stdin's lines, grouped by what one read returned (bounded per batch)."""
    stdin = sys.stdin.buffer
    read1 = getattr(stdin, "read1", stdin.read)  # a BufferedReader; else plain reads
    partial = b""
    while chunk := read1(_READ):
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        yield from _bounded([line.rstrip(b"\r") for line in lines])
    if partial:
        yield [partial.rstrip(b"\r")]


def _bounded(lines: list[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for line in lines:
        if batch and (len(batch) >= BATCH_LINES or size + len(line) > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += len(line)
    if batch:
        yield batch


class _Sender:
    """Pipelines send requests and prints each id when its commit is confirmed."""

    def __init__(self, client: ControlClient, args: argparse.Namespace, show: str) -> None:
        self._client = client
        self._lane: int = args.precedence
        self._type: str = args.type
        self._id: str | None = args.id
        self._lines: bool = args.lines
        self._show = show
        self._line = 0  # lines handed out so far (for ID:k)
        self.sent: list[tuple[int, int, float]] = []  # (lane, seq, started)

    def send_all(self, batches: Iterator[list[bytes]]) -> list[tuple[int, int, float]]:
        in_flight: deque[float] = deque()
        for bodies in batches:
            try:
                self._client.send(self._request(bodies))
            except DaemonUnreachableError:
                # The daemon closes the connection after refusing a request: the replies
                # already on their way say why (e.g. backlog full, exit 75), so read them.
                while in_flight:
                    self._confirm(in_flight.popleft())
                raise
            in_flight.append(time.monotonic())
            if len(in_flight) >= WINDOW:
                self._confirm(in_flight.popleft())
        while in_flight:
            self._confirm(in_flight.popleft())
        return self.sent

    def _request(self, bodies: list[bytes]) -> SendRequest:
        ids: tuple[str, ...] = ()
        if self._id is not None and not self._lines:
            ids = (self._id,)
        elif self._id is not None:
            ids = tuple(f"{self._id}:{k}" for k in range(self._line + 1,
                                                         self._line + 1 + len(bodies)))
        self._line += len(bodies)
        return SendRequest(self._type, tuple(bodies), self._lane, ids)

    def _confirm(self, started: float) -> None:
        for lane, seq in self._client.read_reply()["ids"]:
            self.sent.append((lane, seq, started))
            if self._show == "json":
                print_json({"id": message_id(lane, seq), "precedence": NAMES[lane],
                            "seq": seq, "acked": False, "ack_ms": None})
            elif self._show == "text":
                sys.stdout.write(f"{message_id(lane, seq)}\n")
        sys.stdout.flush()


def _wait(client: ControlClient, args: argparse.Namespace,
          sent: list[tuple[int, int, float]], timeout: float) -> None:
    """Wait for the ack (peer, or its operator) of what was sent; print JSON once acked."""
    lane = args.precedence
    seqs = [seq for id_lane, seq, _ in sent if id_lane == lane]
    last = message_id(lane, max(seqs))
    who = "the peer's operator" if args.wait_operator else "the peer"
    try:
        client.request(WaitRequest(lane, max(seqs), timeout, args.wait_operator, min(seqs)))
    except NotAcknowledgedError as err:
        raise NotAcknowledgedError(
            f"{last} not acknowledged by {who} within {timeout:g}s ({err})") from err
    acked_at = time.monotonic()
    if args.json:
        for id_lane, seq, started in sent:
            print_json({"id": message_id(id_lane, seq), "precedence": NAMES[id_lane],
                        "seq": seq, "acked": True,
                        "ack_ms": round((acked_at - started) * 1000, 3)})
