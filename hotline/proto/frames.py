"""Link frames: the msgpack arrays carried inside transport plaintext (DESIGN §3, §4).

Owns the wire form of the frames one link end sends the other once a Noise session is
up. Each frame is a positional msgpack array whose first element is a type tag::

    [1, epoch(16B), [base_seq x4], seen_epoch(16B|nil), [[upto, chain(32B)] x4]]  HELLO
    [2, envelope_raw, sig(64B)]                                                 DATA
    [3, epoch(16B), lane, upto, chain(32B), [[lo, hi], …≤32], window]            ACK
    [4, receipt_raw, sig(64B)]                                                  RECEIPT
    [5, ping_id, sent_wall_ns]                                                  PING
    [6, ping_id, echo_wall_ns, their_wall_ns]                                   PONG
    [7]                                                                         KEEPALIVE
    [8, encapsulation_key(1184B)]                                               KEM_OFFER
    [9, ciphertext(1088B)]                                                      KEM_REPLY

HELLO and ACK are per precedence lane (DESIGN §9): HELLO carries, for each of the four
lanes, our lowest unacknowledged seq and how far we durably hold the peer's lane; ACK
names its lane. Every acknowledgement carries the chain hash of the envelope at its
``upto`` (32 zero bytes at 0), so the sender frees messages only when the receiver
holds *the same bytes* — a sender whose store was restored from an older copy and
reused seqs finds out at once instead of being told "acknowledged" (DESIGN §4b).
KEM_OFFER and KEM_REPLY carry one ML-KEM-768 exchange per session, the post-quantum
ratchet of DESIGN §11 (``pq.py``); their sizes are fixed, and accepted whatever
``max_message`` is.

Decoding treats the bytes as hostile even though they were authenticated by the AEAD
(a buggy or compromised peer is still a peer): the size is bounded first, msgpack is
unpacked with explicit per-object limits, ``strict_map_key=True``, ``use_list=False``
and an ``ext_hook`` that refuses every ext type, and then every element is checked
against the frame's schema — exact types (``bool`` is not an ``int``), byte lengths,
integers in ``[0, 2^63)``, at most 32 ACK ranges, each ``upto < lo <= hi`` and strictly
ascending. Anything else raises ``DecodeError`` or ``LimitError`` and nothing else.

This is on the per-message hot path, so decoding is one ``unpackb`` call and a
dispatch on the tag to a small checker; no per-frame objects are built besides the
result. Encoding uses ``msgpack.packb`` (a shared ``Packer`` would be ~0.5 µs faster
but is not thread-safe; an Ed25519 verification costs a hundred times more anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack

from hotline.errors import DecodeError, LimitError
from hotline.proto.envelope import ENVELOPE_OVERHEAD, EPOCH_LEN, HASH_LEN, MAX_RECEIPT, SIG_LEN
from hotline.proto.lanes import LANES

MAX_RANGES = 32
MAX_INT = 2**63 - 1
# Tag, sig and array/bin headers of a DATA frame around the envelope.
_FRAME_OVERHEAD = 128

TAG_HELLO = 1
TAG_DATA = 2
TAG_ACK = 3
TAG_RECEIPT = 4
TAG_PING = 5
TAG_PONG = 6
TAG_KEEPALIVE = 7
TAG_KEM_OFFER = 8
TAG_KEM_REPLY = 9
KEM_PUBLIC_LEN = 1184  # ML-KEM-768 encapsulation key (FIPS 203)
KEM_CIPHERTEXT_LEN = 1088  # ML-KEM-768 ciphertext


@dataclass(frozen=True, slots=True)
class Position:
    """How far a lane is durably held: ``upto`` and the chain hash of envelope ``upto``."""

    upto: int
    chain: bytes


@dataclass(frozen=True, slots=True)
class Hello:
    """Sent after every handshake: our stream's epoch and, per lane, the lowest unacked
    seq; and per lane how far we durably hold the peer's stream (``seen_epoch`` None:
    never heard of it; ``delivered`` is then all zeros)."""

    epoch: bytes
    base_seqs: tuple[int, ...]
    seen_epoch: bytes | None
    delivered: tuple[Position, ...]


@dataclass(frozen=True, slots=True)
class Data:
    """One signed envelope: the exact signed bytes and the 64-byte Ed25519 signature."""

    raw: bytes
    sig: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """One lane's cumulative ``upto`` (committed) with the chain hash of that envelope,
    selective ``ranges`` of buffered seqs above it, and the receive ``window`` (how far
    beyond ``upto`` the sender may go)."""

    epoch: bytes
    lane: int
    upto: int
    chain: bytes
    ranges: tuple[tuple[int, int], ...]
    window: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """A signed receipt (``envelope.encode_receipt``) and its signature."""

    raw: bytes
    sig: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """Heartbeat probe; ``sent_wall_ns`` is the sender's wall clock."""

    ping_id: int
    sent_wall_ns: int


@dataclass(frozen=True, slots=True)
class Pong:
    """Heartbeat answer: echoes the ping's clock and adds ours."""

    ping_id: int
    echo_wall_ns: int
    their_wall_ns: int


