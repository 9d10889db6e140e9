"""The Link and the Endpoint, two real nodes over an in-memory network with a hand-set clock.

Each node is the product's ``Endpoint`` over a real SQLite store (hotline/testing/
endpoints.py), pumped by hand the way the runner pumps it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hotline.proto.endpoint import EndpointSettings
from hotline.proto.envelope import decode_envelope_untrusted
from hotline.proto.lanes import FLASH, ROUTINE
from hotline.proto.link import Link, LinkSettings, Received
from hotline.proto.requests import Refused, SendRequest, Stored
from hotline.testing.endpoints import Node, NodePair


@pytest.fixture
def pair(tmp_path: Path):
    p = NodePair(tmp_path)
    yield p
    p.close()


def make_pair(tmp_path: Path, **link: object) -> NodePair:
    return NodePair(tmp_path / "pair", link=LinkSettings(**link))  # type: ignore[arg-type]


def send(node: Node, *bodies: bytes, lane: int = ROUTINE) -> list[tuple[int, int]]:
    """Send and run the node until the commit answered; the (lane, seq) ids."""
    token = node.call(SendRequest("text/plain", bodies, lane))
    node.turn()
    outcome = node.replies.pop(token)
    assert isinstance(outcome, Stored), outcome
    return list(outcome.ids)


def delivered(node: Node) -> list[bytes]:
    """Bodies in the node's inbox, in delivery order."""
    return [decode_envelope_untrusted(e.raw, len(e.raw)).body
            for e in node.store.inbox_after(0, 100_000)]


def acked(node: Node, lane: int = ROUTINE) -> int:
    return node.endpoint.link.outgoing[lane].acked_upto


def test_handshake_then_messages_both_ways(pair: NodePair) -> None:
    pair.run(1.0)
    assert pair.a.endpoint.link.sessions.can_send()
    assert pair.b.endpoint.link.sessions.can_send()
    assert any(n.kind == "handshake" for n in pair.a.notices)
    assert send(pair.a, b"hello moscow", b"second") == [(ROUTINE, 1), (ROUTINE, 2)]
    send(pair.b, b"hello washington")
    pair.run(1.0)
    assert delivered(pair.b) == [b"hello moscow", b"second"]
    assert delivered(pair.a) == [b"hello washington"]
    assert acked(pair.a) == 2
    assert acked(pair.b) == 1


def test_both_paths_come_up_and_tcp_is_primary(pair: NodePair) -> None:
    pair.run(2.5)
    for node in pair.nodes:
        link = node.endpoint.link
        assert [p.up for p in link.paths] == [True, True]
        assert link.primary == 0
        assert link.state == "up"
        assert all(p.rtt.srtt is not None for p in link.paths)


def test_failover_to_udp_when_tcp_is_black_holed_and_back(pair: NodePair) -> None:
    pair.run(2.0)
    pair.cut.add(0)
    send(pair.a, *[f"m{i}".encode() for i in range(20)])
    pair.run(4.5)
    assert pair.a.endpoint.link.primary == 1
    assert any(n.kind == "state" and n.fields["change"] == "down" for n in pair.a.notices)
    assert delivered(pair.b) == [f"m{i}".encode() for i in range(20)]
    assert acked(pair.a) == 20
    pair.cut.clear()
    for node in pair.nodes:
        node.endpoint.path_connected(0, pair.now)
    pair.run(3.0)
    assert pair.a.endpoint.link.primary == 0
    assert [n.fields["change"] for n in pair.a.notices if n.kind == "state"][-1] == "primary"


def test_redundant_mode_does_not_stall_on_failover(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, redundant=True)
    pair.run(2.0)
    pair.cut.add(0)
    send(pair.a, b"x", b"y")
    pair.run(0.1)
    assert delivered(pair.b) == [b"x", b"y"]
    pair.close()


def test_large_message_is_fragmented_on_udp(pair: NodePair) -> None:
    pair.run(2.0)
    pair.cut.add(0)
    pair.run(3.5)
    body = bytes(range(256)) * 200
    send(pair.a, body)
    pair.run(1.0)
    assert delivered(pair.b) == [body]


def test_rekey_keeps_the_stream_going(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, rekey_after=5.0)
    pair.run(1.0)
    first = pair.a.endpoint.link.sessions.handshakes_completed
    for i in range(12):
        send(pair.a, f"r{i}".encode())
        pair.run(1.0)
    assert pair.a.endpoint.link.sessions.handshakes_completed > first
    assert delivered(pair.b) == [f"r{i}".encode() for i in range(12)]
    pair.close()


