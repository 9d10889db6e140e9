"""Link frames: round trips, schema refusals, and fuzzing of the untrusted decoder."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.errors import DecodeError, LimitError, RemoteProtocolError
from hotline.proto.envelope import MAX_RECEIPT, ZERO_HASH
from hotline.proto.frames import (
    KEM_CIPHERTEXT_LEN,
    KEM_PUBLIC_LEN,
    MAX_RANGES,
    Ack,
    Data,
    Frame,
    Hello,
    Keepalive,
    KemOffer,
    KemReply,
    Ping,
    Pong,
    Position,
    Receipt,
    decode_frame_untrusted,
    encode_frame,
    max_frame_len,
)
from hotline.proto.lanes import FLASH, LANES, ROUTINE

MAX_MESSAGE = 65536
E = b"\x01" * 16
SIG = b"\x02" * 64
H = b"\x03" * 32  # a chain hash
Z = ZERO_HASH

uints = st.integers(min_value=0, max_value=2**63 - 1)
epochs = st.binary(min_size=16, max_size=16)
sigs = st.binary(min_size=64, max_size=64)
hashes = st.binary(min_size=32, max_size=32)
lanes = st.sampled_from(LANES)
per_lane_uints = st.tuples(uints, uints, uints, uints)
positions = st.builds(Position, uints, hashes)


@st.composite
def acks(draw: st.DrawFn) -> Ack:
    upto = draw(st.integers(0, 2**40))
    bounds = sorted(draw(st.sets(st.integers(upto + 1, upto + 10_000), max_size=2 * MAX_RANGES)))
    if len(bounds) % 2:
        bounds.pop()
    ranges = tuple((bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2))
    return Ack(draw(epochs), draw(lanes), upto, draw(hashes), ranges, draw(uints))


frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Hello, epochs, per_lane_uints, st.none() | epochs,
              st.tuples(positions, positions, positions, positions)),
    st.builds(Data, st.binary(min_size=1, max_size=2000), sigs),
    acks(),
    st.builds(Receipt, st.binary(min_size=1, max_size=MAX_RECEIPT), sigs),
    st.builds(Ping, uints, uints),
    st.builds(Pong, uints, uints, uints),
    st.just(Keepalive()),
    st.builds(KemOffer, st.binary(min_size=KEM_PUBLIC_LEN, max_size=KEM_PUBLIC_LEN)),
    st.builds(KemReply, st.binary(min_size=KEM_CIPHERTEXT_LEN, max_size=KEM_CIPHERTEXT_LEN)),
)


@given(frames)
def test_round_trip(frame: Frame) -> None:
    assert decode_frame_untrusted(encode_frame(frame), MAX_MESSAGE) == frame


def _fresh_hello() -> Hello:
    """A HELLO from an end that never heard of the peer's stream."""
    return Hello(E, (1, 1, 1, 1), None, (Position(0, Z),) * len(LANES))


def test_wire_layout_is_positional_array() -> None:
    ack = Ack(E, FLASH, 5, H, ((7, 9), (11, 11)), 4096)
    assert msgpack.unpackb(encode_frame(ack)) == [3, E, 0, 5, H, [[7, 9], [11, 11]], 4096]
    assert msgpack.unpackb(encode_frame(_fresh_hello())) == [
        1, E, [1, 1, 1, 1], None, [[0, Z]] * 4]
    hello = Hello(E, (1, 2, 3, 4), b"\x05" * 16,
                  (Position(0, Z), Position(1, H), Position(2, H), Position(7, H)))
    assert msgpack.unpackb(encode_frame(hello)) == [
        1, E, [1, 2, 3, 4], b"\x05" * 16, [[0, Z], [1, H], [2, H], [7, H]]]
    assert encode_frame(Keepalive()) == b"\x91\x07"


