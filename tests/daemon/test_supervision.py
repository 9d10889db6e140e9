"""daemon/supervision.py: the runner's per-turn seam for alerts and metrics."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import trio

from hotline.config import Config, PathSpec
from hotline.daemon.logs import Logger
from hotline.daemon.metrics import MetricsSnapshot
from hotline.daemon.supervision import PUBLISH_EVERY, Supervision, metrics_snapshot
from hotline.proto.identity import Identity
from hotline.proto.lanes import FLASH
from hotline.proto.operator import STATUS_ITEMS
from hotline.proto.requests import SendRequest, Stored
from hotline.proto.supervision import Alert
from hotline.testing.endpoints import NodePair
from hotline.testing.metrics import sample, scrape_metrics

CONFIG = Config(
    path=Path("/etc/hotline/washington.toml"), key_path=Path("/k"), listen=(),
    state_dir=Path("/s"), control=Path("/c"), peer_name="moscow",
    peer_key=Identity.from_seed(bytes(32)).public,
    peer_paths=(PathSpec("tcp://127.0.0.1:7411", "tcp", "127.0.0.1", 7411),),
    alert_after=30.0, alert_every=300.0,
)


def recorder() -> tuple[Logger, list[dict[str, Any]]]:
    logger = Logger(io.StringIO(), "json")
    events: list[dict[str, Any]] = []
    logger.add_sink(events.append)
    return logger, events


def alerts(events: list[dict[str, Any]]) -> list[str]:
    return [e["alert"] for e in events if e["event"] == "alert"]


def test_turns_fire_the_alerts_the_endpoint_raised() -> None:
    logger, events = recorder()
    sup = Supervision(CONFIG, logger, now=0.0)
    built: list[float] = []

    def snapshot() -> MetricsSnapshot:
        built.append(0)
        return MetricsSnapshot()

    sup.after_turn(1.0, [], snapshot)
    assert alerts(events) == []
    sup.after_turn(2.0, [Alert("link_down", "moscow", "critical", "down")], snapshot)
    sup.after_turn(3.0, [Alert("link_restored", "moscow", "notice", "up")], snapshot)
    assert alerts(events) == ["link_down", "link_restored"]
    assert built == []  # metrics off: no snapshot is ever built


def test_snapshots_are_built_at_most_every_publish_interval() -> None:
    sup = Supervision(dataclasses.replace(CONFIG, metrics=("127.0.0.1", 0)), recorder()[0],
                      now=0.0)
    built: list[float] = []
    for i in range(8):  # turns every quarter of the interval, for two intervals
        now = i * PUBLISH_EVERY / 4

        def snapshot(now: float = now) -> MetricsSnapshot:
            built.append(now)
            return MetricsSnapshot()

        sup.after_turn(now, [], snapshot)
    assert built == [0.0, PUBLISH_EVERY]


async def test_running_serves_metrics_and_runs_alert_commands(tmp_path: Path) -> None:
    out = tmp_path / "alerts"
    config = dataclasses.replace(CONFIG, metrics=("127.0.0.1", 0),
                                 alert_command=("/bin/sh", "-c", 'cat >> "$0"', str(out)))
    logger, events = recorder()
    sup = Supervision(config, logger, now=0.0)
    async with sup.running() as address:
        assert address is not None
        raised = [Alert("link_down", "moscow", "critical", "link to moscow down")]
        sup.after_turn(31.0, raised, lambda: MetricsSnapshot(
            last_heard_seconds=31.0, alerts={"link_down": 1}))
        samples = (await trio.to_thread.run_sync(scrape_metrics, address))[1]
    # Leaving running() let the queued command finish.
    assert [json.loads(line)["event"] for line in out.read_text().splitlines()] == ["link_down"]
    assert [e["result"] for e in events if e["event"] == "alert_command"] == ["ok"]
    assert sample(samples, "hotline_link_up") == 0
    assert sample(samples, "hotline_alerts_total", event="link_down") == 1
    assert sample(samples, "hotline_last_heard_seconds") >= 31


def test_metrics_count_every_pending_message_not_only_those_status_lists(
        tmp_path: Path) -> None:
    """``status`` lists at most STATUS_ITEMS pending messages; the gauge counts them all."""
    pair = NodePair(tmp_path / "pair")
    try:
        pair.run(1.0)
        a = pair.a
        token = a.call(SendRequest("text/plain", tuple(b"x" for _ in range(STATUS_ITEMS + 5)),
                                   FLASH))
        a.turn()
        assert isinstance(a.replies.pop(token), Stored)
        snap = metrics_snapshot(a.endpoint, pair.now, up_since=0.0)
        assert len(a.endpoint.status(pair.now).operator_pending) == STATUS_ITEMS
        assert snap.operator_pending == {"flash": STATUS_ITEMS + 5, "immediate": 0,
                                         "priority": 0, "routine": 0}
    finally:
        pair.close()
