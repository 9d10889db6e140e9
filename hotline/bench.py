"""``hotline bench``: the demo's pair of daemons, measured.

What it measures, each on this machine, each printed with how it was measured:

* per-message CPU cost: Ed25519 sign and verify (SSHSIG signed-data), envelope
  encode+decode, transport seal+open — the floor a message cannot go below;
* one KKpsk2 handshake (both sides, in-process) keyed by a ratchet secret both ends
  hold, the worst case (the initiator's two ratchet psks tried in vain before the base
  one), and the post-quantum ratchet step each session adds (ML-KEM-768 key generation,
  encapsulation, decapsulation and both derivations): the handshake cost with PQ;
* link-up time of two fresh daemons, and heartbeat RTT per path;
* idle send→ack latency: one durable message at a time (client → daemon → outbox
  commit → peer → inbox commit → ack), median and p99 of ``ack_ms``;
* throughput: N messages pipelined over the control socket in batches of 100;
  signed, stored (group commit) at both ends and acknowledged — messages/s;
* failover: TCP black-holed (no RST) with a message in flight: seconds until it is
  acknowledged over UDP, and until ``status`` shows UDP active.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hotline.control_client import ControlClient, connect
from hotline.proto.requests import SendRequest, WaitRequest
from hotline.testing.loopback import LoopbackPair, ProxiedPair

_BATCH = 100


def _rate(fn: Callable[[], object], seconds: float = 0.5) -> float:
    """Calls of ``fn`` per second over about ``seconds``."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def micro() -> dict[str, float]:
    """Per-operation costs in microseconds (CPU floor of one message)."""
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
                          "text/plain", b"x" * 200)
    sig = sign_envelope(a, raw)
    sealer, opener = TransportSealer(bytes(32), 1), TransportOpener(bytes(32))
    import os

    in_step = PskRing(None, RatchetRecord(os.urandom(32), os.urandom(32)))

    def handshake(theirs: PskRing = in_step) -> None:
        init, packet = Initiation.start(a, b.public, 1, time.time_ns(), 0.0, os.urandom,
                                        psks=in_step)
        _, response = Responder(b, a.public, os.urandom, psks=theirs) \
            .consume_initiation_untrusted(packet, 2, 0.0)
        init.consume_response_untrusted(response, 0.0)

    return {
        "sign_us": 1e6 / _rate(lambda: sign_envelope(a, raw)),
        "verify_us": 1e6 / _rate(lambda: verify_envelope(a.public, raw, sig)),
        "envelope_codec_us": 1e6 / _rate(lambda: decode_envelope_untrusted(raw, 65536)),
        "seal_open_us": 1e6 / _rate(lambda: opener.open_untrusted(sealer.seal(raw))),
        "handshake_ms": 1e3 / _rate(handshake),
        "handshake_fallback_ms": 1e3 / _rate(lambda: handshake(PskRing(None, None))),
        "kem_step_ms": 1e3 / _rate(_kem_step),
    }


def _kem_step() -> None:
    """One session's ratchet step, both ends: offer, encapsulate, reply, decapsulate."""
    import os

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


def _latency(client: ControlClient, count: int) -> list[float]:
    out: list[float] = []
    for i in range(count):
        client.send(SendRequest(type="text/plain", bodies=(f"ping {i}".encode(),), wait=True))
        client.read_reply()
        out.append(float(client.read_reply()["ack_ms"]))
    return out


def _throughput(client: ControlClient, total: int) -> float:
    body = b"x" * 200
    start = time.perf_counter()
    sent, pending, last = 0, 0, 0
    while sent < total:
        n = min(_BATCH, total - sent)
        client.send(SendRequest(type="text/plain", bodies=(body,) * n))
        sent += n
        pending += 1
        if pending >= 8:
            last = max(seq for _lane, seq in client.read_reply()["ids"])
            pending -= 1
    while pending:
        last = max(seq for _lane, seq in client.read_reply()["ids"])
        pending -= 1
    client.request(WaitRequest(3, last, 120))
    return total / (time.perf_counter() - start)


