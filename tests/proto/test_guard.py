"""The handshake guard (guard.py): repeats, cookies under load, per-source, shared and
reserved budgets — driven with real initiations and with forgeries made from the
responder's public key alone, on a hand-set clock."""

from __future__ import annotations

import os

import pytest

from hotline.errors import AuthenticationError, HandshakeError, LimitError, ReplayError
from hotline.proto.cookie import COOKIE_REPLY_LEN, TYPE_COOKIE_REPLY, CookieJar
from hotline.proto.guard import (
    GuardLimits,
    HandshakeGuard,
    Source,
    rate_key,
    source_bytes,
    source_of,
)
from hotline.proto.handshake import Initiation
from hotline.proto.identity import Identity
from hotline.testing.flood import forged_initiation, with_mac2

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(32, 64)))
BOB_X = BOB.public.x25519()
T0 = 1_700_000_000_000_000_000
PEER: Source = ("127.0.0.1", 7411)
STRANGER: Source = ("127.0.0.2", 40000)
LIMITS = GuardLimits()


def _guard(limits: GuardLimits = LIMITS) -> HandshakeGuard:
    return HandshakeGuard(BOB_X, os.urandom, limits)


def _forged(index: int = 1, cookie: bytes | None = None) -> bytes:
    return forged_initiation(BOB.public, index, os.urandom, cookie)


def _genuine_packet(ts: int = T0, cookie: bytes | None = None) -> bytes:
    return Initiation.start(ALICE, BOB.public, 7, ts, 0.0, os.urandom, cookie)[1]


def _screen(guard: HandshakeGuard, packet: bytes, source: Source | None, now: float,
            proven: bool = False) -> bytes | None:
    return guard.screen_initiation_untrusted(packet, source, proven, now)


def _admitted(guard: HandshakeGuard, packet: bytes, source: Source, now: float) -> bool:
    try:
        return _screen(guard, packet, source, now) is None
    except HandshakeError:
        return False


def _put_under_load(guard: HandshakeGuard, now: float) -> None:
    """A stranger spends its source budget, which switches cookies on."""
    for i in range(int(LIMITS.per_source_burst) + 1):
        _admitted(guard, _forged(1000 + i), STRANGER, now)
    assert guard.under_load(now)


def _cookie(guard: HandshakeGuard, source: Source, now: float) -> bytes:
    """Ask the guard for a cookie as an initiator at ``source`` would."""
    packet = _forged(77)
    reply = _screen(guard, packet, source, now)
    assert reply is not None
    jar = CookieJar(BOB_X)
    jar.consume_reply_untrusted(reply, packet[-32:-16], now)
    cookie = jar.cookie(now)
    assert cookie is not None
    return cookie


# --- the cheap checks -----------------------------------------------------------------


def test_size_type_and_mac1_come_first() -> None:
    guard = _guard()
    packet = _genuine_packet()
    with pytest.raises(LimitError):
        _screen(guard, packet + b"\x00", PEER, 0.0)
    with pytest.raises(AuthenticationError):
        _screen(guard, packet[:-17] + bytes([packet[-17] ^ 1]) + packet[-16:], PEER, 0.0)
    assert _screen(guard, packet, PEER, 0.0) is None


def test_exact_repeats_are_dropped_before_they_spend_any_budget() -> None:
    guard = _guard(GuardLimits(per_source_burst=2, per_source_rate=0.001))
    captured = _genuine_packet()
    assert _screen(guard, captured, STRANGER, 0.0) is None
    for _ in range(1000):
        with pytest.raises(ReplayError, match="repeat"):
            _screen(guard, captured, STRANGER, 0.0)
    # A cookie's mac2 does not make it new: the repeat is recognised by its mac1.
    with pytest.raises(ReplayError):
        _screen(guard, with_mac2(captured, bytes(16)), STRANGER, 0.0)
    assert not guard.under_load(0.0)
    assert _screen(guard, _forged(), STRANGER, 0.0) is None  # the second token is there


def test_not_under_load_no_cookie_is_needed() -> None:
    guard = _guard()
    assert _screen(guard, _genuine_packet(), PEER, 0.0) is None
    assert not guard.under_load(0.0)


# --- under load -----------------------------------------------------------------------


def test_a_flood_from_one_address_is_contained_and_switches_cookies_on() -> None:
    guard = _guard()
    admitted = sum(_admitted(guard, _forged(i), STRANGER, 0.0) for i in range(1000))
    assert admitted == LIMITS.per_source_burst
    assert guard.under_load(0.0)
    reply = _screen(guard, _genuine_packet(), PEER, 0.0)
    assert reply is not None
    assert len(reply) == COOKIE_REPLY_LEN
    assert reply[0] == TYPE_COOKIE_REPLY
    assert reply[1:5] == (7).to_bytes(4, "big")  # the initiation's sender index


def test_load_ends_a_second_after_the_last_refusal() -> None:
    guard = _guard()
    _put_under_load(guard, 10.0)
    assert guard.under_load(10.0 + LIMITS.under_load_after - 0.01)
    assert not guard.under_load(10.0 + LIMITS.under_load_after)


