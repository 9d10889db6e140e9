"""Transports on real loopback sockets: TCP paths and listener, UDP endpoint, backoff."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from hotline.errors import LocalProtocolError
from hotline.proto.framing import encode_tcp_frame
from hotline.transport.backoff import Backoff
from hotline.transport.events import PacketIn, PathConnected, PathDisconnected, TransportEvent
from hotline.transport.tcp import TcpPath
from hotline.transport.tcp_listener import TcpListener, choose_inbound_path, source_key
from hotline.transport.udp import UdpEndpoint


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HOSTS = [
    "127.0.0.1",
    pytest.param(
        "::1", marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
    ),
]
FAST = {"initial": 0.01, "maximum": 0.05, "jitter": 0.0}


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


async def next_event(rx: trio.MemoryReceiveChannel[TransportEvent], kind: type) -> TransportEvent:
    """The next event of ``kind`` (others are skipped), within 5 s."""
    with trio.fail_after(5):
        while True:
            event = await rx.receive()
            if isinstance(event, kind):
                return event


async def packets(rx: trio.MemoryReceiveChannel[TransportEvent], n: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < n:
        event = await next_event(rx, PacketIn)
        assert isinstance(event, PacketIn)
        out.append(event.data)
    return out


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll a counter-based ``predicate()`` (a bounded wait, not a timing assertion)."""
    with trio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 (stats counters have no event to wait on)
            await trio.sleep(0.005)


async def read_frames(stream: trio.abc.ReceiveStream, n: int) -> list[bytes]:
    """Read ``n`` length-prefixed frames from a raw stream (independent decoder)."""
    buf = b""
    out: list[bytes] = []
    with trio.fail_after(5):
        while len(out) < n:
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                length = struct.unpack(">I", buf[:4])[0]
                out.append(buf[4 : 4 + length])
                buf = buf[4 + length :]
            if len(out) >= n:
                break
            chunk = await stream.receive_some(65536)
            assert chunk, "connection closed early"
            buf += chunk
    return out


async def read_eof(stream: trio.abc.ReceiveStream) -> None:
    with trio.fail_after(5):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return  # RST counts as closed too
            if not chunk:
                return


# --- backoff ---------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_resets():
    b = Backoff(initial=0.2, maximum=1.0, factor=2.0, jitter=0.25, rng=lambda: 0.5)
    assert [b.next_delay() for _ in range(5)] == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])
    b.reset()
    assert b.next_delay() == pytest.approx(0.2)


def test_backoff_jitter_stays_in_bounds():
    rng = random.Random(7)
    b = Backoff(initial=1.0, maximum=100.0, factor=1.0, jitter=0.25, rng=rng.random)
    delays = [b.next_delay() for _ in range(1000)]
    assert all(0.75 <= d <= 1.25 for d in delays)
    assert max(delays) - min(delays) > 0.4  # it does spread


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"initial": 2, "maximum": 1}, {"factor": 0.5}, {"jitter": 1.0}],
)
def test_backoff_refuses_bad_parameters(kwargs):
    with pytest.raises(LocalProtocolError):
        Backoff(**kwargs)


# --- TCP -------------------------------------------------------------------------------


@dataclass
class Side:
    path: TcpPath
    listener: TcpListener
    rx: trio.MemoryReceiveChannel[TransportEvent]
    port: int


@asynccontextmanager
async def tcp_side(
    nursery: trio.Nursery, host: str, *, target_port: int | None = None, run_path: bool = True,
    **listener_kw: float,
) -> AsyncIterator[Side]:
    tx, rx = trio.open_memory_channel[TransportEvent](1000)
    path = TcpPath(0, host, target_port or closed_port(host), tx, backoff=Backoff(**FAST))
    listener = TcpListener(host, 0, [path], **listener_kw)  # type: ignore[arg-type]
    listeners = await nursery.start(listener.run)
    port = listeners[0].socket.getsockname()[1]
    if run_path:
        await nursery.start(path.run)
    yield Side(path, listener, rx, port)