def test_garbage_packets_are_dropped_not_raised(pair: NodePair) -> None:
    pair.run(1.0)
    for junk in (b"", b"\x03" + bytes(40), b"\x01" * 200, b"\x02" + bytes(100), b"\xff"):
        assert pair.b.receive(0, junk) is Received.NOTHING
    pair.b.turn()
    assert sum(pair.b.endpoint.narrator.dropped.values()) == 5
    send(pair.a, b"still fine")
    pair.run(1.0)
    assert delivered(pair.b) == [b"still fine"]


@pytest.mark.parametrize("lost", [0, 1])
def test_lost_first_initiation_does_not_wait_for_the_retry_timer(pair: NodePair,
                                                                 lost: int) -> None:
    """Startup race: one end's first initiation is lost (peer not listening yet)."""
    pair.nodes[lost].turn()
    assert pair.nodes[lost].take_packets()  # the initiation, lost on the wire
    pair.now += 1.5
    pair.run(1.0)
    assert pair.a.endpoint.link.sessions.can_send()
    assert pair.b.endpoint.link.sessions.can_send()


def test_lost_hello_is_repeated_so_a_new_epoch_does_not_stall(pair: NodePair) -> None:
    dropped: list[bytes] = []

    def drop_first_transport_packets_of_a(src: str, _path: int, packet: bytes) -> bool:
        if src == "a" and packet[0] == 3 and len(dropped) < 2:
            dropped.append(packet)
            return True
        return False

    pair.drop = drop_first_transport_packets_of_a
    pair.run(0.5)
    assert len(dropped) == 2
    send(pair.a, b"after a lost hello")
    pair.run(3.0)
    assert delivered(pair.b) == [b"after a lost hello"]


# --- precedence lanes (DESIGN §9) -----------------------------------------------------


def test_each_lane_has_its_own_seqs_and_chain(pair: NodePair) -> None:
    pair.run(1.0)
    assert send(pair.a, b"r1", b"r2") == [(ROUTINE, 1), (ROUTINE, 2)]
    assert send(pair.a, b"z1", lane=FLASH) == [(FLASH, 1)]
    assert send(pair.a, b"r3") == [(ROUTINE, 3)]
    pair.run(1.0)
    assert sorted(delivered(pair.b)) == [b"r1", b"r2", b"r3", b"z1"]
    assert acked(pair.a, FLASH) == 1
    assert acked(pair.a, ROUTINE) == 3


def test_flash_overtakes_a_routine_backlog(pair: NodePair) -> None:
    """A FLASH sent behind 3,000 queued routine messages is the first delivered: lanes
    are served highest first, each in its own window."""
    pair.cut.update({0, 1})
    send(pair.a, *[b"routine %d" % i for i in range(3000)])
    send(pair.a, b"FLASH", lane=FLASH)
    pair.cut.clear()
    while b"FLASH" not in delivered(pair.b):
        pair.step()
        pair.now = round(pair.now + 0.001, 6)
    got = delivered(pair.b)
    assert got.index(b"FLASH") == 0  # first, not after the window or the 3,000
    pair.run(3.0)
    assert len(delivered(pair.b)) == 3001


def test_flash_goes_on_every_up_path(pair: NodePair) -> None:
    pair.run(2.5)
    seen: list[int] = []
    pair.drop = lambda src, path, _packet: src == "a" and seen.append(path) is not None
    send(pair.a, b"both paths", lane=FLASH)
    pair.step()
    assert {0, 1} <= set(seen)


# --- stream safety (DESIGN §4b) -------------------------------------------------------


def test_a_restored_sender_starts_a_new_epoch_and_resends_nothing_is_lost(
        pair: NodePair, tmp_path: Path) -> None:
    pair.run(1.0)
    send(pair.a, b"before backup")
    pair.run(1.0)
    pair.a.copy_store(tmp_path / "backup")
    send(pair.a, *[b"after backup %d" % i for i in range(5)])
    pair.run(1.0)
    assert len(delivered(pair.b)) == 6
    old_epoch = pair.a.endpoint.link.epoch
    pair.a.restore(tmp_path / "backup", pair.now)
    # the restored store reuses seqs 2.. with other bytes
    send(pair.a, b"new after restore 1", b"new after restore 2")
    pair.run(3.0)
    assert pair.a.endpoint.link.epoch != old_epoch
    assert any(n.kind == "epoch" and n.priority == 2 for n in pair.a.notices)
    got = delivered(pair.b)
    assert b"new after restore 1" in got
    assert b"new after restore 2" in got
    assert got.count(b"before backup") == 1


