"""The endpoint's log rules (hotline.proto.notices): when the heartbeat line is due, and
which Link events become which log lines at which priority."""

from __future__ import annotations

from typing import Any

import pytest

from hotline.proto.events import (
    Acked,
    Dropped,
    Forked,
    GapFound,
    HandshakeComplete,
    NewEpoch,
    PathDown,
    PathUp,
    PrimaryChanged,
    ResetPath,
)
from hotline.proto.incoming import Gap
from hotline.proto.lanes import FLASH, ROUTINE
from hotline.proto.notices import (
    AUTH_LOG_EVERY,
    CRIT,
    DEBUG,
    ERR,
    NOTICE,
    STORE_LOG_EVERY,
    WARNING,
    Narrator,
    Notice,
    heartbeat_notice,
)
from hotline.proto.outgoing import Fork
from hotline.proto.status import LaneSnapshot, LinkSnapshot, PathSnapshot

TCP, UDP = "tcp://203.0.113.7:7411", "udp://203.0.113.7:7411"
OLD, NEW = bytes([1]) * 16, bytes([2]) * 16


def narrator(log_every: float = 60.0) -> Narrator:
    return Narrator("moscow", (TCP, UDP), log_every)


def snap(state: str = "up", **kw: Any) -> LinkSnapshot:
    fields: dict[str, Any] = {
        "peer": "moscow", "state": state, "active": TCP,
        "paths": (PathSnapshot(TCP, "up", 0.42, 0.1), PathSnapshot(UDP, "down")),
        "lanes": (LaneSnapshot(), LaneSnapshot(), LaneSnapshot(), LaneSnapshot(12, 11, 7)),
    }
    fields.update(kw)
    return LinkSnapshot(**fields)


# --- the heartbeat line: every log_every seconds, and at once on a change of shape --------


def test_heartbeat_due_rule() -> None:
    n = narrator(60.0)
    assert n.heartbeat_due(snap(), 0.0)  # the first line at once
    assert n.next_heartbeat == 60.0
    busier = (LaneSnapshot(3, 0, 0), LaneSnapshot(), LaneSnapshot(), LaneSnapshot(99, 50, 40))
    assert not n.heartbeat_due(snap(lanes=busier, skew_ms=7.0), 30.0)  # counters: no change
    assert not n.heartbeat_due(snap(paths=(PathSnapshot(TCP, "up", 9.0, 2.0),
                                           PathSnapshot(UDP, "down"))), 30.0)  # rtt alone
    assert n.heartbeat_due(snap("degraded"), 31.0)  # state change: at once
    assert n.next_heartbeat == 91.0  # the period restarts from the change
    assert not n.heartbeat_due(snap("degraded"), 32.0)
    both_up = (PathSnapshot(TCP, "up", 0.4), PathSnapshot(UDP, "up", 0.5))
    assert n.heartbeat_due(snap("degraded", paths=both_up), 33.0)  # a path changed
    assert not n.heartbeat_due(snap("degraded", paths=both_up), 92.9)
    assert n.heartbeat_due(snap("degraded", paths=both_up), 93.0)  # log_every elapsed
    assert n.heartbeat_due(snap("degraded", paths=both_up, active=UDP), 94.0)  # new active


def test_heartbeat_not_due_again_at_the_same_instant() -> None:
    n = narrator(60.0)
    assert n.heartbeat_due(snap(), 5.0)
    assert not n.heartbeat_due(snap(), 5.0)


# --- narrate: which events become which lines -----------------------------------------------


def test_path_up_and_down() -> None:
    n = narrator()
    assert n.narrate(PathUp(0, TCP), 0.0) == Notice(
        "state", NOTICE, {"peer": "moscow", "path": TCP, "change": "up", "reason": None})
    assert n.narrate(PathDown(1, UDP, "no packet for 3.0 s"), 0.0) == Notice(
        "state", WARNING,
        {"peer": "moscow", "path": UDP, "change": "down", "reason": "no packet for 3.0 s"})