def test_high_demand_alone_switches_cookies_on() -> None:
    """Initiations faster than the shared budget refills, even from fresh addresses."""
    guard = _guard()
    for i in range(int(LIMITS.shared_burst) + 1):
        _admitted(guard, _forged(i), (f"127.0.{i // 250}.{i % 250 + 1}", 1), 0.0)
    assert guard.under_load(0.0)


def test_a_valid_mac2_gets_through_under_load() -> None:
    guard = _guard()
    _put_under_load(guard, 0.0)
    cookie = _cookie(guard, PEER, 0.0)
    assert _screen(guard, _genuine_packet(cookie=cookie), PEER, 0.1) is None
    # The cookie is bound to the address: from another port it is asked for again.
    assert _screen(guard, _genuine_packet(T0 + 1, cookie), ("127.0.0.1", 7412), 0.1) is not None


def test_a_cookie_farmer_gets_no_more_than_its_address_budget() -> None:
    """An attacker at a real address answers cookies and floods with a valid mac2."""
    guard = _guard()
    _put_under_load(guard, 0.0)
    farmer_cookie = _cookie(guard, STRANGER, 0.0)
    peer_cookie = _cookie(guard, PEER, 0.0)
    admitted, peer_ok, seconds = 0, 0, 10
    for tick in range(seconds * 1000):  # 1,000 packets/s for 10 s
        now = tick / 1000
        admitted += _admitted(guard, _forged(tick, farmer_cookie), STRANGER, now)
        if tick % 1000 == 500:  # the real peer tries once a second
            peer_ok += _admitted(guard, _genuine_packet(T0 + tick, peer_cookie), PEER, now)
    assert admitted <= LIMITS.per_source_burst + LIMITS.per_source_rate * seconds
    assert peer_ok == seconds
    assert guard.under_load(seconds)


def test_tcp_sources_need_no_cookie() -> None:
    guard = _guard()
    _put_under_load(guard, 0.0)
    assert _screen(guard, _genuine_packet(), ("127.0.0.1", 50000), 0.0, proven=True) is None


def test_unknown_source_under_load_is_dropped() -> None:
    guard = _guard()
    _put_under_load(guard, 0.0)
    with pytest.raises(HandshakeError, match="unknown address"):
        _screen(guard, _genuine_packet(), None, 0.0)


# --- the reserved budget --------------------------------------------------------------


def _exhaust_shared(guard: HandshakeGuard, now: float) -> None:
    """Many cookie farmers at many addresses spend the shared budget."""
    for i in range(int(LIMITS.shared_burst) + 20):
        farmer: Source = (f"127.1.{i // 250}.{i % 250 + 1}", 1)
        cookie = _cookie(guard, farmer, now)
        for j in range(int(LIMITS.per_source_burst)):
            _admitted(guard, _forged(i * 100 + j, cookie), farmer, now)


def test_the_peers_last_authenticated_address_keeps_a_reserved_budget() -> None:
    guard = _guard()
    _put_under_load(guard, 0.0)
    _exhaust_shared(guard, 0.0)
    peer_cookie = _cookie(guard, PEER, 0.0)
    fresh = ("127.0.0.9", 9)
    assert not _admitted(guard, _forged(5, _cookie(guard, fresh, 0.0)), fresh, 0.0)
    assert not _admitted(guard, _genuine_packet(cookie=peer_cookie), PEER, 0.0)
    guard.on_authenticated_source(1, PEER)
    assert _admitted(guard, _genuine_packet(T0 + 1, peer_cookie), PEER, 0.0)


def test_spoofing_the_peers_address_cannot_spend_its_reserved_budget() -> None:
    """Without the cookie sent to the peer's address, a spoofer only triggers cookies."""
    guard = _guard()
    guard.on_authenticated_source(0, PEER)
    _put_under_load(guard, 0.0)
    for i in range(1000):
        assert _screen(guard, _forged(i), PEER, 0.0) is not None  # a cookie reply, no DH
    cookie = _cookie(guard, PEER, 0.0)
    burst = int(LIMITS.reserved_burst + LIMITS.per_source_burst)
    assert all(_admitted(guard, _genuine_packet(T0 + i, cookie), PEER, 0.0)
               for i in range(burst))


# --- source keys ----------------------------------------------------------------------


def test_rate_key_groups_ipv6_by_64_and_unwraps_mapped_ipv4() -> None:
    assert rate_key(("2001:db8:1:2::1", 1)) == rate_key(("2001:db8:1:2:ffff::9", 2))
    assert rate_key(("2001:db8:1:2::1", 1)) != rate_key(("2001:db8:1:3::1", 1))
    assert rate_key(("::ffff:192.0.2.1", 1)) == rate_key(("192.0.2.1", 9))
    assert rate_key(("192.0.2.1", 1)) != rate_key(("192.0.2.2", 1))
    assert rate_key(None) == b""


def test_source_of_socket_addresses() -> None:
    assert source_of(("127.0.0.1", 7411)) == ("127.0.0.1", 7411)
    assert source_of(("::1", 7411, 0, 0)) == ("::1", 7411)
    assert source_of(None) is None
    assert source_bytes(("127.0.0.1", 258)) == bytes([127, 0, 0, 1, 1, 2])
