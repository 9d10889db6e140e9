"""The fault proxy itself, and hotline's transports driven through it (real loopback)."""

from __future__ import annotations

import math
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from hotline.testing.faultproxy import (
    TCP_QUEUE_PACKET,
    FaultProxyProcess,
    Faults,
    TcpFaultProxy,
    UdpFaultProxy,
    _FrameSplitter,
    acontrol,
    control,
    handle_request,
    serve_control,
)
from hotline.transport.backoff import Backoff
from hotline.transport.events import PacketIn, PathConnected, PathDisconnected, TransportEvent
from hotline.transport.tcp import TcpPath
from hotline.transport.tcp_listener import TcpListener

LOCAL = ("127.0.0.1", 0)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll a counter-based predicate (a bounded wait, not a timing assertion)."""
    with trio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 (counters have no event to wait on)
            await trio.sleep(0.005)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- UDP ---------------------------------------------------------------------------------


async def udp_counts(seed: int) -> tuple[int, int, int, int, set[bytes]]:
    """Send 400 distinct datagrams through a lossy UDP proxy; return what happened."""
    sent = {b"datagram %03d " % i + b"." * 40 for i in range(400)}
    target = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with target, client:
        await target.bind(LOCAL)
        await client.bind(LOCAL)
        faults = Faults(drop=0.2, duplicate=0.1, corrupt=0.1)
        proxy = UdpFaultProxy("udp", LOCAL, target.getsockname(), faults=faults, seed=seed)
        received: list[bytes] = []

        async def collect() -> None:
            while True:
                received.append((await target.recvfrom(2048))[0])

        async with trio.open_nursery() as nursery:
            addr = await nursery.start(proxy.run)
            nursery.start_soon(collect)
            for i, datagram in enumerate(sorted(sent)):
                await client.sendto(datagram, addr)
                if i % 25 == 24:  # pace: never overrun loopback socket buffers
                    await wait_until(lambda n=i + 1: proxy.stats.up.units_in == n)
            up = proxy.stats.up
            await wait_until(lambda: up.units_in == len(sent))
            await wait_until(lambda: len(received) == len(sent) - up.dropped + up.duplicated)
            nursery.cancel_scope.cancel()
    assert up.units_out == len(received)
    bad = {d for d in received if d not in sent}
    return up.dropped, up.duplicated, up.corrupted, len(received), bad


async def test_udp_drop_duplicate_corrupt_counts_match_probabilities():
    dropped, duplicated, corrupted, _received, bad = await udp_counts(seed=11)
    assert 50 <= dropped <= 110  # 400 * 0.2 = 80 expected
    assert 15 <= duplicated <= 50  # 320 * 0.1 = 32
    assert 15 <= corrupted <= 50  # 320 * 0.1 = 32
    assert corrupted - 5 <= len(bad) <= corrupted  # bit flips make new datagrams
    assert (dropped, duplicated, corrupted) == (await udp_counts(seed=11))[:3]  # seeded


async def test_udp_replies_come_back_from_the_proxy_and_blackhole_swallows():
    target = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with target, client:
        await target.bind(LOCAL)
        await client.bind(LOCAL)
        proxy = UdpFaultProxy("udp", LOCAL, target.getsockname(), faults=Faults(delay=0.01))
        async with trio.open_nursery() as nursery:
            addr = await nursery.start(proxy.run)
            await client.sendto(b"hi", addr)
            with trio.fail_after(5):
                data, source = await target.recvfrom(2048)
            assert data == b"hi"
            await target.sendto(b"back", source)
            with trio.fail_after(5):
                data, source = await client.recvfrom(2048)
            assert (data, source) == (b"back", addr)

            proxy.set_faults(blackhole=True)
            await client.sendto(b"lost", addr)
            await target.sendto(b"lost too", source)
            await wait_until(lambda: proxy.stats.up.blackholed + proxy.stats.down.blackholed == 2)
            proxy.set_faults(blackhole=False)
            await client.sendto(b"again", addr)
            with trio.fail_after(5):
                data, _ = await target.recvfrom(2048)
            assert data == b"again"  # nothing of the black-holed traffic arrived before it
            nursery.cancel_scope.cancel()


async def send_through_udp(proxy: UdpFaultProxy, datagrams: list[bytes], *,
                           burst: bool) -> tuple[float, float, list[bytes]]:
    """Send ``datagrams`` client -> target through ``proxy``. Returns when the first
    was sent, by when the proxy had read them all (observed), and what arrived."""
    target = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with target, client:
        await target.bind(LOCAL)
        await client.bind(LOCAL)
        proxy.target = target.getsockname()
        received: list[bytes] = []

        async def collect() -> None:
            while True:
                received.append((await target.recvfrom(4096))[0])

        async with trio.open_nursery() as nursery:
            addr = await nursery.start(proxy.run)
            nursery.start_soon(collect)
            up = proxy.stats.up
            start = trio.current_time()
            for i, datagram in enumerate(datagrams):
                await client.sendto(datagram, addr)
                if not burst and i % 25 == 24:  # never overrun loopback socket buffers
                    await wait_until(lambda n=i + 1: up.units_in == n)
            with trio.fail_after(10):
                while up.units_in < len(datagrams):  # noqa: ASYNC110 (a counter)
                    await trio.sleep(0.001)
            all_in = trio.current_time()
            with trio.fail_after(10):
                while len(received) < len(datagrams) - up.queue_dropped:  # noqa: ASYNC110
                    await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
    return start, all_in, received


async def test_udp_rate_limit_serialises_datagrams_at_the_rate():
    rate = 2_000_000  # bits/s
    datagrams = [b"%04d" % i + bytes(996) for i in range(100)]  # 100 kB: 0.4 s at 2 Mbit/s
    proxy = UdpFaultProxy("udp", LOCAL, LOCAL, faults=Faults(rate=rate, queue=1000))
    start, _, received = await send_through_udp(proxy, datagrams, burst=False)
    elapsed = trio.current_time() - start
    assert received == datagrams  # none dropped, in order (one FIFO, no jitter)
    assert proxy.stats.up.queue_dropped == 0
    # Each datagram leaves after the ones before it are serialised: goodput <= rate.
    assert elapsed >= 0.999 * len(datagrams) * 1000 * 8 / rate


async def test_udp_full_queue_tail_drops_are_counted():
    rate, size, queue = 200_000, 500, 5  # 20 ms to serialise each datagram
    datagrams = [b"%04d" % i + bytes(size - 4) for i in range(40)]
    proxy = UdpFaultProxy("udp", LOCAL, LOCAL, faults=Faults(rate=rate, queue=queue))
    start, all_in, received = await send_through_udp(proxy, datagrams, burst=True)
    up = proxy.stats.up
    assert len(received) + up.queue_dropped == len(datagrams)
    assert received == sorted(received)
    # Admitted: the queue's worth, plus one per serialisation time the burst took to
    # come in (measured, so a slow machine only loosens the bound).
    admitted_at_most = queue + 1 + math.ceil((all_in - start) * rate / (size * 8))
    assert up.queue_dropped >= len(datagrams) - admitted_at_most
    assert up.queue_dropped > 0
    assert up.dropped == 0  # no random drops: every loss is a full queue


# --- TCP, with hotline's own TCP transport on both ends ------------------------------------


@dataclass
class Rig:
    proxy: TcpFaultProxy
    a: TcpPath  # dials through the proxy
    b: TcpPath  # B's listener serves A's connection
    a_rx: trio.MemoryReceiveChannel[TransportEvent]
    b_rx: trio.MemoryReceiveChannel[TransportEvent]


@asynccontextmanager
async def tcp_rig(faults: Faults, *, frame_aware: bool = True, **a_kw: float) -> AsyncIterator[Rig]:
    a_tx, a_rx = trio.open_memory_channel[TransportEvent](10000)
    b_tx, b_rx = trio.open_memory_channel[TransportEvent](10000)
    fast = Backoff(initial=0.01, maximum=0.05, jitter=0.0)
    b = TcpPath(0, "127.0.0.1", closed_port(), b_tx, backoff=fast)
    async with trio.open_nursery() as nursery:
        (b_listener,) = await nursery.start(TcpListener("127.0.0.1", 0, [b]).run)
        proxy = TcpFaultProxy(
            "tcp", LOCAL, b_listener.socket.getsockname(), faults=faults, seed=3,
            frame_aware=frame_aware,
        )
        proxy_addr = await nursery.start(proxy.run)
        a = TcpPath(0, "127.0.0.1", proxy_addr[1], a_tx, backoff=fast, **a_kw)  # type: ignore[arg-type]
        await nursery.start(a.run)
        await nursery.start(b.run)
        rig = Rig(proxy, a, b, a_rx, b_rx)
        await next_of(a_rx, PathConnected)
        yield rig
        nursery.cancel_scope.cancel()


async def next_of(rx: trio.MemoryReceiveChannel[TransportEvent], kind: type) -> TransportEvent:
    with trio.fail_after(5):
        while True:
            event = await rx.receive()
            if isinstance(event, kind):
                return event


def drain(rx: trio.MemoryReceiveChannel[TransportEvent]) -> list[TransportEvent]:
    out: list[TransportEvent] = []
    while True:
        try:
            out.append(rx.receive_nowait())
        except trio.WouldBlock:
            return out


async def receive_packets(rx: trio.MemoryReceiveChannel[TransportEvent], n: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < n:
        event = await next_of(rx, PacketIn)
        assert isinstance(event, PacketIn)
        out.append(event.data)
    return out


async def test_tcp_blackhole_stops_traffic_without_closing_then_resumes():
    async with tcp_rig(Faults()) as rig:
        rig.a.send(b"first")
        first = await next_of(rig.b_rx, PacketIn)
        assert isinstance(first, PacketIn)
        assert first.data == b"first"
        rig.b.on_authenticated(first)  # as B's link would: B may answer on that connection
        rig.b.send(b"first back")
        assert await receive_packets(rig.a_rx, 1) == [b"first back"]

        rig.proxy.set_faults(blackhole=True)
        for i in range(10):
            rig.a.send(b"into the void %d" % i)
            rig.b.send(b"out of the void %d" % i)
        stats = rig.proxy.stats
        await wait_until(lambda: stats.up.blackholed == 10 and stats.down.blackholed == 10)
        assert not [e for e in drain(rig.b_rx) if isinstance(e, PacketIn | PathDisconnected)]
        assert not [e for e in drain(rig.a_rx) if isinstance(e, PacketIn | PathDisconnected)]
        assert rig.a.connected
        assert rig.b.connected

        rig.proxy.set_faults(blackhole=False)
        rig.a.send(b"resumed")
        rig.b.send(b"resumed back")
        assert await receive_packets(rig.b_rx, 1) == [b"resumed"]
        assert await receive_packets(rig.a_rx, 1) == [b"resumed back"]
        assert rig.a.stats.connects == 1
        assert rig.proxy.stats.connections == 1


async def test_tcp_frame_faults_keep_framing_and_counts_add_up():
    faults = Faults(drop=0.1, duplicate=0.1, corrupt=0.1)
    async with tcp_rig(faults) as rig:
        sent = [b"frame %04d " % i + bytes(200) for i in range(300)]
        for chunk in range(0, 300, 50):
            for p in sent[chunk : chunk + 50]:
                rig.a.send(p)
            await wait_until(lambda c=chunk: rig.a.stats.packets_out == c + 50)
        up = rig.proxy.stats.up
        await wait_until(lambda: up.units_in == 300)
        expected = 300 - up.dropped + up.duplicated
        got = await receive_packets(rig.b_rx, expected)
        assert 10 <= up.dropped <= 55
        assert 10 <= up.duplicated <= 55
        assert 10 <= up.corrupted <= 55
        assert rig.b.stats.framing_errors == 0  # length prefixes are never corrupted
        assert len([p for p in got if p not in sent]) <= up.corrupted
        assert rig.b.stats.disconnects == 0


async def test_tcp_delay_keeps_order_and_reorder_does_not():
    async with tcp_rig(Faults(delay=0.005, jitter=0.01)) as rig:
        sent = [b"%d" % i for i in range(100)]
        for p in sent:
            rig.a.send(p)
        assert await receive_packets(rig.b_rx, 100) == sent
        rig.proxy.set_faults(delay=0.0, jitter=0.0, reorder=0.3, reorder_delay=0.02)
        for p in sent:
            rig.a.send(p)
        got = await receive_packets(rig.b_rx, 100)
        assert sorted(got) == sorted(sent)
        assert got != sent
        assert rig.proxy.stats.up.reordered > 10


async def test_tcp_stall_makes_a_blocked_write_declare_the_connection_dead():
    async with tcp_rig(Faults(), write_timeout=0.3) as rig:
        rig.proxy.set_faults(stall=True)
        big = bytes(16000)
        with trio.fail_after(10):
            while rig.a.stats.write_timeouts == 0:
                for _ in range(64):
                    rig.a.send(big)
                await trio.sleep(0.01)
        event = await next_of(rig.a_rx, PathDisconnected)
        assert isinstance(event, PathDisconnected)
        assert event.reason == "write-timeout"
        rig.proxy.set_faults(stall=False)
        await next_of(rig.a_rx, PathConnected)  # redialled


async def test_tcp_rate_limit_keeps_framing_and_reads_only_what_it_can_pass_on():
    rate, queue = 2_000_000, 10
    async with tcp_rig(Faults()) as rig:
        rig.proxy.set_faults(rate=rate, queue=queue)  # at run time, like any fault
        sent = [b"frame %04d " % i + bytes(1000) for i in range(100)]
        wire = sum(4 + len(p) for p in sent)  # length prefix + packet: ~0.4 s at 2 Mbit/s
        start = trio.current_time()
        for p in sent:
            rig.a.send(p)
        await trio.sleep(0.1)
        # The proxy took in only the queue's worth and what the rate let out since: the
        # rest waits in the sender's socket (its TCP flow control pushes back).
        took_in = rig.proxy.stats.up.bytes_in
        let_out = (trio.current_time() - start) * rate / 8
        assert took_in <= queue * TCP_QUEUE_PACKET + max(map(len, sent)) + 4 + let_out
        assert await receive_packets(rig.b_rx, len(sent)) == sent
        elapsed = trio.current_time() - start
        assert elapsed >= 0.999 * wire * 8 / rate
        assert rig.b.stats.framing_errors == 0
        assert rig.proxy.stats.up.queue_dropped == 0  # a byte stream is never dropped
        rig.proxy.set_faults(rate=0)
        rig.a.send(b"unlimited again")
        assert await receive_packets(rig.b_rx, 1) == [b"unlimited again"]


async def test_tcp_close_connections_cuts_and_the_path_redials():
    async with tcp_rig(Faults()) as rig:
        assert handle_request({"tcp": rig.proxy}, {"path": "tcp", "close": True})["closed"] == 1
        await next_of(rig.a_rx, PathDisconnected)
        await next_of(rig.a_rx, PathConnected)
        rig.a.send(b"after cut")
        assert await receive_packets(rig.b_rx, 1) == [b"after cut"]


async def test_tcp_raw_mode_passes_bytes_and_refuses_unit_faults_silently():
    async with tcp_rig(Faults(drop=1.0), frame_aware=False) as rig:
        rig.a.send(b"raw chunks are never dropped")
        assert await receive_packets(rig.b_rx, 1) == [b"raw chunks are never dropped"]


async def test_frame_aware_passes_absurd_length_through_raw():
    target = await trio.open_tcp_listeners(0, host="127.0.0.1")
    proxy = TcpFaultProxy("tcp", LOCAL, target[0].socket.getsockname(), frame_aware=True)
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(proxy.run)
        client = await trio.open_tcp_stream(*addr[:2])
        server = await target[0].accept()
        await client.send_all(struct.pack(">I", 1 << 30) + b"junk")
        got = b""
        with trio.fail_after(5):
            while len(got) < 8:
                got += await server.receive_some(100)
        assert got == struct.pack(">I", 1 << 30) + b"junk"
        await client.aclose()
        await server.aclose()
        await target[0].aclose()
        nursery.cancel_scope.cancel()


# --- control ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_control_socket_changes_faults_and_reports_stats(kind, tmp_path):
    proxies = {
        "tcp": TcpFaultProxy("tcp", LOCAL, ("127.0.0.1", 1)),
        "udp": UdpFaultProxy("udp", LOCAL, ("127.0.0.1", 1)),
    }
    where = "127.0.0.1:0" if kind == "tcp" else f"unix:{tmp_path / 'c.sock'}"
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_control, proxies, where)
        reply = await acontrol(address, {"path": "tcp", "blackhole": True})
        assert reply["ok"]
        assert reply["faults"]["tcp"]["blackhole"] is True
        assert proxies["tcp"].faults.blackhole
        assert not proxies["udp"].faults.blackhole
        reply = await acontrol(address, {"path": "*", "drop": 0.5})
        assert proxies["tcp"].faults.drop == proxies["udp"].faults.drop == 0.5
        reply = await acontrol(address, {"path": "udp", "rate": 1_000_000, "queue": 20})
        assert reply["faults"]["udp"]["rate"] == 1_000_000
        assert (proxies["udp"].faults.rate, proxies["udp"].faults.queue) == (1_000_000, 20)
        assert proxies["tcp"].faults.rate == 0
        stats = await acontrol(address, {"cmd": "stats"})
        assert stats["ok"]
        assert stats["stats"]["udp"]["up"]["dropped"] == 0
        for bad in ({"path": "nope"}, {"path": "tcp", "drop": 2}, {"path": "tcp", "x": 1}, [1],
                    {"path": "udp", "rate": -1}, {"path": "udp", "queue": 0}):
            reply = await acontrol(address, bad)  # type: ignore[arg-type]
            assert reply["ok"] is False
            assert reply["error"]
        nursery.cancel_scope.cancel()


def test_subprocess_proxy_with_control():
    with socket.socket() as target:
        target.bind(("127.0.0.1", 0))
        target.listen()
        config = {
            "seed": 1,
            "proxies": [{"name": "tcp", "kind": "tcp", "listen": "127.0.0.1:0",
                         "target": f"127.0.0.1:{target.getsockname()[1]}"}],
        }
        with FaultProxyProcess(config) as fp:
            host, port = fp.addresses["tcp"].split(":")
            client = socket.create_connection((host, int(port)), timeout=5)
            target.settimeout(5)
            server, _ = target.accept()
            with client, server:
                server.settimeout(5)
                client.sendall(b"hello")
                assert server.recv(100) == b"hello"
                fp.set("tcp", blackhole=True)
                client.sendall(b"nobody hears this")
                deadline = time.monotonic() + 5
                while fp.stats()["tcp"]["up"]["blackholed"] == 0:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                fp.set("tcp", blackhole=False)
                client.sendall(b"back")
                assert server.recv(100) == b"back"
                assert control(fp.control_address, {"path": "tcp", "bogus": 1})["ok"] is False
        assert fp.process.returncode == 0


# --- pure parts ---------------------------------------------------------------------------


@given(
    frames=st.lists(st.binary(min_size=0, max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=7000), max_size=30),
)
def test_frame_splitter_yields_whole_frames_whatever_the_chunking(frames, cuts):
    wire = b"".join(struct.pack(">I", len(f)) + f for f in frames)
    splitter = _FrameSplitter()
    units: list[bytes] = []
    previous = 0
    for cut in [*sorted(c for c in cuts if c < len(wire)), len(wire)]:
        units += splitter.feed(wire[previous:cut])
        previous = cut
    assert units == [struct.pack(">I", len(f)) + f for f in frames]


def test_faults_validation():
    assert Faults().updated({"drop": 0.5}).drop == 0.5
    assert Faults().updated({"rate": 1e6}).queue == 50  # a bounded queue by default
    for bad in ({"drop": 1.5}, {"delay": -1}, {"blackhole": 1}, {"nope": 1}, {"jitter": "x"},
                {"rate": -1}, {"rate": True}, {"rate": "1M"}, {"queue": 0}, {"queue": 1.5}):
        with pytest.raises(ValueError, match=r"must|unknown"):
            Faults().updated(bad)
