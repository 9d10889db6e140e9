"""The I/O side of supervision: running alert commands and serving metrics (DESIGN §10).

The rules — which alert goes out and when (``link_down`` only after ``alert_after``,
one per event kind per ``alert_every``, …) — are the endpoint's (``AlertPolicy`` in
hotline/proto/supervision.py, owned by ``Endpoint``): every ``poll`` returns the alerts
it raised. This holds what carries them out:

* ``alerts`` — the ``AlertRunner`` (journal line at priority ≤ 3 + ``alert_command``);
* ``metrics`` — the ``Metrics`` collector behind ``/metrics``.

Per loop turn the runner calls ``after_turn(now, alerts, snapshot)``: every alert is
fired, and — when ``metrics`` is configured — a fresh ``MetricsSnapshot`` is published
at most every ``PUBLISH_EVERY`` seconds (``snapshot`` is a callable, so a busy loop
does not build one per turn).

``running()`` is entered before the daemon's nursery (a bind failure is a plain
``ConfigError``): it serves ``/metrics`` and runs the alert commands until it exits,
then gives queued alert commands up to their timeout to finish.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence

import trio

from hotline.config import Config
from hotline.daemon.alerts import AlertRunner
from hotline.daemon.logs import Logger
from hotline.daemon.metrics import (
    Metrics,
    MetricsSnapshot,
    PathMetrics,
    drop_reason,
    serve_metrics,
)
from hotline.proto.endpoint import Endpoint
from hotline.proto.lanes import NAMES
from hotline.proto.supervision import Alert, AlertPolicy, AlertSettings

PUBLISH_EVERY = 0.25  # seconds between metrics snapshots on a busy loop


class Supervision:
    """Alert runner and metrics for one link; see the module header."""

    def __init__(self, config: Config, logger: Logger, now: float) -> None:
        """
        Args:
            config: ``alert_command``, ``alert_timeout`` and ``metrics`` are used.
            logger: the daemon's logger (alert lines, command failures).
            now: the runner's clock at start-up.
        """
        self.alerts = AlertRunner(config.alert_command, logger, timeout=config.alert_timeout)
        self.metrics = Metrics()
        self._address = config.metrics
        self._drain_timeout = config.alert_timeout + 1.0
        self._next_publish = now

    def after_turn(self, now: float, alerts: Sequence[Alert],
                   snapshot: Callable[[], MetricsSnapshot]) -> None:
        """Call once per loop turn with the alerts the endpoint raised.

        Args:
            now: the turn's time (the runner's monotonic clock).
            alerts: raised this turn (``Outputs.alerts``).
            snapshot: builds the metrics snapshot (called only when one is due).
        """
        for alert in alerts:
            self.alerts.fire(alert)
        if self._address is not None and (alerts or now >= self._next_publish):
            self._next_publish = now + PUBLISH_EVERY
            self.metrics.publish(snapshot())

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[tuple[str, int] | None]:
        """Serve ``/metrics`` and run alert commands inside the ``async with``.

        Yields:
            The bound metrics address (host, port), or None when ``metrics`` is off.

        Raises:
            ConfigError: the metrics address cannot be bound.
        """
        async with serve_metrics(self._address, self.metrics) as address, \
                trio.open_nursery() as nursery:
            nursery.start_soon(self.alerts.run)
            try:
                yield address
            finally:
                self.alerts.close()  # run() returns once the queued alerts have run
                nursery.cancel_scope.deadline = trio.current_time() + self._drain_timeout


async def alert_insecure_key(config: Config, logger: Logger, path: str, reason: str) -> None:
    """DESIGN §10 ``insecure_key`` for a daemon that refuses to start over a key file.

    The endpoint (and its alert policy) never exists then, so this raises the alert with
    a policy of its own, fires it through the same ``AlertRunner`` (journal line and
    ``alert_command``) and waits for the command, at most its timeout, before returning.
    """
    now = trio.current_time()
    policy = AlertPolicy(config.peer_name, AlertSettings(config.alert_after,
                                                         config.alert_every), now)
    policy.on_insecure_key(path, reason, now)
    supervision = Supervision(dataclasses.replace(config, metrics=None), logger, now)
    async with supervision.running():
        supervision.after_turn(now, policy.alerts_to_send(), MetricsSnapshot)


def metrics_snapshot(endpoint: Endpoint, now: float, up_since: float) -> MetricsSnapshot:
    """The ``/metrics`` view of ``endpoint`` at ``now`` (``up_since``: daemon start)."""
    status = endpoint.status(now)
    heard = [p.last_heard_s for p in status.paths if p.last_heard_s is not None]
    dropped: dict[str, int] = {}
    for kind, count in endpoint.narrator.dropped.items():
        reason = drop_reason(kind)
        dropped[reason] = dropped.get(reason, 0) + count
    pending = dict(zip(NAMES, endpoint.operator.pending_counts(), strict=True))
    counters = endpoint.counters
    return MetricsSnapshot(
        link_up=any(p.state == "up" for p in status.paths),
        paths=tuple(PathMetrics(p.url, p.state == "up",
                                None if p.rtt_ms is None else p.rtt_ms / 1000)
                    for p in status.paths),
        backlog={name: lane.backlog for name, lane in zip(NAMES, status.lanes, strict=True)},
        sent=dict(zip(NAMES, counters.sent, strict=True)),
        received=dict(zip(NAMES, counters.received, strict=True)),
        operator_pending=pending,
        last_heard_seconds=min(heard) if heard else now - up_since,
        packets_dropped=dropped,
        handshakes=dict(counters.handshakes),
        drill_last_success=endpoint.operator.drills.last_success_at,
        alerts=endpoint.alert_policy.counts,
    )
