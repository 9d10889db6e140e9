"""Junk TCP connections against real daemons (issue 8, DESIGN §2b).

A stranger who knows a daemon's TCP port opens junk connections (well-framed 5-byte
packets, slow-loris length prefixes), holds them and re-opens them, counting every byte
the daemon writes to it. The TCP path must still come up, messages must still be
acknowledged, and the stranger must receive nothing of ours — including when the peer
only dials (the topology in which the first release wrote to the newest inbound
connection). Timings are printed, not asserted, beyond the issue's "within 10 s".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hotline.keyfile import load_public_key
from hotline.proto.handshake import keeps_own_initiation
from hotline.testing.junk_tcp import JunkTcpProcess
from hotline.testing.loopback import NAMES, LoopbackPair, free_port

# The done-when of issue 8: with 32 junk connections held open, TCP is up within 10 s.
TCP_UP_WITHIN = 10.0


def _tcp_up(pair: LoopbackPair, index: int) -> bool:
    status = pair.status(index)
    return status is not None and status["paths"][0]["state"] == "up"


def _running(pair: LoopbackPair) -> bool:
    return all(pair.status(i) is not None for i in (0, 1))


def _send_both_ways(pair: LoopbackPair, text: str) -> None:
    for index in (0, 1):
        out = pair.cli(index, "send", "--wait", "--timeout", "30", f"{text} from {index}")
        assert out.returncode == 0, out.stderr


def _lower_key_index(root: Path) -> int:
    """The node that keeps its own initiation when two cross (the lower static key)."""
    keys = [load_public_key(f"keys/{name}.pub", root) for name in NAMES]
    return 0 if keeps_own_initiation(keys[0], keys[1]) else 1


def _route_blocking(root: Path, blocked_keeps: bool) -> Callable[[str, str, int], int]:
    """A LoopbackPair route under which one node dials closed ports on every path: the
    lower-key node if ``blocked_keeps``, else the other (keys exist when it is called)."""
    closed = {"tcp": free_port(), "udp": free_port()}

    def route(dialler: str, scheme: str, port: int) -> int:
        blocked = NAMES[_lower_key_index(root) ^ (not blocked_keeps)]
        return closed[scheme] if dialler == blocked else port

    return route


def test_tcp_comes_up_under_32_junk_connections_and_strangers_get_nothing(
    tmp_path: Path,
) -> None:
    """Moscow's port is under junk before washington starts and dials it."""
    pair = LoopbackPair(tmp_path)
    pair.start(1)
    junk = [
        JunkTcpProcess(node.port, connections=32, payload="mixed", rate=50, seconds=120)
        for node in pair.nodes
    ]
    try:
        pair.wait_for(lambda: junk[1].latest()["opened"] >= 32, 30, "32 junk connections")
        started = time.monotonic()
        pair.start(0)
        pair.wait_for(lambda: _running(pair), 30, "both daemons to answer")
        took = pair.wait_for(lambda: _tcp_up(pair, 0) and _tcp_up(pair, 1), TCP_UP_WITHIN,
                             "TCP up under 32 junk connections per daemon")
        print(f"TCP up {took:.2f}s after both daemons answered, "
              f"{time.monotonic() - started:.2f}s after washington was started")
        _send_both_ways(pair, "through the junk")
        pair.wait_for(lambda: junk[0].latest()["opened"] >= 32, 30, "32 junk connections")
        _send_both_ways(pair, "still through the junk")
        assert _tcp_up(pair, 0)
        assert _tcp_up(pair, 1)
    finally:
        stats = [j.stop() for j in junk]
        pair.stop_all()
    print(f"junk stats per daemon: {stats}")
    for s in stats:
        assert s["opened"] >= 32
        assert s["bytes_received"] == 0


@pytest.mark.parametrize("blocked_keeps", [True, False], ids=["blocked-keeps", "blocked-answers"])
def test_peer_that_only_dials_comes_up_and_a_churning_stranger_gets_nothing(
    tmp_path: Path, blocked_keeps: bool
) -> None:
    """One daemon cannot reach the other (closed ports on both paths); the other dials.

    The blocked one answers handshakes where they came from (the TCP connection it was
    dialled on, the UDP address they came from) and trusts those once a packet on them
    authenticated. Both key orders: when initiations cross, the lower key keeps its own
    and answers with it (``blocked_keeps``), the higher answers with a response. A
    stranger re-opening connections every 0.1 s to the blocked one's port (where the
    first release wrote to the newest inbound connection) receives nothing."""
    pair = LoopbackPair(tmp_path, route=_route_blocking(tmp_path, blocked_keeps))
    blocked = _lower_key_index(tmp_path) ^ (not blocked_keeps)
    pair.start(blocked)  # listening first, so that the dialler's first initiation arrives
    stranger = JunkTcpProcess(pair[blocked].port, connections=8, payload="framed", rate=10,
                              churn=True, seconds=120)
    try:
        pair.wait_for(lambda: pair.status(blocked) is not None, 30, "the dialled daemon")
        pair.start(1 - blocked)
        took = pair.wait_up(timeout=60)
        print(f"dialled-only pair up in {took:.2f}s (blocked_keeps={blocked_keeps})")
        _send_both_ways(pair, "over the dialled connection")
        pair.wait_for(lambda: stranger.latest()["opened"] >= 20, 30, "20 stranger connections")
        _send_both_ways(pair, "while the stranger churns")
    finally:
        stats = stranger.stop()
        pair.stop_all()
    print(f"churning stranger: {stats}")
    assert stats["opened"] >= 20
    assert stats["bytes_received"] == 0


@pytest.mark.slow
def test_dialled_only_pair_rekeys_for_a_minute_under_churn_and_junk(tmp_path: Path) -> None:
    """The long version: rekeys every 2 s over the dialled connection for 60 s while one
    stranger churns connections at 50/s and another holds 32 junk connections."""
    pair = LoopbackPair(tmp_path, route=_route_blocking(tmp_path, True),
                        settings={"rekey_after": 2.0})
    blocked = _lower_key_index(tmp_path)
    pair.start(blocked)
    strangers = [
        JunkTcpProcess(pair[blocked].port, connections=16, payload="framed", rate=50,
                       churn=True, seconds=300),
        JunkTcpProcess(pair[blocked].port, connections=32, payload="mixed", rate=50,
                       seconds=300),
    ]
    try:
        pair.wait_for(lambda: pair.status(blocked) is not None, 30, "the dialled daemon")
        pair.start(1 - blocked)
        pair.wait_up(timeout=60)
        deadline = time.monotonic() + 60
        sent = 0
        while time.monotonic() < deadline:
            _send_both_ways(pair, f"message {sent}")
            sent += 1
            time.sleep(0.5)
        assert _tcp_up(pair, blocked)
    finally:
        stats = [s.stop() for s in strangers]
        pair.stop_all()
    print(f"{sent} exchanges; strangers: {stats}")
    for s in stats:
        assert s["bytes_received"] == 0
