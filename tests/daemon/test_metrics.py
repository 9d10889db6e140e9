"""daemon/metrics.py: /metrics over real HTTP, parsed by prometheus_client's parser."""

from __future__ import annotations

import socket
import urllib.error

import pytest
import trio

from hotline.daemon.metrics import (
    DROP_REASONS,
    HANDSHAKE_RESULTS,
    Metrics,
    MetricsServer,
    MetricsSnapshot,
    PathMetrics,
    drop_reason,
    serve_metrics,
)
from hotline.errors import ConfigError
from hotline.proto.supervision import ALERT_EVENTS, PRECEDENCES
from hotline.testing.metrics import Samples, scrape_metrics
from hotline.testing.metrics import sample as value

TCP, UDP = "tcp://127.0.0.1:7411", "udp://127.0.0.1:7411"
SNAPSHOT = MetricsSnapshot(
    link_up=True,
    paths=(PathMetrics(TCP, True, 0.00042), PathMetrics(UDP, False)),
    backlog={"flash": 1, "routine": 250},
    sent={"flash": 3, "immediate": 2, "priority": 1, "routine": 1000},
    received={"routine": 7},
    operator_pending={"flash": 1},
    last_heard_seconds=0.25,
    packets_dropped={"authentication": 4, "replay": 9},
    handshakes={"ok": 2, "failed": 1},
    drill_last_success=1_700_000_000.5,
    alerts={"link_down": 1, "link_restored": 1},
)
# DESIGN §10: every metric name (as exposed: counters end in _total).
CONTRACT = {
    "hotline_link_up", "hotline_path_up", "hotline_path_rtt_seconds",
    "hotline_backlog_messages", "hotline_messages_sent_total",
    "hotline_messages_received_total", "hotline_operator_pending",
    "hotline_last_heard_seconds", "hotline_packets_dropped_total", "hotline_handshakes_total",
    "hotline_drill_last_success_timestamp_seconds", "hotline_alerts_total",
}

async def scrape_served(metrics: Metrics, host: str = "127.0.0.1") -> tuple[str, Samples]:
    async with serve_metrics((host, 0), metrics) as address:
        assert address is not None
        assert address[1] != 0
        return await trio.to_thread.run_sync(scrape_metrics, address)


async def test_every_contract_metric_over_http() -> None:
    metrics = Metrics()
    metrics.publish(SNAPSHOT)
    content_type, s = await scrape_served(metrics)
    assert content_type.startswith("text/plain")
    assert {name for name, _ in s} >= CONTRACT
    assert value(s, "hotline_link_up") == 1
    assert value(s, "hotline_path_up", path=TCP) == 1
    assert value(s, "hotline_path_up", path=UDP) == 0
    assert value(s, "hotline_path_rtt_seconds", path=TCP) == pytest.approx(0.00042)
    assert ("hotline_path_rtt_seconds", (("path", UDP),)) not in s  # no PONG yet
    assert [value(s, "hotline_backlog_messages", precedence=p) for p in PRECEDENCES] == [
        1, 0, 0, 250]
    assert [value(s, "hotline_messages_sent_total", precedence=p) for p in PRECEDENCES] == [
        3, 2, 1, 1000]
    assert [value(s, "hotline_messages_received_total", precedence=p)
            for p in PRECEDENCES] == [0, 0, 0, 7]
    assert [value(s, "hotline_operator_pending", precedence=p) for p in PRECEDENCES] == [
        1, 0, 0, 0]
    assert 0.25 <= value(s, "hotline_last_heard_seconds") < 60
    assert {r: value(s, "hotline_packets_dropped_total", reason=r) for r in DROP_REASONS} == {
        "decode": 0, "limit": 0, "authentication": 4, "replay": 9, "handshake": 0}
    assert {r: value(s, "hotline_handshakes_total", result=r) for r in HANDSHAKE_RESULTS} == {
        "ok": 2, "failed": 1}
    assert value(s, "hotline_drill_last_success_timestamp_seconds") == 1_700_000_000.5
    alerts = {e: value(s, "hotline_alerts_total", event=e) for e in ALERT_EVENTS}
    assert alerts == {**dict.fromkeys(ALERT_EVENTS, 0), "link_down": 1, "link_restored": 1}
    assert any(name.startswith("process_") for name, _ in s)  # the standard ones too


async def test_before_the_first_snapshot_every_label_is_zero() -> None:
    _, s = await scrape_served(Metrics())
    assert value(s, "hotline_link_up") == 0
    for p in PRECEDENCES:
        assert value(s, "hotline_backlog_messages", precedence=p) == 0
        assert value(s, "hotline_messages_sent_total", precedence=p) == 0
    assert all(value(s, "hotline_alerts_total", event=e) == 0 for e in ALERT_EVENTS)
    assert not any(name == "hotline_drill_last_success_timestamp_seconds" for name, _ in s)
    assert not any(name in ("hotline_path_up", "hotline_path_rtt_seconds") for name, _ in s)


def test_unknown_label_values_are_kept() -> None:
    metrics = Metrics()
    metrics.publish(MetricsSnapshot(packets_dropped={"toolarge": 2}))
    [family] = [f for f in metrics.collect() if f.name == "hotline_packets_dropped"]
    labels = [s.labels["reason"] for s in family.samples if s.name.endswith("_total")]
    assert labels == [*DROP_REASONS, "toolarge"]


def test_drop_reasons_from_error_class_names() -> None:
    kinds = ["DecodeError", "LimitError", "AuthenticationError", "ReplayError", "HandshakeError"]
    assert [drop_reason(k) for k in kinds] == list(DROP_REASONS)
    assert drop_reason("SomethingNew") == "other"


def test_last_heard_keeps_growing_between_snapshots() -> None:
    """A loop that stops publishing still shows the silence growing."""
    now = [100.0]
    metrics = Metrics(clock=lambda: now[0])
    metrics.publish(MetricsSnapshot(last_heard_seconds=2.0))
    now[0] = 107.5
    [family] = [f for f in metrics.collect() if f.name == "hotline_last_heard_seconds"]
    assert family.samples[0].value == 9.5


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_ipv6_listener() -> None:
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    metrics = Metrics()
    metrics.publish(SNAPSHOT)
    _, s = await scrape_served(metrics, "::1")
    assert value(s, "hotline_link_up") == 1


async def test_a_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf'metrics = "127.0.0.1:{port}": cannot listen: '
                                              "Address already in use"):
            MetricsServer("127.0.0.1", port, Metrics())
        with pytest.raises(ConfigError, match="cannot listen"):
            async with serve_metrics(("127.0.0.1", port), Metrics()):
                pass


async def test_an_address_not_ours_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r'"192\.0\.2\.1:9411": cannot listen: Cannot assign'):
        MetricsServer("192.0.2.1", 9411, Metrics())  # TEST-NET-1: bind only, nothing sent


async def test_no_address_serves_nothing() -> None:
    async with serve_metrics(None, Metrics()) as address:
        assert address is None


async def test_stopping_closes_the_port() -> None:
    async with serve_metrics(("127.0.0.1", 0), Metrics()) as address:
        assert address is not None
    with pytest.raises(urllib.error.URLError):
        await trio.to_thread.run_sync(scrape_metrics, address)
