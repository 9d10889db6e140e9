"""Every decoder of network bytes, fed random and mutated input.

Properties checked for each ``*_untrusted`` entry point:

* only documented ``RemoteProtocolError`` subclasses come out (never IndexError,
  struct.error, ValueError, ...);
* nothing hangs (each call returns; no deadline is asserted, as timing is not a test);
* a small input never causes a large allocation: the peak traced by ``tracemalloc``
  during one decode of at most 64 bytes stays under 64 KiB (a forged length must be
  checked before anything is allocated for it).

Each decoder is fuzzed from random bytes and from mutations of valid seeds, which cover
every form it accepts: envelopes v1 and v2 in each lane, receipts v1 and v2, every
link frame (HELLO and ACK per lane), every control request and reply, SSHSIG armor,
bundles, handshake packets.
"""

from __future__ import annotations

import contextlib
import random
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotline.errors import (
    AuthenticationError,
    DecodeError,
    HandshakeError,
    LimitError,
    NotAcknowledgedError,
    RemoteProtocolError,
    ReplayError,
)
from hotline.proto import bodies, control, frames
from hotline.proto import envelope as ev
from hotline.proto.cookie import CookieChecker, CookieJar, check_cookie_reply_untrusted
from hotline.proto.framing import (
    Reassembler,
    TcpFrameDecoder,
    encode_tcp_frame,
    pack_frames,
    split_frame,
    unbundle_untrusted,
)
from hotline.proto.guard import HandshakeGuard
from hotline.proto.handshake import Initiation, Responder
from hotline.proto.identity import Identity
from hotline.proto.lanes import FLASH, LANES, ROUTINE
from hotline.proto.packet import (
    TCP_MAX_PACKET,
    TransportOpener,
    packet_type_untrusted,
    receiver_index_untrusted,
    seal_transport,
)
from hotline.proto.requests import (
    DrillRequest,
    EventsRequest,
    InboxRequest,
    OperatorAckRequest,
    Request,
    SendRequest,
    StatusRequest,
    WaitRequest,
)
from hotline.testing.flood import forged_initiation

KEY = bytes(range(32))
MAX_MESSAGE = 65536
SMALL_PEAK = 64 * 1024


@dataclass(frozen=True)
class Decoder:
    """One entry point: ``make()`` builds fresh state, returning the decode callable."""

    name: str
    make: Callable[[], Callable[[bytes], Any]]
    raises: tuple[type[RemoteProtocolError], ...]
    seeds: tuple[bytes, ...] = ()


def _stateless(fn: Callable[[bytes], Any]) -> Callable[[], Callable[[bytes], Any]]:
    return lambda: fn


def _opener() -> Callable[[bytes], Any]:
    return TransportOpener(KEY).open_untrusted


def _tcp() -> Callable[[bytes], Any]:
    return TcpFrameDecoder(TCP_MAX_PACKET).feed_untrusted


def _reassembler() -> Callable[[bytes], Any]:
    reassembler = Reassembler(max_frame=MAX_MESSAGE + 1024)
    return lambda data: reassembler.add_untrusted(data, 0.0)


_TRANSPORT = seal_transport(KEY, 7, 3, b"hello world")
_FRAGMENTS = tuple(split_frame(bytes(range(200)), 9 + 64, 9))
_RESPONDER = Identity.from_seed(bytes(range(32))).public
_MAC1 = bytes(range(16))


def _forged_initiation() -> bytes:
    return forged_initiation(_RESPONDER, 7, lambda n: bytes(n))


def _cookie_reply() -> bytes:
    packet = bytes(69) + _MAC1 + bytes(16)  # only its mac1 matters to the reply
    return CookieChecker(_RESPONDER.x25519(), lambda n: bytes(n)).make_reply(packet, 7, b"", 0.0)


def _guard() -> Callable[[bytes], Any]:
    guard = HandshakeGuard(_RESPONDER.x25519(), lambda n: bytes(n))
    return lambda data: guard.screen_initiation_untrusted(data, ("127.0.0.2", 1), False, 0.0)


def _cookie_jar() -> Callable[[bytes], Any]:
    jar = CookieJar(_RESPONDER.x25519())
    return lambda data: jar.consume_reply_untrusted(data, _MAC1, 0.0)


