"""``hotline bench``: the product measured on this machine, each figure against its floor.

Every figure is printed with how it was measured, and, where issues 10 and 12 ask, as
a ratio to the floor measured in the same run:

* **the floor** (in-process, one core): Ed25519 sign and verify (SSHSIG signed-data),
  envelope decode, transport seal+open, one KKpsk2 handshake (both sides) and its worst
  case (two ratchet psks tried in vain), the post-quantum ratchet step (ML-KEM-768,
  both sides); and fsync: a real SQLite commit (WAL, ``synchronous=FULL``, as the
  store) in the directory the daemons' stores use — p50, since virtual disks vary —
  back to back and with the disk idle ``idle_gap_s`` before each (slower on a VM);
* **throughput**: the real ``hotline send --lines --wait`` subprocess reading N lines
  from a file, wall time until it returns (all stored at both ends and acknowledged),
  as a ratio to the one-core verify floor (issue 12: >= 0.6);
* **idle durable send→ack**: one message at a time over the control socket, timed by
  the client from request to acknowledgement, after a warm-up; p50/p99 and the p50 as a
  ratio to 2 x fsync + sign + verify; back to back, and again with ``idle_gap_s``
  between an ack and the next send (against the idle-disk fsync);
* **CLI start-up**: ``hotline send`` / ``status`` wall time against ``python -c pass``
  (same interpreter, interleaved, median);
* **FLASH behind a routine backlog** (issue 10): per trial the peer is stopped, the
  routine backlog topped up to ``--backlog`` unacknowledged messages, the peer started;
  the moment the sender's daemon reports a path up (``status`` polled every
  millisecond) a FLASH is sent with ``wait``. Its send→ack, timed by the client,
  bounds "stored by the peer" from above; minus one idle RTT it estimates it. The
  routine lane's drain rate from link-up to the end of the trial is reported beside it;
  and a few trials where the FLASH is sent while the peer is down (it waits for the
  link with the backlog): from the sender's link-up to its acknowledgement;
* **FLASH behind a routine backlog, delayed** (issue 10): the same trials on a pair whose
  two paths go through the fault proxy with ``--delay`` ms added each way (no rate
  limit); the send→ack (which bounds "stored by the peer" from above) against the
  heartbeat RTT + 50 ms;
* **failover**: TCP black-holed (no RST) with a message in flight: seconds until it is
  acknowledged over UDP, and until ``status`` shows UDP active;
* **WAN profile** (issue 12): another pair whose UDP path goes through the fault proxy
  with ``--rate`` Mbit/s, ``--delay`` ms each way and a ``--queue``-packet tail-drop
  queue from the start (as a real backup circuit would), TCP black-holed once the
  link is up; after the failover a routine backlog, a FLASH sent behind it; goodput
  (signed message bytes: envelope + signature) as a fraction of the rate, DATA frames
  retransmitted (``status --json`` ``retransmitted``) per message, packets the proxy's
  queue dropped, and the FLASH's send→ack against 2 x RTT + one full datagram's
  serialisation time.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hotline.control_client import ControlClient, connect
from hotline.errors import UsageError
from hotline.proto.lanes import FLASH, ROUTINE
from hotline.proto.packet import UDP_MAX_DATAGRAM
from hotline.proto.requests import SendRequest, StatusRequest, WaitRequest
from hotline.testing.loopback import LoopbackPair, ProxiedPair

BODY = b"x" * 200  # every routine message the bench sends carries 200 bytes
_REQUEST_BODIES = 256  # bodies per SendRequest when the bench queues a backlog
_PIPELINE = 8  # SendRequests in flight while queueing
_SIG = 64


@dataclass(frozen=True)
class Options:
    """What to measure and how much (``hotline bench`` arguments, ``--quick`` filled in)."""

    messages: int = 20_000  # through send --lines --wait
    backlog: int = 100_000  # routine backlog behind each FLASH trial
    trials: int = 20  # FLASH trials, on loopback and again with --delay (issue 10: 20)
    queued_trials: int = 5  # FLASH trials where it was sent while the peer was down
    delay_ms: float = 100.0  # delayed FLASH and WAN: one-way delay added each way
    rate_mbit: float = 1.0  # WAN: bottleneck rate in each direction
    queue: int = 50  # WAN: bottleneck queue in packets
    wan_backlog: int = 5_000  # WAN: routine messages the FLASH is sent behind
    wan_flash_after_s: float = 2.0  # WAN: FLASH sent this long after the backlog
    micro_s: float = 0.5  # seconds per in-process floor figure
    # A disk left alone this long (seconds) before each commit or send: a virtual
    # disk's fsync is slower when idle, so "idle" figures are measured twice.
    idle_gap_s: float = 0.02
    fsync_commits: int = 200
    warmup: int = 20  # idle send→ack: discarded first sends
    samples: int = 200  # idle send→ack: measured sends
    startup_runs: int = 5
    drain_window_s: float = 1.5  # FLASH trial: link-up to the end of the drain sample
    settle_s: float = 2.5  # a fresh link's heartbeats before measuring (RTT estimates)
    # The daemons' link timing: None keeps the defaults (heartbeat 1 s, dead_after 3 s);
    # --quick shortens it, since every FLASH trial and failover waits for dead_after.
    heartbeat_s: float | None = None
    dead_after_s: float | None = None

    @classmethod
    def quick(cls, **given: Any) -> Options:
        """A short smoke run (seconds, not minutes); figures are rough."""
        small = cls(messages=1_000, backlog=2_000, trials=1, wan_backlog=300,
                    wan_flash_after_s=0.3, queued_trials=1, micro_s=0.05, fsync_commits=20,
                    warmup=3,
                    samples=20, startup_runs=1, drain_window_s=0.3, settle_s=0.5,
                    heartbeat_s=0.3, dead_after_s=1.0)
        return small.with_given(**given)

    def with_given(self, **given: Any) -> Options:
        """A copy with the arguments given (not None) put in."""
        from dataclasses import replace

        return replace(self, **{k: v for k, v in given.items() if v is not None})

    def check(self) -> None:
        """Raises UsageError on a value the bench cannot run with."""
        if min(self.messages, self.backlog, self.trials, self.queue, self.wan_backlog) < 1:
            raise UsageError("hotline bench: counts must be at least 1")
        if self.rate_mbit <= 0 or self.delay_ms < 0:
            raise UsageError("hotline bench: --rate must be > 0 and --delay >= 0")


# --- small helpers ------------------------------------------------------------------


def _settings(opts: Options, **more: Any) -> dict[str, Any]:
    """The daemons' settings for a bench pair: ``more`` and the link timing if set."""
    timing = {"heartbeat": opts.heartbeat_s, "dead_after": opts.dead_after_s}
    return {**{k: v for k, v in timing.items() if v is not None}, **more}


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls of ``fn`` per second over about ``seconds``."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n == 0:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def _pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _lane(status: dict[str, Any] | None, lane: str = "routine") -> dict[str, Any]:
    if status is None:
        raise RuntimeError("the daemon did not answer status")
    lanes: dict[str, Any] = status["lanes"]
    return dict(lanes[lane])


