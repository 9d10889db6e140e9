"""When to page a person: the alert policy of DESIGN §10, sans-IO.

Theory of operation. The daemon tells one ``AlertPolicy`` what happens — the link's
state every loop turn (``observe_link``) and one-off events through hooks named after
when they fire (``on_operator_overdue``, ``on_drill_failed``, ``on_auth_failure``,
``on_epoch_changed``, ``on_store_error``, ``on_insecure_key``) — always with ``now``
(monotonic seconds). The policy answers with ``Alert`` objects (``alerts_to_send()``)
and one deadline (``get_timer()``; call ``handle_timer(now)`` when it passes), as the
Link does. It never reads a clock and never runs anything: the daemon's alert runner
(hotline/daemon/alerts.py) stamps each alert with the wall-clock ``ts``, writes the
journal line and runs ``alert_command``.

Rules (DESIGN §10 **contract** for the event names and the JSON fields):

* ``link_down`` once no path has been up for ``alert_after`` seconds — counted from
  the moment the link went down, or from start-up if it never came up. A shorter blip
  pages nobody. ``link_restored`` when a path comes back, only if ``link_down`` went
  out (so the person's last news is always "down" then "restored", never a lone
  "restored").
* Rate limit: each event kind at most once per ``alert_every`` seconds. Nothing is
  lost silently: a one-off alert held back by the limit is sent when its window ends
  (the latest one, saying how many were held back). ``link_down`` is a *condition*,
  not a queue: when the limit holds it back, it goes out when the window ends only if
  the link is still down then. ``link_restored`` is exempt from the limit: it must
  never be suppressed when its ``link_down`` went out, and it cannot flood, since it
  follows at most one ``link_down`` per window.
* ``auth_failures``: ``AUTH_FAILURES_THRESHOLD`` (10) authentication or handshake
  failures within ``AUTH_FAILURES_WINDOW`` (60 s) raise one alert; the count then starts
  again. One forged packet pages nobody; a misconfigured or attacking peer that keeps
  failing does (a peer retrying a handshake every 5 s reaches 10 in under a minute).
  The failures counted are the runner's ``auth`` log events (AuthenticationError and
  HandshakeError drops), not malformed or replayed packets.

Severity is a syslog level name: ``critical`` (2), ``error`` (3), ``warning`` (4),
``notice`` (5). link_down, store_error, insecure_key and an overdue FLASH are
critical; operator_overdue (other lanes), drill_failed and epoch_changed are errors;
auth_failures is a warning; link_restored a notice. The journal line of every alert
has priority ``min(level, 3)``: an alert is always at least an error in the journal
(``journalctl -p err`` lists every alert, the all-clear included).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from hotline.errors import LocalProtocolError

# DESIGN §9: the four precedences (lanes), highest first.
PRECEDENCES = ("flash", "immediate", "priority", "routine")

# DESIGN §10 contract: every alert event name.
ALERT_EVENTS = (
    "link_down", "link_restored", "operator_overdue", "drill_failed", "auth_failures",
    "epoch_changed", "store_error", "insecure_key",
)
SEVERITY_LEVELS: Mapping[str, int] = {"critical": 2, "error": 3, "warning": 4, "notice": 5}
ALERT_JOURNAL_PRIORITY = 3  # every alert's journal line is at this priority or above

AUTH_FAILURES_THRESHOLD = 10
AUTH_FAILURES_WINDOW = 60.0
MAX_ALERT_TEXT = 1000  # characters; a longer text is cut (limits before allocation)


@dataclass(frozen=True)
class Alert:
    """One alert: the DESIGN §10 JSON object without its ``ts`` (the runner stamps it)."""

    event: str  # one of ALERT_EVENTS
    peer: str
    severity: str  # a key of SEVERITY_LEVELS
    text: str

    @property
    def journal_priority(self) -> int:
        """The syslog priority of the alert's journal line: never above 3 (``err``)."""
        return min(SEVERITY_LEVELS[self.severity], ALERT_JOURNAL_PRIORITY)

    def to_json_dict(self, ts: str) -> dict[str, str]:
        """The object written to ``alert_command``'s stdin.

        Args:
            ts: when it was raised, ISO-8601 UTC (``2025-01-31T12:00:00.000Z``).
        """
        return {"event": self.event, "peer": self.peer, "severity": self.severity,
                "text": self.text, "ts": ts}


@dataclass(frozen=True)
class AlertSettings:
    """The config keys the policy obeys (DESIGN §10)."""

    alert_after: float = 30.0
    alert_every: float = 300.0


