"""proto/supervision.py: the alert policy, driven by a hand-set clock."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.errors import LocalProtocolError
from hotline.proto.supervision import (
    ALERT_EVENTS,
    AUTH_FAILURES_THRESHOLD,
    AUTH_FAILURES_WINDOW,
    MAX_ALERT_TEXT,
    SEVERITY_LEVELS,
    Alert,
    AlertPolicy,
    AlertSettings,
)

AFTER, EVERY = 30.0, 300.0
START = 1000.0


def policy() -> AlertPolicy:
    return AlertPolicy("moscow", AlertSettings(alert_after=AFTER, alert_every=EVERY), START)


def run_timers(p: AlertPolicy, until: float) -> list[tuple[float, Alert]]:
    """Fire every timer up to ``until`` (as the runner does); the alerts with their times."""
    out: list[tuple[float, Alert]] = []
    while (timer := p.get_timer()) is not None and timer <= until:
        p.handle_timer(timer)
        out += [(timer, a) for a in p.alerts_to_send()]
    return out


def events(alerts: list[tuple[float, Alert]]) -> list[str]:
    return [a.event for _, a in alerts]


# --- link_down / link_restored ------------------------------------------------------------


def test_a_blip_shorter_than_alert_after_pages_nobody() -> None:
    p = policy()
    p.observe_link(True, START + 1)
    p.observe_link(False, START + 10)
    assert p.get_timer() == START + 10 + AFTER
    p.observe_link(True, START + 10 + AFTER - 0.1)
    assert p.get_timer() is None
    assert p.alerts_to_send() == []
    assert run_timers(p, START + 10_000) == []


def test_down_longer_than_alert_after_then_restored() -> None:
    p = policy()
    p.observe_link(True, START + 1)
    p.observe_link(False, START + 10)
    p.observe_link(False, START + 20)  # every turn: idempotent
    alerts = run_timers(p, START + 100)
    assert [(t, a.event) for t, a in alerts] == [(START + 10 + AFTER, "link_down")]
    down = alerts[0][1]
    assert (down.peer, down.severity) == ("moscow", "critical")
    assert down.text == "link to moscow down: no path up for 30 s"
    p.observe_link(True, START + 100)
    restored = p.alerts_to_send()
    assert [(a.event, a.severity) for a in restored] == [("link_restored", "notice")]
    assert restored[0].text == "link to moscow restored after 90 s"
    assert p.get_timer() is None


def test_a_link_that_never_comes_up_is_down_from_start() -> None:
    p = policy()
    assert p.get_timer() == START + AFTER
    assert events(run_timers(p, START + AFTER)) == ["link_down"]


def test_link_down_is_rate_limited_but_never_lost() -> None:
    """A second outage inside alert_every is reported when the window ends, if still down."""
    p = policy()
    p.observe_link(True, START)
    p.observe_link(False, START + 100)
    assert events(run_timers(p, START + 200)) == ["link_down"]  # at START + 130
    p.observe_link(True, START + 200)
    assert events([(0, a) for a in p.alerts_to_send()]) == ["link_restored"]
    p.observe_link(False, START + 250)  # down again; the window ends at START + 430
    assert p.get_timer() == START + 430
    alerts = run_timers(p, START + 1000)
    assert [(t, a.event) for t, a in alerts] == [(START + 430, "link_down")]
    assert alerts[0][1].text == "link to moscow down: no path up for 180 s"


def test_a_held_back_outage_that_ends_in_its_window_pages_nobody() -> None:
    p = policy()
    p.observe_link(True, START)
    p.observe_link(False, START + 100)
    run_timers(p, START + 200)
    p.observe_link(True, START + 200)
    p.alerts_to_send()
    p.observe_link(False, START + 250)
    p.observe_link(True, START + 400)  # before START + 430: the person's news is right
    assert p.alerts_to_send() == []
    assert run_timers(p, START + 10_000) == []


def test_link_restored_is_never_rate_limited() -> None:
    p = policy()
    run_timers(p, START + AFTER)
    p.observe_link(True, START + 31)
    p.observe_link(False, START + 32)
    p.observe_link(True, START + 33)  # no second link_down went out: nothing to restore
    assert events([(0, a) for a in p.alerts_to_send()]) == ["link_restored"]


# --- one-off events -----------------------------------------------------------------------


def test_one_off_alerts_are_rate_limited_per_kind_and_held_not_lost() -> None:
    p = policy()
    p.observe_link(True, START)
    p.on_drill_failed("P1", "no answer within 600 s", START + 1)
    p.on_epoch_changed("aa", "bb", START + 2)  # another kind: not limited by the drill
    assert events([(0, a) for a in p.alerts_to_send()]) == ["drill_failed", "epoch_changed"]
    p.on_drill_failed("P2", "no answer", START + 10)
    p.on_drill_failed("P3", "operator did not acknowledge", START + 20)
    assert p.alerts_to_send() == []
    assert p.get_timer() == START + 1 + EVERY
    alerts = run_timers(p, START + 10_000)
    assert [(t, a.event) for t, a in alerts] == [(START + 1 + EVERY, "drill_failed")]
    assert alerts[0][1].text == (
        "drill P3 to moscow failed: operator did not acknowledge "
        "[2 drill_failed alerts were held back by alert_every; this is the last]")
    p.on_drill_failed("P4", "no answer", START + 1 + EVERY + 1)  # the window restarted
    assert p.alerts_to_send() == []
    assert p.counts["drill_failed"] == 2
    assert p.counts["epoch_changed"] == 1


def test_a_single_held_back_alert_keeps_its_text() -> None:
    p = policy()
    p.observe_link(True, START)
    p.on_store_error("disk full", START)
    p.on_store_error("disk still full", START + 1)
    p.alerts_to_send()
    alerts = run_timers(p, START + EVERY)
    assert [a.text for _, a in alerts] == ["message store error: disk still full"]


def test_a_late_timer_does_not_hold_back_an_alert_whose_window_has_ended() -> None:
    p = policy()
    p.observe_link(True, START)
    p.on_drill_failed("P1", "no answer", START)
    p.on_drill_failed("P2", "no answer", START + 1)
    p.alerts_to_send()
    p.on_drill_failed("P3", "no answer", START + 2 * EVERY)  # handle_timer never called
    # P2 goes out now (its window ended long ago); P3 waits for the next window.
    assert [a.text for a in p.alerts_to_send()] == ["drill P2 to moscow failed: no answer"]
    assert p.get_timer() == START + 3 * EVERY


def test_operator_overdue_severity_by_precedence() -> None:
    p = policy()
    p.on_operator_overdue("Z17", "flash", 600.4, START)
    p.on_operator_overdue("O4", "immediate", 1800, START + EVERY)
    got = p.alerts_to_send()
    assert [(a.event, a.severity) for a in got] == [
        ("operator_overdue", "critical"), ("operator_overdue", "error")]
    assert got[0].text == "FLASH message Z17 to moscow not acknowledged by its operator after 600 s"
    with pytest.raises(LocalProtocolError):
        p.on_operator_overdue("X1", "urgent", 1, START)


def test_auth_failures_threshold_within_window() -> None:
    p = policy()
    for i in range(AUTH_FAILURES_THRESHOLD - 1):
        p.on_auth_failure("bad mac1", START + i)
    assert p.alerts_to_send() == []
    p.on_auth_failure("peer key not pinned", START + 9)
    [alert] = p.alerts_to_send()
    assert (alert.event, alert.severity) == ("auth_failures", "warning")
    assert alert.text == ("10 authentication failures on the link to moscow within 9 s "
                          "(last: peer key not pinned)")
    # the count starts again: 9 more are not another burst
    for i in range(AUTH_FAILURES_THRESHOLD - 1):
        p.on_auth_failure("x", START + EVERY + i)
    assert p.alerts_to_send() == []


def test_auth_failures_spread_wider_than_the_window_page_nobody() -> None:
    p = policy()
    step = AUTH_FAILURES_WINDOW / (AUTH_FAILURES_THRESHOLD - 1) + 0.01
    for i in range(5 * AUTH_FAILURES_THRESHOLD):
        p.on_auth_failure("bad mac1", START + i * step)
    assert p.alerts_to_send() == []


def test_store_error_and_insecure_key() -> None:
    p = policy()
    p.on_store_error("database disk image is malformed", START)
    p.on_insecure_key("/etc/hotline/keys/x", "mode 0644", START)
    got = p.alerts_to_send()
    assert [(a.event, a.severity, a.text) for a in got] == [
        ("store_error", "critical", "message store error: database disk image is malformed"),
        ("insecure_key", "critical", "insecure key /etc/hotline/keys/x: mode 0644"),
    ]


def test_alert_object_contract() -> None:
    alert = Alert("link_down", "moscow", "critical", "down")
    assert alert.to_json_dict("2025-01-31T12:00:00.000Z") == {
        "event": "link_down", "peer": "moscow", "severity": "critical", "text": "down",
        "ts": "2025-01-31T12:00:00.000Z"}
    for severity in SEVERITY_LEVELS:
        assert Alert("x", "p", severity, "t").journal_priority <= 3
    assert Alert("x", "p", "critical", "t").journal_priority == 2


def test_long_texts_are_cut() -> None:
    p = policy()
    p.on_store_error("x" * 5000, START)
    [alert] = p.alerts_to_send()
    assert len(alert.text) == MAX_ALERT_TEXT
    assert alert.text.endswith("…")


def test_counts_cover_every_event() -> None:
    assert set(policy().counts) == set(ALERT_EVENTS)
    assert all(n == 0 for n in policy().counts.values())


# --- properties over random histories -----------------------------------------------------

ONE_OFFS = ("drill_failed", "auth_failures", "epoch_changed", "store_error", "insecure_key",
            "operator_overdue")
ACTIONS = st.sampled_from(["up", "down", *ONE_OFFS])
STEPS = st.lists(st.tuples(st.floats(0, 400, allow_nan=False), ACTIONS), max_size=60)


@dataclass
class History:
    """What happened and what was sent, for checking the policy's promises."""

    sent: list[tuple[float, Alert]] = field(default_factory=list)
    offered: dict[str, float] = field(default_factory=dict)  # kind -> last offer time
    up: bool = False
    changes: list[tuple[float, bool]] = field(default_factory=lambda: [(START, False)])

    def down_since(self, t: float) -> float | None:
        """When the link went down, if it was down just before ``t``."""
        before = [(at, up) for at, up in self.changes if at < t]
        return None if before[-1][1] else before[-1][0]