# --- the floor ----------------------------------------------------------------------


def micro(seconds: float = 0.5) -> dict[str, float]:
    """Per-operation CPU costs (µs / ms) on one core: the floor of one message."""
    from hotline.proto.envelope import (
        decode_envelope_untrusted,
        encode_envelope,
        sign_envelope,
        verify_envelope,
    )
    from hotline.proto.handshake import Initiation, Responder
    from hotline.proto.identity import Identity
    from hotline.proto.packet import TransportOpener, TransportSealer
    from hotline.proto.pq import PskRing
    from hotline.proto.records import RatchetRecord

    a, b = Identity.generate(), Identity.generate()
    raw = encode_envelope(bytes(16), a.public.raw, b.public.raw, 1, time.time_ns(), bytes(32),
                          "text/plain", BODY)
    sig = sign_envelope(a, raw)
    sealer, opener = TransportSealer(bytes(32), 1), TransportOpener(bytes(32))
    in_step = PskRing(None, RatchetRecord(os.urandom(32), os.urandom(32)))

    def handshake(theirs: PskRing = in_step) -> None:
        init, packet = Initiation.start(a, b.public, 1, time.time_ns(), 0.0, os.urandom,
                                        psks=in_step)
        _, response = Responder(b, a.public, os.urandom, psks=theirs) \
            .consume_initiation_untrusted(packet, 2, 0.0)
        init.consume_response_untrusted(response, 0.0)

    return {
        "sign_us": 1e6 / _rate(lambda: sign_envelope(a, raw), seconds),
        "verify_us": 1e6 / _rate(lambda: verify_envelope(a.public, raw, sig), seconds),
        "envelope_codec_us": 1e6 / _rate(lambda: decode_envelope_untrusted(raw, 65536),
                                         seconds),
        "seal_open_us": 1e6 / _rate(lambda: opener.open_untrusted(sealer.seal(raw)), seconds),
        "handshake_ms": 1e3 / _rate(handshake, seconds),
        "handshake_fallback_ms": 1e3 / _rate(lambda: handshake(PskRing(None, None)), seconds),
        "kem_step_ms": 1e3 / _rate(_kem_step, seconds),
    }