@dataclass(frozen=True, slots=True)
class Keepalive:
    """Empty frame; the initiator's first transport packet (key confirmation)."""


@dataclass(frozen=True, slots=True)
class KemOffer:
    """An ML-KEM-768 encapsulation key: the session's initiator starts its ratchet step."""

    public_key: bytes


@dataclass(frozen=True, slots=True)
class KemReply:
    """The ML-KEM-768 ciphertext that answers the session's ``KemOffer``."""

    ciphertext: bytes


Frame = Hello | Data | Ack | Receipt | Ping | Pong | Keepalive | KemOffer | KemReply


# --- encoding -------------------------------------------------------------------------


def encode_frame(frame: Frame) -> bytes:
    """Encode a frame as its msgpack array.

    Raises:
        TypeError: ``frame`` is not one of the frame dataclasses (a bug of the caller).
    """
    out: bytes = msgpack.packb(_as_array(frame), use_bin_type=True)
    return out


def _as_array(frame: Frame) -> list[Any]:
    if type(frame) is Data:
        return [TAG_DATA, frame.raw, frame.sig]
    if type(frame) is Ack:
        return [TAG_ACK, frame.epoch, frame.lane, frame.upto, frame.chain, frame.ranges,
                frame.window]
    if type(frame) is Hello:
        return [TAG_HELLO, frame.epoch, frame.base_seqs, frame.seen_epoch,
                [(p.upto, p.chain) for p in frame.delivered]]
    if type(frame) is Receipt:
        return [TAG_RECEIPT, frame.raw, frame.sig]
    if type(frame) is Ping:
        return [TAG_PING, frame.ping_id, frame.sent_wall_ns]
    if type(frame) is Pong:
        return [TAG_PONG, frame.ping_id, frame.echo_wall_ns, frame.their_wall_ns]
    if type(frame) is Keepalive:
        return [TAG_KEEPALIVE]
    if type(frame) is KemOffer:
        return [TAG_KEM_OFFER, frame.public_key]
    if type(frame) is KemReply:
        return [TAG_KEM_REPLY, frame.ciphertext]
    raise TypeError(f"not a link frame: {type(frame).__name__}")


# --- decoding -------------------------------------------------------------------------


def max_frame_len(max_message: int) -> int:
    """Largest encoded frame accepted when bodies may be ``max_message`` bytes."""
    return max(max_message + ENVELOPE_OVERHEAD, KEM_PUBLIC_LEN) + _FRAME_OVERHEAD


def decode_frame_untrusted(data: bytes, max_message: int) -> Frame:
    """Decode and schema-check one frame from the peer.

    Args:
        data: the frame bytes (a reassembled transport plaintext without its prefix).
        max_message: the largest envelope body we accept (config ``max_message``).

    Raises:
        LimitError: the frame or one of its elements is over a size limit.
        DecodeError: anything else malformed (bad msgpack, unknown tag, bad schema).
    """
    max_raw = max_message + ENVELOPE_OVERHEAD
    max_bin = max(max_raw, KEM_PUBLIC_LEN)
    if len(data) > max_bin + _FRAME_OVERHEAD:
        raise LimitError(f"frame of {len(data)} bytes is over the limit")
    obj = _unpack(data, max_bin)
    if type(obj) is not tuple or not obj:
        raise DecodeError("frame is not a non-empty array")
    checker = _DECODERS.get(obj[0]) if type(obj[0]) is int else None
    if checker is None:
        raise DecodeError(f"unknown frame tag {obj[0]!r}")
    return checker(obj, max_raw)


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise DecodeError(f"msgpack ext type {code} refused")


def _unpack(data: bytes, max_bin: int) -> Any:
    try:
        return msgpack.unpackb(
            data,
            use_list=False,
            raw=False,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            max_bin_len=max_bin,
            max_str_len=0,
            max_array_len=MAX_RANGES,
            max_map_len=0,
            max_ext_len=0,
        )
    except (DecodeError, LimitError):
        raise
    except ValueError as err:  # ExtraData, FormatError, StackError, limits, truncation
        if "exceeds max" in str(err):
            raise LimitError(f"msgpack element over limit: {err}") from None
        raise DecodeError(f"bad msgpack: {err or type(err).__name__}") from None
    except Exception as err:  # OutOfData, UnicodeDecodeError, anything the C code raises
        raise DecodeError(f"bad msgpack: {type(err).__name__}") from None


def _arity(obj: tuple[Any, ...], n: int, name: str) -> None:
    if len(obj) != n:
        raise DecodeError(f"{name} frame has {len(obj)} elements, expected {n}")


def _uint(value: Any, what: str) -> int:
    if type(value) is not int or value < 0 or value > MAX_INT:
        raise DecodeError(f"{what} is not an integer in [0, 2^63)")
    return value


def _fixed(value: Any, length: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) != length:
        raise DecodeError(f"{what} is not {length} bytes")
    return value


