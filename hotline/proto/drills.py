"""Our drills (DESIGN §10): the line tested end to end, on a schedule, sans-IO.

A drill is an envelope of type ``application/vnd.hotline.drill`` in the ``priority``
lane (body in ``bodies.py``). The far daemon answers it as soon as the drill is in its
store, with a signed envelope naming the drill's hash: so an answer proves that the far
daemon — its keys, its store, the whole path — handled exactly that drill. With
``drill_operator = true`` the far operator must also acknowledge the drill with an
ordinary ``hotline ack P7`` (DESIGN §9) within ``drill_deadline``; the drill tells the
far end so, and the far end lists it under ``operator_owed`` meanwhile.

``DrillBook`` keeps the drills we started. A drill's id is its message id (``P7``):
what the far operator acknowledges and what ``hotline export --direction out`` takes.
Its clock starts when it is stored (``on_stored``). It succeeds once answered (and, if
asked, acknowledged) — a ``drill`` notice (priority 5) — or fails when
``drill_deadline`` passes first — a ``drill_failed`` notice (priority 2) whose
``reason`` says which part was missing. Both carry ``id``, ``result``, ``answered_s``
and ``operator_s`` (seconds from stored to answered / acknowledged; null if not).
``last`` is the most recently started drill, as ``status --json`` shows it:
``{id, sent_at (Unix seconds), answered_s, operator_s, ok}`` with ``ok`` null while it
runs. ``last_success_at`` is when the last drill succeeded (Unix seconds), for
``hotline_drill_last_success_timestamp_seconds``.

Schedule: every ``drill_every`` seconds from start-up (0 = never); ``hotline drill``
starts one at once. At most ``MAX_RUNNING`` run at the same time; a newer drill makes
the oldest fail ("superseded"). Drills live in memory: a restart forgets the ones
running (the next one is due ``drill_every`` after start-up), and a drill of an epoch
we abandon (our store went back in time) is forgotten — it is re-sent in the new epoch
as a new drill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hotline.proto.bodies import DrillAnswer, DrillCall, encode_drill
from hotline.proto.lanes import message_id
from hotline.proto.notices import CRIT, NOTICE, Notice
from hotline.proto.records import OutRecord

MAX_RUNNING = 64


@dataclass
class _Drill:
    id: str  # its message id, e.g. "P7"
    epoch: bytes
    lane: int
    seq: int
    started: float  # monotonic seconds, when it was stored
    sent_at: float  # Unix seconds, the same instant
    due: float
    answered_s: float | None = None
    operator_s: float | None = None

    def report(self, ok: bool | None) -> dict[str, Any]:
        return {"id": self.id, "sent_at": self.sent_at, "answered_s": self.answered_s,
                "operator_s": self.operator_s, "ok": ok}


class DrillBook:
    """The drills we started (see the module header)."""

    def __init__(self, peer: str, every: float, operator: bool, deadline: float,
                 now: float) -> None:
        self._peer = peer
        self._every = every
        self._operator = operator
        self._deadline = deadline
        self.next_due = now + every if every > 0 else math.inf
        self._running: dict[bytes, _Drill] = {}  # by the drill envelope's chain hash
        self._last: _Drill | None = None
        self._last_ok: bool | None = None
        self.last_success_at: float | None = None  # Unix seconds (metrics)
        self.notices: list[Notice] = []

    @property
    def last(self) -> dict[str, Any] | None:
        """The most recently started drill: ``status --json`` ``last_drill``."""
        return None if self._last is None else self._last.report(self._last_ok)

    def body(self) -> bytes:
        """The body of a new drill (what the far end is asked to do)."""
        return encode_drill(DrillCall(self._operator, self._deadline))

    def scheduled(self, now: float) -> bool:
        """True (once) when the next scheduled drill is due; schedules the one after."""
        if now < self.next_due:
            return False
        self.next_due = now + self._every
        return True

    def on_stored(self, record: OutRecord, now: float, wall_s: float) -> None:
        """Our drill ``record`` is in our store: its clock starts."""
        drill = _Drill(message_id(record.lane, record.seq), record.epoch, record.lane,
                       record.seq, now, wall_s, now + self._deadline)
        self._running[record.chain] = drill
        self._last, self._last_ok = drill, None
        if len(self._running) > MAX_RUNNING:
            oldest = min(self._running.values(), key=lambda d: d.started)
            self._finish(oldest, f"superseded: more than {MAX_RUNNING} drills running")

    def on_answer(self, answer: DrillAnswer, now: float) -> bool:
        """The far daemon answered; False if it names no drill of ours that runs."""
        drill = self._running.get(answer.chain)
        if drill is None or (drill.lane, drill.seq) != (answer.lane, answer.seq):
            return False
        if drill.answered_s is None:
            drill.answered_s = round(now - drill.started, 6)
            self._progress(drill)
        return True

    def on_operator_ack(self, chain: bytes, now: float) -> None:
        """The far operator acknowledged the envelope whose hash is ``chain``."""
        drill = self._running.get(chain)
        if drill is not None and drill.operator_s is None:
            drill.operator_s = round(now - drill.started, 6)
            self._progress(drill)

    def expire(self, now: float) -> None:
        """Fail every drill whose deadline passed."""
        for drill in [d for d in self._running.values() if d.due <= now]:
            missing = ("no answer from the far daemon" if drill.answered_s is None
                       else "the far operator did not acknowledge it")
            self._finish(drill, f"{missing} within {self._deadline:g} s")

    def forget_epoch(self, epoch: bytes) -> None:
        """Our epoch ``epoch`` was abandoned: its drills are re-sent as new ones."""
        self._running = {c: d for c, d in self._running.items() if d.epoch != epoch}

    def get_timer(self) -> float:
        """The next scheduled drill or drill deadline (inf: none)."""
        return min([self.next_due, *(d.due for d in self._running.values())])

    def _progress(self, drill: _Drill) -> None:
        if drill.answered_s is not None and (drill.operator_s is not None
                                             or not self._operator):
            self._finish(drill, None)

    def _finish(self, drill: _Drill, failure: str | None) -> None:
        self._running = {c: d for c, d in self._running.items() if d is not drill}
        ok = failure is None
        if drill is self._last:
            self._last_ok = ok
        if ok:
            self.last_success_at = drill.sent_at + max(drill.answered_s or 0.0,
                                                       drill.operator_s or 0.0)
        fields: dict[str, object] = {"peer": self._peer, "id": drill.id,
                                     "result": "ok" if ok else "failed"}
        if failure is not None:
            fields["reason"] = failure
        fields.update(answered_s=drill.answered_s, operator_s=drill.operator_s)
        self.notices.append(Notice("drill" if ok else "drill_failed",
                                   NOTICE if ok else CRIT, fields))