def _kem_step() -> None:
    """One session's ratchet step, both ends: offer, encapsulate, reply, decapsulate."""
    from hotline.proto.frames import KemOffer, KemReply
    from hotline.proto.pq import PskRing, Ratchet

    offering, answering = Ratchet(PskRing(None, None), os.urandom), \
        Ratchet(PskRing(None, None), os.urandom)
    choice, h = offering.ring.choices[0], bytes(32)
    offering.on_session(1, True, choice, h, 0.0)
    answering.on_session(2, False, choice, h, 0.0)
    (offer,) = offering.frames_due(0.0)
    assert isinstance(offer, KemOffer)
    record = answering.on_offer_untrusted(offer, current=True)
    assert record is not None
    answering.on_committed(record)
    (reply,) = answering.frames_due(0.0)
    assert isinstance(reply, KemReply)
    assert offering.on_reply_untrusted(reply, current=True) == record


def measure_fsync(directory: Path, commits: int, gap: float = 0.0) -> dict[str, float]:
    """Milliseconds per SQLite commit (WAL, synchronous=FULL) of one small row in
    ``directory``, ``gap`` seconds apart: the durable-commit floor of the daemons'
    stores there (back to back, or with the disk idle before each)."""
    path = directory / "bench-fsync.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        took = []
        for _ in range(commits):
            time.sleep(gap)
            start = time.perf_counter()
            db.execute("BEGIN")
            db.execute("INSERT INTO t (body) VALUES (?)", (BODY,))
            db.execute("COMMIT")
            took.append((time.perf_counter() - start) * 1e3)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {"fsync_ms_p50": statistics.median(took), "fsync_ms_p99": _pct(took, 0.99),
            "fsync_commits": commits}


# --- the loopback pair ----------------------------------------------------------------


def _queue(client: ControlClient, count: int, lane: int = ROUTINE) -> list[int]:
    """Store ``count`` messages of BODY in ``lane`` (pipelined requests); their seqs."""
    seqs: list[int] = []
    queued = in_flight = 0
    while queued < count or in_flight:
        if queued < count and in_flight < _PIPELINE:
            n = min(_REQUEST_BODIES, count - queued)
            client.send(SendRequest("text/plain", (BODY,) * n, lane))
            queued += n
            in_flight += 1
            continue
        seqs.extend(seq for _lane, seq in client.read_reply()["ids"])
        in_flight -= 1
    return seqs


def measure_idle_ack(pair: LoopbackPair, opts: Options, gap: float = 0.0) -> dict[str, Any]:
    """Client-timed send→ack of one durable message at a time (after a warm-up), the
    next sent ``gap`` seconds after the last was acknowledged."""
    client_ms: list[float] = []
    daemon_ms: list[float] = []
    with connect(pair[0].control, timeout=60) as client:
        for i in range(opts.warmup + opts.samples):
            time.sleep(gap)
            start = time.perf_counter()
            client.send(SendRequest("text/plain", (b"ping %d" % i,), wait=True))
            client.read_reply()
            ack = client.read_reply()
            if i >= opts.warmup:
                client_ms.append((time.perf_counter() - start) * 1e3)
                daemon_ms.append(float(ack["ack_ms"]))
    return {"samples": opts.samples, "p50_ms": statistics.median(client_ms),
            "p99_ms": _pct(client_ms, 0.99), "daemon_p50_ms": statistics.median(daemon_ms)}


def measure_lines(pair: LoopbackPair, count: int) -> dict[str, Any]:
    """Wall time of ``hotline send --lines --wait`` of ``count`` lines from a file."""
    lines = pair.root / "bench-lines.txt"
    lines.write_bytes(b"".join(b"%05d %s\n" % (i, BODY[6:]) for i in range(count)))
    node = pair[0]
    cmd = [sys.executable, "-m", "hotline", "send", "-c", str(node.config), "--lines",
           "--wait", "--timeout", "600"]
    with lines.open("rb") as stdin:
        start = time.perf_counter()
        result = subprocess.run(cmd, stdin=stdin, capture_output=True, timeout=900)
        seconds = time.perf_counter() - start
    lines.unlink()
    if result.returncode != 0:
        raise RuntimeError(f"send --lines --wait failed: {result.stderr.decode().strip()}")
    return {"messages": count, "seconds": seconds, "msgs_per_s": count / seconds}