def _act(p: AlertPolicy, h: History, action: str, now: float) -> None:
    if action in ("up", "down"):
        if (action == "up") != h.up:
            h.up = action == "up"
            h.changes.append((now, h.up))
        p.observe_link(h.up, now)
        return
    h.offered["auth_failures" if action == "auth_failures" else action] = now
    if action == "drill_failed":
        p.on_drill_failed("P1", "no answer", now)
    elif action == "auth_failures":
        for _ in range(AUTH_FAILURES_THRESHOLD):
            p.on_auth_failure("bad mac1", now)
    elif action == "epoch_changed":
        p.on_epoch_changed("aa", "bb", now)
    elif action == "store_error":
        p.on_store_error("disk", now)
    elif action == "insecure_key":
        p.on_insecure_key("/k", "0644", now)
    else:
        p.on_operator_overdue("Z1", "flash", 600, now)


def _drive(steps: list[tuple[float, str]]) -> History:
    p, h, now = policy(), History(), START
    for dt, action in steps:
        target = now + dt
        while (timer := p.get_timer()) is not None and timer <= target:
            assert timer >= now, "a deadline in the past"
            p.handle_timer(timer)
            h.sent += [(timer, a) for a in p.alerts_to_send()]
            assert p.get_timer() is None or p.get_timer() > timer, "the deadline did not move"
            now = timer
        now = target
        _act(p, h, action, now)
        h.sent += [(now, a) for a in p.alerts_to_send()]
    h.sent += run_timers(p, now + AFTER + EVERY + 1)  # long enough to settle
    assert p.get_timer() is None
    return h


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_policy_promises(steps: list[tuple[float, str]]) -> None:
    h = _drive(steps)
    for kind in ALERT_EVENTS:
        if kind == "link_restored":
            continue
        times = [t for t, a in h.sent if a.event == kind]
        assert all(b - a >= EVERY - 1e-6 for a, b in itertools.pairwise(times)), kind
    link = [a.event for _, a in h.sent if a.event in ("link_down", "link_restored")]
    assert link == ["link_down", "link_restored"] * (len(link) // 2) + (
        ["link_down"] if len(link) % 2 else []), "down and restored must alternate"
    # link_down only after alert_after of continuous outage.
    for t, a in h.sent:
        if a.event == "link_down":
            since = h.down_since(t)
            assert since is not None
            assert t - since >= AFTER - 1e-6
    # The person's last news about the link is the truth once it has had time to settle.
    believed_down = bool(link) and link[-1] == "link_down"
    assert believed_down == (not h.up)
    # Nothing offered is lost: each kind went out at or after its last offer.
    for kind, last in h.offered.items():
        assert any(a.event == kind and t >= last for t, a in h.sent), kind
