"""The daemon's top level: open everything, start every task, shut down cleanly.

Start-up order (DESIGN §8): key, store, listeners, control socket — then READY=1.
The daemon never waits for the peer to be ready. Tasks, all in one nursery:

* the runner (owns the Endpoint), the store worker (SQLite on its own thread);
* transports: one ``TcpPath`` per peer TCP path (dials), one ``TcpListener`` per TCP
  listen address (accepts the peer's dials), one ``UdpEndpoint`` for all UDP;
* the control server; the watchdog (WATCHDOG=1 at half of WATCHDOG_USEC, only while
  the runner's loop has turned recently — a wedged runner gets restarted by systemd,
  while a dead peer never causes a restart); the signal watcher.

SIGTERM/SIGINT: STOPPING=1; the control socket refuses new requests (exit 3, nothing
stored) while every send already accepted is committed and answered; then close. So a
client is never left without the answer to a message that was stored.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable

import trio

from hotline.config import Config
from hotline.daemon.control_server import ControlServer, bind_control_socket
from hotline.daemon.logs import NOTICE, Logger
from hotline.daemon.notify import Notifier
from hotline.daemon.runner import Runner, RunnerInbox, RunnerInput
from hotline.daemon.storeworker import StoreWorker
from hotline.daemon.supervision import Supervision, alert_insecure_key
from hotline.errors import ConfigError, KeyPermissionError
from hotline.keyfile import load_identity, load_psk
from hotline.proto.endpoint import Endpoint, EndpointSettings
from hotline.proto.identity import Identity, PublicKey
from hotline.proto.lanes import parse_lane
from hotline.proto.link import LinkSettings, PathSpec
from hotline.proto.operator import OperatorSettings
from hotline.proto.pq import require_mlkem
from hotline.proto.supervision import AlertSettings
from hotline.store import Store
from hotline.transport.events import EventSink, PathTransport
from hotline.transport.tcp import TcpPath
from hotline.transport.tcp_listener import TcpListener
from hotline.transport.udp import UdpEndpoint

_SHUTDOWN_GRACE = 5.0
# Packets a TCP path may hold while its socket drains: above the most the Link hands
# out in one turn (a full window of DATA plus acks), so a burst is not dropped only to
# be retransmitted after an RTO. Worst case 8192 x 16 KiB; typically ~300 B each.
TCP_QUEUE_PACKETS = 8192
# Test-only fault injection: the runner stops turning after this many seconds, so the
# watchdog test can prove WATCHDOG=1 stops while the rest of the process is healthy.
WEDGE_ENV = "HOTLINE_FAULT_WEDGE_RUNNER_AFTER"
# Unacknowledged messages per lane read at start-up (the rest is read as acks arrive).
RESUME_WINDOW = 2048


def load_keys(config: Config) -> tuple[Identity, PublicKey]:
    """Our identity (permission-checked) and the pinned peer key.

    Raises:
        KeyFileError, KeyPermissionError, ConfigError: as ``hotline check`` reports them.
    """
    identity = load_identity(config.key_path)
    peer = config.peer_key
    if identity.public == peer:
        raise ConfigError(f"{config.path}: peer key is our own key; pin the other end's key")
    return identity, peer


def link_settings(config: Config, psk: bytes | None = None) -> LinkSettings:
    """The Link's tunables from the config (``psk``: the ``psk_file`` secret)."""
    return LinkSettings(
        heartbeat=config.heartbeat,
        dead_after=config.dead_after,
        rekey_after=config.rekey_after,
        redundant=config.redundant,
        max_message=config.max_message,
        receipt_every=config.receipt_every,
        psk_secret=psk,
    )


async def run_daemon(config: Config, logger: Logger, notifier: Notifier) -> None:
    """Run the daemon until SIGTERM/SIGINT.

    Raises:
        ConfigError: ML-KEM-768 is not available here (DESIGN §11), or a bad config.
        KeyPermissionError: the key or psk file may be read by others (after the
            ``insecure_key`` alert went out).
    """
    require_mlkem()
    secret_file = config.key_path
    try:
        identity, peer = load_keys(config)
        if config.psk_file is not None:
            secret_file = config.psk_file
        psk = load_psk(config.psk_file) if config.psk_file is not None else None
    except KeyPermissionError as err:
        await alert_insecure_key(config, logger, str(secret_file), str(err))
        raise
    store = await trio.to_thread.run_sync(Store.open, config.state_dir, identity.public.raw,
                                          peer.raw)
    try:
        await _run(config, logger, notifier, identity, peer, store, psk)
    finally:
        await trio.to_thread.run_sync(store.close)


def endpoint_settings(config: Config, psk: bytes | None = None) -> EndpointSettings:
    """The endpoint's tunables from the config."""
    return EndpointSettings(link=link_settings(config, psk), peer_name=config.peer_name,
                            log_every=config.log_every, max_backlog=config.max_backlog,
                            alerts=AlertSettings(config.alert_after, config.alert_every),
                            operator=operator_settings(config))