def measure_pair(root: Path, messages: int) -> dict[str, Any]:
    """Link-up, RTT, latency and throughput of two daemons on loopback."""
    pair = LoopbackPair(root)
    pair.start_all()
    try:
        up_s = pair.wait_up(timeout=30)
        time.sleep(2.5)  # a few heartbeats for the RTT estimate
        status = pair.status(0) or {}
        with connect(pair[0].control) as client:
            _latency(client, 20)  # warm-up
            lat = sorted(_latency(client, 200))
            rate = _throughput(client, messages)
    finally:
        pair.stop_all()
    return {
        "link_up_s": up_s,
        "rtt_ms": {p["url"].split(":", 1)[0]: p["rtt_ms"] for p in status.get("paths", [])},
        "idle_ack_ms_median": statistics.median(lat),
        "idle_ack_ms_p99": lat[int(len(lat) * 0.99) - 1],
        "acked_msgs_per_s": rate,
        "messages": messages,
    }


def measure_failover(root: Path) -> dict[str, float]:
    """Seconds from a TCP black hole to the in-flight message's ack and to UDP active."""
    pair = ProxiedPair(root)
    pair.start_all()
    try:
        pair.wait_up(timeout=30)
        time.sleep(1.5)
        pair.set_faults("tcp", blackhole=True)
        cut = time.monotonic()
        with connect(pair[0].control) as client:
            client.send(SendRequest(type="text/plain", bodies=(b"in flight",), wait=True))
            client.read_reply()
            client.read_reply()
        acked = time.monotonic() - cut

        def udp_active() -> bool:
            st = pair.status(0)
            return bool(st and str(st.get("active", "")).startswith("udp"))

        pair.wait_for(udp_active, 30, "UDP to become active")
        active = time.monotonic() - cut
    finally:
        pair.close()
    return {"failover_ack_s": acked, "failover_udp_active_s": active}


def run_bench(messages: int) -> dict[str, Any]:
    """Everything above, as one dict."""
    result: dict[str, Any] = {"micro": micro()}
    with tempfile.TemporaryDirectory(prefix="hotline-bench-") as tmp:
        result["pair"] = measure_pair(Path(tmp) / "pair", messages)
    with tempfile.TemporaryDirectory(prefix="hotline-bench-") as tmp:
        result["failover"] = measure_failover(Path(tmp))
    return result


def render(r: dict[str, Any]) -> str:
    """Human-readable report."""
    m, p, f = r["micro"], r["pair"], r["failover"]
    rtts = ", ".join(f"{k} {v:.2f} ms" for k, v in p["rtt_ms"].items() if v is not None)
    floor = 1e6 / (m["sign_us"] + m["verify_us"])
    return "\n".join([
        "per message (CPU, one core):",
        f"  Ed25519 sign {m['sign_us']:.0f} µs, verify {m['verify_us']:.0f} µs "
        f"(sign+verify floor ≈ {floor:,.0f} msgs/s)",
        f"  envelope decode {m['envelope_codec_us']:.1f} µs, transport seal+open "
        f"{m['seal_open_us']:.1f} µs",
        f"KKpsk2 handshake (both sides): {m['handshake_ms']:.2f} ms; worst case (two psks "
        f"tried in vain): {m['handshake_fallback_ms']:.2f} ms",
        f"post-quantum ratchet step per session (ML-KEM-768, both sides): "
        f"{m['kem_step_ms']:.2f} ms; handshake cost with PQ: "
        f"{m['handshake_ms'] + m['kem_step_ms']:.2f} ms",
        f"two daemons: link up in {p['link_up_s']:.2f} s; heartbeat RTT {rtts}",
        f"idle send→ack (durable at both ends): median {p['idle_ack_ms_median']:.2f} ms, "
        f"p99 {p['idle_ack_ms_p99']:.2f} ms",
        f"throughput: {p['acked_msgs_per_s']:,.0f} signed, stored, acknowledged msgs/s "
        f"({p['messages']} messages, batches of {_BATCH})",
        f"failover (TCP black hole, dead_after 3 s): in-flight message acked after "
        f"{f['failover_ack_s']:.2f} s; UDP active after {f['failover_udp_active_s']:.2f} s",
    ])


def main(messages: int, as_json: bool) -> int:
    """Entry point of ``hotline bench``."""
    result = run_bench(messages)
    print(json.dumps(result, indent=2) if as_json else render(result))
    return 0
