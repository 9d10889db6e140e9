"""``hotline inbox``: print received messages, optionally following new ones.

Three output forms; only ``--raw`` writes the peer's bytes as they are:

* **text** (default): one header ``#ID PRECEDENCE YYYY-MM-DD HH:MM:SSZ [TYPE]`` (ID as
  ``Z17``/``O4``/``P9``/bare routine seq; PRECEDENCE only when not routine; TYPE only
  when it is not ``text/plain``) followed by the body's first line; each further body line
  on its own line after ``  | ``, and on a terminal, a line too long for it cut and
  continued after ``  + ``. Control and format characters and invalid UTF-8 are shown
  escaped (``\\x1b``, ``\\u202e``, a backslash as ``\\\\``): hotline/textsafe.py.
* ``--json``: one object per line, ``{id, precedence, seq, ts, type, body}``
  (``body_b64`` when the body is not UTF-8), ``epoch`` (the peer's, hex) on the first
  message and whenever it changes; JSON escapes every control character.
In text output, a line ``-- peer epoch HEX --`` comes first and whenever the peer's
epoch changes (its store was reset: seqs start again), so nothing of an older epoch is
hidden or confused with the new one (DESIGN §4b: one cursor across epochs).

* ``--raw``: the exact bytes, for scripts. Per message, a header line
  ``ID TS_NS LENGTH TYPE`` (ASCII, single spaces, the media type; ended by
  ``\n``), then exactly LENGTH body bytes, then one ``\n``. A reader takes the header
  line, then LENGTH bytes, then skips one byte; nothing in the body can desynchronise
  it.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import sys
from typing import Any

from hotline.commands._client import load, open_client, print_json
from hotline.proto.requests import InboxRequest
from hotline.textsafe import escape, message_lines


def run(args: argparse.Namespace) -> int:
    """Print messages received after ``--since`` (``--follow``: keep going)."""
    config = load(args)
    epoch = None
    with open_client(config) as client:
        client.send(InboxRequest(since=args.since, follow=args.follow, pending=args.pending))
        for reply in client.replies():
            if reply.get("end"):
                break
            msg = reply.get("msg")
            if not isinstance(msg, dict):
                continue
            new_epoch = msg["epoch"] != epoch
            epoch = msg["epoch"]
            if args.raw:
                _print_raw(msg)
            elif args.json:
                _print_json(msg, new_epoch)
            else:
                if new_epoch:
                    sys.stdout.write(f"-- peer epoch {escape(str(epoch))} --\n")
                _print_text(msg, _terminal_width())  # per message: --follow outlives resizes
    return 0


def _terminal_width() -> int | None:
    """Columns of the terminal on stdout, or None when stdout is not a terminal."""
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else None
    except (OSError, ValueError):
        return None


def _print_text(msg: dict[str, Any], width: int | None) -> None:
    when = dt.datetime.fromtimestamp(msg["ts"] / 1e9, dt.UTC)
    media = "" if msg["type"] == "text/plain" else f" [{escape(msg['type'])}]"
    precedence = "" if msg["precedence"] == "routine" else f" {msg['precedence'].upper()}"
    head = f"#{msg['id']}{precedence} {when:%Y-%m-%d %H:%M:%S}Z{media}"
    sys.stdout.write("".join(line + "\n" for line in message_lines(head, msg["body"], width)))
    sys.stdout.flush()


def _print_json(msg: dict[str, Any], new_epoch: bool) -> None:
    body: bytes = msg["body"]
    out: dict[str, Any] = {"id": msg["id"], "precedence": msg["precedence"],
                           "seq": msg["seq"], "ts": msg["ts"], "type": msg["type"]}
    if new_epoch:
        out["epoch"] = msg["epoch"]
    try:
        out["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        out["body_b64"] = base64.b64encode(body).decode()
    print_json(out)


def _print_raw(msg: dict[str, Any]) -> None:
    body: bytes = msg["body"]
    head = f"{msg['id']} {msg['ts']} {len(body)} {escape(msg['type'])}\n"
    stream = sys.stdout.buffer
    stream.write(head.encode() + body + b"\n")
    stream.flush()
