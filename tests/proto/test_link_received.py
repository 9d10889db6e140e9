"""What ``Link.receive_untrusted`` says a packet proved (DESIGN §2b, §3).

The transports act on it: only AUTHENTICATED lets UDP roam or a TCP connection become
the peer's; ANSWERED only sends our handshake reply back where the packet came from.
An initiation is never AUTHENTICATED: anyone who captured one can replay it.
"""

from __future__ import annotations

from pathlib import Path

from hotline.proto.handshake import keeps_own_initiation
from hotline.proto.link import Link, Received
from hotline.proto.packet import PACKET_INITIATION, PACKET_RESPONSE, PACKET_TRANSPORT
from hotline.testing.endpoints import Node, NodePair


def _initiation(node: Node, now: float) -> tuple[int, bytes]:
    link = node.endpoint.link
    link.handle_timer(now)
    [(path_id, packet, _urgent, _to)] = link.packets_to_send(now)
    assert packet[0] == PACKET_INITIATION
    return path_id, packet


def test_an_initiation_is_answered_but_proves_nothing_until_the_handshake_completes(
        tmp_path: Path) -> None:
    pair = NodePair(tmp_path)
    a, b, now = pair.a.endpoint.link, pair.b.endpoint.link, pair.now
    path_id, initiation = _initiation(pair.a, now)
    b.path_disconnected(path_id, now)  # e.g. a TCP path the peer dialled, not yet trusted
    assert b.receive_untrusted(path_id, initiation, now) is Received.ANSWERED
    assert not b.paths[path_id].connected  # an initiation is not hearing the peer
    assert not b.paths[path_id].up
    [(reply_path, response, _, _)] = b.packets_to_send(now)
    assert (reply_path, response[0]) == (path_id, PACKET_RESPONSE)
    assert b.receive_untrusted(path_id, initiation, now) is Received.NOTHING  # replayed

    assert a.receive_untrusted(path_id, response, now) is Received.AUTHENTICATED
    confirmation = a.packets_to_send(now)
    assert {packet[0] for _, packet, _, _ in confirmation} == {PACKET_TRANSPORT}
    verdicts = {b.receive_untrusted(p, packet, now) for p, packet, _, _ in confirmation}
    assert verdicts == {Received.AUTHENTICATED}
    assert b.paths[path_id].up


def test_a_captured_initiation_replayed_after_a_restart_is_never_authenticated(
        tmp_path: Path) -> None:
    pair = NodePair(tmp_path / "1")
    path_id, initiation = _initiation(pair.a, pair.now)
    received = pair.b.endpoint.link.receive_untrusted(path_id, initiation, pair.now)
    assert received is Received.ANSWERED
    restarted: Link = NodePair(tmp_path / "2").b.endpoint.link  # same keys, fresh memory
    received = restarted.receive_untrusted(path_id, initiation, pair.now + 1)
    assert received is not Received.AUTHENTICATED  # so UDP does not roam to the replayer
    assert not restarted.paths[path_id].up


def test_crossing_initiations_the_keeper_answers_with_its_own_initiation(
        tmp_path: Path) -> None:
    pair = NodePair(tmp_path)
    now = pair.now
    initiations = {node.name: _initiation(node, now) for node in pair.nodes}
    a_keeps = keeps_own_initiation(pair.a.identity.public, pair.b.identity.public)
    keeper, other = (pair.a, pair.b) if a_keeps else (pair.b, pair.a)
    keeper_link, other_link = keeper.endpoint.link, other.endpoint.link
    path_id, theirs = initiations[other.name]
    assert keeper_link.receive_untrusted(path_id, theirs, now) is Received.ANSWERED
    [(reply_path, reply, _, _)] = keeper_link.packets_to_send(now)
    assert (reply_path, reply) == initiations[keeper.name]  # back where theirs came from
    assert other_link.receive_untrusted(path_id, reply, now) is Received.ANSWERED
    [(_, response, _, _)] = other_link.packets_to_send(now)
    assert keeper_link.receive_untrusted(path_id, response, now) is Received.AUTHENTICATED