def measure_startup(pair: LoopbackPair, runs: int) -> dict[str, float]:
    """Median wall ms of ``python -c pass``, ``hotline send TEXT`` and ``hotline status``
    (``python -m hotline``, same interpreter, the three interleaved)."""
    config = str(pair[0].config)
    commands = {
        "python_ms": [sys.executable, "-c", "pass"],
        "send_ms": [sys.executable, "-m", "hotline", "send", "-c", config, "start-up"],
        "status_ms": [sys.executable, "-m", "hotline", "status", "-c", config],
    }
    took: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True, timeout=60)
            took[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in took.items()}


def _wait_link_up(client: ControlClient, timeout: float = 60.0) -> float:
    """Poll ``status`` (every millisecond, one connection) until a path is up; the
    perf_counter then."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if client.request(StatusRequest())["status"]["state"] != "down":
            return time.perf_counter()
        time.sleep(0.001)
    raise TimeoutError(f"the link did not come up within {timeout:g}s")


def _peer_gone_behind_backlog(pair: LoopbackPair, client: ControlClient,
                              opts: Options) -> None:
    """Stop the peer, wait until the sender sees it gone, top the routine backlog up to
    ``opts.backlog`` unacknowledged messages."""
    pair.kill(1, signal.SIGTERM)
    pair.wait_for(lambda: (pair.status(0) or {}).get("state") == "down", 30,
                  "the sender to see the peer gone")
    _queue(client, max(0, opts.backlog - _lane(pair.status(0))["backlog"]))


def _flash_trial(pair: LoopbackPair, client: ControlClient, opts: Options,
                 number: int) -> dict[str, float]:
    """Peer down, backlog topped up, peer up, a FLASH at link-up; see the module header."""
    _peer_gone_behind_backlog(pair, client, opts)
    before = _lane(pair.status(0))
    pair.start(1)
    up = _wait_link_up(client)
    start = time.perf_counter()
    client.send(SendRequest("text/plain", (b"FLASH %d" % number,), FLASH, wait=True))
    client.read_reply()
    ack = client.read_reply()
    acked = time.perf_counter()
    time.sleep(max(0.0, up + opts.drain_window_s - time.perf_counter()))
    after = _lane(pair.status(0))
    drained_for = time.perf_counter() - up
    return {"ack_ms": (acked - start) * 1e3, "daemon_ack_ms": float(ack["ack_ms"]),
            "backlog": before["backlog"],
            "drain_msgs_per_s": (after["acked"] - before["acked"]) / drained_for}


def _queued_flash_trial(pair: LoopbackPair, client: ControlClient, opts: Options) -> float:
    """Peer down, backlog topped up, a FLASH sent then (it waits for the link), peer
    up: milliseconds from when the sender's status first shows the link up to when its
    wait for the FLASH's acknowledgement returns (small if it was acked by then)."""
    _peer_gone_behind_backlog(pair, client, opts)
    [seq] = _queue(client, 1, FLASH)
    pair.start(1)
    up = _wait_link_up(client)
    client.request(WaitRequest(FLASH, seq, 60))
    return (time.perf_counter() - up) * 1e3


def measure_queued_flash(pair: LoopbackPair, opts: Options) -> dict[str, Any]:
    """A FLASH sent while the peer was down, behind the routine backlog: link-up to its
    acknowledgement, ``opts.queued_trials`` times."""
    with connect(pair[0].control, timeout=600) as client:
        ms = [_queued_flash_trial(pair, client, opts) for _ in range(opts.queued_trials)]
    return {"trials": len(ms), "backlog": opts.backlog, "ack_ms": ms,
            "ack_ms_p50": statistics.median(ms), "ack_ms_max": max(ms)}


def measure_flash(pair: LoopbackPair, opts: Options, idle_rtt_ms: float) -> dict[str, Any]:
    """FLASH behind a routine backlog, ``opts.trials`` times (issue 10)."""
    with connect(pair[0].control, timeout=600) as client:
        trials = [_flash_trial(pair, client, opts, n) for n in range(1, opts.trials + 1)]
    ack = [t["ack_ms"] for t in trials]
    return {
        "trials": len(trials), "backlog": opts.backlog,
        "backlog_at_start_min": min(t["backlog"] for t in trials),
        "ack_ms": ack, "ack_ms_p50": statistics.median(ack), "ack_ms_p99": _pct(ack, 0.99),
        "idle_rtt_ms": idle_rtt_ms,
        "stored_ms_p99_est": max(0.0, _pct(ack, 0.99) - idle_rtt_ms),
        "routine_drain_msgs_per_s": statistics.median(t["drain_msgs_per_s"] for t in trials),
    }


