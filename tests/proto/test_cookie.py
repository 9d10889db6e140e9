"""mac1/mac2 and cookie replies (cookie.py): binding, sealing, rotation."""

from __future__ import annotations

import os

import pytest

from hotline.errors import AuthenticationError, DecodeError
from hotline.proto.cookie import (
    COOKIE_FRESH_FOR,
    COOKIE_REPLY_LEN,
    SECRET_LIFETIME,
    CookieChecker,
    CookieJar,
    add_macs,
    check_cookie_reply_untrusted,
    check_mac1_untrusted,
    mac1_key,
)
from hotline.proto.identity import Identity

BOB = Identity.from_seed(bytes(range(32, 64)))
BOB_X = BOB.public.x25519()
HERE = bytes([127, 0, 0, 2]) + (4000).to_bytes(2, "big")
ELSEWHERE = bytes([127, 0, 0, 3]) + (4000).to_bytes(2, "big")
OTHER_PORT = bytes([127, 0, 0, 2]) + (4001).to_bytes(2, "big")


def _packet(cookie: bytes | None, body: bytes = b"\x01" + bytes(68)) -> bytes:
    return add_macs(body, mac1_key(BOB_X), cookie)


def _cookie_for(checker: CookieChecker, source: bytes, now: float) -> bytes:
    """What an honest initiator at ``source`` ends up holding after one reply."""
    first = _packet(None)
    reply = checker.make_reply(first, 7, source, now)
    jar = CookieJar(BOB_X)
    jar.consume_reply_untrusted(reply, first[-32:-16], now)
    cookie = jar.cookie(now)
    assert cookie is not None
    return cookie


def test_reply_carries_a_cookie_that_makes_a_valid_mac2_for_that_source_only() -> None:
    checker = CookieChecker(BOB_X, os.urandom)
    reply = checker.make_reply(_packet(None), 0xA1B2C3D4, HERE, 0.0)
    assert len(reply) == COOKIE_REPLY_LEN == 49
    assert reply[:5] == b"\x04\xa1\xb2\xc3\xd4"
    cookie = _cookie_for(checker, HERE, 0.0)
    with_mac2 = _packet(cookie)
    assert checker.check_mac2(with_mac2, HERE, 1.0)
    assert not checker.check_mac2(with_mac2, ELSEWHERE, 1.0)
    assert not checker.check_mac2(with_mac2, OTHER_PORT, 1.0)
    assert not checker.check_mac2(_packet(None), HERE, 1.0)


def test_mac1_still_checks_with_a_mac2_appended() -> None:
    assert check_mac1_untrusted(mac1_key(BOB_X), _packet(bytes(16))) == b"\x01" + bytes(68)
    with pytest.raises(AuthenticationError):
        check_mac1_untrusted(mac1_key(Identity.generate().public.x25519()), _packet(None))


def test_reply_opens_only_with_the_mac1_of_the_packet_it_answers() -> None:
    checker = CookieChecker(BOB_X, os.urandom)
    answered = _packet(None)
    reply = checker.make_reply(answered, 1, HERE, 0.0)
    jar = CookieJar(BOB_X)
    with pytest.raises(AuthenticationError):
        jar.consume_reply_untrusted(reply, bytes(16), 0.0)
    assert jar.cookie(0.0) is None
    stranger_jar = CookieJar(Identity.generate().public.x25519())  # not Bob's key
    with pytest.raises(AuthenticationError):
        stranger_jar.consume_reply_untrusted(reply, answered[-32:-16], 0.0)
    tampered = reply[:-1] + bytes([reply[-1] ^ 1])
    with pytest.raises(AuthenticationError):
        jar.consume_reply_untrusted(tampered, answered[-32:-16], 0.0)
    jar.consume_reply_untrusted(reply, answered[-32:-16], 0.0)
    assert jar.cookie(0.0) is not None


@pytest.mark.parametrize("bad", [b"", b"\x04" + bytes(47), b"\x04" + bytes(49),
                                 b"\x03" + bytes(48)], ids=["empty", "short", "long", "type"])
def test_malformed_cookie_reply(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        check_cookie_reply_untrusted(bad)
    with pytest.raises(DecodeError):
        CookieJar(BOB_X).consume_reply_untrusted(bad, bytes(16), 0.0)


def test_initiator_stops_using_a_cookie_after_it_goes_stale() -> None:
    checker = CookieChecker(BOB_X, os.urandom)
    jar = CookieJar(BOB_X)
    answered = _packet(None)
    jar.consume_reply_untrusted(checker.make_reply(answered, 1, HERE, 50.0),
                                answered[-32:-16], 50.0)
    assert jar.cookie(50.0 + COOKIE_FRESH_FOR - 1) is not None
    assert jar.cookie(50.0 + COOKIE_FRESH_FOR) is None


def test_secret_rotation_keeps_a_cookie_good_while_the_initiator_uses_it() -> None:
    """A cookie made just before a rotation still works for COOKIE_FRESH_FOR seconds;
    a cookie never works once its secret is two lifetimes old."""
    checker = CookieChecker(BOB_X, os.urandom)
    made_at = SECRET_LIFETIME - 0.5  # the secret minted at 0.0 makes it
    checker.make_reply(_packet(None), 1, ELSEWHERE, 0.0)
    cookie = _cookie_for(checker, HERE, made_at)
    packet = _packet(cookie)
    checker.make_reply(_packet(None), 1, ELSEWHERE, SECRET_LIFETIME + 1)  # rotates
    assert checker.check_mac2(packet, HERE, made_at + COOKIE_FRESH_FOR)
    assert not checker.check_mac2(packet, HERE, 2 * SECRET_LIFETIME)
    fresh = _packet(_cookie_for(checker, HERE, SECRET_LIFETIME + 2))
    assert checker.check_mac2(fresh, HERE, SECRET_LIFETIME + 3)


def test_rotation_forgets_all_but_two_secrets() -> None:
    checker = CookieChecker(BOB_X, os.urandom)
    old = _packet(_cookie_for(checker, HERE, 0.0))
    for step in range(1, 4):
        checker.make_reply(_packet(None), 1, HERE, step * SECRET_LIFETIME)
    assert not checker.check_mac2(old, HERE, 3 * SECRET_LIFETIME + 1)
