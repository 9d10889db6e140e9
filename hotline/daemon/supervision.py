"""The runner's one seam for supervision: alerts and metrics (DESIGN §10).

``Supervision`` holds the three parts and is driven by the runner:

* ``policy`` — the sans-IO ``AlertPolicy`` (hotline/proto/supervision.py). The runner
  calls its ``on_*`` hooks where the events happen (``on_epoch_changed``,
  ``on_auth_failure``, ``on_operator_overdue``, ``on_drill_failed``,
  ``on_store_error``, ``on_insecure_key``);
* ``alerts`` — the ``AlertRunner`` (journal line + ``alert_command``);
* ``metrics`` — the ``Metrics`` collector behind ``/metrics``.

Per loop turn the runner calls ``after_turn(now, link_up, snapshot)``: it tells the
policy the link state, fires the policy's timer if due, hands every alert raised this
turn to the alert runner, and — when ``metrics`` is configured — publishes a fresh
``MetricsSnapshot`` at most every ``PUBLISH_EVERY`` seconds (``snapshot`` is a
callable, so a busy loop does not build one per turn; ``alerts`` counts are filled
in here). ``get_timer()`` joins the runner's deadlines.

``running()`` is entered before the daemon's nursery (a bind failure is a plain
``ConfigError``): it serves ``/metrics`` and runs the alert commands until it exits,
then gives queued alert commands up to their timeout to finish.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

import trio

from hotline.config import Config
from hotline.daemon.alerts import DEFAULT_TIMEOUT, AlertRunner
from hotline.daemon.logs import Logger
from hotline.daemon.metrics import Metrics, MetricsSnapshot, serve_metrics
from hotline.proto.supervision import AlertPolicy, AlertSettings

PUBLISH_EVERY = 0.25  # seconds between metrics snapshots on a busy loop


class Supervision:
    """Alert policy, alert runner and metrics for one link; see the module header."""

    def __init__(self, config: Config, logger: Logger, now: float, *,
                 alert_timeout: float = DEFAULT_TIMEOUT) -> None:
        """
        Args:
            config: ``peer_name``, ``alert_*`` and ``metrics`` are used.
            logger: the daemon's logger (alert lines, command failures).
            now: the runner's clock at start-up (the link is down until a path is up).
            alert_timeout: seconds before an alert command is killed.
        """
        settings = AlertSettings(alert_after=config.alert_after, alert_every=config.alert_every)
        self.policy = AlertPolicy(config.peer_name, settings, now)
        self.alerts = AlertRunner(config.alert_command, logger, timeout=alert_timeout)
        self.metrics = Metrics()
        self._address = config.metrics
        self._drain_timeout = alert_timeout + 1.0
        self._next_publish = now

    def after_turn(self, now: float, link_up: bool,
                   snapshot: Callable[[], MetricsSnapshot]) -> None:
        """Call once per loop turn, after the Link's events were handled.

        Args:
            now: the turn's time (the runner's monotonic clock).
            link_up: at least one path is up.
            snapshot: builds the metrics snapshot (called only when one is due).
        """
        self.policy.observe_link(link_up, now)
        timer = self.policy.get_timer()
        if timer is not None and timer <= now:
            self.policy.handle_timer(now)
        raised = self.policy.alerts_to_send()
        for alert in raised:
            self.alerts.fire(alert)
        if self._address is not None and (raised or now >= self._next_publish):
            self._next_publish = now + PUBLISH_EVERY
            self.metrics.publish(dataclasses.replace(snapshot(), alerts=self.policy.counts))

    def get_timer(self) -> float | None:
        """When ``after_turn`` must run again for the policy (None: no deadline)."""
        return self.policy.get_timer()

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
