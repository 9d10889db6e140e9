"""Supervision against real daemons (DESIGN §10): /metrics over HTTP, alert commands.

Two daemons through the fault proxy; washington serves ``/metrics`` on a free port and
runs an ``alert_command`` that appends its stdin (one JSON object per alert) to a file.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from hotline.testing.loopback import LoopbackPair, ProxiedPair, free_port
from hotline.testing.metrics import sample, scrape_metrics

ALERT_AFTER = 3.0


def _recorder(tmp_path: Path, name: str, body: str) -> Path:
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def pair(tmp_path: Path):
    port = free_port()
    out = tmp_path / "alerts.jsonl"
    record = _recorder(tmp_path, "record", f'cat >> "{out}"; echo >> "{out}"')
    p = ProxiedPair(tmp_path / "pair", settings={"heartbeat": 0.5, "dead_after": 1.5},
                    node_settings={"washington": {
                        "metrics": f"127.0.0.1:{port}", "alert_command": [str(record)],
                        "alert_after": ALERT_AFTER, "alert_every": 300}})
    p.metrics = ("127.0.0.1", port)  # type: ignore[attr-defined]
    p.alerts = out  # type: ignore[attr-defined]
    p.start_all()
    try:
        p.wait_up()
        yield p
    finally:
        p.close()


def _alerts(p: ProxiedPair) -> list[dict[str, Any]]:
    path: Path = p.alerts  # type: ignore[attr-defined]
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _events(p: ProxiedPair) -> list[str]:
    return [a["event"] for a in _alerts(p)]


def test_metrics_over_http_show_every_design_metric(pair: ProxiedPair) -> None:
    assert pair.cli(0, "send", "--wait", "-p", "flash", "z").returncode == 0
    assert pair.cli(0, "send", "--wait", "r1").returncode == 0
    assert pair.cli(0, "send", "--wait", "r2").returncode == 0
    assert pair.cli(1, "send", "--wait", "from moscow").returncode == 0

    def scraped() -> tuple[str, Any]:
        return scrape_metrics(pair.metrics)  # type: ignore[attr-defined]

    # snapshots are published at most every 0.25 s, on a loop turn (at least every
    # heartbeat): wait for the one that holds the last commit
    pair.wait_for(lambda: sample(scraped()[1], "hotline_messages_received_total",
                                 precedence="routine") == 1, 10, "a fresh snapshot")
    content_type, samples = scraped()
    assert content_type.startswith("text/plain")
    assert sample(samples, "hotline_link_up") == 1
    status = pair.status(0)
    assert status is not None
    for path in status["paths"]:
        assert sample(samples, "hotline_path_up", path=path["url"]) == 1
        assert sample(samples, "hotline_path_rtt_seconds", path=path["url"]) > 0
    assert sample(samples, "hotline_messages_sent_total", precedence="flash") == 1
    assert sample(samples, "hotline_messages_sent_total", precedence="routine") == 2
    assert sample(samples, "hotline_messages_received_total", precedence="routine") == 1
    assert sample(samples, "hotline_messages_received_total", precedence="flash") == 0
    for precedence in ("flash", "immediate", "priority", "routine"):
        assert sample(samples, "hotline_backlog_messages", precedence=precedence) == 0
        assert sample(samples, "hotline_operator_pending", precedence=precedence) >= 0
    assert 0 <= sample(samples, "hotline_last_heard_seconds") < 5
    assert sample(samples, "hotline_handshakes_total", result="ok") >= 1
    assert ("hotline_packets_dropped_total", (("reason", "authentication"),)) in samples
    # no drill has succeeded yet: the gauge has no sample until the first one does
    assert ("hotline_drill_last_success_timestamp_seconds", ()) not in samples
    assert sample(samples, "hotline_alerts_total", event="link_down") == 0


def test_link_down_after_alert_after_and_restored_nothing_for_a_blip(
        pair: ProxiedPair) -> None:
    # A blip shorter than alert_after: paths go down (dead_after 1.5 s) and come back.
    pair.set_faults("tcp", blackhole=True)
    pair.set_faults("udp", blackhole=True)
    time.sleep(ALERT_AFTER - 0.5)
    pair.set_faults("tcp", blackhole=False)
    pair.set_faults("udp", blackhole=False)
    pair.wait_up(timeout=30)
    time.sleep(1.0)
    assert _events(pair) == []
    # A real outage: longer than dead_after + alert_after.
    pair.set_faults("tcp", blackhole=True)
    pair.set_faults("udp", blackhole=True)
    pair.wait_for(lambda: "link_down" in _events(pair), 30, "link_down alert")
    assert _events(pair) == ["link_down"]
    [down] = _alerts(pair)
    assert set(down) == {"event", "peer", "severity", "text", "ts"}
    assert (down["peer"], down["severity"]) == ("moscow", "critical")
    pair.set_faults("tcp", blackhole=False)
    pair.set_faults("udp", blackhole=False)
    pair.wait_for(lambda: "link_restored" in _events(pair), 30, "link_restored alert")
    assert _events(pair) == ["link_down", "link_restored"]
    journal = [line for line in pair[0].log_lines("alert")]
    assert len(journal) == 2
    _, samples = scrape_metrics(pair.metrics)  # type: ignore[attr-defined]
    assert sample(samples, "hotline_alerts_total", event="link_down") == 1


def test_a_hanging_or_failing_alert_command_never_blocks_the_daemon(tmp_path: Path) -> None:
    hang = _recorder(tmp_path, "hang", "exec sleep 600")
    p = ProxiedPair(tmp_path / "pair", settings={"heartbeat": 0.5, "dead_after": 1.5},
                    node_settings={"washington": {
                        "alert_command": [str(hang)], "alert_after": 1.0, "alert_every": 1,
                        "alert_timeout": 2}})
    p.start_all()
    try:
        p.wait_up()
        for outage in range(1, 3):  # two outages: two alerts, each command hangs
            p.set_faults("tcp", blackhole=True)
            p.set_faults("udp", blackhole=True)
            p.wait_for(lambda n=outage: sum("link_down" in x for x in p[0].log_lines("alert"))
                       >= n, 30, f"link_down alert {outage}")
            p.set_faults("tcp", blackhole=False)
            p.set_faults("udp", blackhole=False)
            p.wait_up(timeout=30)
            assert p.cli(0, "send", "--wait", "still fine").returncode == 0
        proc = p[0].proc
        assert proc is not None
        assert proc.poll() is None  # the daemon runs on
        os.kill(proc.pid, 0)
    finally:
        p.close()
    failed = [x for x in p[0].log_lines("alert_command") if "result=ok" not in x]
    assert failed, "the hung command should have been reported (timeout or killed)"


def test_a_daemon_refusing_an_insecure_key_pages_before_it_exits(tmp_path: Path) -> None:
    """DESIGN §10 ``insecure_key``: the journal line and ``alert_command``, then exit 77."""
    out = tmp_path / "alerts.jsonl"
    record = _recorder(tmp_path, "record", f'cat >> "{out}"')
    p = LoopbackPair(tmp_path / "pair", node_settings={"washington": {
        "alert_command": [str(record)]}})
    p[0].key.chmod(0o644)
    p.start(0)
    assert p[0].proc is not None
    assert p[0].proc.wait(timeout=60) == 77
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(a["event"], a["severity"], a["peer"]) for a in alerts] == [
        ("insecure_key", "critical", "moscow")]
    assert str(p[0].key) in alerts[0]["text"]
    assert [line for line in p[0].log_lines("alert") if "alert=insecure_key" in line]
    assert p[0].log_lines("insecure")