OURS = [
    Decoder("packet_type", _stateless(packet_type_untrusted), (DecodeError,), (_TRANSPORT,)),
    Decoder(
        "receiver_index",
        _stateless(receiver_index_untrusted),
        (DecodeError,),
        (_TRANSPORT, b"\x02" + bytes(12)),
    ),
    Decoder(
        "transport_open",
        _opener,
        (DecodeError, LimitError, ReplayError, AuthenticationError),
        (_TRANSPORT,),
    ),
    Decoder(
        "tcp_frames",
        _tcp,
        (LimitError,),
        (encode_tcp_frame(_TRANSPORT), encode_tcp_frame(b"x") * 3),
    ),
    Decoder(
        "reassembler",
        _reassembler,
        (DecodeError, LimitError),
        (b"\x00abc", *_FRAGMENTS),
    ),
    Decoder(
        "guard.screen_initiation",
        _guard,
        (DecodeError, LimitError, AuthenticationError, ReplayError, HandshakeError),
        (_forged_initiation(),),
    ),
    Decoder("cookie_jar", _cookie_jar, (DecodeError, AuthenticationError), (_cookie_reply(),)),
    Decoder("cookie_reply", _stateless(check_cookie_reply_untrusted), (DecodeError,),
            (_cookie_reply(),)),
]


# --- seeds: one valid input of every form each decoder accepts ------------------------

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(1, 33)))
EPOCH = bytes(range(16))
CHAIN = bytes(range(32, 64))
SIG = bytes(64)
MAX_ONLY = (DecodeError, LimitError)  # what the msgpack decoders may raise


def _rng(seed: int) -> Callable[[int], bytes]:
    """Deterministic randomness, so a handshake seed matches a freshly made state."""
    return random.Random(seed).randbytes


def _envelope(lane: int) -> bytes:
    return ev.encode_envelope(EPOCH, ALICE.public.raw, BOB.public.raw, 3, 1, CHAIN,
                              "text/plain", b"body", lane=lane)


_V1_ENVELOPE = msgpack.packb([1, EPOCH, ALICE.public.raw, BOB.public.raw, 3, 1, CHAIN,
                              "text/plain", b"body"], use_bin_type=True)
_ENVELOPES = (_V1_ENVELOPE, *(_envelope(lane) for lane in LANES))
_RECEIPTS = (
    msgpack.packb([ALICE.public.raw, BOB.public.raw, 3, CHAIN], use_bin_type=True),
    *(ev.encode_receipt(ALICE.public.raw, BOB.public.raw, EPOCH, lane, 3, CHAIN)
      for lane in LANES),
)
_FRAMES = tuple(frames.encode_frame(f) for f in (
    frames.Hello(EPOCH, (1, 2, 3, 4), None, (frames.Position(0, bytes(32)),) * 4),
    frames.Hello(EPOCH, (1, 1, 1, 9), EPOCH, tuple(frames.Position(n, CHAIN) for n in LANES)),
    frames.Data(_envelope(FLASH), SIG),
    frames.Ack(EPOCH, FLASH, 5, CHAIN, ((7, 9), (11, 11)), 64),
    frames.Ack(EPOCH, ROUTINE, 0, bytes(32), (), 0),
    frames.Receipt(_RECEIPTS[1], SIG),
    frames.Ping(1, 2), frames.Pong(1, 2, 3), frames.Keepalive(),
    frames.KemOffer(bytes(frames.KEM_PUBLIC_LEN)),
    frames.KemReply(bytes(frames.KEM_CIPHERTEXT_LEN)),
))
_REQUESTS: tuple[Request, ...] = (
    SendRequest("text/plain", (b"a", b"b"), FLASH, ("id:1", "id:2"), True, True, 2.5),
    SendRequest("application/octet-stream", (b"",)),
    WaitRequest(ROUTINE, 7, None, True, 3),
    StatusRequest(),
    OperatorAckRequest(((FLASH, 1), (ROUTINE, 9)), "seen"),
    DrillRequest(),
    InboxRequest(5, (FLASH, 2), True, True),
    InboxRequest(),
    EventsRequest(),
)
_REQUEST_FRAMES = tuple(control.encode_request(r) for r in _REQUESTS)
_REPLY_FRAMES = (
    control.encode_reply(control.ok_reply(ids=[[FLASH, 1]])),
    control.encode_reply(control.ok_reply(msg={"seq": 1, "body": b"\xff"})),
    control.encode_reply(control.error_reply(NotAcknowledgedError, "not acknowledged")),
)
_ARMOR = ev.armor_signature(ALICE.public, ev.NAMESPACE_ENVELOPE,
                            ev.sign_envelope(ALICE, _envelope(FLASH))).encode("latin-1")
_BUNDLE = pack_frames([b"one", b"two", b"three"], 1200, 0)[0][0]


