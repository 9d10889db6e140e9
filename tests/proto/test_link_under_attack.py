"""Two real Links under a handshake flood (DESIGN §2b), with packet sources.

The links talk over their UDP path only (TCP is disconnected), so cookies matter. A
stranger who knows only Bob's public key floods Bob with forged initiations and with
replays of a captured one. Replies addressed to a source reach that source only.
"""

from __future__ import annotations

import os

import pytest

from hotline.errors import RemoteProtocolError
from hotline.proto import noise
from hotline.proto.events import Dropped, InitiationAccepted
from hotline.proto.guard import GuardLimits, Source
from hotline.proto.handshake import Initiation
from hotline.proto.identity import Identity
from hotline.proto.link import Link, LinkSettings, Outbound, Received
from hotline.proto.packet import PACKET_COOKIE_REPLY, PACKET_INITIATION
from hotline.testing.endpoints import PATHS, WALL0, fresh_resume, seeded_rng
from hotline.testing.flood import forged_initiation

UDP = 1
A_AT: Source = ("127.0.0.1", 1111)  # Alice's address as Bob sees it
B_AT: Source = ("127.0.0.1", 2222)
STRANGER: Source = ("127.0.0.2", 40000)
LIMITS = GuardLimits()


class _End:
    def __init__(self, name: str, identity: Identity, link: Link) -> None:
        self.name, self.identity, self.link = name, identity, link


class LinkPair:
    """Two bare Links (no endpoint, no store) over their UDP path only."""

    def __init__(self, settings: LinkSettings | None = None) -> None:
        self.now = 100.0
        self.settings = settings or LinkSettings()
        ids = [Identity.from_seed(bytes([i]) * 32) for i in (1, 2)]
        self.a, self.b = (
            _End("ab"[i], ids[i], Link(ids[i], ids[1 - i].public, PATHS, self.settings,
                                       fresh_resume(bytes([0xE0 + i]) * 16),
                                       seeded_rng(10 + i), self.now, WALL0))
            for i in range(2))
        for end in (self.a, self.b):
            end.link.path_connected(UDP, self.now)


def _udp_pair(settings: LinkSettings | None = None) -> LinkPair:
    return LinkPair(settings)


def _to_path(packets: list[Outbound]) -> list[tuple[int, bytes]]:
    """The packets that go to the path's usual destination (not handshake replies)."""
    return [(p.path_id, p.packet) for p in packets if p.reply_to is None]


def _replies(link: Link, now: float) -> list[tuple[int, Source | None, bytes]]:
    """Every packet queued now, as (path id, the source it answers or None, bytes)."""
    return [(p.path_id, p.reply_to, p.packet) for p in link.packets_to_send(now)]


def _exchange(pair: LinkPair, to_stranger: list[bytes] | None = None) -> None:
    """Move every packet and reply between the two links until none is left."""
    a, b = pair.a.link, pair.b.link
    moved = True
    while moved:
        moved = False
        for src, dst, src_at, dst_at in ((a, b, A_AT, B_AT), (b, a, B_AT, A_AT)):
            src.handle_timer(pair.now)
            out = []
            for path_id, source, packet in _replies(src, pair.now):
                if source is None or source == dst_at:
                    out.append((path_id, packet))
                elif to_stranger is not None:
                    to_stranger.append(packet)
            for path_id, packet in out:
                moved = True
                dst.receive_untrusted(path_id, packet, pair.now, src_at)


def _flood_bob(pair: LinkPair, count: int, captured: bytes | None = None) -> list[bytes]:
    """The stranger sends ``count`` forged initiations (and a replay of ``captured``)."""
    b = pair.b.link
    for i in range(count):
        b.receive_untrusted(UDP, forged_initiation(pair.b.identity.public, i), pair.now, STRANGER)
        if captured is not None:
            b.receive_untrusted(UDP, captured, pair.now, STRANGER)
    return [packet for _, source, packet in _replies(b, pair.now) if source == STRANGER]


