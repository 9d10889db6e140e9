"""``hotline inbox``: print received messages, optionally following new ones."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import sys
from typing import Any

from hotline.commands._client import load, open_client, print_json
from hotline.proto.control import InboxRequest


def run(args: argparse.Namespace) -> int:
    """Print messages with seq above ``--since`` (``--follow``: keep going)."""
    config = load(args)
    with open_client(config) as client:
        client.send(InboxRequest(since=args.since, follow=args.follow))
        for reply in client.replies():
            if reply.get("end"):
                break
            msg = reply.get("msg")
            if isinstance(msg, dict):
                _print(msg, args.json)
    return 0


def _print(msg: dict[str, Any], as_json: bool) -> None:
    body = msg["body"]
    try:
        text: str | None = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if as_json:
        out: dict[str, Any] = {"seq": msg["seq"], "ts": msg["ts"], "type": msg["type"]}
        if text is not None:
            out["body"] = text
        else:
            out["body_b64"] = base64.b64encode(body).decode()
        print_json(out)
        return
    when = dt.datetime.fromtimestamp(msg["ts"] / 1e9, dt.UTC)
    shown = text if text is not None else f"<{len(body)} bytes, {msg['type']}>"
    sys.stdout.write(f"#{msg['seq']} {when:%Y-%m-%d %H:%M:%S}Z {shown}\n")
    sys.stdout.flush()