def _initiation() -> tuple[Initiation, bytes]:
    return Initiation.start(ALICE, BOB.public, 7, 1, 0.0, _rng(1))


def _responder() -> Callable[[bytes], Any]:
    responder = Responder(BOB, ALICE.public, _rng(2))
    return lambda data: responder.consume_initiation_untrusted(data, 9, 0.0)


def _response_consumer() -> Callable[[bytes], Any]:
    initiation = _initiation()[0]
    return lambda data: initiation.consume_response_untrusted(data, 0.0)


_INITIATION = _initiation()[1]
_RESPONSE = _responder()(_INITIATION)[1]

HANDSHAKE = (DecodeError, LimitError, AuthenticationError, HandshakeError, ReplayError)

OTHERS = [
    Decoder("bundle", _stateless(unbundle_untrusted), (DecodeError,), (_BUNDLE,)),
    Decoder("handshake_initiation", _responder, HANDSHAKE, (_INITIATION,)),
    Decoder("handshake_response", _response_consumer, HANDSHAKE, (_RESPONSE,)),
    Decoder("frames", _stateless(lambda d: frames.decode_frame_untrusted(d, MAX_MESSAGE)),
            MAX_ONLY, _FRAMES),
    Decoder("envelope", _stateless(lambda d: ev.decode_envelope_untrusted(d, MAX_MESSAGE)),
            MAX_ONLY, _ENVELOPES),
    Decoder("receipt", _stateless(ev.decode_receipt_untrusted), MAX_ONLY, _RECEIPTS),
    Decoder("dearmor", _stateless(lambda d: ev.dearmor_signature_untrusted(d.decode("latin-1"))),
            MAX_ONLY, (_ARMOR,)),
    Decoder("control_request", _stateless(control.decode_request_untrusted), MAX_ONLY,
            tuple(f[4:] for f in _REQUEST_FRAMES)),
    Decoder("control_reply", _stateless(control.decode_reply_untrusted), MAX_ONLY,
            tuple(f[4:] for f in _REPLY_FRAMES)),
    Decoder("control_frame_buffer", lambda: control.FrameBuffer().feed_untrusted, (LimitError,),
            (b"".join(_REQUEST_FRAMES), *_REPLY_FRAMES)),
    Decoder("operator_ack", _stateless(bodies.decode_ack_untrusted), MAX_ONLY, (
        bodies.encode_ack(bodies.AckBody(FLASH, 3, bytes(32), "seen")),
        bodies.encode_ack(bodies.AckBody(ROUTINE, 2**63 - 1, bytes(range(32)))))),
    Decoder("drill", _stateless(bodies.decode_drill_untrusted), MAX_ONLY, (
        bodies.encode_drill(bodies.DrillCall(True, 600.0)),
        bodies.encode_drill(bodies.DrillCall(False, 0)),
        bodies.encode_answer(bodies.DrillAnswer(2, 7, bytes(32))))),
]


ALL = OURS + OTHERS
IDS = [d.name for d in ALL]


def _call(decode: Callable[[bytes], Any], data: bytes, raises: tuple[type, ...]) -> None:
    """Decode; a documented error is fine, anything else (other errors too) fails."""
    with contextlib.suppress(*raises):
        decode(data)