def test_a_restored_receiver_names_the_gap_and_does_not_stall(
        pair: NodePair, tmp_path: Path) -> None:
    pair.run(1.0)
    send(pair.a, b"one")
    pair.run(1.0)
    pair.b.copy_store(tmp_path / "backup")
    send(pair.a, b"two", b"three")
    pair.run(1.0)
    pair.b.restore(tmp_path / "backup", pair.now)
    send(pair.a, b"four")
    pair.run(3.0)
    assert delivered(pair.b) == [b"one", b"four"]
    assert any(n.kind == "gap" and n.priority == 2 for n in pair.b.notices)
    gaps = pair.b.store.gaps()
    assert [(g.first, g.last) for g in gaps] == [(2, 3)]


def test_an_ack_from_the_previous_session_frees_nothing(pair: NodePair) -> None:
    """The receiver stores m1..m3, its acks are delayed in the network, then its store is
    wiped. Those acks arrive after the new session is up: they must free nothing,
    because the new store never got m1..m3 (DESIGN §4b)."""
    pair.run(1.0)
    withheld: list[bytes] = []
    pair.drop = lambda src, _p, packet: src == "b" and packet[0] == 3 \
        and withheld.append(packet) is None
    send(pair.a, b"m1", b"m2", b"m3")
    pair.run(0.5)
    assert len(delivered(pair.b)) == 3
    assert acked(pair.a) == 0
    assert withheld
    pair.b.wipe(pair.now)
    sessions = pair.a.endpoint.link.sessions
    first = sessions.handshakes_completed
    pair.drop = lambda src, _p, packet: src == "a" and packet[0] == 3  # hold data back
    while sessions.handshakes_completed == first:
        pair.step()
        pair.now = round(pair.now + 0.05, 6)
    for packet in withheld:  # the old session's ACKs, late
        pair.a.receive(0, packet)
    pair.a.turn()
    assert acked(pair.a) == 0
    assert pair.a.endpoint.narrator.dropped.get("ReplayError", 0) >= 1
    pair.drop = lambda *_: False
    pair.run(3.0)
    assert delivered(pair.b) == [b"m1", b"m2", b"m3"]
    assert acked(pair.a) == 3


def test_backlog_refusal_is_per_conversation(tmp_path: Path) -> None:
    pair = NodePair(tmp_path, settings=EndpointSettings(max_backlog=3))
    node = pair.a
    convo = object()
    t1 = node.call(SendRequest("text/plain", (b"1", b"2", b"3")), convo)
    t2 = node.call(SendRequest("text/plain", (b"4",)), convo)
    t3 = node.call(SendRequest("text/plain", (b"5",)), convo)
    node.turn()
    assert isinstance(node.replies[t1], Stored)
    assert isinstance(node.replies[t2], Refused)
    assert node.replies[t3] == node.replies[t2]
    pair.close()


def test_a_failed_commit_refuses_and_recovers(pair: NodePair) -> None:
    pair.run(1.0)
    pair.a.fail_commits = True
    token = pair.a.call(SendRequest("text/plain", (b"lost",)))
    pair.a.turn()
    outcome = pair.a.replies[token]
    assert isinstance(outcome, Refused)
    assert outcome.error.exit_code == 74
    assert any(n.kind == "store" and n.priority == 2 for n in pair.a.notices)
    pair.a.fail_commits = False
    assert send(pair.a, b"kept") == [(ROUTINE, 1)]
    pair.run(1.0)
    assert delivered(pair.b) == [b"kept"]


def test_idempotent_send_ids_store_once(pair: NodePair) -> None:
    node = pair.a
    first = node.call(SendRequest("text/plain", (b"x", b"y"), ROUTINE, ("run:1", "run:2")))
    again = node.call(SendRequest("text/plain", (b"x", b"y", b"z"), ROUTINE,
                                  ("run:1", "run:2", "run:3")))
    node.turn()
    assert node.replies[first] == Stored(((ROUTINE, 1), (ROUTINE, 2)))
    assert node.replies[again] == Stored(((ROUTINE, 1), (ROUTINE, 2), (ROUTINE, 3)))
    node.crash(pair.now)
    retry = node.call(SendRequest("text/plain", (b"z",), ROUTINE, ("run:3",)))
    node.turn()
    assert node.replies[retry] == Stored(((ROUTINE, 3),))
    assert node.store.out_head(ROUTINE)[0] == 3


def test_start_up_reads_only_a_window_of_a_large_backlog(pair: NodePair) -> None:
    pair.cut.update({0, 1})
    for _ in range(5):
        send(pair.a, *[b"%d" % i for i in range(1000)])
    pair.a.crash(pair.now)
    stream = pair.a.endpoint.link.outgoing[ROUTINE]
    assert stream.backlog == 5000
    assert stream.in_memory <= 2048
    pair.cut.clear()
    pair.run(10.0)
    assert len(delivered(pair.b)) == 5000
    assert stream.in_memory == 0