def measure_pair(root: Path, opts: Options) -> dict[str, Any]:
    """The loopback pair: fsync floor, link-up, idle ack, throughput, start-up, FLASH."""
    pair = LoopbackPair(root, settings=_settings(
        opts, max_backlog=opts.backlog + opts.messages + 10_000))
    out: dict[str, Any] = {
        "fsync": measure_fsync(pair[0].state_dir, opts.fsync_commits),
        "fsync_idle": measure_fsync(pair[0].state_dir, opts.fsync_commits // 2,
                                    opts.idle_gap_s),
    }
    pair.start_all()
    try:
        out["link_up_s"] = pair.wait_up(timeout=30)
        time.sleep(opts.settle_s)  # a few heartbeats for the RTT estimate
        rtts = {p["url"].split(":", 1)[0]: p["rtt_ms"] for p in _paths(pair.status(0))}
        out["rtt_ms"] = rtts
        out["idle_ack"] = measure_idle_ack(pair, opts)
        out["idle_ack_spaced"] = measure_idle_ack(pair, opts, opts.idle_gap_s)
        out["throughput"] = measure_lines(pair, opts.messages)
        out["startup"] = measure_startup(pair, opts.startup_runs)
        out["flash"] = measure_flash(pair, opts, rtts.get("tcp") or 0.0)
        out["queued_flash"] = measure_queued_flash(pair, opts)
    finally:
        pair.stop_all()
    return out


