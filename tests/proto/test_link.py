"""The Link core, two real Links over an in-memory network with a hand-set clock."""

from __future__ import annotations

import pytest

from hotline.proto.events import HandshakeComplete, PathDown, PrimaryChanged
from hotline.proto.link import LinkSettings, Received
from tests.helpers import LinkPair


def test_handshake_then_messages_both_ways() -> None:
    pair = LinkPair()
    pair.run(1.0)
    assert pair.a.link.sessions.can_send()
    assert pair.b.link.sessions.can_send()
    assert any(isinstance(e, HandshakeComplete) for e in pair.a.events)
    pair.send(pair.a, b"hello moscow", b"second")
    pair.send(pair.b, b"hello washington")
    pair.run(1.0)
    assert pair.b.delivered == [b"hello moscow", b"second"]
    assert pair.a.delivered == [b"hello washington"]
    assert pair.a.acked == 2
    assert pair.b.acked == 1


def test_both_paths_come_up_and_tcp_is_primary() -> None:
    pair = LinkPair()
    pair.run(2.5)
    for end in pair.ends:
        assert [p.up for p in end.link.paths] == [True, True]
        assert end.link.primary == 0
        assert end.link.state == "up"
        assert all(p.srtt is not None for p in end.link.paths)


def test_failover_to_udp_when_tcp_is_black_holed_and_back() -> None:
    pair = LinkPair()
    pair.run(2.0)
    pair.cut.add(0)
    pair.send(pair.a, *[f"m{i}".encode() for i in range(20)])
    pair.run(4.5)
    assert pair.a.link.primary == 1
    assert any(isinstance(e, PathDown) for e in pair.a.events)
    assert pair.b.delivered == [f"m{i}".encode() for i in range(20)]
    assert pair.a.acked == 20
    pair.cut.clear()
    pair.a.link.path_connected(0, pair.now)
    pair.b.link.path_connected(0, pair.now)
    pair.run(3.0)
    assert pair.a.link.primary == 0
    changes = [e for e in pair.a.events if isinstance(e, PrimaryChanged)]
    assert changes[-1].new == "tcp://peer:1"


def test_redundant_mode_does_not_stall_on_failover() -> None:
    pair = LinkPair(settings=LinkSettings(redundant=True))
    pair.run(2.0)
    pair.cut.add(0)
    pair.send(pair.a, b"x", b"y")
    pair.run(0.1)
    assert pair.b.delivered == [b"x", b"y"]


def test_large_message_is_fragmented_on_udp() -> None:
    pair = LinkPair()
    pair.run(2.0)
    pair.cut.add(0)
    pair.run(3.5)
    body = bytes(range(256)) * 200
    pair.send(pair.a, body)
    pair.run(1.0)
    assert pair.b.delivered == [body]


def test_rekey_keeps_the_stream_going() -> None:
    pair = LinkPair(settings=LinkSettings(rekey_after=5.0))
    pair.run(1.0)
    first = pair.a.link.sessions.handshakes_completed
    for i in range(12):
        pair.send(pair.a, f"r{i}".encode())
        pair.run(1.0)
    assert pair.a.link.sessions.handshakes_completed > first
    assert pair.b.delivered == [f"r{i}".encode() for i in range(12)]


def test_garbage_packets_are_dropped_not_raised() -> None:
    pair = LinkPair()
    pair.run(1.0)
    for junk in (b"", b"\x03" + bytes(40), b"\x01" * 200, b"\x02" + bytes(100), b"\xff"):
        assert pair.b.link.receive_untrusted(0, junk, pair.now) is Received.NOTHING
    assert pair.b.link.dropped == 5
    pair.send(pair.a, b"still fine")
    pair.run(1.0)
    assert pair.b.delivered == [b"still fine"]


@pytest.mark.parametrize("lost", [0, 1])
def test_lost_first_initiation_does_not_wait_for_the_retry_timer(lost: int) -> None:
    """Startup race: one end's first initiation is lost (peer not listening yet)."""
    pair = LinkPair()
    early = pair.ends[lost].link
    early.handle_timer(pair.now)
    assert early.packets_to_send(pair.now)  # the initiation, lost on the wire
    pair.now += 1.5
    pair.run(1.0)
    assert pair.a.link.sessions.can_send()
    assert pair.b.link.sessions.can_send()


def test_lost_hello_is_repeated_so_a_new_epoch_does_not_stall() -> None:
    pair = LinkPair()
    dropped: list[bytes] = []

    def drop_first_transport_packets_of_a(src: str, _path: int, packet: bytes) -> bool:
        if src == "a" and packet[0] == 3 and len(dropped) < 2:
            dropped.append(packet)
            return True
        return False

    pair.drop = drop_first_transport_packets_of_a
    pair.run(0.5)
    assert len(dropped) == 2
    pair.send(pair.a, b"after a lost hello")
    pair.run(3.0)
    assert pair.b.delivered == [b"after a lost hello"]


# --- timers never demand a busy loop -----------------------------------------------------


def _assert_timer_always_in_the_future(link, now: float, seconds: float) -> int:
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


def test_no_busy_loop_while_the_peer_never_answers() -> None:
    pair = LinkPair()
    turns = _assert_timer_always_in_the_future(pair.a.link, pair.now, 400.0)
    assert turns < 1000  # retries every few seconds, not a spin


def test_no_busy_loop_after_the_peer_vanishes_with_messages_unacked() -> None:
    pair = LinkPair(settings=LinkSettings(rekey_after=30.0))
    pair.run(1.0)
    pair.send(pair.a, b"never acked", b"nor this")
    turns = _assert_timer_always_in_the_future(pair.a.link, pair.now, 400.0)
    assert turns < 2000


def test_no_busy_loop_when_the_initiator_vanishes_mid_rekey() -> None:
    pair = LinkPair(settings=LinkSettings(rekey_after=5.0))
    pair.run(1.0)
    initiator = next(e for e in pair.ends if e.link.sessions.current.session.is_initiator)
    responder = pair.b if initiator is pair.a else pair.a
    pair.run(4.5)  # the rekey initiation reaches the responder, then the initiator is gone
    pair.now += 0.6
    initiator.link.handle_timer(pair.now)
    for path_id, packet in initiator.link.packets_to_send(pair.now):
        responder.link.receive_untrusted(path_id, packet, pair.now)
    turns = _assert_timer_always_in_the_future(responder.link, pair.now, 400.0)
    assert turns < 2000


def test_no_busy_loop_with_no_path_connected() -> None:
    pair = LinkPair()
    pair.run(1.0)
    link = pair.a.link
    for path_id in range(len(link.paths)):
        link.path_disconnected(path_id, pair.now)
    turns = _assert_timer_always_in_the_future(link, pair.now, 400.0)
    assert turns < 1000