# --- timers never demand a busy loop -----------------------------------------------------


def _assert_timer_always_in_the_future(link: Link, now: float, seconds: float) -> int:
    """Drive ``link`` alone (its packets vanish) and check every deadline is ahead."""
    turns, end = 0, now + seconds
    while now < end:
        link.handle_timer(now)
        link.packets_to_send(now)
        link.next_events()
        deadline = link.get_timer()
        assert deadline is None or deadline > now, f"deadline {deadline} not after {now}"
        now = end if deadline is None else deadline
        turns += 1
    return turns


def test_no_busy_loop_while_the_peer_never_answers(pair: NodePair) -> None:
    turns = _assert_timer_always_in_the_future(pair.a.endpoint.link, pair.now, 400.0)
    assert turns < 1000  # retries every few seconds, not a spin


def test_no_busy_loop_after_the_peer_vanishes_with_messages_unacked(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, rekey_after=30.0)
    pair.run(1.0)
    send(pair.a, b"never acked", b"nor this")
    turns = _assert_timer_always_in_the_future(pair.a.endpoint.link, pair.now, 400.0)
    assert turns < 2000
    pair.close()


def test_no_busy_loop_when_the_initiator_vanishes_mid_rekey(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, rekey_after=5.0)
    pair.run(1.0)
    initiator = next(n for n in pair.nodes
                     if n.endpoint.link.sessions.current.session.is_initiator)
    responder = pair.b if initiator is pair.a else pair.a
    pair.run(4.5)  # the rekey initiation reaches the responder, then the initiator is gone
    pair.now += 0.6
    initiator.now = responder.now = pair.now
    initiator.turn()
    for packet in initiator.take_packets():
        responder.receive(packet.path_id, packet.packet)
    turns = _assert_timer_always_in_the_future(responder.endpoint.link, pair.now, 400.0)
    assert turns < 2000
    pair.close()


def test_no_busy_loop_with_no_path_connected(pair: NodePair) -> None:
    pair.run(1.0)
    link = pair.a.endpoint.link
    for path_id in range(len(link.paths)):
        link.path_disconnected(path_id, pair.now)
    turns = _assert_timer_always_in_the_future(link, pair.now, 400.0)
    assert turns < 1000


def test_endpoint_timer_is_always_in_the_future(pair: NodePair) -> None:
    pair.run(1.0)
    send(pair.a, b"pending")
    pair.cut.update({0, 1})
    node, now = pair.a, pair.now
    for _ in range(500):
        node.now = now
        node.turn()
        node.take_packets()
        deadline = node.get_timer()
        assert deadline is not None
        assert deadline > now
        now = deadline



# --- supervision (DESIGN §10): the endpoint owns the alert policy ---------------------


def test_link_down_alert_only_after_alert_after_and_restored_after(tmp_path: Path) -> None:
    from hotline.proto.supervision import AlertSettings

    pair = NodePair(tmp_path, settings=EndpointSettings(
        alerts=AlertSettings(alert_after=5.0, alert_every=60.0)))

    def raised() -> list[str]:
        return [a.event for a in pair.a.alerts]

    pair.run(2.0)
    assert raised() == []
    pair.cut.update({0, 1})
    pair.run(6.0)  # paths go down after 3 s; down for 3 s pages nobody
    assert raised() == []
    pair.run(6.0)
    assert raised() == ["link_down"]
    pair.cut.clear()
    for path_id in (0, 1):
        pair.a.endpoint.path_connected(path_id, pair.now)
        pair.b.endpoint.path_connected(path_id, pair.now)
    pair.run(3.0)
    assert raised() == ["link_down", "link_restored"]
    pair.close()


def test_a_flash_sent_while_the_peer_was_gone_is_the_first_it_stores(pair: NodePair) -> None:
    """The peer goes away; routine messages and then a FLASH are sent (into the void:
    the UDP path's congestion window fills with packets nobody gets); the peer comes
    back restarted. The FLASH must be the first message it stores — the ghosts of the
    last session in UDP's window must not hold it back on TCP."""
    pair.run(2.5)
    send(pair.a, b"before")
    pair.run(1.0)
    pair.cut.update({0, 1})
    pair.run(5.0)
    assert pair.a.endpoint.link.state == "down"
    send(pair.a, *[b"routine %d" % i for i in range(3000)])
    send(pair.a, b"FLASH", lane=FLASH)
    pair.run(0.3)
    pair.b.crash(pair.now)
    pair.cut.clear()
    while b"FLASH" not in delivered(pair.b):
        pair.step()
        pair.now = round(pair.now + 0.001, 6)
    assert delivered(pair.b)[:2] == [b"before", b"FLASH"]