def _paths(status: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((status or {}).get("paths", []))


# --- proxied pairs: failover, and the WAN profile ----------------------------------------


def _signed_bytes(first: int, count: int) -> int:
    """Envelope + signature bytes of routine seqs first..first+count-1 carrying BODY."""
    from hotline.proto.envelope import encode_envelope

    return sum(len(encode_envelope(bytes(16), bytes(32), bytes(32), seq, time.time_ns(),
                                   bytes(32), "text/plain", BODY)) + _SIG
               for seq in range(first, first + count))


def _sender_udp_stats(pair: ProxiedPair) -> dict[str, int]:
    """Counters of what the sender (washington) sent over UDP through the proxies: its
    own dialled path's ``up`` direction plus the ``down`` direction of the peer's (a
    daemon answers where the peer's packets come from, so both carry its traffic)."""
    stats = pair.proxy.stats()
    own, peers = stats[f"{pair[0].name}.udp"]["up"], stats[f"{pair[1].name}.udp"]["down"]
    return {key: own[key] + peers[key] for key in ("bytes_out", "queue_dropped")}


def _wait_in_thread(control: Path, upto: int) -> Callable[[], float]:
    """Start waiting for the routine ack of ``upto`` on its own connection; the returned
    function joins and gives the perf_counter of the acknowledgement."""
    done: list[float] = []

    def wait() -> None:
        with connect(control, timeout=900) as client:
            client.request(WaitRequest(ROUTINE, upto, 900))
            done.append(time.perf_counter())

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()

    def join() -> float:
        thread.join(timeout=900)
        if not done:
            raise RuntimeError("the routine backlog was not acknowledged")
        return done[0]

    return join


def measure_wan(pair: ProxiedPair, opts: Options) -> dict[str, Any]:
    """Goodput, retransmissions and a FLASH behind a backlog on the thin UDP circuit
    (UDP already the only path)."""
    rate, rtt = opts.rate_mbit * 1e6, 2 * opts.delay_ms / 1e3
    before, proxy_before = pair.status(0) or {}, _sender_udp_stats(pair)
    with connect(pair[0].control, timeout=900) as client:
        start = time.perf_counter()
        seqs = _queue(client, opts.wan_backlog)
        routine_acked = _wait_in_thread(pair[0].control, seqs[-1])
        time.sleep(max(0.0, start + opts.wan_flash_after_s - time.perf_counter()))
        behind = _lane(pair.status(0))["backlog"]
        flash_start = time.perf_counter()
        client.send(SendRequest("text/plain", (b"FLASH on the thin circuit",), FLASH, wait=True))
        client.read_reply()
        client.read_reply()
        flash_ms = (time.perf_counter() - flash_start) * 1e3
    seconds = routine_acked() - start
    after, proxy_after = pair.status(0) or {}, _sender_udp_stats(pair)
    resent = after["retransmitted"]["routine"] - before["retransmitted"]["routine"]
    bound_ms = (2 * rtt + UDP_MAX_DATAGRAM * 8 / rate) * 1e3
    goodput = _signed_bytes(seqs[0], len(seqs)) * 8 / seconds
    wire = (proxy_after["bytes_out"] - proxy_before["bytes_out"]) * 8 / seconds
    return {
        "rate_mbit": opts.rate_mbit, "delay_ms": opts.delay_ms, "queue": opts.queue,
        "messages": len(seqs), "seconds": seconds,
        "goodput_fraction": goodput / rate, "wire_fraction": wire / rate,
        "retransmitted": resent, "retransmitted_fraction": resent / len(seqs),
        "queue_dropped": proxy_after["queue_dropped"] - proxy_before["queue_dropped"],
        "flash_behind": behind, "flash_ack_ms": flash_ms, "flash_bound_ms": bound_ms,
        "flash_ratio_to_bound": flash_ms / bound_ms,
    }


def _udp_active(pair: ProxiedPair) -> bool:
    status = pair.status(0)
    return bool(status and str(status.get("active", "")).startswith("udp"))


def measure_failover(root: Path, opts: Options) -> dict[str, float]:
    """Seconds from a TCP black hole to the in-flight message's ack and to UDP active."""
    pair = ProxiedPair(root, settings=_settings(opts))
    pair.start_all()
    try:
        pair.wait_up(timeout=30)
        time.sleep(opts.settle_s)
        pair.set_faults("tcp", blackhole=True)
        cut = time.monotonic()
        with connect(pair[0].control, timeout=60) as client:
            client.send(SendRequest(type="text/plain", bodies=(b"in flight",), wait=True))
            client.read_reply()
            client.read_reply()
        acked = time.monotonic() - cut
        pair.wait_for(lambda: _udp_active(pair), 30, "UDP to become active")
        return {"ack_s": acked, "udp_active_s": time.monotonic() - cut}
    finally:
        pair.close()


def measure_delayed_flash(root: Path, opts: Options) -> dict[str, Any]:
    """The FLASH trials again with ``--delay`` ms added each way on both paths (issue 10:
    stored by the peer within one RTT + 50 ms)."""
    pair = ProxiedPair(root, settings=_settings(opts, max_backlog=opts.backlog + 10_000))
    for scheme in ("tcp", "udp"):
        pair.set_faults(scheme, delay=opts.delay_ms / 1e3)
    pair.start_all()
    try:
        pair.wait_up(timeout=60)
        time.sleep(opts.settle_s)
        rtt_ms = float(next(p["rtt_ms"] for p in _paths(pair.status(0))
                            if p["url"].startswith("tcp")))
        flash = measure_flash(pair, opts, rtt_ms)
    finally:
        pair.close()
    bound_ms = rtt_ms + 50.0
    return {**flash, "delay_ms": opts.delay_ms, "rtt_ms": rtt_ms, "bound_ms": bound_ms,
            "ack_ms_p99_to_bound": flash["ack_ms_p99"] / bound_ms}


def measure_thin_circuit(root: Path, opts: Options) -> dict[str, Any]:
    """The WAN profile: a pair whose UDP path is the thin circuit from the start (as a
    real backup circuit is), TCP black-holed once the link is up, then measure_wan."""
    pair = ProxiedPair(root, settings=_settings(opts, max_backlog=opts.wan_backlog + 10_000))
    pair.set_faults("udp", rate=opts.rate_mbit * 1e6, queue=opts.queue,
                    delay=opts.delay_ms / 1e3)
    pair.start_all()
    try:
        pair.wait_up(timeout=60)
        pair.set_faults("tcp", blackhole=True)
        cut = time.monotonic()
        pair.wait_for(lambda: _udp_active(pair), 60, "UDP to become active")
        failover_s = time.monotonic() - cut
        return {"failover_s": failover_s, **measure_wan(pair, opts)}
    finally:
        pair.close()


# --- the whole run ----------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_avg": list(os.getloadavg()),
            "python": sys.version.split()[0], "platform": sys.platform}


def _ratios(r: dict[str, Any]) -> dict[str, float]:
    """The figures as ratios to their floors (issue 12's targets in the comments)."""
    floor, pair = r["floor"], r["pair"]
    verify_floor = 1e6 / floor["verify_us"]
    crypto_ms = (floor["sign_us"] + floor["verify_us"]) / 1e3
    ack_floor_ms = 2 * pair["fsync"]["fsync_ms_p50"] + crypto_ms
    spaced_floor_ms = 2 * pair["fsync_idle"]["fsync_ms_p50"] + crypto_ms
    startup = pair["startup"]
    return {
        "verify_floor_msgs_per_s": verify_floor,  # one core
        "sign_verify_floor_msgs_per_s": 1e6 / (floor["sign_us"] + floor["verify_us"]),
        "throughput_to_verify_floor": pair["throughput"]["msgs_per_s"] / verify_floor,  # >= 0.6
        "idle_ack_floor_ms": ack_floor_ms,  # 2 x fsync + sign + verify
        "idle_ack_p50_to_floor": pair["idle_ack"]["p50_ms"] / ack_floor_ms,
        "idle_ack_spaced_floor_ms": spaced_floor_ms,  # the same with the disk idle
        "idle_ack_spaced_p50_to_floor": pair["idle_ack_spaced"]["p50_ms"] / spaced_floor_ms,
        "send_to_python": startup["send_ms"] / startup["python_ms"],  # <= 3
        "status_to_python": startup["status_ms"] / startup["python_ms"],  # <= 3
    }


