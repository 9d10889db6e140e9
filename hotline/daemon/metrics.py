"""Prometheus metrics at ``/metrics`` (DESIGN §10), served beside the event loop.

Theory of operation. The runner owns every number; the HTTP server must never touch
the runner's objects nor hold up its loop. So the seam is one immutable value:

* the runner builds a frozen ``MetricsSnapshot`` (per-precedence dicts keyed
  ``flash``/``immediate``/``priority``/``routine``, per-path entries, counters) and
  calls ``Metrics.publish(snapshot)`` once per loop turn (or when something changed).
  ``publish`` swaps one reference (atomic under the GIL) and notes when, on the
  monotonic clock;
* ``serve_metrics`` (an async context manager) runs a single-threaded ``wsgiref`` server with
  ``prometheus_client.make_wsgi_app`` on a daemon thread. On each scrape the registry
  calls ``Metrics.collect()``, which reads the latest snapshot and yields metric
  families (``prometheus_client``'s classes and text exposition; no hand-written
  format). ``hotline_last_heard_seconds`` is the published age plus the time since
  publication, so it keeps growing if the loop itself stops turning.

The server handles one request at a time with a 5 s socket timeout: a slow or hostile
client can delay a scrape, never grow threads or memory, and never reach the loop.
The registry also carries ``prometheus_client``'s standard ``process_*`` metrics.
A bind failure is a ``ConfigError`` naming the ``metrics`` key (exit 78).

Every DESIGN §10 metric is always present, with every label value known in advance
(all four precedences, every alert event, handshake results ``ok``/``failed``, drop
reasons ``decode``/``limit``/``authentication``/``replay``/``handshake``) at 0, so
``rate()`` and ``increase()`` work from the first scrape. Exceptions: a path's RTT
before its first PONG, and the drill timestamp before the first successful drill.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import trio
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hotline.errors import ConfigError
from hotline.proto.supervision import ALERT_EVENTS, PRECEDENCES

DROP_REASONS = ("decode", "limit", "authentication", "replay", "handshake")
_DROP_REASON_OF_ERROR = {
    "DecodeError": "decode", "LimitError": "limit", "AuthenticationError": "authentication",
    "ReplayError": "replay", "HandshakeError": "handshake",
}
HANDSHAKE_RESULTS = ("ok", "failed")
REQUEST_TIMEOUT = 5.0


def drop_reason(kind: str) -> str:
    """The ``reason`` label for a dropped packet's error class name (``Dropped.kind``).

    ``AuthenticationError`` → ``authentication``; an unknown class → ``other``.
    """
    return _DROP_REASON_OF_ERROR.get(kind, "other")


@dataclass(frozen=True)
class PathMetrics:
    """One configured path to the peer."""

    url: str
    up: bool
    rtt_seconds: float | None = None  # smoothed RTT; None before the first PONG


@dataclass(frozen=True, kw_only=True)
class MetricsSnapshot:
    """Everything ``/metrics`` shows, as the runner saw it at one loop turn.

    Per-precedence mappings are keyed by PRECEDENCES; a missing key counts as 0.
    Counters (``sent``, ``received``, ``packets_dropped``, ``handshakes``, ``alerts``)
    only grow while the daemon runs; a restart may reset them (Prometheus copes).
    """

    link_up: bool = False  # at least one path is up
    paths: tuple[PathMetrics, ...] = ()
    backlog: Mapping[str, int] = field(default_factory=dict)  # ours, not yet acked
    sent: Mapping[str, int] = field(default_factory=dict)  # messages into our stream
    received: Mapping[str, int] = field(default_factory=dict)  # delivered to our inbox
    operator_pending: Mapping[str, int] = field(default_factory=dict)  # awaiting their ack
    last_heard_seconds: float = 0.0  # since an authenticated packet (or start-up)
    packets_dropped: Mapping[str, int] = field(default_factory=dict)  # by DROP_REASONS
    handshakes: Mapping[str, int] = field(default_factory=dict)  # by HANDSHAKE_RESULTS
    drill_last_success: float | None = None  # Unix seconds of the last good drill
    alerts: Mapping[str, int] = field(default_factory=dict)  # raised, by ALERT_EVENTS


class Metrics(Collector):
    """The latest snapshot, as a ``prometheus_client`` collector; see the module header."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._latest = (MetricsSnapshot(), clock())

    def publish(self, snapshot: MetricsSnapshot) -> None:
        """Make ``snapshot`` what the next scrape shows (cheap; any thread)."""
        self._latest = (snapshot, self._clock())

    def registry(self) -> CollectorRegistry:
        """A registry holding these metrics and the standard ``process_*`` ones."""
        registry = CollectorRegistry(auto_describe=True)
        registry.register(self)
        ProcessCollector(registry=registry)
        return registry

    def collect(self) -> Iterator[Metric]:
        """The metric families of the latest snapshot (called by the registry)."""
        snap, published_at = self._latest
        yield _gauge("hotline_link_up", "1 if at least one path to the peer is up",
                     float(snap.link_up))
        yield from _path_families(snap.paths)
        yield _by_label(GaugeMetricFamily, "hotline_backlog_messages",
                        "our messages not yet acknowledged by the peer", "precedence",
                        PRECEDENCES, snap.backlog)
        yield _by_label(CounterMetricFamily, "hotline_messages_sent",
                        "messages sealed into our stream", "precedence", PRECEDENCES,
                        snap.sent)
        yield _by_label(CounterMetricFamily, "hotline_messages_received",
                        "messages from the peer delivered to our inbox", "precedence",
                        PRECEDENCES, snap.received)
        yield _by_label(GaugeMetricFamily, "hotline_operator_pending",
                        "our messages awaiting the far operator's acknowledgement",
                        "precedence", PRECEDENCES, snap.operator_pending)
        age = snap.last_heard_seconds + max(0.0, self._clock() - published_at)
        yield _gauge("hotline_last_heard_seconds",
                     "seconds since an authenticated packet from the peer", age)
        yield _by_label(CounterMetricFamily, "hotline_packets_dropped",
                        "packets from the network refused", "reason", DROP_REASONS,
                        snap.packets_dropped)
        yield _by_label(CounterMetricFamily, "hotline_handshakes", "link handshakes",
                        "result", HANDSHAKE_RESULTS, snap.handshakes)
        drill = GaugeMetricFamily("hotline_drill_last_success_timestamp_seconds",
                                  "Unix time of the last successful drill")
        if snap.drill_last_success is not None:
            drill.add_metric([], snap.drill_last_success)
        yield drill
        yield _by_label(CounterMetricFamily, "hotline_alerts", "alerts raised", "event",
                        ALERT_EVENTS, snap.alerts)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _path_families(paths: Iterable[PathMetrics]) -> Iterator[Metric]:
    up = GaugeMetricFamily("hotline_path_up", "1 if the path is up", labels=["path"])
    rtt = GaugeMetricFamily("hotline_path_rtt_seconds", "smoothed round-trip time",
                            labels=["path"])
    for path in paths:
        up.add_metric([path.url], float(path.up))
        if path.rtt_seconds is not None:
            rtt.add_metric([path.url], path.rtt_seconds)
    return iter((up, rtt))