@st.composite
def mutated(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A seed with a few bit flips, byte overwrites, truncations or insertions."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif op == "cut":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def inputs(decoder: Decoder, max_size: int) -> st.SearchStrategy[bytes]:
    random_bytes = st.binary(max_size=max_size)
    if not decoder.seeds:
        return random_bytes
    return st.one_of(random_bytes, mutated(decoder.seeds))


@pytest.mark.parametrize("decoder", ALL, ids=IDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_only_documented_errors(decoder: Decoder, data: st.DataObject):
    decode = decoder.make()
    for chunk in data.draw(st.lists(inputs(decoder, 300), min_size=1, max_size=4)):
        _call(decode, chunk, decoder.raises)


@pytest.mark.parametrize("decoder", ALL, ids=IDS)
def test_seeds_are_accepted(decoder: Decoder):
    """The seeds are valid input: mutations start from something that decodes."""
    for seed in decoder.seeds:
        decoder.make()(seed)


def _peak_bytes(decode: Callable[[bytes], Any], data: bytes, raises: tuple[type, ...]) -> int:
    tracemalloc.start()
    try:
        _call(decode, data, raises)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("decoder", ALL, ids=IDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_small_input_small_allocation(decoder: Decoder, data: st.DataObject):
    decode = decoder.make()
    _call(decode, b"\x00\x00\x00\x00\x01", decoder.raises)  # warm up lazy state
    chunk = data.draw(inputs(decoder, 64).filter(lambda b: len(b) <= 64))
    assert _peak_bytes(decode, chunk, decoder.raises) < SMALL_PEAK


@pytest.mark.parametrize(
    "header",
    [b"\xff\xff\xff\xff", b"\x00\x00\x40\x41", b"\x7f\xff\xff\xff", b"\x00\x00\x40\x40"],
    ids=bytes.hex,
)
def test_forged_tcp_length_allocates_nothing(header: bytes):
    decode = _tcp()
    assert _peak_bytes(decode, header + bytes(60), (LimitError,)) < SMALL_PEAK


# Entry points that take network bytes but are not fuzzed here, and why.
_NOT_FUZZED_HERE = {
    "link.Link.receive_untrusted": "needs a whole Link: composes the decoders fuzzed here "
                                   "(tests/proto/test_link.py feeds it junk)",
    "sessions.SessionManager.on_initiation_untrusted": "wraps Responder (handshake_initiation)",
    "sessions.SessionManager.on_response_untrusted": "wraps Initiation (handshake_response)",
    "sessions.SessionManager.open_untrusted": "wraps TransportOpener (transport_open)",
    "incoming.IncomingStream.on_data_untrusted": "takes a decoded Data and Envelope",
    "handshake.check_size_untrusted": "the first check of both handshake consumers "
                                      "(handshake_initiation, handshake_response)",
    "cookie.check_mac1_untrusted": "the mac1 check inside the guard (guard.screen_initiation)",
    "sessions.SessionManager.on_cookie_reply_untrusted": "wraps CookieJar (cookie_jar)",
    "pq.PskRing.choose_untrusted": "takes the 24 id bytes of a decoded initiation "
                                   "(handshake_initiation)",
    "pq.Ratchet.on_offer_untrusted": "takes a decoded KemOffer (frames; tests/proto/test_pq.py)",
    "pq.Ratchet.on_reply_untrusted": "takes a decoded KemReply (frames; tests/proto/test_pq.py)",
}
_FUZZED_HERE = {
    "packet.packet_type_untrusted": "packet_type",
    "packet.receiver_index_untrusted": "receiver_index",
    "packet.TransportOpener.open_untrusted": "transport_open",
    "framing.TcpFrameDecoder.feed_untrusted": "tcp_frames",
    "framing.Reassembler.add_untrusted": "reassembler",
    "framing.unbundle_untrusted": "bundle",
    "handshake.Responder.consume_initiation_untrusted": "handshake_initiation",
    "handshake.Initiation.consume_response_untrusted": "handshake_response",
    "frames.decode_frame_untrusted": "frames",
    "envelope.decode_envelope_untrusted": "envelope",
    "envelope.decode_receipt_untrusted": "receipt",
    "envelope.dearmor_signature_untrusted": "dearmor",
    "control.decode_request_untrusted": "control_request",
    "control.decode_reply_untrusted": "control_reply",
    "control.FrameBuffer.feed_untrusted": "control_frame_buffer",
    "guard.HandshakeGuard.screen_initiation_untrusted": "guard.screen_initiation",
    "cookie.CookieJar.consume_reply_untrusted": "cookie_jar",
    "cookie.check_cookie_reply_untrusted": "cookie_reply",
    "bodies.decode_ack_untrusted": "operator_ack",
    "bodies.decode_drill_untrusted": "drill",
}


def _public_untrusted_entry_points() -> set[str]:
    """``module.[Class.]name`` of every public ``*_untrusted`` function in hotline/proto."""
    import ast
    from pathlib import Path

    found = set()
    for path in (Path(__file__).parents[2] / "hotline" / "proto").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            scopes = [("", node)] if not isinstance(node, ast.ClassDef) else [
                (f"{node.name}.", item) for item in node.body]
            for prefix, item in scopes:
                if (isinstance(item, ast.FunctionDef) and item.name.endswith("_untrusted")
                        and not item.name.startswith("_")):
                    found.add(f"{path.stem}.{prefix}{item.name}")
    return found


def test_every_untrusted_entry_point_is_fuzzed():
    """A new public ``*_untrusted`` decoder must join this file (or say why not)."""
    assert _public_untrusted_entry_points() == set(_FUZZED_HERE) | set(_NOT_FUZZED_HERE)
    assert set(_FUZZED_HERE.values()) == set(IDS)