def run_bench(opts: Options) -> dict[str, Any]:
    """Everything above, as one JSON-able dict."""
    result: dict[str, Any] = {"machine": _machine(), "options": asdict(opts),
                              "floor": micro(opts.micro_s)}
    with tempfile.TemporaryDirectory(prefix="hotline-bench-") as tmp:
        result["pair"] = measure_pair(Path(tmp), opts)
    with tempfile.TemporaryDirectory(prefix="hotline-bench-") as tmp:
        result["failover"] = measure_failover(Path(tmp), opts)
    with tempfile.TemporaryDirectory(prefix="hotline-bench-") as tmp:
        result["delayed_flash"] = measure_delayed_flash(Path(tmp), opts)
    with tempfile.TemporaryDirectory(prefix="hotline-bench-") as tmp:
        result["wan"] = measure_thin_circuit(Path(tmp), opts)
    result["ratios"] = _ratios(result)
    result["machine"]["load_avg_after"] = list(os.getloadavg())
    return result


# --- the text report --------------------------------------------------------------------


def render(r: dict[str, Any]) -> str:
    """The human-readable report of a ``run_bench`` result."""
    return "\n".join(_render_floor(r) + _render_pair(r) + _render_proxied(r))


def _render_floor(r: dict[str, Any]) -> list[str]:
    m, f, x, mach = r["floor"], r["pair"]["fsync"], r["ratios"], r["machine"]
    load = " ".join(f"{v:.2f}" for v in mach["load_avg"])
    return [
        f"machine: {mach['cpus']} CPUs, Python {mach['python']}, load average {load} "
        "(shared machine: figures are noisy)",
        "the floor (in-process, one core):",
        f"  Ed25519 sign {m['sign_us']:.0f} µs, verify {m['verify_us']:.0f} µs "
        f"(verify floor {x['verify_floor_msgs_per_s']:,.0f} msgs/s; sign+verify "
        f"{x['sign_verify_floor_msgs_per_s']:,.0f} msgs/s)",
        f"  envelope decode {m['envelope_codec_us']:.1f} µs, transport seal+open "
        f"{m['seal_open_us']:.1f} µs",
        f"  fsync: SQLite commit (WAL, synchronous=FULL) in the stores' directory: "
        f"p50 {f['fsync_ms_p50']:.2f} ms, p99 {f['fsync_ms_p99']:.2f} ms "
        f"({f['fsync_commits']} commits); with the disk idle {_gap_ms(r)} ms before "
        f"each: p50 {r['pair']['fsync_idle']['fsync_ms_p50']:.2f} ms",
        f"  KKpsk2 handshake (both sides): {m['handshake_ms']:.2f} ms; worst case (two psks "
        f"tried in vain): {m['handshake_fallback_ms']:.2f} ms",
        f"  post-quantum ratchet step per session (ML-KEM-768, both sides): "
        f"{m['kem_step_ms']:.2f} ms; handshake cost with PQ: "
        f"{m['handshake_ms'] + m['kem_step_ms']:.2f} ms",
    ]


def _gap_ms(r: dict[str, Any]) -> str:
    """The idle gap of a result, in ms, for the text."""
    return f"{r['options']['idle_gap_s'] * 1e3:g}"


