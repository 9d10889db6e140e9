"""What ``Link.receive_untrusted`` says a packet proved (DESIGN §2b, §3).

The transports act on it: only AUTHENTICATED lets UDP roam or a TCP connection become
the peer's; ANSWERED only sends our handshake reply back where the packet came from.
An initiation is never AUTHENTICATED: anyone who captured one can replay it.
"""

from __future__ import annotations

from hotline.proto.handshake import keeps_own_initiation
from hotline.proto.link import Link, Received
from hotline.proto.packet import PACKET_INITIATION, PACKET_RESPONSE, PACKET_TRANSPORT
from tests.helpers import End, LinkPair


def _initiation(end: End, now: float) -> tuple[int, bytes]:
    end.link.handle_timer(now)
    [(path_id, packet)] = end.link.packets_to_send(now)
    assert packet[0] == PACKET_INITIATION
    return path_id, packet


def test_an_initiation_is_answered_but_proves_nothing_until_the_handshake_completes() -> None:
    pair = LinkPair()
    a, b, now = pair.a.link, pair.b.link, pair.now
    path_id, initiation = _initiation(pair.a, now)
    b.path_disconnected(path_id, now)  # e.g. a TCP path the peer dialled, not yet trusted
    assert b.receive_untrusted(path_id, initiation, now) is Received.ANSWERED
    assert not b.paths[path_id].connected  # an initiation is not hearing the peer
    assert not b.paths[path_id].up
    [(reply_path, response)] = b.packets_to_send(now)
    assert (reply_path, response[0]) == (path_id, PACKET_RESPONSE)
    assert b.receive_untrusted(path_id, initiation, now) is Received.NOTHING  # replayed

    assert a.receive_untrusted(path_id, response, now) is Received.AUTHENTICATED
    confirmation = a.packets_to_send(now)
    assert {packet[0] for _, packet in confirmation} == {PACKET_TRANSPORT}
    verdicts = {b.receive_untrusted(p, packet, now) for p, packet in confirmation}
    assert verdicts == {Received.AUTHENTICATED}
    assert b.paths[path_id].up


def test_a_captured_initiation_replayed_after_a_restart_is_never_authenticated() -> None:
    pair = LinkPair()
    path_id, initiation = _initiation(pair.a, pair.now)
    assert pair.b.link.receive_untrusted(path_id, initiation, pair.now) is Received.ANSWERED
    restarted: Link = LinkPair().b.link  # same keys, fresh memory
    received = restarted.receive_untrusted(path_id, initiation, pair.now + 1)
    assert received is not Received.AUTHENTICATED  # so UDP does not roam to the replayer
    assert not restarted.paths[path_id].up


def test_crossing_initiations_the_keeper_answers_with_its_own_initiation() -> None:
    pair = LinkPair()
    now = pair.now
    initiations = {end.name: _initiation(end, now) for end in pair.ends}
    a_keeps = keeps_own_initiation(pair.a.identity.public, pair.b.identity.public)
    keeper, other = (pair.a, pair.b) if a_keeps else (pair.b, pair.a)
    path_id, theirs = initiations[other.name]
    assert keeper.link.receive_untrusted(path_id, theirs, now) is Received.ANSWERED
    [(reply_path, reply)] = keeper.link.packets_to_send(now)
    assert (reply_path, reply) == initiations[keeper.name]  # back where theirs came from
    assert other.link.receive_untrusted(path_id, reply, now) is Received.ANSWERED
    [(_, response)] = other.link.packets_to_send(now)
    assert keeper.link.receive_untrusted(path_id, response, now) is Received.AUTHENTICATED