def test_hello_and_ack_decode_per_lane() -> None:
    hello = Hello(E, (3, 1, 1, 9), b"\x05" * 16,
                  (Position(2, H), Position(0, Z), Position(0, Z), Position(8, H)))
    decoded = decode_frame_untrusted(encode_frame(hello), MAX_MESSAGE)
    assert isinstance(decoded, Hello)
    assert decoded.base_seqs[FLASH] == 3
    assert decoded.base_seqs[ROUTINE] == 9
    assert decoded.delivered[ROUTINE] == Position(8, H)
    for lane in LANES:
        ack = decode_frame_untrusted(encode_frame(Ack(E, lane, 1, H, (), 8)), MAX_MESSAGE)
        assert isinstance(ack, Ack)
        assert (ack.lane, ack.upto, ack.chain) == (lane, 1, H)


def test_encode_refuses_a_non_frame() -> None:
    with pytest.raises(TypeError):
        encode_frame(object())  # type: ignore[arg-type]


def _enc(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {},
        7,
        [0],
        [8],
        [True],
        [b"\x01"],
        [7, 1],  # keepalive with an extra element
        [1, E, [1, 1, 1, 1], None],  # short HELLO
        [1, E, [1, 1, 1, 1], None, [[0, Z]] * 4, 0],  # long HELLO
        [1, E, 1, None, 0],  # the single-lane HELLO of the first release
        [1, E[:15], [1, 1, 1, 1], None, [[0, Z]] * 4],  # epoch length
        [1, E, [1, 1, 1], None, [[0, Z]] * 4],  # three lanes
        [1, E, [1, 1, 1, 1, 1], None, [[0, Z]] * 4],  # five lanes
        [1, E, [1, 1, 1, 1], None, [[0, Z]] * 3],
        [1, E, [1, 1, 1, 1], None, [[0, Z]] * 5],
        [1, E, [1, -1, 1, 1], None, [[0, Z]] * 4],  # negative
        [1, E, [1, 1, 2**63, 1], None, [[0, Z]] * 4],  # too big
        [1, E, [True, 1, 1, 1], None, [[0, Z]] * 4],  # bool is not int
        [1, E, [1, 1, 1, 1.0], None, [[0, Z]] * 4],  # float
        [1, E, [1, 1, 1, 1], b"", [[0, Z]] * 4],  # seen_epoch length
        [1, E, [1, 1, 1, 1], E, [[0, Z]] * 3 + [[0, Z[:31]]]],  # chain length
        [1, E, [1, 1, 1, 1], E, [[0, Z]] * 3 + [[-1, Z]]],
        [1, E, [1, 1, 1, 1], E, [[0, Z]] * 3 + [[0]]],
        [1, E, [1, 1, 1, 1], E, [[0, Z]] * 3 + [[0, Z, 0]]],
        [1, E, [1, 1, 1, 1], E, [[0, Z]] * 3 + [0]],
        [1, E, [1, 1, 1, 1], E, [[Z, 0]] * 4],  # pair the wrong way round
        [1, E, None, E, [[0, Z]] * 4],
        [1, E, [1, 1, 1, 1], E, None],
        [2, b"", SIG],  # empty envelope
        [2, "text", SIG],  # str where bytes expected
        [2, b"x", SIG[:63]],
        [3, E, 5, [[7, 9]], 10],  # the single-lane ACK of the first release
        [3, E, 0, 5, H, [[5, 6]], 10],  # range not above upto
        [3, E, 0, 5, H, [[8, 7]], 10],  # lo > hi
        [3, E, 0, 5, H, [[7, 9], [9, 10]], 10],  # overlapping
        [3, E, 0, 5, H, [[9, 10], [7, 8]], 10],  # descending
        [3, E, 0, 5, H, [[7]], 10],
        [3, E, 0, 5, H, [7, 8], 10],
        [3, E, 0, 5, H, None, 10],
        [3, E, -1, 5, H, [], 10],  # lane out of range
        [3, E, 4, 5, H, [], 10],
        [3, E, True, 5, H, [], 10],
        [3, E, None, 5, H, [], 10],
        [3, E, 1.0, 5, H, [], 10],
        [3, E, 0, 5, H[:31], [], 10],  # chain length
        [3, E, 0, 5, None, [], 10],
        [3, E, 0, -5, H, [], 10],
        [3, E, 0, 5, H, [], -1],
        [3, E[:15], 0, 5, H, [], 10],
        [3, E, 0, 5, H, []],  # short ACK
        [4, b"r", SIG, 1],
        [5, 1],
        [6, 1, 2, -3],
    ],
)
def test_schema_refusals(obj: object) -> None:
    with pytest.raises((DecodeError, LimitError)):
        decode_frame_untrusted(_enc(obj), MAX_MESSAGE)