def _render_pair(r: dict[str, Any]) -> list[str]:
    p, x = r["pair"], r["ratios"]
    rtts = ", ".join(f"{k} {v:.2f} ms" for k, v in p["rtt_ms"].items() if v is not None)
    t, i, s, fl = p["throughput"], p["idle_ack"], p["startup"], p["flash"]
    sp, q = p["idle_ack_spaced"], p["queued_flash"]
    return [
        f"two daemons on loopback: link up in {p['link_up_s']:.2f} s; heartbeat RTT {rtts}",
        f"throughput, `hotline send --lines --wait` of {t['messages']:,} lines from a file "
        f"(wall time of the subprocess): {t['msgs_per_s']:,.0f} msgs/s = "
        f"{x['throughput_to_verify_floor']:.2f} x the verify floor (target >= 0.6)",
        f"idle durable send→ack, timed by the client, {i['samples']} sends one at a time: "
        f"p50 {i['p50_ms']:.2f} ms, p99 {i['p99_ms']:.2f} ms (daemon's own ack_ms p50 "
        f"{i['daemon_p50_ms']:.2f}); floor 2 x fsync + sign + verify = "
        f"{x['idle_ack_floor_ms']:.2f} ms, p50 = {x['idle_ack_p50_to_floor']:.1f} x floor "
        "(target p50 <= 1 ms, p99 <= 3 ms)",
        f"  the same with {_gap_ms(r)} ms between an ack and the next send: p50 "
        f"{sp['p50_ms']:.2f} ms, p99 {sp['p99_ms']:.2f} ms; floor with the disk idle "
        f"{x['idle_ack_spaced_floor_ms']:.2f} ms, p50 = "
        f"{x['idle_ack_spaced_p50_to_floor']:.1f} x floor",
        f"CLI start-up (median of {r['options']['startup_runs']}): python -c pass "
        f"{s['python_ms']:.0f} ms; hotline send {s['send_ms']:.0f} ms "
        f"({x['send_to_python']:.1f} x); hotline status {s['status_ms']:.0f} ms "
        f"({x['status_to_python']:.1f} x) (target <= 3 x)",
        f"FLASH behind {fl['backlog']:,} queued routine messages, sent when the restarted "
        f"peer's link came up ({fl['trials']} trials): send→ack p50 {fl['ack_ms_p50']:.1f} ms, "
        f"p99 {fl['ack_ms_p99']:.1f} ms (an upper bound of 'stored by the peer'; minus one "
        f"idle RTT: p99 ≈ {fl['stored_ms_p99_est']:.1f} ms; target <= 50 ms); routine lane "
        f"drained meanwhile at {fl['routine_drain_msgs_per_s']:,.0f} msgs/s",
        f"FLASH sent while the peer was down, behind {q['backlog']:,} queued routine "
        f"messages ({q['trials']} trials): acknowledged p50 {q['ack_ms_p50']:.1f} ms, max "
        f"{q['ack_ms_max']:.1f} ms after the sender's status first showed the link up "
        "(polled every ms)",
    ]


def _render_proxied(r: dict[str, Any]) -> list[str]:
    f, d, w = r["failover"], r["delayed_flash"], r["wan"]
    return [
        f"failover (TCP black hole, dead_after {r['options']['dead_after_s'] or 3:g} s): "
        f"in-flight message acked after "
        f"{f['ack_s']:.2f} s; UDP active after {f['udp_active_s']:.2f} s",
        f"FLASH behind {d['backlog']:,} queued routine messages with {d['delay_ms']:g} ms "
        f"added each way on both paths (heartbeat RTT {d['rtt_ms']:.0f} ms; {d['trials']} "
        f"trials): send→ack p50 {d['ack_ms_p50']:.0f} ms, p99 {d['ack_ms_p99']:.0f} ms vs "
        f"RTT + 50 ms = {d['bound_ms']:.0f} ms ({d['ack_ms_p99_to_bound']:.2f} x; send→ack "
        f"bounds 'stored by the peer' from above); routine lane drained meanwhile at "
        f"{d['routine_drain_msgs_per_s']:,.0f} msgs/s",
        f"WAN profile, UDP through the fault proxy: {w['rate_mbit']:g} Mbit/s, "
        f"{w['delay_ms']:g} ms each way, {w['queue']}-packet queue; TCP black-holed "
        f"(failover after {w['failover_s']:.2f} s); {w['messages']:,} routine messages "
        f"of {len(BODY)} B:",
        f"  goodput (envelope + signature bytes) {w['goodput_fraction']:.0%} of the rate "
        f"(target >= 80%); all bytes on the wire {w['wire_fraction']:.0%}; "
        f"{w['seconds']:.1f} s from first send to last ack",
        f"  retransmitted {w['retransmitted']} DATA frames = "
        f"{w['retransmitted_fraction']:.1%} of messages (target < 5%); the proxy's queue "
        f"dropped {w['queue_dropped']} packets",
        f"  FLASH sent behind {w['flash_behind']:,} unacknowledged: send→ack "
        f"{w['flash_ack_ms']:.0f} ms vs 2 x RTT + serialisation of a {UDP_MAX_DATAGRAM} B "
        f"datagram = {w['flash_bound_ms']:.0f} ms ({w['flash_ratio_to_bound']:.2f} x)",
    ]


def main(opts: Options, as_json: bool) -> int:
    """Entry point of ``hotline bench``."""
    opts.check()
    result = run_bench(opts)
    print(json.dumps(result, indent=2) if as_json else render(result))
    return 0
