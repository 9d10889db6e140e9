"""The flooder (hotline/testing/flood.py) against a stand-in victim on a real socket.

The stand-in answers every initiation with a real cookie reply; the flooder must make
initiations that pass mac1 from the public key alone, then farm the cookie: what it
sends afterwards carries a valid mac2 for its own address.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest

from hotline.proto.cookie import CookieChecker, check_mac1_untrusted, mac1_key
from hotline.proto.guard import source_bytes
from hotline.proto.handshake import INITIATION_MAX, Initiation
from hotline.proto.identity import Identity
from hotline.testing.flood import Flooder, FloodPlan

VICTIM = Identity.from_seed(bytes(range(32, 64)))
PEER = Identity.from_seed(bytes(range(32)))


def _plan(port: int, **changes: object) -> FloodPlan:
    captured = Initiation.start(PEER, VICTIM.public, 1, 5, 0.0, os.urandom)[1].hex()
    plan = FloodPlan(victim_pub=VICTIM.public.openssh_line(), udp_port=port,
                     rate=400, duration=0.5, captured=[captured])
    for name, value in changes.items():
        setattr(plan, name, value)
    return plan


@pytest.mark.parametrize(("changes", "why"), [
    ({"host": "192.0.2.1"}, "loopback only"),
    ({"sources": ["10.0.0.1"]}, "loopback only"),
    ({"sources": ["::1"]}, "address family"),
    ({"rate": 0}, "bounded"),
    ({"duration": 10_000}, "bounded"),
    ({"mix": {"nonsense": 1}}, "kinds"),
    ({"captured": []}, "captured"),
    ({"tcp_every": 0}, "tcp_every"),
])
def test_plan_refuses_anything_but_a_bounded_loopback_flood(changes: dict[str, object],
                                                            why: str) -> None:
    with pytest.raises(ValueError, match=why):
        _plan(7, **changes).check()


def test_forges_from_the_public_key_and_farms_cookies() -> None:
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(("127.0.0.1", 0))
    victim.settimeout(0.2)
    checker = CookieChecker(VICTIM.public.x25519(), os.urandom)
    seen: list[tuple[bytes, tuple[str, int]]] = []

    def answer_with_cookies() -> None:
        while True:
            try:
                data, addr = victim.recvfrom(2048)
            except TimeoutError:
                return
            seen.append((data, addr))
            if data[:1] == b"\x01" and len(data) == INITIATION_MAX:
                index = int.from_bytes(data[1:5], "big")
                victim.sendto(checker.make_reply(data, index, source_bytes(addr), 0.0), addr)

    thread = threading.Thread(target=answer_with_cookies)
    thread.start()
    flooder = Flooder(_plan(victim.getsockname()[1]))
    try:
        stats = flooder.run()
    finally:
        flooder.close()
        thread.join()
        victim.close()
    initiations = [(d, a) for d, a in seen if d[:1] == b"\x01" and len(d) == INITIATION_MAX]
    assert {a[0] for _, a in seen} == {"127.0.0.2"}
    for data, _ in initiations:
        check_mac1_untrusted(mac1_key(VICTIM.public.x25519()), data)
    farmed = [checker.check_mac2(d, source_bytes(a), 0.0) for d, a in initiations]
    assert stats.cookies_accepted > 0
    assert any(farmed)
    assert not farmed[0]  # no cookie before the first reply
    assert stats.sent["junk"] > 0
