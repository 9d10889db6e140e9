"""``hotline status``: the link's state, from the running daemon (DESIGN §6).

The text board escapes every string it shows (hotline/textsafe.py), so a name, URL or
reason can never carry control characters to the terminal.
"""

from __future__ import annotations

import argparse
from typing import Any

from hotline.commands._client import load, open_client, print_json
from hotline.proto.requests import StatusRequest
from hotline.textsafe import escape


def run(args: argparse.Namespace) -> int:
    """Print the status (``--json``: one object with the DESIGN §6 keys)."""
    config = load(args)
    with open_client(config, timeout=10) as client:
        status: dict[str, Any] = client.request(StatusRequest())["status"]
    if args.json:
        print_json(status)
    else:
        print(render(status))
    return 0


def _ms(value: object) -> str:
    return f"{value:.2f} ms" if isinstance(value, int | float) else "-"


def _ids(items: list[dict[str, Any]]) -> str:
    return " ".join(escape(str(i["id"])) for i in items[:10]) or "none"


def _drill_result(drill: dict[str, Any]) -> str:
    verdict = {True: "OK", False: "FAILED", None: "running"}.get(drill.get("ok"), "?")
    parts = [f"{what} after {value:.3f} s" for what, value in (
        ("answered", drill.get("answered_s")), ("acknowledged", drill.get("operator_s")))
        if isinstance(value, int | float)]
    return verdict + (f" ({', '.join(parts)})" if parts else "")


def render(s: dict[str, Any]) -> str:
    """A human-readable status board, every string escaped for the terminal."""
    lines = [
        f"link to {escape(str(s['peer']))}: {escape(str(s['state'])).upper()}   "
        f"active path: {escape(str(s['active'] or 'none'))}",
        f"  backlog {s['backlog']}; clock skew {_ms(s.get('skew_ms'))}; "
        f"post-quantum {'yes' if s.get('pq') else 'no'}",
    ]
    for name, lane in (s.get("lanes") or {}).items():
        lines.append(f"  {escape(str(name)):<9} sent {lane['out_seq']}, acknowledged "
                     f"{lane['acked']}, backlog {lane['backlog']}; received {lane['in_seq']}")
    pending, owed = s.get("operator_pending") or [], s.get("operator_owed") or []
    if pending or owed:
        lines.append(f"  awaiting the peer's operator: {_ids(pending)}; "
                     f"owed by ours: {_ids(owed)}")
    drill = s.get("last_drill")
    if isinstance(drill, dict):
        lines.append(f"  last drill {escape(str(drill.get('id')))}: {_drill_result(drill)}")
    age = s.get("session_age_s")
    if isinstance(age, int | float):
        lines.append(f"  session age {age:.0f} s")
    dropped = s.get("dropped") or {}
    if dropped:
        counts = ", ".join(f"{escape(str(kind))} {n}" for kind, n in sorted(dropped.items()))
        lines.append(f"  refused packets: {counts}")
    for p in s["paths"]:
        heard = p.get("last_heard_s")
        heard_text = f"{heard:.1f} s ago" if isinstance(heard, int | float) else "never"
        lines.append(
            f"  {escape(str(p['url'])):<32} {escape(str(p['state'])):<5} "
            f"rtt {_ms(p.get('rtt_ms')):>10}   "
            f"last heard {heard_text}"
        )
    return "\n".join(lines)
