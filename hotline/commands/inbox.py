"""``hotline inbox``: print received messages, optionally following new ones.

Three output forms; only ``--raw`` writes the peer's bytes as they are:

* **text** (default): one header ``#ID PRECEDENCE YYYY-MM-DD HH:MM:SSZ [TYPE] [STATE]``
  (ID as ``Z17``/``O4``/``P9``/bare routine seq; PRECEDENCE only when not routine; TYPE
  only when it is not ``text/plain``, ``[ack]`` and ``[drill]`` for hotline's own;
  STATE, the operator acknowledgement (DESIGN §9): ``[awaiting your ack]`` while our
  operator owes one, ``[acked by O7]`` once ``hotline ack`` sent ours) followed by the
  body's first line — for an ack or a drill, what it is instead (``acknowledges Z1:
  comment``), since their bodies are msgpack; each further body line
  on its own line after ``  | ``, and on a terminal, a line too long for it cut and
  continued after ``  + ``. Control and format characters and invalid UTF-8 are shown
  escaped (``\\x1b``, ``\\u202e``, a backslash as ``\\\\``): hotline/textsafe.py.
* ``--json``: one object per line, ``{n, id, precedence, seq, ts, type, body,
  ack_state, acked_by}`` (``n`` is the inbox cursor: ``--after N`` continues exactly
  after it, whatever the peer's epochs; ``body_b64`` when the body is not UTF-8;
  ``ack_state`` ``"owed"``, ``"acked"`` or null; ``note`` for an ack or a drill),
  ``epoch`` (the peer's, hex) on the first message and whenever it changes; JSON
  escapes every control character.

``--pending`` lists only the messages our operator still owes an acknowledgement
(acknowledge them with ``hotline ack ID…``).
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
from hotline.proto.bodies import ACK_TYPE, DRILL_TYPE
from hotline.proto.requests import InboxRequest
from hotline.textsafe import escape, message_lines


def run(args: argparse.Namespace) -> int:
    """Print messages received after ``--since`` (``--follow``: keep going)."""
    config = load(args)
    epoch = None
    with open_client(config) as client:
        client.send(InboxRequest(cursor=args.after, since=args.since, follow=args.follow,
                                 pending=args.pending))
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


_SHORT_TYPES = {"text/plain": "", ACK_TYPE: " [ack]", DRILL_TYPE: " [drill]"}


def _print_text(msg: dict[str, Any], width: int | None) -> None:
    when = dt.datetime.fromtimestamp(msg["ts"] / 1e9, dt.UTC)
    media = _SHORT_TYPES.get(msg["type"], f" [{escape(msg['type'])}]")
    precedence = "" if msg["precedence"] == "routine" else f" {msg['precedence'].upper()}"
    head = f"#{msg['id']}{precedence} {when:%Y-%m-%d %H:%M:%S}Z{media}{_ack_state(msg)}"
    note = msg.get("note")
    body = note.encode() if isinstance(note, str) else msg["body"]
    sys.stdout.write("".join(line + "\n" for line in message_lines(head, body, width)))
    sys.stdout.flush()


def _ack_state(msg: dict[str, Any]) -> str:
    if msg.get("ack_state") == "owed":
        return " [awaiting your ack]"
    if msg.get("ack_state") == "acked":
        return f" [acked by {msg.get('acked_by')}]"
    return ""


def _print_json(msg: dict[str, Any], new_epoch: bool) -> None:
    body: bytes = msg["body"]
    out: dict[str, Any] = {"n": msg["n"], "id": msg["id"], "precedence": msg["precedence"],
                           "seq": msg["seq"], "ts": msg["ts"], "type": msg["type"],
                           "ack_state": msg.get("ack_state"), "acked_by": msg.get("acked_by")}
    if "note" in msg:
        out["note"] = msg["note"]
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