def _by_label(family: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str,
              doc: str, label: str, known: Iterable[str],
              values: Mapping[str, int]) -> Metric:
    metric = family(name, doc, labels=[label])
    for value in dict.fromkeys([*known, *values]):
        metric.add_metric([value], float(values.get(value, 0)))
    return metric


# --- the HTTP server ------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    """No request lines on stderr (that is the daemon's log); a socket timeout."""

    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing."""


class _Server(WSGIServer):
    """One request at a time; no reverse-DNS lookup at bind; errors stay off stderr."""

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that broke off or timed out: nothing to report."""


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """``/metrics`` over HTTP on a daemon thread (blocking API; see ``serve_metrics``)."""

    def __init__(self, host: str, port: int, metrics: Metrics) -> None:
        """Bind and start serving.

        Raises:
            ConfigError: the address cannot be resolved or bound (``metrics = …``).
        """
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                        flags=socket.AI_PASSIVE)[0][0]
            server_class = _Server6 if family == socket.AF_INET6 else _Server
            self._server: WSGIServer = make_server(host, port, make_wsgi_app(metrics.registry()),
                                       server_class, _QuietHandler)
        except OSError as err:
            raise ConfigError(f"metrics = \"{shown}\": cannot listen: "
                              f"{err.strerror or err}") from err
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,),
                                        name="hotline-metrics", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when ``metrics`` asked for port 0."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop serving and close the socket (blocks up to the poll interval)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@contextlib.asynccontextmanager
async def serve_metrics(address: tuple[str, int] | None,
                        metrics: Metrics) -> AsyncIterator[tuple[str, int] | None]:
    """Serve ``metrics`` on ``address`` (config ``metrics``) inside the ``async with``.

    Enter it before opening the daemon's nursery, like the control socket, so that a
    bind failure is a plain ``ConfigError``. The blocking bind and shutdown run on
    worker threads: the loop never waits for them.

    Args:
        address: (host, port), or None for no metrics (then nothing is served).
        metrics: what to serve.

    Yields:
        The bound (host, port) — the real port when port 0 was asked — or None.

    Raises:
        ConfigError: the address cannot be resolved or bound.
    """
    if address is None:
        yield None
        return
    server = await trio.to_thread.run_sync(MetricsServer, *address, metrics)
    try:
        yield server.address
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.close)
