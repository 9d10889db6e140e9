"""TCP length framing and fragment split/reassembly."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.errors import DecodeError, LimitError, LocalProtocolError
from hotline.proto.framing import (
    FRAGMENT_HEADER_LEN,
    MIN_CHUNK,
    TAG_BUNDLE,
    Reassembler,
    TcpFrameDecoder,
    encode_tcp_frame,
    pack_frames,
    split_frame,
    unbundle_untrusted,
)
from hotline.proto.packet import TCP_MAX_PACKET, TRANSPORT_OVERHEAD, UDP_MAX_DATAGRAM

UDP_PLAINTEXT = UDP_MAX_DATAGRAM - TRANSPORT_OVERHEAD


def frag(frag_id: int, index: int, count: int, chunk: bytes) -> bytes:
    return struct.pack(">BIHH", 1, frag_id, index, count) + chunk


# --- TCP framing ----------------------------------------------------------------------


def test_encode_tcp_frame():
    assert encode_tcp_frame(b"abc") == b"\x00\x00\x00\x03abc"
    for bad in (b"", bytes(TCP_MAX_PACKET + 1)):
        with pytest.raises(LocalProtocolError):
            encode_tcp_frame(bad)


def test_decoder_byte_by_byte():
    packets = [b"a", bytes(300), b"xyz" * 1000]
    stream = b"".join(encode_tcp_frame(p) for p in packets)
    decoder = TcpFrameDecoder(TCP_MAX_PACKET)
    out = []
    for i in range(len(stream)):
        out += decoder.feed_untrusted(stream[i : i + 1])
    assert out == packets
    assert decoder.buffered == 0


def test_decoder_many_in_one_feed():
    packets = [bytes([i]) * (i + 1) for i in range(50)]
    stream = b"".join(encode_tcp_frame(p) for p in packets)
    assert TcpFrameDecoder().feed_untrusted(stream) == packets


@settings(max_examples=100, deadline=None)
@given(
    packets=st.lists(st.binary(min_size=1, max_size=600), max_size=10),
    cuts=st.lists(st.integers(0, 8000), max_size=20),
)
def test_decoder_any_split(packets, cuts):
    stream = b"".join(encode_tcp_frame(p) for p in packets)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = TcpFrameDecoder(1000)
    out = []
    for a, b in itertools.pairwise(points):
        out += decoder.feed_untrusted(stream[a:b])
    assert out == packets
    assert decoder.buffered == 0


@pytest.mark.parametrize("length", [0, 101, 2**32 - 1])
def test_decoder_bad_length_refused_before_body(length):
    decoder = TcpFrameDecoder(100)
    assert decoder.feed_untrusted(encode_tcp_frame(b"ok")) == [b"ok"]
    assert decoder.feed_untrusted(struct.pack(">I", length)[:3]) == []
    with pytest.raises(LimitError):  # refused as soon as the header is complete
        decoder.feed_untrusted(struct.pack(">I", length)[3:])
    assert decoder.buffered == 0
    with pytest.raises(LimitError):  # the stream stays failed
        decoder.feed_untrusted(encode_tcp_frame(b"ok"))


def test_decoder_buffer_bounded_to_one_packet():
    decoder = TcpFrameDecoder(100)
    partial = encode_tcp_frame(bytes(100))[:-1]
    assert decoder.feed_untrusted(partial) == []
    assert decoder.buffered == 99  # the length prefix is consumed; the body is awaited


def test_decoder_exact_max():
    decoder = TcpFrameDecoder(100)
    assert decoder.feed_untrusted(encode_tcp_frame(bytes(100))) == [bytes(100)]


# --- split_frame ----------------------------------------------------------------------


def test_split_whole_when_it_fits():
    assert split_frame(b"abc", 4, 1) == [b"\x00abc"]
    assert split_frame(b"", 100, 1) == [b"\x00"]


def test_split_fragments_layout():
    frame = bytes(range(250))
    parts = split_frame(frame, FRAGMENT_HEADER_LEN + 100, 0xABCDEF01)
    assert len(parts) == 3
    for i, part in enumerate(parts):
        assert part[:9] == struct.pack(">BIHH", 1, 0xABCDEF01, i, 3)
        assert len(part) <= FRAGMENT_HEADER_LEN + 100
    assert b"".join(p[9:] for p in parts) == frame
    assert [len(p) - 9 for p in parts] == [100, 100, 50]


def test_split_refusals():
    with pytest.raises(LocalProtocolError):
        split_frame(bytes(100), FRAGMENT_HEADER_LEN + MIN_CHUNK - 1, 1)
    with pytest.raises(LocalProtocolError):
        split_frame(bytes(200), 50 + FRAGMENT_HEADER_LEN + MIN_CHUNK, 2**32)
    with pytest.raises(LocalProtocolError):
        split_frame(bytes(MIN_CHUNK * 0x10000), FRAGMENT_HEADER_LEN + MIN_CHUNK, 1)


# --- Reassembler ----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    frame=st.binary(max_size=5000),
    mtu=st.integers(FRAGMENT_HEADER_LEN + MIN_CHUNK, 1300),
    seed=st.integers(0, 2**32),
    dup=st.booleans(),
)
def test_round_trip_any_order_with_duplicates(frame, mtu, seed, dup):
    parts = split_frame(frame, mtu, 42)
    rnd = random.Random(seed)
    rnd.shuffle(parts)
    if dup and len(parts) > 1:
        parts.insert(rnd.randrange(len(parts)), parts[0])
    reassembler = Reassembler(max_frame=5000)
    results = [reassembler.add_untrusted(p, 0.0) for p in parts]
    done = [r for r in results if r is not None]
    assert done == [frame]
    assert reassembler.pending == 0 or dup  # a late duplicate may open a new partial


def test_interleaved_frames():
    a, b = bytes(3000), bytes(range(256)) * 10
    pa, pb = split_frame(a, UDP_PLAINTEXT, 1), split_frame(b, UDP_PLAINTEXT, 2)
    reassembler = Reassembler(max_frame=65536)
    out = []
    for x, y in zip(pa, pb, strict=False):
        out += [reassembler.add_untrusted(x, 0.0), reassembler.add_untrusted(y, 0.0)]
    out += [reassembler.add_untrusted(y, 0.0) for y in pb[len(pa) :]]
    assert [r for r in out if r is not None] == [a, b]
    assert reassembler.buffered == 0


def test_whole_frame_limit():
    reassembler = Reassembler(max_frame=10)
    assert reassembler.add_untrusted(b"\x00" + bytes(10), 0.0) == bytes(10)
    with pytest.raises(LimitError):
        reassembler.add_untrusted(b"\x00" + bytes(11), 0.0)


def test_fragmented_frame_over_limit_seen_at_first_fragment():
    reassembler = Reassembler(max_frame=1000)
    parts = split_frame(bytes(1001), 9 + 100, 5)  # 11 chunks of 100: 10 * 100 + 1 > 1000
    with pytest.raises(LimitError):
        reassembler.add_untrusted(parts[0], 0.0)
    assert reassembler.pending == 0
    assert reassembler.buffered == 0


def test_fragmented_frame_over_limit_seen_at_last_fragment():
    reassembler = Reassembler(max_frame=950)
    parts = split_frame(bytes(1000), 9 + 100, 5)  # 9 * 100 + 1 <= 950, but 1000 > 950
    for p in parts[:-1]:
        assert reassembler.add_untrusted(p, 0.0) is None
    with pytest.raises(LimitError):
        reassembler.add_untrusted(parts[-1], 0.0)
    assert reassembler.pending == 0
    assert reassembler.buffered == 0


def test_count_bounded_by_max_frame_on_first_fragment():
    reassembler = Reassembler(max_frame=1000)
    with pytest.raises(LimitError):
        reassembler.add_untrusted(frag(1, 0, 1000, bytes(MIN_CHUNK)), 0.0)
    with pytest.raises(LimitError):  # index 0 of 2 with a chunk that cannot fit
        reassembler.add_untrusted(frag(1, 0, 2, bytes(1000)), 0.0)
    assert reassembler.pending == 0


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",
        b"\x02abc",
        b"\x01" + bytes(8),  # header only, no chunk
        frag(1, 0, 0, b"x"),  # count 0
        frag(1, 2, 2, b"x"),  # index == count
    ],
)
def test_malformed(plaintext):
    with pytest.raises(DecodeError):
        Reassembler(max_frame=1000).add_untrusted(plaintext, 0.0)


def test_inconsistent_fragments_drop_the_partial():
    reassembler = Reassembler(max_frame=10000)
    assert reassembler.add_untrusted(frag(7, 0, 3, bytes(100)), 0.0) is None
    with pytest.raises(DecodeError):
        reassembler.add_untrusted(frag(7, 1, 4, bytes(100)), 0.0)  # count changed
    assert reassembler.pending == 0
    assert reassembler.add_untrusted(frag(8, 0, 3, bytes(100)), 0.0) is None
    with pytest.raises(DecodeError):
        reassembler.add_untrusted(frag(8, 1, 3, bytes(99)), 0.0)  # chunk size changed
    assert reassembler.add_untrusted(frag(9, 2, 3, bytes(100)), 0.0) is None
    with pytest.raises(DecodeError):
        reassembler.add_untrusted(frag(9, 0, 3, bytes(80)), 0.0)  # last longer than others
    with pytest.raises(DecodeError):
        reassembler.add_untrusted(frag(10, 0, 3, bytes(MIN_CHUNK - 1)), 0.0)  # tiny chunk
    assert reassembler.pending == 0
    assert reassembler.buffered == 0


def test_timeout_evicts():
    reassembler = Reassembler(max_frame=10000, timeout=10.0)
    parts = split_frame(bytes(500), 9 + 100, 1)
    assert reassembler.add_untrusted(parts[0], 0.0) is None
    assert reassembler.add_untrusted(parts[1], 10.0) is None  # still in time
    assert reassembler.add_untrusted(b"\x00", 10.5) == b""  # any call expires old partials
    assert reassembler.pending == 0
    assert reassembler.buffered == 0
    for p in parts[2:]:
        assert reassembler.add_untrusted(p, 11.0) is None  # its start is gone


def test_max_partial_evicts_oldest():
    reassembler = Reassembler(max_frame=10000, max_partial=3)
    for frag_id in range(5):
        reassembler.add_untrusted(frag(frag_id, 0, 2, bytes(100)), float(frag_id))
    assert reassembler.pending == 3
    assert reassembler.add_untrusted(frag(0, 1, 2, b"x"), 5.0) is None  # 0 was evicted
    assert reassembler.add_untrusted(frag(4, 1, 2, b"x"), 5.0) == bytes(100) + b"x"


def test_total_bytes_bounded():
    reassembler = Reassembler(max_frame=1000, max_partial=64, max_buffered=2000)
    for frag_id in range(50):
        reassembler.add_untrusted(frag(frag_id, 0, 3, bytes(400)), 0.0)
        assert reassembler.buffered <= 2000
    assert reassembler.pending == 5
    # The newest partial survives and can complete.
    out = reassembler.add_untrusted(frag(49, 1, 3, bytes(400)), 0.0)
    assert out is None
    assert reassembler.add_untrusted(frag(49, 2, 3, bytes(150)), 0.0) == bytes(950)


def test_single_fragment_frame():
    assert Reassembler(max_frame=100).add_untrusted(frag(3, 0, 1, b"abc"), 0.0) == b"abc"


# --- bundles (several small frames in one packet) ---------------------------------------



def _unpack_all(plaintexts: list[bytes]) -> list[bytes]:
    frames: list[bytes] = []
    reassembler = Reassembler(1 << 20)
    for p in plaintexts:
        if p[0] == TAG_BUNDLE:
            frames.extend(unbundle_untrusted(p))
        else:
            whole = reassembler.add_untrusted(p, 0.0)
            if whole is not None:
                frames.append(whole)
    return frames


@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=40))
def test_pack_frames_round_trips_in_order_within_the_mtu(frames: list[bytes]) -> None:
    plaintexts, _ = pack_frames(frames, 1203, 7)
    assert all(len(p) <= 1203 for p in plaintexts)
    assert _unpack_all(plaintexts) == frames


def test_small_frames_share_one_packet() -> None:
    plaintexts, next_id = pack_frames([b"a" * 100] * 10, 1203, 0)
    assert len(plaintexts) == 1
    assert plaintexts[0][0] == TAG_BUNDLE
    assert next_id == 0


def test_a_lone_frame_is_sent_whole() -> None:
    plaintexts, _ = pack_frames([b"x" * 50], 1203, 0)
    assert plaintexts == [b"\x00" + b"x" * 50]


@pytest.mark.parametrize(
    "bad", [b"\x02", b"\x02\x00", b"\x02\x00\x00", b"\x02\x00\x05abc", b"\x00abc"]
)
def test_malformed_bundles_are_decode_errors(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        unbundle_untrusted(bad)


@given(st.binary(max_size=200))
def test_unbundle_raises_only_decode_error(data: bytes) -> None:
    try:
        frames = unbundle_untrusted(b"\x02" + data)
    except DecodeError:
        return
    assert sum(len(f) + 2 for f in frames) == len(data)