def test_map_keys_and_ext_types_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_frame_untrusted(_enc([1, {b"a": 1}, [1, 1, 1, 1], None, [[0, Z]] * 4]),
                               MAX_MESSAGE)
    with pytest.raises((DecodeError, LimitError)):
        decode_frame_untrusted(_enc([2, msgpack.ExtType(1, b"xx"), SIG]), MAX_MESSAGE)
    with pytest.raises(DecodeError):
        decode_frame_untrusted(_enc([7]) + b"\x00", MAX_MESSAGE)  # trailing bytes


def test_limits() -> None:
    too_many = [[10 * i + 10, 10 * i + 11] for i in range(MAX_RANGES + 1)]
    with pytest.raises(LimitError):
        decode_frame_untrusted(_enc([3, E, ROUTINE, 5, H, too_many, 10]), MAX_MESSAGE)
    just_enough = tuple((10 * i + 10, 10 * i + 11) for i in range(MAX_RANGES))
    ack = Ack(E, ROUTINE, 5, H, just_enough, 10)
    assert decode_frame_untrusted(encode_frame(ack), MAX_MESSAGE) == ack
    with pytest.raises(LimitError):
        decode_frame_untrusted(b"\x00" * (max_frame_len(1000) + 1), 1000)
    big = encode_frame(Data(b"x" * (max_frame_len(1000) - 100), SIG))
    with pytest.raises(LimitError):
        decode_frame_untrusted(big, 1000)
    with pytest.raises(LimitError):
        decode_frame_untrusted(encode_frame(Receipt(b"r" * (MAX_RECEIPT + 1), SIG)), MAX_MESSAGE)
    # a bin header claiming 4 GiB in a small frame: refused without allocating
    with pytest.raises(RemoteProtocolError):
        decode_frame_untrusted(b"\x93\x02\xc6\xff\xff\xff\xff", MAX_MESSAGE)


def test_deep_nesting_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_frame_untrusted(b"\x91" * 5000 + b"\x07", MAX_MESSAGE)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_frame_untrusted(data, MAX_MESSAGE)


@settings(max_examples=300)
@given(frames, st.data())
def test_fuzz_mutated_frames(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(encode_frame(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and raw:
            del raw[pos]
        elif op == "truncate":
            del raw[pos:]
    try:
        decoded = decode_frame_untrusted(bytes(raw), MAX_MESSAGE)
    except RemoteProtocolError:
        return
    assert decode_frame_untrusted(encode_frame(decoded), MAX_MESSAGE) == decoded


def test_kem_frames_have_fixed_sizes_and_pass_any_max_message() -> None:
    """The ratchet's frames (DESIGN §11) are accepted even when messages are tiny."""
    offer, reply = KemOffer(bytes(KEM_PUBLIC_LEN)), KemReply(bytes(KEM_CIPHERTEXT_LEN))
    assert msgpack.unpackb(encode_frame(offer)) == [8, bytes(KEM_PUBLIC_LEN)]
    assert msgpack.unpackb(encode_frame(reply)) == [9, bytes(KEM_CIPHERTEXT_LEN)]
    for frame in (offer, reply):
        assert decode_frame_untrusted(encode_frame(frame), 1) == frame
    for bad in ([8, bytes(KEM_PUBLIC_LEN - 1)], [8, bytes(KEM_PUBLIC_LEN + 1)],
                [9, bytes(KEM_PUBLIC_LEN)], [8], [9, bytes(KEM_CIPHERTEXT_LEN), 0],
                [8, "x" * KEM_PUBLIC_LEN]):
        with pytest.raises(RemoteProtocolError):
            decode_frame_untrusted(_enc(bad), MAX_MESSAGE)
    with pytest.raises(LimitError):  # a DATA frame is still bound by max_message
        decode_frame_untrusted(encode_frame(Data(b"x" * KEM_PUBLIC_LEN, SIG)), 1)