def _blob(value: Any, limit: int, what: str) -> bytes:
    if type(value) is not bytes or not value:
        raise DecodeError(f"{what} is not a non-empty byte string")
    if len(value) > limit:
        raise LimitError(f"{what} of {len(value)} bytes is over the limit {limit}")
    return value


def _per_lane(value: Any, what: str) -> tuple[Any, ...]:
    if type(value) is not tuple or len(value) != len(LANES):
        raise DecodeError(f"{what} is not an array of {len(LANES)} lanes")
    return value


def _position(value: Any, what: str) -> Position:
    if type(value) is not tuple or len(value) != 2:
        raise DecodeError(f"{what} is not an [upto, chain] pair")
    return Position(_uint(value[0], what), _fixed(value[1], HASH_LEN, f"{what} chain"))


def _hello(obj: tuple[Any, ...], max_raw: int) -> Hello:
    _arity(obj, 5, "HELLO")
    seen = obj[3]
    return Hello(
        _fixed(obj[1], EPOCH_LEN, "HELLO epoch"),
        tuple(_uint(v, "HELLO base_seq") for v in _per_lane(obj[2], "HELLO base_seqs")),
        None if seen is None else _fixed(seen, EPOCH_LEN, "HELLO seen_epoch"),
        tuple(_position(v, "HELLO delivered") for v in _per_lane(obj[4], "HELLO delivered")),
    )


def _data(obj: tuple[Any, ...], max_raw: int) -> Data:
    _arity(obj, 3, "DATA")
    return Data(_blob(obj[1], max_raw, "DATA envelope"), _fixed(obj[2], SIG_LEN, "DATA sig"))


def _lane(value: Any, what: str) -> int:
    if type(value) is not int or value not in LANES:
        raise DecodeError(f"{what} is not a lane (0..3)")
    return value


def _ack(obj: tuple[Any, ...], max_raw: int) -> Ack:
    _arity(obj, 7, "ACK")
    upto = _uint(obj[3], "ACK upto")
    return Ack(
        _fixed(obj[1], EPOCH_LEN, "ACK epoch"),
        _lane(obj[2], "ACK lane"),
        upto,
        _fixed(obj[4], HASH_LEN, "ACK chain"),
        _ranges(obj[5], upto),
        _uint(obj[6], "ACK window"),
    )


def _ranges(value: Any, upto: int) -> tuple[tuple[int, int], ...]:
    if type(value) is not tuple:
        raise DecodeError("ACK ranges is not an array")
    if len(value) > MAX_RANGES:
        raise LimitError(f"ACK has {len(value)} ranges, limit {MAX_RANGES}")
    floor = upto
    for item in value:
        if type(item) is not tuple or len(item) != 2:
            raise DecodeError("ACK range is not a [lo, hi] pair")
        lo = _uint(item[0], "ACK range lo")
        hi = _uint(item[1], "ACK range hi")
        if not floor < lo <= hi:
            raise DecodeError("ACK ranges are not ascending, disjoint and above upto")
        floor = hi
    checked: tuple[tuple[int, int], ...] = value
    return checked


def _receipt(obj: tuple[Any, ...], max_raw: int) -> Receipt:
    _arity(obj, 3, "RECEIPT")
    return Receipt(
        _blob(obj[1], MAX_RECEIPT, "RECEIPT body"), _fixed(obj[2], SIG_LEN, "RECEIPT sig")
    )


def _ping(obj: tuple[Any, ...], max_raw: int) -> Ping:
    _arity(obj, 3, "PING")
    return Ping(_uint(obj[1], "PING id"), _uint(obj[2], "PING time"))


def _pong(obj: tuple[Any, ...], max_raw: int) -> Pong:
    _arity(obj, 4, "PONG")
    return Pong(
        _uint(obj[1], "PONG id"), _uint(obj[2], "PONG echo time"), _uint(obj[3], "PONG time")
    )


_KEEPALIVE = Keepalive()


def _keepalive(obj: tuple[Any, ...], max_raw: int) -> Keepalive:
    _arity(obj, 1, "KEEPALIVE")
    return _KEEPALIVE


def _kem_offer(obj: tuple[Any, ...], max_raw: int) -> KemOffer:
    _arity(obj, 2, "KEM_OFFER")
    return KemOffer(_fixed(obj[1], KEM_PUBLIC_LEN, "KEM_OFFER key"))


def _kem_reply(obj: tuple[Any, ...], max_raw: int) -> KemReply:
    _arity(obj, 2, "KEM_REPLY")
    return KemReply(_fixed(obj[1], KEM_CIPHERTEXT_LEN, "KEM_REPLY ciphertext"))


_DECODERS: dict[int, Callable[[tuple[Any, ...], int], Frame]] = {
    TAG_HELLO: _hello,
    TAG_DATA: _data,
    TAG_ACK: _ack,
    TAG_RECEIPT: _receipt,
    TAG_PING: _ping,
    TAG_PONG: _pong,
    TAG_KEEPALIVE: _keepalive,
    TAG_KEM_OFFER: _kem_offer,
    TAG_KEM_REPLY: _kem_reply,
}
