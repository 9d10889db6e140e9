"""What the endpoint wants logged, and the rules for when (sans-IO).

A ``Notice`` is one log event: a kind (``heartbeat``, ``state``, ``auth``, …), a
syslog priority and ordered fields; the daemon's logger (``daemon/logs.py``) renders
it as text, JSON or journald fields and never decides anything itself. ``Narrator``
turns the Link's events into notices with these rules:

* a path up (5) or down (4), failover to a later path (4), the first path back (4);
* a handshake (5); the peer's new epoch (first contact 5; a reset store 2 — loud);
* a gap (our store went back in time, 2), our own store found behind (2);
* a refused packet: authentication and handshake failures at priority 3, at most one
  line per kind and path every ``AUTH_LOG_EVERY`` seconds, showing the latest reason
  (a flood of forged packets cannot flood the journal, nor grow our memory by varying
  its reasons; the next line says how many were held); anything else at 7;
* a failed store job (disk full, I/O error) at priority 2, at most one line per kind
  of job every ``STORE_LOG_EVERY`` seconds, the same way (a full disk refuses every
  send and every retransmission of the peer's: one line each would flood the journal);
* the heartbeat line every ``log_every`` seconds and at once when the link's shape
  (state, active path, path states, whether the session is post-quantum) changes —
  not on every rekey. Its last field is ``pq=yes|no`` (DESIGN §11).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hotline.proto.events import (
    Dropped,
    Event,
    Forked,
    GapFound,
    HandshakeComplete,
    NewEpoch,
    PathDown,
    PathUp,
    PeerLostOurs,
    PrimaryChanged,
)
from hotline.proto.lanes import lane_name, message_id
from hotline.proto.status import LinkSnapshot

CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = 2, 3, 4, 5, 6, 7
AUTH_LOG_EVERY = 10.0
STORE_LOG_EVERY = 10.0
AUTH_KINDS = ("AuthenticationError", "HandshakeError")


@dataclass(frozen=True)
class Notice:
    """One log event; ``json`` replaces ``fields`` in JSON output when given."""

    kind: str
    priority: int
    fields: Mapping[str, object]
    json: Mapping[str, Any] | None = None


def heartbeat_notice(snap: LinkSnapshot) -> Notice:
    """The DESIGN §5 heartbeat line (priority 6 when up, 4 when degraded or down)."""
    paths = ",".join(
        f"{p.url}:{p.state}:{p.rtt_ms:.2f}" if p.state == "up" and p.rtt_ms is not None
        else f"{p.url}:{p.state}"
        for p in snap.paths
    )
    fields = {
        "peer": snap.peer, "state": snap.state, "active": snap.active,
        "rtt_ms": snap.rtt_ms, "paths": paths or None, "out_seq": snap.out_seq,
        "acked": snap.acked, "in_seq": snap.in_seq, "backlog": snap.backlog,
        "skew_ms": snap.skew_ms, "pq": "yes" if snap.pq else "no",
    }
    return Notice("heartbeat", INFO if snap.state == "up" else WARNING, fields,
                  snap.to_json_dict())


class _LineLimit:
    """At most one line per key every ``every`` seconds; the next one says how many
    were held meanwhile. Keys come from a bounded set (never from the peer's text)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last: dict[Hashable, tuple[float, int]] = {}  # key -> (last line, held)

    def __len__(self) -> int:
        return len(self._last)

    def line(self, key: Hashable, text: str, now: float) -> str | None:
        """``text`` to log now (with the count held since the last line), or None."""
        last, held = self._last.get(key, (-math.inf, 0))
        if now - last < self.every:
            self._last[key] = (last, held + 1)
            return None
        self._last[key] = (now, 0)
        return f"{text} (and {held} more since the last line)" if held else text


@dataclass
class Narrator:
    """Turns Link events into notices (see the module header)."""

    peer: str
    urls: tuple[str, ...]
    log_every: float
    dropped: dict[str, int] = field(default_factory=dict)
    _auth: _LineLimit = field(default_factory=lambda: _LineLimit(AUTH_LOG_EVERY))
    _store: _LineLimit = field(default_factory=lambda: _LineLimit(STORE_LOG_EVERY))
    _lost_told: set[tuple[bytes, int, int]] = field(default_factory=set)
    _shape: tuple[object, ...] = ()
    _next_heartbeat: float = -math.inf

    def heartbeat_due(self, snap: LinkSnapshot, now: float) -> bool:
        """True when the heartbeat line is due (period, or a change of shape)."""
        shape = (snap.state, snap.active, tuple(p.state for p in snap.paths), snap.pq)
        if shape == self._shape and now < self._next_heartbeat:
            return False
        self._shape = shape
        self._next_heartbeat = now + self.log_every
        return True

    @property
    def next_heartbeat(self) -> float:
        """When the periodic heartbeat line is due."""
        return self._next_heartbeat

    def narrate(self, event: Event, now: float) -> Notice | None:
        """The notice for one Link event, or None (not worth a line)."""
        peer = self.peer
        if isinstance(event, PathUp):
            return _state(peer, event.url, "up", "")
        if isinstance(event, PathDown):
            return _state(peer, event.url, "down", event.reason)
        if isinstance(event, PrimaryChanged):
            return self._primary(event)
        if isinstance(event, HandshakeComplete):
            return Notice("handshake", NOTICE, {
                "peer": peer, "path": self.urls[event.path_id], "result": "ok",
                "role": "initiator" if event.initiator else "responder",
                "pq": "yes" if event.pq else "no"})
        if isinstance(event, NewEpoch):
            return _new_epoch(peer, event)
        if isinstance(event, GapFound):
            gap = event.gap
            return Notice("gap", CRIT, {
                "peer": peer, "lane": lane_name(gap.lane), "epoch": gap.epoch.hex(),
                "lost": f"{message_id(gap.lane, gap.first)}..{message_id(gap.lane, gap.last)}",
                "reason": "our store went back in time (restored from an older copy?): "
                          "the peer no longer holds these messages"})
        if isinstance(event, PeerLostOurs):
            return self._peer_lost(event)
        if isinstance(event, Forked):
            return None  # the endpoint logs the new epoch it starts, with the ranges
        if isinstance(event, Dropped):
            return self._dropped(event, now)
        return None

    def _peer_lost(self, event: PeerLostOurs) -> Notice | None:
        """Once per loss: the peer repeats its HELLO until it hears from us."""
        key = (event.epoch, event.lane, event.last)
        if key in self._lost_told:
            return None
        self._lost_told.add(key)
        first, last = message_id(event.lane, event.first), message_id(event.lane, event.last)
        return Notice("gap", CRIT, {
            "peer": self.peer, "lane": lane_name(event.lane), "epoch": event.epoch.hex(),
            "lost": f"{first}..{last}", "side": "peer",
            "reason": "the peer's store went back in time (restored from an older copy?): "
                      "it no longer holds these messages it had acknowledged"})

    def internal(self, what: str, detail: str) -> Notice:
        """An unexpected exception while handling one input (contained, counted)."""
        self.dropped["internal"] = self.dropped.get("internal", 0) + 1
        return Notice("debug", DEBUG, {"peer": self.peer, "dropped": "internal",
                                       "input": what, "reason": detail})

    def _primary(self, event: PrimaryChanged) -> Notice:
        """``failover`` when traffic moves to a later path, ``primary`` when it moves back."""
        if event.new is None:
            return _state(self.peer, event.old, "down", "no path is up")
        moved_down = (event.old is not None
                      and self.urls.index(event.old) < self.urls.index(event.new))
        return _state(self.peer, event.new, "failover" if moved_down else "primary",
                      f"active was {event.old or 'none'}")

    def store_failed(self, job: str, error: str, now: float) -> Notice | None:
        """The line for a failed store job of kind ``job`` (a class name: a bounded
        set), or None while that kind's last line is under ``STORE_LOG_EVERY`` old."""
        line = self._store.line(job, error, now)
        if line is None:
            return None
        return Notice("store", CRIT, {"peer": self.peer, "job": job, "error": line})

    def _dropped(self, event: Dropped, now: float) -> Notice | None:
        self.dropped[event.kind] = self.dropped.get(event.kind, 0) + 1
        url = self.urls[event.path_id]
        if event.kind not in AUTH_KINDS:
            return Notice("debug", DEBUG, {"peer": self.peer, "path": url,
                                           "dropped": event.kind, "reason": event.reason})
        key = (event.kind, event.path_id)  # bounded: never keyed by the peer's text
        reason = self._auth.line(key, f"{event.kind}: {event.reason}", now)
        if reason is None:
            return None
        return Notice("auth", ERR, {"peer": self.peer, "path": url, "reason": reason})


def _state(peer: str, path: str | None, change: str, reason: str) -> Notice:
    priority = NOTICE if change == "up" else WARNING
    return Notice("state", priority,
                  {"peer": peer, "path": path, "change": change, "reason": reason or None})


def _new_epoch(peer: str, event: NewEpoch) -> Notice:
    if event.old is None:
        return Notice("epoch", NOTICE, {"peer": peer, "change": "first contact",
                                        "epoch": event.epoch.hex()})
    held = ",".join(f"{lane_name(lane)}:{upto}" for lane, upto in enumerate(event.old_delivered))
    return Notice("epoch", CRIT, {
        "peer": peer, "change": "peer started a new epoch (its store was lost or reset)",
        "old": event.old.hex(), "epoch": event.epoch.hex(), "held_of_old": held,
        "first_seqs": ",".join(map(str, event.base_seqs))})