def test_failover_versus_primary_wording() -> None:
    """Moving to a later path in the configured order is a failover (4); moving back to
    an earlier one, or the first path coming up, is ``primary``; none left is ``down``."""
    n = narrator()
    failover = n.narrate(PrimaryChanged(TCP, UDP), 0.0)
    assert failover == Notice("state", WARNING, {
        "peer": "moscow", "path": UDP, "change": "failover", "reason": f"active was {TCP}"})
    back = n.narrate(PrimaryChanged(UDP, TCP), 0.0)
    assert back == Notice("state", WARNING, {
        "peer": "moscow", "path": TCP, "change": "primary", "reason": f"active was {UDP}"})
    first = n.narrate(PrimaryChanged(None, UDP), 0.0)
    assert first is not None
    assert (first.fields["change"], first.fields["reason"]) == ("primary", "active was none")
    gone = n.narrate(PrimaryChanged(TCP, None), 0.0)
    assert gone == Notice("state", WARNING, {
        "peer": "moscow", "path": TCP, "change": "down", "reason": "no path is up"})


def test_handshake() -> None:
    n = narrator()
    assert n.narrate(HandshakeComplete(1, True), 0.0) == Notice(
        "handshake", NOTICE,
        {"peer": "moscow", "path": UDP, "result": "ok", "role": "initiator", "pq": "no"})
    notice = n.narrate(HandshakeComplete(0, False, pq=True), 0.0)
    assert notice is not None
    assert notice.fields["role"] == "responder"
    assert notice.fields["pq"] == "yes"


def test_heartbeat_says_pq_and_a_change_of_pq_is_logged_at_once() -> None:
    n = narrator()
    assert n.heartbeat_due(snap(), 0.0)
    assert heartbeat_notice(snap()).fields["pq"] == "no"
    assert list(heartbeat_notice(snap()).fields)[-1] == "pq"
    pq = snap(pq=True)
    assert heartbeat_notice(pq).fields["pq"] == "yes"
    assert n.heartbeat_due(pq, 1.0)  # the first post-quantum session: a line at once
    assert not n.heartbeat_due(pq, 2.0)


def test_first_contact_is_a_notice_but_a_new_epoch_is_priority_2() -> None:
    n = narrator()
    first = n.narrate(NewEpoch(None, NEW, (1, 1, 1, 1), (0, 0, 0, 0)), 0.0)
    assert first == Notice("epoch", NOTICE, {"peer": "moscow", "change": "first contact",
                                             "epoch": NEW.hex()})
    reset = n.narrate(NewEpoch(OLD, NEW, (1, 1, 1, 1), (2, 0, 0, 40)), 0.0)
    assert reset is not None
    assert (reset.kind, reset.priority) == ("epoch", CRIT)
    assert reset.fields["old"] == OLD.hex()
    assert reset.fields["epoch"] == NEW.hex()
    assert reset.fields["held_of_old"] == "flash:2,immediate:0,priority:0,routine:40"
    assert reset.fields["first_seqs"] == "1,1,1,1"
    assert "new epoch" in str(reset.fields["change"])


@pytest.mark.parametrize(("lane", "lost"), [(FLASH, "Z4..Z9"), (ROUTINE, "4..9")])
def test_gap_is_priority_2_and_names_the_lost_ids(lane: int, lost: str) -> None:
    notice = narrator().narrate(GapFound(Gap(OLD, lane, 4, 9)), 0.0)
    assert notice is not None
    assert (notice.kind, notice.priority) == ("gap", CRIT)
    assert notice.fields["lost"] == lost
    assert notice.fields["epoch"] == OLD.hex()
    assert "back in time" in str(notice.fields["reason"])


def test_events_without_a_line() -> None:
    n = narrator()
    assert n.narrate(Forked(OLD, ROUTINE, Fork(9, 5, "ack above our head")), 0.0) is None
    assert n.narrate(Acked(OLD, ROUTINE, 3, bytes(32)), 0.0) is None
    assert n.narrate(ResetPath(0), 0.0) is None


# --- refused packets: auth lines rate-limited per reason, everything counted ---------------