def _initiation_from_alice(pair: LinkPair) -> bytes:
    pair.a.link.handle_timer(pair.now)
    [(path_id, packet)] = _to_path(pair.a.link.packets_to_send(pair.now))
    assert (path_id, packet[0]) == (UDP, PACKET_INITIATION)
    return packet


def test_udp_response_goes_to_the_initiations_source_and_roams_nothing() -> None:
    pair = _udp_pair()
    a, b = pair.a.link, pair.b.link
    initiation = _initiation_from_alice(pair)
    assert b.receive_untrusted(UDP, initiation, pair.now, A_AT) is Received.ANSWERED
    [(path_id, source, response)] = _replies(b, pair.now)  # may be a replay: no trust
    assert (path_id, source) == (UDP, A_AT)
    [accepted] = [e for e in b.next_events() if isinstance(e, InitiationAccepted)]
    assert accepted.timestamp_ns == WALL0  # Alice's wall clock when she initiated
    assert a.receive_untrusted(UDP, response, pair.now, B_AT) is Received.AUTHENTICATED
    confirmation = _to_path(a.packets_to_send(pair.now))
    assert all(b.receive_untrusted(p, pkt, pair.now, A_AT) is Received.AUTHENTICATED
               for p, pkt in confirmation)
    assert a.sessions.can_send()
    assert b.sessions.can_send()


def test_captured_initiation_refused_by_a_link_built_with_the_persisted_floor() -> None:
    pair = _udp_pair()
    captured = _initiation_from_alice(pair)
    pair.b.link.receive_untrusted(UDP, captured, pair.now, A_AT)
    [floor] = [e.timestamp_ns for e in pair.b.link.next_events()
               if isinstance(e, InitiationAccepted)]
    restarted = Link(
        pair.b.identity, pair.a.identity.public, pair.b.link.specs, pair.settings,
        fresh_resume(bytes(16), handshake_ts=floor), seeded_rng(99), pair.now, WALL0,
    )
    assert restarted.receive_untrusted(UDP, captured, pair.now, STRANGER) is Received.NOTHING
    [dropped] = restarted.next_events()
    assert isinstance(dropped, Dropped)
    assert dropped.kind == "ReplayError"
    assert restarted.packets_to_send(pair.now) == []
    assert restarted.sessions.unconfirmed is None


def test_under_load_alice_gets_a_cookie_and_retries_at_once() -> None:
    pair = _udp_pair()
    a, b = pair.a.link, pair.b.link
    to_stranger = _flood_bob(pair, 1000)
    assert b.sessions.guard.under_load(pair.now)
    assert len(to_stranger) == 1000 - LIMITS.per_source_burst - 1  # all to the stranger
    assert {p[0] for p in to_stranger} == {PACKET_COOKIE_REPLY}
    b.next_events()

    received = b.receive_untrusted(UDP, _initiation_from_alice(pair), pair.now, A_AT)
    assert received is Received.ANSWERED
    assert [e.kind for e in b.next_events() if isinstance(e, Dropped)] == ["CookieRequired"]
    [(_, source, cookie_reply)] = _replies(b, pair.now)
    assert (source, cookie_reply[0]) == (A_AT, PACKET_COOKIE_REPLY)
    assert a.receive_untrusted(UDP, cookie_reply, pair.now, B_AT) is Received.NOTHING
    [(path_id, retry)] = _to_path(a.packets_to_send(pair.now))
    assert (path_id, retry[0]) == (UDP, PACKET_INITIATION)
    assert retry[-16:] != bytes(16)  # it carries mac2 now
    b.receive_untrusted(UDP, retry, pair.now, A_AT)
    pair.b.link.next_events()
    [(_, source, response)] = _replies(b, pair.now)
    assert source == A_AT
    assert a.receive_untrusted(UDP, response, pair.now, B_AT) is Received.AUTHENTICATED
    _exchange(pair)
    assert a.sessions.can_send()
    assert b.sessions.can_send()