def operator_settings(config: Config) -> OperatorSettings:
    """Operator acknowledgement and drills (DESIGN §9, §10) from the config."""
    return OperatorSettings(
        ack_lanes=frozenset(map(parse_lane, config.operator_ack)),
        deadlines={parse_lane(name): s for name, s in config.operator_deadline.items()},
        drill_every=config.drill_every, drill_operator=config.drill_operator,
        drill_deadline=config.drill_deadline)


async def _run(config: Config, logger: Logger, notifier: Notifier, identity: Identity,
               peer: PublicKey, store: Store, psk: bytes | None) -> None:
    resume = await trio.to_thread.run_sync(store.resume, RESUME_WINDOW)
    endpoint = Endpoint(identity, peer, [PathSpec(p.url, p.scheme) for p in config.peer_paths],
                        endpoint_settings(config, psk), resume, os.urandom, trio.current_time(),
                        time.time_ns())
    submit, inputs = trio.open_memory_channel[RunnerInput](math.inf)
    inbox = RunnerInbox(submit)
    worker = StoreWorker(store, submit)
    transports: dict[int, PathTransport] = {}
    tcp_paths, udp = _make_transports(config, inbox, transports)
    control = ControlServer(inbox, worker, logger, _uid_logger(logger),
                            operator_lanes=endpoint.settings.operator.ack_lanes)
    supervision = Supervision(config, logger, trio.current_time())
    runner = Runner(endpoint, inputs, worker, transports, logger, notifier, supervision,
                    inbox_changed=control.inbox_changed)
    inbox.runner = runner
    control_listener = await bind_control_socket(config.control)
    async with supervision.running() as metrics_at, trio.open_nursery() as nursery:
        for spec in config.listen:
            if spec.scheme == "tcp":
                await nursery.start(TcpListener(spec.host, spec.port, tcp_paths).run)
        udp_listen = [(s.host, s.port) for s in config.listen if s.scheme == "udp"]
        await nursery.start(udp.run, udp_listen)
        nursery.start_soon(worker.run)
        nursery.start_soon(runner.run)
        for path in tcp_paths:
            nursery.start_soon(path.run)
        control_scope = trio.CancelScope()
        nursery.start_soon(_serve_control, control, control_listener, control_scope)
        nursery.start_soon(_watchdog, notifier, runner, config.heartbeat)
        notifier.ready(f"listening; link to {config.peer_name} not up yet")
        logger.event("daemon", NOTICE, action="ready", peer=config.peer_name,
                     key=identity.public.fingerprint(), store=str(config.state_dir),
                     listen=",".join(s.url for s in config.listen),
                     metrics=None if metrics_at is None else f"{metrics_at[0]}:{metrics_at[1]}")
        if os.environ.get(WEDGE_ENV):
            nursery.start_soon(runner.wedge_after, float(os.environ[WEDGE_ENV]))
        signum = await _wait_for_signal()
        notifier.stopping()
        logger.event("daemon", NOTICE, action="stopping", signal=signal.Signals(signum).name)
        with trio.move_on_after(_SHUTDOWN_GRACE):
            # New requests are refused; every accepted send commits and is answered.
            control.closing = True
            await runner.drain()
            await control.quiesce()
        control_scope.cancel()
        nursery.cancel_scope.cancel()


def _make_transports(
    config: Config, events: EventSink,
    transports: dict[int, PathTransport],
) -> tuple[list[TcpPath], UdpEndpoint]:
    udp = UdpEndpoint(events)
    tcp_paths: list[TcpPath] = []
    for path_id, spec in enumerate(config.peer_paths):
        if spec.scheme == "tcp":
            tcp = TcpPath(path_id, spec.host, spec.port, events, queue_limit=TCP_QUEUE_PACKETS)
            tcp_paths.append(tcp)
            transports[path_id] = tcp
        else:
            transports[path_id] = udp.add_path(path_id, spec.host, spec.port)
    return tcp_paths, udp


async def _serve_control(control: ControlServer, listener: trio.SocketListener,
                         scope: trio.CancelScope) -> None:
    with scope:
        await control.serve(listener)


async def _watchdog(notifier: Notifier, runner: Runner, heartbeat: float) -> None:
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    stale_after = max(3 * heartbeat, 2 * interval)
    while True:
        if trio.current_time() - runner.heartbeat_alive_at < stale_after:
            notifier.watchdog()
        await trio.sleep(interval)


async def _wait_for_signal() -> int:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            return signum
    raise AssertionError("signal receiver ended")  # pragma: no cover


def _uid_logger(logger: Logger) -> Callable[[int | None], None]:
    def log_uid(uid: int | None) -> None:
        logger.event("control", 7, action="connect", uid=uid)

    return log_uid
