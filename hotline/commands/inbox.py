"""``hotline inbox``: print received messages, optionally following new ones.

Three output forms; only ``--raw`` writes the peer's bytes as they are:

* **text** (default): one header ``#SEQ YYYY-MM-DD HH:MM:SSZ [TYPE]`` (TYPE only when
  it is not ``text/plain``) followed by the body's first line; each further body line
  on its own line after ``  | ``, and on a terminal, a line too long for it cut and
  continued after ``  + ``. Control and format characters and invalid UTF-8 are shown
  escaped (``\\x1b``, ``\\u202e``, a backslash as ``\\\\``): hotline/textsafe.py.
* ``--json``: one object per line, ``{seq, ts, type, body}`` (``body_b64`` when the
  body is not UTF-8); JSON escapes every control character.
* ``--raw``: the exact bytes, for scripts. Per message, a header line
  ``SEQ TS_NS LENGTH TYPE`` (ASCII digits, single spaces, the media type; ended by
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
from hotline.proto.control import InboxRequest
from hotline.textsafe import escape, message_lines


def run(args: argparse.Namespace) -> int:
    """Print messages with seq above ``--since`` (``--follow``: keep going)."""
    config = load(args)
    with open_client(config) as client:
        client.send(InboxRequest(since=args.since, follow=args.follow))
        for reply in client.replies():
            if reply.get("end"):
                break
            msg = reply.get("msg")
            if not isinstance(msg, dict):
                continue
            if args.raw:
                _print_raw(msg)
            elif args.json:
                _print_json(msg)
            else:
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
    head = f"#{msg['seq']} {when:%Y-%m-%d %H:%M:%S}Z{media}"
    sys.stdout.write("".join(line + "\n" for line in message_lines(head, msg["body"], width)))
    sys.stdout.flush()


def _print_json(msg: dict[str, Any]) -> None:
    body: bytes = msg["body"]
    out: dict[str, Any] = {"seq": msg["seq"], "ts": msg["ts"], "type": msg["type"]}
    try:
        out["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        out["body_b64"] = base64.b64encode(body).decode()
    print_json(out)


def _print_raw(msg: dict[str, Any]) -> None:
    body: bytes = msg["body"]
    head = f"{msg['seq']} {msg['ts']} {len(body)} {escape(msg['type'])}\n"
    stream = sys.stdout.buffer
    stream.write(head.encode() + body + b"\n")
    stream.flush()
