"""The link's state as operators see it: ``status --json`` and the heartbeat line.

``LinkSnapshot`` is built by the endpoint (``Endpoint.status(now)``) and rendered by
the daemon's log (``daemon/logs.py``) and the control socket. ``to_json_dict`` is the
DESIGN §6 / §9 ``status --json`` **contract**: ``peer``, ``state``, ``active``,
``rtt_ms``, ``paths`` (``{url, state, rtt_ms, last_heard_s}``), ``out_seq``, ``acked``,
``in_seq`` (the routine lane's, whose ids are bare seqs), ``backlog`` (all lanes),
``skew_ms``, and ``lanes`` — per precedence ``{out_seq, acked, in_seq, backlog}`` —,
``operator_pending`` (ours awaiting the far operator), ``operator_owed`` (theirs
awaiting ours), ``pq``, ``last_drill`` and diagnostics (``session_age_s``,
``dropped`` refused inputs by kind, ``retransmitted`` DATA frames sent again per
precedence since start-up, ``epoch``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hotline.proto.lanes import NAMES, ROUTINE


@dataclass(frozen=True)
class PathSnapshot:
    """One path as the link sees it now."""

    url: str
    state: str  # "up" | "down"
    rtt_ms: float | None = None  # smoothed RTT; None before the first PONG
    last_heard_s: float | None = None  # seconds since the last authenticated packet


@dataclass(frozen=True)
class LaneSnapshot:
    """One precedence lane: our stream's head and ack, the peer's stream as held."""

    out_seq: int = 0
    acked: int = 0
    in_seq: int = 0

    @property
    def backlog(self) -> int:
        """Our messages of this lane not yet acknowledged."""
        return self.out_seq - self.acked


@dataclass(frozen=True)
class OperatorItem:
    """A message awaiting an operator's acknowledgement."""

    id: str
    age_s: float
    deadline_s: float | None  # seconds left (negative: overdue); None: no deadline


@dataclass(frozen=True)
class LinkSnapshot:
    """The link's state: the heartbeat line and the ``status --json`` object."""

    peer: str
    state: str  # "up" | "degraded" | "down"
    active: str | None  # URL of the primary path, None when no path is up
    paths: Sequence[PathSnapshot] = ()
    lanes: Sequence[LaneSnapshot] = tuple(LaneSnapshot() for _ in NAMES)
    skew_ms: float | None = None  # peer's clock minus ours
    session_age_s: float | None = None
    dropped: Mapping[str, int] = field(default_factory=dict)  # refused inputs, by kind
    retransmitted: Sequence[int] = (0,) * len(NAMES)  # DATA frames sent again, per lane
    epoch: str = ""
    pq: bool = False
    operator_pending: Sequence[OperatorItem] = ()
    operator_owed: Sequence[OperatorItem] = ()
    last_drill: Mapping[str, Any] | None = None

    @property
    def rtt_ms(self) -> float | None:
        """RTT of the active path, if known."""
        return next((p.rtt_ms for p in self.paths if p.url == self.active), None)

    @property
    def out_seq(self) -> int:
        """Our routine lane's last seq (routine ids are bare seqs)."""
        return self.lanes[ROUTINE].out_seq

    @property
    def acked(self) -> int:
        """The peer's cumulative ack of our routine lane."""
        return self.lanes[ROUTINE].acked

    @property
    def in_seq(self) -> int:
        """The last routine seq delivered to our inbox."""
        return self.lanes[ROUTINE].in_seq

    @property
    def backlog(self) -> int:
        """Our messages not yet acknowledged, all lanes."""
        return sum(lane.backlog for lane in self.lanes)

    def to_json_dict(self) -> dict[str, Any]:
        """The DESIGN §6 / §9 ``status --json`` object."""
        return {
            "peer": self.peer, "state": self.state, "active": self.active,
            "rtt_ms": self.rtt_ms,
            "paths": [
                {"url": p.url, "state": p.state, "rtt_ms": p.rtt_ms,
                 "last_heard_s": p.last_heard_s}
                for p in self.paths
            ],
            "out_seq": self.out_seq, "acked": self.acked, "in_seq": self.in_seq,
            "backlog": self.backlog, "skew_ms": self.skew_ms,
            "lanes": {
                name: {"out_seq": lane.out_seq, "acked": lane.acked, "in_seq": lane.in_seq,
                       "backlog": lane.backlog}
                for name, lane in zip(NAMES, self.lanes, strict=True)
            },
            "operator_pending": [_item(i) for i in self.operator_pending],
            "operator_owed": [_item(i) for i in self.operator_owed],
            "pq": self.pq, "last_drill": None if self.last_drill is None else dict(self.last_drill),
            "session_age_s": self.session_age_s, "dropped": dict(self.dropped),
            "retransmitted": dict(zip(NAMES, self.retransmitted, strict=True)),
            "epoch": self.epoch,
        }


def _item(item: OperatorItem) -> dict[str, Any]:
    return {"id": item.id, "age_s": item.age_s, "deadline_s": item.deadline_s}


def status_text(snap: LinkSnapshot) -> str:
    """One line for systemd's STATUS= (``systemctl status``)."""
    return (f"link {snap.state} to {snap.peer} via {snap.active or 'no path'}; "
            f"sent {snap.out_seq} acked {snap.acked} received {snap.in_seq}")