@asynccontextmanager
async def dialling_side() -> AsyncIterator[tuple[Side, trio.SocketStream]]:
    """A side whose path dialled a plain listener, up: (the side, the connection it
    dialled, as the listener accepted it)."""
    (peer_listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    peer_port = peer_listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery, tcp_side(
        nursery, "127.0.0.1", target_port=peer_port
    ) as side:
        dialled = await peer_listener.accept()
        await next_event(side.rx, PathConnected)
        yield side, dialled
        await dialled.aclose()
        await peer_listener.aclose()
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def tcp_pair(host: str) -> AsyncIterator[tuple[Side, Side]]:
    """Two symmetric sides: each dials the other's listener and listens."""
    async with trio.open_nursery() as nursery:
        async with tcp_side(nursery, host, run_path=False) as a, tcp_side(
            nursery, host, run_path=False
        ) as b:
            a.path.port, b.path.port = b.port, a.port
            await nursery.start(a.path.run)
            await nursery.start(b.path.run)
            yield a, b
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("host", HOSTS)
async def test_tcp_packets_flow_both_ways(host):
    async with tcp_pair(host) as (a, b):
        await next_event(a.rx, PathConnected)
        await next_event(b.rx, PathConnected)
        sent_ab = [bytes([i]) * (1 + i * 97) for i in range(60)]
        for p in sent_ab:
            a.path.send(p)
        assert await packets(b.rx, len(sent_ab)) == sent_ab
        sent_ba = [b"pong-%d" % i for i in range(30)]
        for p in sent_ba:
            b.path.send(p)
        assert await packets(a.rx, len(sent_ba)) == sent_ba
        assert a.path.stats.packets_out == 60
        assert a.path.stats.dropped_queue_full == 0


async def test_tcp_framing_across_partial_reads():
    async with trio.open_nursery() as nursery, tcp_side(nursery, "127.0.0.1") as side:
        frames = [b"a" * 5, b"b" * 3000, b"c", b"d" * 16448]
        wire = b"".join(encode_tcp_frame(f) for f in frames)
        stream = await trio.open_tcp_stream("127.0.0.1", side.port)
        rng = random.Random(1)
        pos = 0
        while pos < len(wire):
            step = rng.choice([1, 2, 3, 7, 500])
            await stream.send_all(wire[pos : pos + step])
            pos += step
            await trio.lowlevel.checkpoint()
        assert await packets(side.rx, len(frames)) == frames
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def inbound_packet(
    side: Side, stream: trio.SocketStream, data: bytes
) -> PacketIn:
    """Send ``data`` as one frame on ``stream`` (an inbound connection of ``side``); the
    ``PacketIn`` it became."""
    await stream.send_all(encode_tcp_frame(data))
    event = await next_event(side.rx, PacketIn)
    assert isinstance(event, PacketIn)
    assert event.data == data
    return event


async def connect(side: Side, source: str = "127.0.0.1") -> trio.SocketStream:
    """A connection to ``side``'s listener from ``source``, once the listener took it."""
    accepted = side.listener.stats.accepted
    stream = await trio.open_tcp_stream("127.0.0.1", side.port, local_address=source)
    await wait_until(lambda: side.listener.stats.accepted > accepted)
    return stream


async def assert_nothing_received(stream: trio.SocketStream) -> None:
    """Nothing is waiting on ``stream``. Call it after the packets written elsewhere
    arrived: on loopback anything written to ``stream`` before is already buffered."""
    with trio.move_on_after(0.05):
        data = await stream.receive_some(65536)
        assert not data, f"a stranger received {len(data)} bytes"


async def test_tcp_inbound_is_the_peers_only_once_a_packet_on_it_authenticated():
    async with trio.open_nursery() as nursery, tcp_side(nursery, "127.0.0.1") as side:
        stream = await trio.open_tcp_stream("127.0.0.1", side.port)
        event = await inbound_packet(side, stream, b"\x03well framed")
        assert event.addr is not None
        assert event.addr[1] == stream.socket.getsockname()[1]
        assert event.conn is not None
        assert not side.path.connected  # a well-framed packet proves nothing
        side.path.send(b"\x03lost")
        assert side.path.stats.dropped_not_connected == 1
        side.path.on_authenticated(event)  # what the runner does when the link says so
        assert isinstance(await next_event(side.rx, PathConnected), PathConnected)
        assert side.path.connected
        side.path.send(b"\x03reply")
        assert await read_frames(stream, 1) == [b"\x03reply"]
        assert side.path.stats.inbound_authenticated == 1
        await stream.aclose()
        event = await next_event(side.rx, PathDisconnected)
        assert isinstance(event, PathDisconnected)
        assert event.reason == "eof"
        nursery.cancel_scope.cancel()


async def test_tcp_writes_only_to_the_most_recently_authenticated_else_outbound():
    async with dialling_side() as (side, dialled):
        stranger = await trio.open_tcp_stream("127.0.0.1", side.port)
        await inbound_packet(side, stranger, b"\x03junk")
        side.path.send(b"\x01handshake")  # nothing authenticated: our own dial
        assert await read_frames(dialled, 1) == [b"\x01handshake"]

        newer = await trio.open_tcp_stream("127.0.0.1", side.port)
        side.path.on_authenticated(await inbound_packet(side, newer, b"\x03from peer"))
        side.path.send(b"\x03to newer")
        assert await read_frames(newer, 1) == [b"\x03to newer"]

        await dialled.send_all(encode_tcp_frame(b"\x03on our dial"))
        side.path.on_authenticated(await next_event(side.rx, PacketIn))  # type: ignore[arg-type]
        side.path.send(b"\x03to dialled")
        assert await read_frames(dialled, 1) == [b"\x03to dialled"]
        await assert_nothing_received(newer)
        await assert_nothing_received(stranger)
        for s in (stranger, newer):
            await s.aclose()


async def test_tcp_urgent_packets_go_ahead_of_queued_ordinary_ones():
    """DESIGN §9: a FLASH never waits behind bytes queued toward the socket."""
    async with dialling_side() as (side, dialled):
        for i in range(5):  # in one turn, before the writer runs
            side.path.send(b"\x03routine %d" % i)
        side.path.send(b"\x03FLASH", urgent=True)
        frames = await read_frames(dialled, 6)
        # The first went to the socket at once (the idle fast path), before the FLASH
        # existed; the FLASH goes ahead of the four queued behind it.
        assert frames[0] == b"\x03routine 0"
        assert frames[1] == b"\x03FLASH"
        assert frames[2:] == [b"\x03routine %d" % i for i in range(1, 5)]


async def test_tcp_fast_path_keeps_the_stream_framed_when_the_socket_fills():
    """The idle fast path writes without blocking; what the kernel does not take (the
    peer is not reading) goes before everything queued after it: every frame arrives
    whole and in order once the peer reads."""
    async with dialling_side() as (side, dialled):
        side.path.queue_limit = 1000
        sent = [bytes([i % 251]) * 16_000 + b"#%d" % i for i in range(600)]  # 9.6 MB
        for packet in sent:  # the peer reads nothing yet: the socket fills up
            side.path.send(packet)
            await trio.testing.wait_all_tasks_blocked()  # the writer idles again, or blocks
        with trio.fail_after(30):
            frames = await read_frames(dialled, len(sent))
        assert frames == sent
        assert side.path.stats.write_errors == side.path.stats.dropped_queue_full == 0


async def test_tcp_answer_goes_back_on_the_requesting_connection_once():
    async with trio.open_nursery() as nursery, tcp_side(nursery, "127.0.0.1") as side:
        requester = await trio.open_tcp_stream("127.0.0.1", side.port)
        initiation = await inbound_packet(side, requester, b"\x01initiation")
        side.path.on_answered(initiation)  # the link queued a reply to it
        side.path.send(b"\x03sealed")  # a transport packet never follows an answer
        side.path.send(b"\x02response")
        side.path.send(b"\x02another")  # one answer per answered packet
        assert await read_frames(requester, 1) == [b"\x02response"]
        assert side.path.stats.answers_sent == 1
        assert side.path.stats.dropped_not_connected == 2
        assert not side.path.connected  # answering grants no trust

        side.path.answer_timeout = 0.0
        side.path.on_answered(initiation)
        side.path.send(b"\x02too late")
        assert side.path.stats.dropped_not_connected == 3
        await assert_nothing_received(requester)
        await requester.aclose()
        nursery.cancel_scope.cancel()


async def test_tcp_oversize_frame_closes_only_that_connection():
    async with trio.open_nursery() as nursery, tcp_side(nursery, "127.0.0.1") as side:
        bad = await trio.open_tcp_stream("127.0.0.1", side.port)
        side.path.on_authenticated(await inbound_packet(side, bad, b"ok"))
        await next_event(side.rx, PathConnected)
        await bad.send_all(struct.pack(">I", 0xFFFFFFFF) + b"xx")
        await read_eof(bad)
        event = await next_event(side.rx, PathDisconnected)
        assert isinstance(event, PathDisconnected)
        assert event.reason == "bad-framing"
        assert side.path.stats.framing_errors == 1
        good = await trio.open_tcp_stream("127.0.0.1", side.port)
        await inbound_packet(side, good, b"still here")
        await good.aclose()
        await bad.aclose()
        nursery.cancel_scope.cancel()


async def test_tcp_unauthenticated_inbound_closed_at_the_deadline_even_if_it_talks():
    async with trio.open_nursery() as nursery, tcp_side(
        nursery, "127.0.0.1", auth_timeout=0.3
    ) as side:
        peer = await trio.open_tcp_stream("127.0.0.1", side.port)
        side.path.on_authenticated(await inbound_packet(side, peer, b"\x03authentic"))
        silent = await trio.open_tcp_stream("127.0.0.1", side.port)
        junk = await trio.open_tcp_stream("127.0.0.1", side.port)
        await inbound_packet(side, junk, b"\x03junk")
        loris = await trio.open_tcp_stream("127.0.0.1", side.port)
        await loris.send_all(b"\x00\x00")  # half a length prefix, and then nothing
        for stream in (silent, junk, loris):
            await read_eof(stream)
        assert side.path.stats.auth_timeouts == 3
        await inbound_packet(side, peer, b"\x03after the deadline")
        side.path.send(b"\x03still ours")
        assert await read_frames(peer, 1) == [b"\x03still ours"]
        for stream in (peer, silent, junk, loris):
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_tcp_listener_evicts_the_oldest_unauthenticated_of_a_source_then_of_all():
    async with trio.open_nursery() as nursery, tcp_side(
        nursery, "127.0.0.1", max_inbound=4, max_unauthenticated_per_source=2
    ) as side:
        listener = side.listener
        a1, a2, a3 = [await connect(side, "127.0.0.1") for _ in range(3)]
        await read_eof(a1)  # its source was at the cap: its oldest went
        assert listener.stats.evicted_source_cap == 1
        b1, b2 = [await connect(side, "127.0.0.2") for _ in range(2)]
        c1 = await connect(side, "127.0.0.3")  # full: the oldest of all went
        await read_eof(a2)
        assert listener.stats.evicted_full == 1
        assert listener.active == 4
        for stream in (a3, b1, b2, c1):
            await inbound_packet(side, stream, b"alive")
        for stream in (a1, a2, a3, b1, b2, c1):
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_tcp_full_listener_never_evicts_an_authenticated_connection():
    async with trio.open_nursery() as nursery, tcp_side(
        nursery, "127.0.0.1", max_inbound=2, max_unauthenticated_per_source=2
    ) as side:
        listener = side.listener
        first = await trio.open_tcp_stream("127.0.0.1", side.port)
        side.path.on_authenticated(await inbound_packet(side, first, b"first"))
        second = await connect(side)
        third = await trio.open_tcp_stream("127.0.0.1", side.port)
        await read_eof(second)  # the oldest UNauthenticated one made room
        side.path.on_authenticated(await inbound_packet(side, third, b"third"))
        fourth = await trio.open_tcp_stream("127.0.0.1", side.port)
        await read_eof(fourth)  # every slot authenticated: refused
        assert (listener.stats.evicted_full, listener.stats.refused_full) == (1, 1)
        assert listener.unauthenticated == 0
        for stream in (first, third):
            await inbound_packet(side, stream, b"still here")
        for stream in (first, second, third, fourth):
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_tcp_connection_that_carried_a_valid_initiation_keeps_its_slot_until_deadline():
    async with trio.open_nursery() as nursery, tcp_side(
        nursery, "127.0.0.1", max_inbound=2, max_unauthenticated_per_source=2, auth_timeout=0.5
    ) as side:
        listener = side.listener
        requester = await trio.open_tcp_stream("127.0.0.1", side.port)
        side.path.on_answered(await inbound_packet(side, requester, b"\x01initiation"))
        stranger = await connect(side)
        newcomer = await trio.open_tcp_stream("127.0.0.1", side.port)
        await read_eof(stranger)  # made room; the requester did not
        await inbound_packet(side, requester, b"\x03handshake goes on")
        await read_eof(requester)  # but it is not trusted: its deadline still holds
        assert (listener.stats.evicted_full, listener.stats.evicted_source_cap) == (1, 0)
        assert side.path.stats.auth_timeouts >= 1
        for stream in (requester, stranger, newcomer):
            await stream.aclose()
        nursery.cancel_scope.cancel()


def test_source_key_is_the_ipv4_address_or_the_ipv6_slash_64():
    assert source_key(("192.0.2.7", 1)) == source_key(("::ffff:192.0.2.7", 2, 0, 0))
    assert source_key(("192.0.2.7", 1)) != source_key(("192.0.2.8", 1))
    assert source_key(("2001:db8::1", 1, 0, 0)) == source_key(("2001:db8::ffff:2", 9, 0, 0))
    assert source_key(("2001:db8::1", 1, 0, 0)) != source_key(("2001:db8:0:1::1", 1, 0, 0))
    assert source_key(("fe80::1%lo", 1, 0, 1)) == "fe80::/64"


def test_listener_refuses_a_per_source_cap_above_the_total():
    tx, _rx = trio.open_memory_channel[TransportEvent](1)
    path = TcpPath(0, "127.0.0.1", 1, tx)
    with pytest.raises(LocalProtocolError):
        TcpListener("127.0.0.1", 0, [path], max_inbound=2, max_unauthenticated_per_source=3)


async def test_tcp_send_queue_drops_oldest_when_full():
    async with trio.open_nursery() as nursery, tcp_side(
        nursery, "127.0.0.1", run_path=False
    ) as side:
        side.path.queue_limit = 256
        stream = await trio.open_tcp_stream("127.0.0.1", side.port)
        side.path.on_authenticated(await inbound_packet(side, stream, b"hi"))
        for i in range(300):  # the writer is not running yet: the queue overflows
            side.path.send(b"p%d" % i)
        assert side.path.stats.dropped_queue_full == 44
        await nursery.start(side.path.run)
        got = await read_frames(stream, 256)
        assert got == [b"p%d" % i for i in range(44, 300)]
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_tcp_reconnects_after_listener_restart():
    async with trio.open_nursery() as nursery:
        tx, rx = trio.open_memory_channel[TransportEvent](1000)
        server_tx, server_rx = trio.open_memory_channel[TransportEvent](1000)
        server_path = TcpPath(0, "127.0.0.1", closed_port(), server_tx, backoff=Backoff(**FAST))
        port = closed_port()
        path = TcpPath(0, "127.0.0.1", port, tx, backoff=Backoff(**FAST))
        await nursery.start(path.run)

        async def serve(task_status=trio.TASK_STATUS_IGNORED):
            listener = TcpListener("127.0.0.1", port, [server_path])
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await listener.run()

        await wait_until(lambda: path.stats.dial_failures >= 2)
        scope = await nursery.start(serve)
        await next_event(rx, PathConnected)
        path.send(b"one")
        assert await packets(server_rx, 1) == [b"one"]
        scope.cancel()  # the listener and its connections go away
        await next_event(rx, PathDisconnected)
        failures = path.stats.dial_failures
        await wait_until(lambda: path.stats.dial_failures > failures)
        await nursery.start(serve)
        await next_event(rx, PathConnected)
        path.send(b"two")
        assert await packets(server_rx, 1) == [b"two"]
        assert path.stats.connects == 2
        nursery.cancel_scope.cancel()


async def test_tcp_reset_drops_connections_and_redials():
    async with tcp_pair("127.0.0.1") as (a, b):
        await next_event(a.rx, PathConnected)
        a.path.send(b"before")
        assert await packets(b.rx, 1) == [b"before"]
        connects = a.path.stats.connects
        a.path.reset()
        event = await next_event(a.rx, PathDisconnected)
        assert isinstance(event, PathDisconnected)
        assert event.reason == "reset"
        await next_event(a.rx, PathConnected)
        assert a.path.stats.connects > connects
        assert a.path.stats.resets == 1
        a.path.send(b"after")
        assert await packets(b.rx, 1) == [b"after"]


async def test_tcp_send_refuses_bad_sizes():
    tx, _rx = trio.open_memory_channel[TransportEvent](1)
    path = TcpPath(0, "127.0.0.1", 1, tx)
    with pytest.raises(LocalProtocolError):
        path.send(b"")
    with pytest.raises(LocalProtocolError):
        path.send(b"x" * 20000)


def test_choose_inbound_path_by_address_else_first():
    tx, _rx = trio.open_memory_channel[TransportEvent](1)
    p0 = TcpPath(0, "peer.example", 1, tx)
    p1 = TcpPath(1, "::1", 1, tx)
    assert choose_inbound_path([p0, p1], ("::1", 5, 0, 0)) is p1
    assert choose_inbound_path([p0, p1], ("127.0.0.1", 5)) is p0
    assert choose_inbound_path([], ("127.0.0.1", 5)) is None


# --- UDP -------------------------------------------------------------------------------


def raw_udp(host: str = "127.0.0.1") -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    return sock


@pytest.mark.parametrize("host", HOSTS)
async def test_udp_datagrams_flow_both_ways_from_the_listen_port(host):
    async with trio.open_nursery() as nursery:
        tx_a, rx_a = trio.open_memory_channel[TransportEvent](1000)
        tx_b, rx_b = trio.open_memory_channel[TransportEvent](1000)
        a, b = UdpEndpoint(tx_a), UdpEndpoint(tx_b)
        (addr_a,) = await nursery.start(a.run, [(host, 0)])
        (addr_b,) = await nursery.start(b.run, [(host, 0)])
        path_a = a.add_path(1, host, addr_b[1])
        path_b = b.add_path(4, host, addr_a[1])
        assert (await next_event(rx_a, PathConnected)) == PathConnected(1)
        assert (await next_event(rx_b, PathConnected)) == PathConnected(4)
        for i in range(20):
            path_a.send(b"ping %d" % i)
        got = [await next_event(rx_b, PacketIn) for _ in range(20)]
        assert sorted(e.data for e in got) == sorted(b"ping %d" % i for i in range(20))  # type: ignore[union-attr]
        assert all(e.path_id == 4 for e in got)
        assert all(e.addr[1] == addr_a[1] for e in got)  # type: ignore[union-attr,index]
        path_b.send(b"pong")
        event = await next_event(rx_a, PacketIn)
        assert isinstance(event, PacketIn)
        assert (event.path_id, event.data, event.addr[1]) == (1, b"pong", addr_b[1])  # type: ignore[index]
        assert a.stats.datagrams_out == 20
        nursery.cancel_scope.cancel()


async def test_udp_oversize_dropped_and_attribution_and_roaming():
    async with trio.open_nursery() as nursery:
        tx, rx = trio.open_memory_channel[TransportEvent](1000)
        ep = UdpEndpoint(tx)
        (local,) = await nursery.start(ep.run, [("127.0.0.1", 0)])
        r1, r3, stranger = raw_udp(), raw_udp(), raw_udp()
        for s in (r1, r3, stranger):
            await s.bind(("127.0.0.1", 0))
        p1 = ep.add_path(1, "127.0.0.1", r1.getsockname()[1])
        ep.add_path(3, "127.0.0.1", r3.getsockname()[1])
        await next_event(rx, PathConnected)
        await next_event(rx, PathConnected)

        await r1.sendto(b"x" * 1233, local)
        await r1.sendto(b"y" * 1232, local)
        event = await next_event(rx, PacketIn)
        assert isinstance(event, PacketIn)
        assert (event.path_id, len(event.data)) == (1, 1232)
        assert ep.stats.dropped_oversize == 1

        await r3.sendto(b"three", local)
        event = await next_event(rx, PacketIn)
        assert isinstance(event, PacketIn)
        assert event.path_id == 3
        await stranger.sendto(b"roamed", local)
        event = await next_event(rx, PacketIn)
        assert isinstance(event, PacketIn)
        assert event.path_id == 1  # unknown source: the first UDP path (the link decides)

        p1.on_authenticated(event)  # the link said it authenticated: roam
        p1.send(b"to-new")
        with trio.fail_after(5):
            data, src = await stranger.recvfrom(2048)
        assert (data, src[1]) == (b"to-new", local[1])
        p1.reset()
        p1.send(b"to-old")
        with trio.fail_after(5):
            data, _ = await r1.recvfrom(2048)
        assert data == b"to-old"
        for s in (r1, r3, stranger):
            s.close()
        nursery.cancel_scope.cancel()


async def test_udp_answer_goes_to_the_requester_without_roaming():
    """A replayed initiation is answered where it came from; the remote stays put."""
    async with trio.open_nursery() as nursery:
        tx, rx = trio.open_memory_channel[TransportEvent](100)
        ep = UdpEndpoint(tx)
        (local,) = await nursery.start(ep.run, [("127.0.0.1", 0)])
        peer, replayer = raw_udp(), raw_udp()
        for s in (peer, replayer):
            await s.bind(("127.0.0.1", 0))
        path = ep.add_path(0, "127.0.0.1", peer.getsockname()[1])
        await next_event(rx, PathConnected)
        configured = path.remote
        await replayer.sendto(b"\x01captured initiation", local)
        replayed = await next_event(rx, PacketIn)
        assert isinstance(replayed, PacketIn)
        path.on_answered(replayed)  # what the runner does for Received.ANSWERED
        path.send(b"\x02response")
        path.send(b"\x03sealed")
        path.send(b"\x01our initiation")
        with trio.fail_after(5):
            assert await replayer.recv(2048) == b"\x02response"
            assert await peer.recv(2048) == b"\x03sealed"
            assert await peer.recv(2048) == b"\x01our initiation"
        assert path.remote == configured
        with trio.move_on_after(0.05):
            assert not await replayer.recv(2048), "the replayer got more than its answer"
        for s in (peer, replayer):
            s.close()
        nursery.cancel_scope.cancel()


async def test_udp_binds_an_ephemeral_socket_when_not_listening():
    async with trio.open_nursery() as nursery:
        tx, rx = trio.open_memory_channel[TransportEvent](10)
        ep = UdpEndpoint(tx)
        await nursery.start(ep.run)
        peer = raw_udp()
        await peer.bind(("127.0.0.1", 0))
        path = ep.add_path(0, "127.0.0.1", peer.getsockname()[1])
        await next_event(rx, PathConnected)
        path.send(b"hello")
        with trio.fail_after(5):
            data, src = await peer.recvfrom(2048)
        assert data == b"hello"
        await peer.sendto(b"back", src)
        event = await next_event(rx, PacketIn)
        assert isinstance(event, PacketIn)
        assert event.data == b"back"
        peer.close()
        nursery.cancel_scope.cancel()


async def test_udp_full_events_channel_drops_and_counts():
    async with trio.open_nursery() as nursery:
        tx, rx = trio.open_memory_channel[TransportEvent](1)
        ep = UdpEndpoint(tx)
        (local,) = await nursery.start(ep.run, [("127.0.0.1", 0)])
        peer = raw_udp()
        await peer.bind(("127.0.0.1", 0))
        for i in range(5):
            await peer.sendto(b"%d" % i, local)
        await wait_until(lambda: ep.stats.dropped_no_path == 5)
        ep.add_path(0, "127.0.0.1", peer.getsockname()[1])
        await next_event(rx, PathConnected)
        for i in range(5):
            await peer.sendto(b"%d" % i, local)
        await wait_until(lambda: ep.stats.datagrams_in == 5)
        assert ep.stats.dropped_events_full == 4
        peer.close()
        nursery.cancel_scope.cancel()


async def test_udp_send_misuse_raises_and_no_remote_counts():
    tx, _rx = trio.open_memory_channel[TransportEvent](1)
    ep = UdpEndpoint(tx)
    path = ep.add_path(0, "127.0.0.1", 9)
    with pytest.raises(LocalProtocolError):
        ep.send(7, b"x")
    with pytest.raises(LocalProtocolError):
        path.send(b"x" * 1233)
    with pytest.raises(LocalProtocolError):
        ep.add_path(0, "127.0.0.1", 9)
    path.send(b"x")  # not resolved yet
    assert ep.stats.dropped_no_remote == 1


async def test_tcp_backoff_starts_over_after_a_stable_connection():
    tx, rx = trio.open_memory_channel[TransportEvent](100)
    port = closed_port()
    path = TcpPath(0, "127.0.0.1", port, tx, backoff=Backoff(**FAST), stable_after=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(path.run)
        await wait_until(lambda: path.backoff.attempts >= 3)  # refused dials back off
        (listener,) = await trio.open_tcp_listeners(port, host="127.0.0.1")
        server = await listener.accept()  # a silent peer: it answers on its own dial
        await next_event(rx, PathConnected)
        await trio.sleep(0.1)  # outlive stable_after
        await server.aclose()
        await next_event(rx, PathDisconnected)
        await wait_until(lambda: path.stats.dial_attempts >= 2 + path.stats.dial_failures)
        assert path.backoff.attempts <= 2  # started over (1), maybe one refused dial since
        await listener.aclose()
        nursery.cancel_scope.cancel()