def test_a_cookie_reply_to_a_retry_does_not_make_alice_loop() -> None:
    pair = _udp_pair()
    a, b = pair.a.link, pair.b.link
    _flood_bob(pair, 100)
    b.receive_untrusted(UDP, _initiation_from_alice(pair), pair.now, A_AT)
    [(_, _, cookie_reply)] = _replies(b, pair.now)
    a.receive_untrusted(UDP, cookie_reply, pair.now, B_AT)
    [(_, retry)] = _to_path(a.packets_to_send(pair.now))
    # Alice's address changed on the way (a NAT rebinding): her cookie no longer fits.
    b.receive_untrusted(UDP, retry, pair.now, ("127.0.0.1", 1112))
    [(_, _, second_reply)] = _replies(b, pair.now)
    assert a.receive_untrusted(UDP, second_reply, pair.now, B_AT) is Received.NOTHING
    assert a.packets_to_send(pair.now) == []  # the next try waits for the retry timer


def test_cookie_reply_to_nothing_of_ours_is_dropped() -> None:
    pair = _udp_pair()
    replies = _flood_bob(pair, 50)  # cookie replies meant for the stranger
    a = pair.a.link
    assert a.receive_untrusted(UDP, replies[-1], pair.now, B_AT) is Received.NOTHING
    [dropped] = a.next_events()
    assert isinstance(dropped, Dropped)
    assert dropped.kind == "HandshakeError"


def test_established_pair_rekeys_through_a_flood_of_forgeries_and_replays() -> None:
    """1,000 forged + 1,000 replayed initiations a second at Bob, rekey every 5 s."""
    pair = _udp_pair(LinkSettings(rekey_after=5.0))
    # A genuine initiation of Alice's from an hour ago stands in for a capture.
    captured = Initiation.start(pair.a.identity, pair.b.identity.public, 7,
                                WALL0 - 3600 * 10**9, pair.now, os.urandom)[1]
    _exchange(pair)
    assert pair.a.link.sessions.can_send()
    start = pair.a.link.sessions.handshakes_completed
    for _ in range(12 * 20):  # 12 s in steps of 50 ms, 50 forgeries + 50 replays each
        _flood_bob(pair, 50, captured)
        _exchange(pair)
        assert pair.a.link.sessions.can_send()
        assert pair.b.link.sessions.can_send()
        pair.now = round(pair.now + 0.05, 6)
    assert pair.a.link.sessions.handshakes_completed - start >= 2  # 12 s, rekey every 5
    assert pair.b.link.sessions.guard.under_load(pair.now)
    with pytest.raises(RemoteProtocolError):  # the capture never got through again
        pair.b.link.sessions.on_initiation_untrusted(captured, pair.now, STRANGER,
                                                     address_proven=True)


def test_replays_of_one_capture_cost_one_noise_read_at_most(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pair = _udp_pair()
    _exchange(pair)
    captured = Initiation.start(pair.a.identity, pair.b.identity.public, 7,
                                WALL0 - 3600 * 10**9, pair.now, os.urandom)[1]
    calls: list[int] = []
    real_dh = noise._dh

    def counting_dh(private: bytes, public: bytes) -> bytes:
        calls.append(1)
        return real_dh(private, public)

    monkeypatch.setattr(noise, "_dh", counting_dh)
    b = pair.b.link
    b.next_events()
    assert b.receive_untrusted(UDP, captured, pair.now, STRANGER) is Received.NOTHING
    first = len(calls)  # the Noise read of the first copy, refused for its old timestamp
    assert first > 0
    for _ in range(999):
        assert b.receive_untrusted(UDP, captured, pair.now, STRANGER) is Received.NOTHING
    assert len(calls) == first
    kinds = {(e.kind, e.reason) for e in b.next_events() if isinstance(e, Dropped)}
    assert kinds == {("ReplayError", "initiation timestamp not newer than the last accepted"),
                     ("ReplayError", "repeat of an initiation already screened")}
    assert b.packets_to_send(pair.now) == []