class _RateLimit:
    """At most one alert per kind per ``every`` seconds; held-back ones go out later."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.last_sent: dict[str, float] = {}
        self.held: dict[str, tuple[Alert, int]] = {}  # kind -> (latest held, how many)

    def allows(self, event: str, now: float) -> bool:
        return now >= self.next_allowed(event)

    def next_allowed(self, event: str) -> float:
        return self.last_sent.get(event, -math.inf) + self.every

    def offer(self, alert: Alert, now: float) -> Alert | None:
        """The alert if it may go now (recorded as sent), else None (held back)."""
        if alert.event not in self.held and self.allows(alert.event, now):
            self.last_sent[alert.event] = now
            return alert
        _, count = self.held.get(alert.event, (alert, 0))
        self.held[alert.event] = (alert, count + 1)
        return None

    def release_due(self, now: float) -> list[Alert]:
        """Held-back alerts whose window has ended, each marked as sent now."""
        out = []
        for event, (alert, count) in list(self.held.items()):
            if self.allows(event, now):
                del self.held[event]
                self.last_sent[event] = now
                out.append(_held_back(alert, count))
        return out

    def deadline(self) -> float | None:
        return min((self.next_allowed(e) for e in self.held), default=None)


def _held_back(alert: Alert, count: int) -> Alert:
    if count == 1:
        return alert
    note = f" [{count} {alert.event} alerts were held back by alert_every; this is the last]"
    return Alert(alert.event, alert.peer, alert.severity, _cut(alert.text + note))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ALERT_TEXT else text[:MAX_ALERT_TEXT - 1] + "…"


class AlertPolicy:
    """Decides which alerts go out and when; see the module header."""

    def __init__(self, peer: str, settings: AlertSettings, now: float) -> None:
        """Start with the link down since ``now`` (it has not come up yet).

        Args:
            peer: the peer's name, carried by every alert.
            settings: ``alert_after`` and ``alert_every``.
            now: monotonic seconds at start-up.
        """
        self._peer = peer
        self._settings = settings
        self._limit = _RateLimit(settings.alert_every)
        self._down_since: float | None = now
        self._told_down = False
        self._auth_times: deque[float] = deque(maxlen=AUTH_FAILURES_THRESHOLD)
        self._out: list[Alert] = []
        self._counts = dict.fromkeys(ALERT_EVENTS, 0)

    # -- hooks --------------------------------------------------------------------

    def observe_link(self, up: bool, now: float) -> None:
        """Call every loop turn (or on every change): is at least one path up?"""
        if up:
            if self._told_down and self._down_since is not None:
                self._told_down = False
                down_for = now - self._down_since
                self._emit(self._alert("link_restored", "notice",
                                       f"link to {self._peer} restored after {down_for:.0f} s"))
            self._down_since = None
        elif self._down_since is None:
            self._down_since = now
        self._check_link(now)

    def on_operator_overdue(self, message_id: str, precedence: str, age_s: float,
                            now: float) -> None:
        """Our message ``message_id`` (``Z17``) passed its operator_deadline unacknowledged.

        Raises:
            LocalProtocolError: ``precedence`` is not one of PRECEDENCES.
        """
        if precedence not in PRECEDENCES:
            raise LocalProtocolError(f"unknown precedence {precedence!r}")
        severity = "critical" if precedence == "flash" else "error"
        self._offer(self._alert(
            "operator_overdue", severity,
            f"{precedence.upper()} message {message_id} to {self._peer} not acknowledged by "
            f"its operator after {age_s:.0f} s"), now)

    def on_drill_failed(self, drill_id: str, reason: str, now: float) -> None:
        """A drill was not answered (or not acknowledged) by its deadline."""
        self._offer(self._alert("drill_failed", "error",
                                f"drill {drill_id} to {self._peer} failed: {reason}"), now)

    def on_auth_failure(self, reason: str, now: float) -> None:
        """One authentication or handshake failure (a dropped packet); counted."""
        times = self._auth_times
        times.append(now)
        if len(times) < AUTH_FAILURES_THRESHOLD or now - times[0] > AUTH_FAILURES_WINDOW:
            return
        span = now - times[0]
        times.clear()
        self._offer(self._alert(
            "auth_failures", "warning",
            f"{AUTH_FAILURES_THRESHOLD} authentication failures on the link to {self._peer} "
            f"within {span:.0f} s (last: {reason})"), now)

    def on_epoch_changed(self, old_epoch: str, new_epoch: str, now: float) -> None:
        """The peer started a new epoch: its store was lost or reset (DESIGN §4b)."""
        self._offer(self._alert(
            "epoch_changed", "error",
            f"{self._peer} started a new epoch {new_epoch} (was {old_epoch}): its store was "
            "lost or reset"), now)

    def on_store_error(self, reason: str, now: float) -> None:
        """Our own message store failed (a commit or a read)."""
        self._offer(self._alert("store_error", "critical", f"message store error: {reason}"),
                    now)

    def on_insecure_key(self, path: str, reason: str, now: float) -> None:
        """A key file or directory with unsafe permissions."""
        self._offer(self._alert("insecure_key", "critical", f"insecure key {path}: {reason}"),
                    now)

    # -- time ---------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` has something to do, or None."""
        timers = [t for t in (self._link_down_due(), self._limit.deadline()) if t is not None]
        return min(timers, default=None)

    def handle_timer(self, now: float) -> None:
        """Raise what is due at ``now``: link_down, held-back alerts."""
        self._check_link(now)
        for alert in self._limit.release_due(now):
            self._emit(alert)

    # -- outputs ------------------------------------------------------------------

    def alerts_to_send(self) -> list[Alert]:
        """Alerts raised since the last call, oldest first."""
        out, self._out = self._out, []
        return out

    @property
    def counts(self) -> Mapping[str, int]:
        """Alerts raised so far, per event (every ALERT_EVENTS key; for metrics)."""
        return dict(self._counts)

    # -- internals ----------------------------------------------------------------

    def _alert(self, event: str, severity: str, text: str) -> Alert:
        return Alert(event, self._peer, severity, _cut(text))

    def _offer(self, alert: Alert, now: float) -> None:
        for due in self._limit.release_due(now):  # a late timer: what is due goes first
            self._emit(due)
        sent = self._limit.offer(alert, now)
        if sent is not None:
            self._emit(sent)

    def _emit(self, alert: Alert) -> None:
        self._counts[alert.event] += 1
        self._out.append(alert)

    def _link_down_due(self) -> float | None:
        if self._down_since is None or self._told_down:
            return None
        return max(self._down_since + self._settings.alert_after,
                   self._limit.next_allowed("link_down"))

    def _check_link(self, now: float) -> None:
        due = self._link_down_due()
        if due is None or now < due or self._down_since is None:
            return
        self._told_down = True
        self._limit.last_sent["link_down"] = now
        self._emit(self._alert(
            "link_down", "critical",
            f"link to {self._peer} down: no path up for {now - self._down_since:.0f} s"))