def test_store_failure_lines_are_limited_per_kind_of_job_with_the_held_count() -> None:
    """A full disk fails every commit (each send, each retransmission of the peer's):
    one priority-2 line per kind of job every 10 s, the next one saying how many."""
    assert STORE_LOG_EVERY == 10.0
    n = narrator()
    full = "StoreError: database or disk is full"
    assert n.store_failed("Commit", full, 100.0) == Notice("store", CRIT, {
        "peer": "moscow", "job": "Commit", "error": full})
    assert [n.store_failed("Commit", full, t) for t in (100.5, 104.0, 109.9)] == [None] * 3
    read = n.store_failed("ReadOutgoing", "StoreError: disk I/O error", 105.0)
    assert read is not None  # another kind of job has its own line
    later = n.store_failed("Commit", full, 110.0)
    assert later is not None
    assert later.fields["error"] == f"{full} (and 3 more since the last line)"
    assert n.store_failed("Commit", full, 130.0) == Notice("store", CRIT, {
        "peer": "moscow", "job": "Commit", "error": full})  # nothing held: no count


def test_auth_lines_are_limited_to_one_per_reason_per_10_s_with_the_held_count() -> None:
    assert AUTH_LOG_EVERY == 10.0
    n = narrator()
    bad_mac = Dropped(1, "AuthenticationError", "bad mac1")
    first = n.narrate(bad_mac, 100.0)
    assert first == Notice("auth", ERR, {
        "peer": "moscow", "path": UDP, "reason": "AuthenticationError: bad mac1"})
    for t in (100.0, 101.0, 105.5, 109.99):  # held: 4 more within the 10 s
        assert n.narrate(bad_mac, t) is None
    later = n.narrate(bad_mac, 110.0)
    assert later is not None
    assert later.priority == ERR
    assert later.fields["reason"] == (
        "AuthenticationError: bad mac1 (and 4 more since the last line)")
    assert n.narrate(bad_mac, 115.0) is None  # the window restarts at the last line
    quiet = n.narrate(bad_mac, 200.0)
    assert quiet is not None
    assert quiet.fields["reason"] == "AuthenticationError: bad mac1 (and 1 more since the " \
                                     "last line)"
    assert n.narrate(bad_mac, 300.0) == Notice("auth", ERR, {  # nothing held: no count
        "peer": "moscow", "path": UDP, "reason": "AuthenticationError: bad mac1"})
    assert n.dropped == {"AuthenticationError": 9}  # every one counted, logged or not


def test_auth_limit_is_per_kind_and_path_and_shows_the_latest_reason() -> None:
    n = narrator()
    assert n.narrate(Dropped(0, "AuthenticationError", "bad mac1"), 0.0) is not None
    assert n.narrate(Dropped(1, "AuthenticationError", "bad mac1"), 0.0) is not None
    assert n.narrate(Dropped(0, "HandshakeError", "bad mac1"), 0.0) is not None
    for seq in range(1000):  # a peer varying its reason text gets no extra lines
        reason = f"envelope {seq} does not chain to its predecessor"
        assert n.narrate(Dropped(0, "AuthenticationError", reason), 1.0) is None
    assert len(n._auth) == 3  # bounded by kinds x paths, not by the peer's text
    later = n.narrate(Dropped(0, "AuthenticationError", "bad AEAD tag"), 10.0)
    assert later is not None
    assert later.fields["reason"] == (
        "AuthenticationError: bad AEAD tag (and 1000 more since the last line)")
    assert n.narrate(Dropped(0, "HandshakeError", "rate limited"), 2.0) is None
    assert n.dropped == {"AuthenticationError": 1003, "HandshakeError": 2}


def test_other_refusals_are_debug_lines_every_time() -> None:
    n = narrator()
    for t in (0.0, 0.1, 0.2):
        assert n.narrate(Dropped(0, "DecodeError", "bad msgpack"), t) == Notice(
            "debug", DEBUG,
            {"peer": "moscow", "path": TCP, "dropped": "DecodeError", "reason": "bad msgpack"})
    assert n.dropped == {"DecodeError": 3}


def test_internal_errors_are_counted_debug_lines() -> None:
    n = narrator()
    notice = n.internal("StoreDone", "KeyError: 3")
    assert (notice.kind, notice.priority) == ("debug", DEBUG)
    assert notice.fields["input"] == "StoreDone"
    assert n.dropped == {"internal": 1}
