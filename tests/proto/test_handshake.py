"""The hotline KK handshake: packets, pinning, replay guard, mac1, rate limit, fuzz."""

from __future__ import annotations

import os
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.errors import (
    AuthenticationError,
    DecodeError,
    HandshakeError,
    LimitError,
    RemoteProtocolError,
    ReplayError,
)
from hotline.proto import noise
from hotline.proto.handshake import (
    INITIATION_MAX,
    PROLOGUE,
    PROTOCOL_NAME,
    RATE_LIMIT,
    RESPONSE_MAX,
    Initiation,
    Responder,
    compute_mac1,
    keeps_own_initiation,
    mac1_key,
)
from hotline.proto.identity import Identity, PublicKey

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(32, 64)))
EVE = Identity.from_seed(bytes(range(64, 96)))
T0 = 1_700_000_000_000_000_000


def _initiation(ts: int = T0, index: int = 7, our: Identity = ALICE,
                their: PublicKey = BOB.public) -> tuple[Initiation, bytes]:
    return Initiation.start(our, their, index, ts, 10.0, os.urandom)


def test_full_handshake_both_ways() -> None:
    for initiator, responder in ((ALICE, BOB), (BOB, ALICE)):
        init, packet = _initiation(our=initiator, their=responder.public, index=0xDEADBEEF)
        assert len(packet) == INITIATION_MAX == 85
        resp = Responder(responder, initiator.public, os.urandom)
        r_session, response = resp.consume_initiation_untrusted(packet, 42, 11.0)
        assert len(response) == RESPONSE_MAX == 80
        i_session = init.consume_response_untrusted(response, 12.0)

        assert (i_session.our_index, i_session.their_index) == (0xDEADBEEF, 42)
        assert (r_session.our_index, r_session.their_index) == (42, 0xDEADBEEF)
        assert i_session.is_initiator
        assert not r_session.is_initiator
        assert (i_session.created_at, r_session.created_at) == (12.0, 11.0)
        assert i_session.send_key == r_session.recv_key
        assert i_session.recv_key == r_session.send_key
        assert i_session.send_key != i_session.recv_key
        assert resp.last_timestamp_ns == T0


def test_session_keys_carry_transport_packets() -> None:
    init, packet = _initiation()
    r_session, response = Responder(BOB, ALICE.public, os.urandom) \
        .consume_initiation_untrusted(packet, 1, 0.0)
    i_session = init.consume_response_untrusted(response, 0.0)
    for sender, receiver in ((i_session, r_session), (r_session, i_session)):
        sealed = noise.CipherState(sender.send_key).encrypt_with_ad(b"ad", b"confirm")
        assert noise.CipherState(receiver.recv_key).decrypt_with_ad(b"ad", sealed) == b"confirm"


def test_interop_with_noiseprotocol_transcript() -> None:
    """Our packets carry a standard Noise KK message: noiseprotocol reads message 1."""
    from noise.connection import Keypair, NoiseConnection

    conn = NoiseConnection.from_name(PROTOCOL_NAME.encode())
    conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, BOB.x25519_private())
    conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, ALICE.public.x25519())
    conn.set_prologue(PROLOGUE)
    conn.start_handshake()
    _, packet = _initiation(index=5)
    payload = conn.read_message(packet[5:-16])
    assert msgpack.unpackb(payload) == [1, 5, T0]


def test_stranger_with_valid_noise_is_rejected_and_state_kept() -> None:
    resp = Responder(BOB, ALICE.public, os.urandom)
    resp.consume_initiation_untrusted(_initiation(ts=T0)[1], 1, 0.0)
    # Eve knows Bob's public key, so her mac1 is right; the ss DH is not.
    _, forged = _initiation(ts=T0 + 10, our=EVE)
    with pytest.raises(AuthenticationError):
        resp.consume_initiation_untrusted(forged, 2, 0.0)
    assert resp.last_timestamp_ns == T0
    resp.consume_initiation_untrusted(_initiation(ts=T0 + 1)[1], 3, 0.0)
    assert resp.last_timestamp_ns == T0 + 1


def test_responder_pinning_someone_else_cannot_answer() -> None:
    init, packet = _initiation()
    eve = Responder(EVE, ALICE.public, os.urandom)  # Eve pretending to be Bob
    with pytest.raises(AuthenticationError):  # mac1 is keyed to Bob
        eve.consume_initiation_untrusted(packet, 1, 0.0)
    # A response made by a responder pinning Eve fails Alice's AEAD.
    _, eve_packet = _initiation(their=EVE.public, index=7)
    _, response = Responder(EVE, ALICE.public, os.urandom) \
        .consume_initiation_untrusted(eve_packet, 1, 0.0)
    body = response[:-16]
    forged = body + compute_mac1(mac1_key(ALICE.public.x25519()), body)
    with pytest.raises(AuthenticationError):
        init.consume_response_untrusted(forged, 0.0)
    # The genuine response still completes it: a failed read changed nothing.
    _, genuine = Responder(BOB, ALICE.public, os.urandom) \
        .consume_initiation_untrusted(packet, 1, 0.0)
    init.consume_response_untrusted(genuine, 0.0)
    with pytest.raises(HandshakeError):
        init.consume_response_untrusted(genuine, 0.0)


def test_replayed_or_older_initiation_rejected() -> None:
    resp = Responder(BOB, ALICE.public, os.urandom)
    packet = _initiation(ts=T0)[1]
    resp.consume_initiation_untrusted(packet, 1, 0.0)
    with pytest.raises(ReplayError):
        resp.consume_initiation_untrusted(packet, 2, 0.0)
    with pytest.raises(ReplayError):
        resp.consume_initiation_untrusted(_initiation(ts=T0 - 1)[1], 3, 0.0)
    assert resp.last_timestamp_ns == T0


def _raw_initiation(payload: bytes, index: int = 7) -> bytes:
    hs = noise.HandshakeState(PROTOCOL_NAME, True, PROLOGUE, s=ALICE.x25519_private(),
                              rs=BOB.public.x25519(), rng=os.urandom)
    body = b"\x01" + struct.pack(">I", index) + hs.write_message(payload)
    return body + compute_mac1(mac1_key(BOB.public.x25519()), body)


@pytest.mark.parametrize(("payload", "error"), [
    (msgpack.packb([2, 7, T0]), HandshakeError),
    (msgpack.packb([1, 8, T0]), HandshakeError),
    (msgpack.packb([1, 7]), DecodeError),
    (msgpack.packb([1, 7, -1]), DecodeError),
    (msgpack.packb([1, 7, True]), DecodeError),
    (msgpack.packb({1: 2}), DecodeError),
    (b"\xc1\xc1\xc1\xc1", DecodeError),
], ids=["version", "index", "short", "negative", "bool", "map", "garbage"])
def test_bad_initiation_payload(payload: bytes, error: type[Exception]) -> None:
    resp = Responder(BOB, ALICE.public, os.urandom)
    with pytest.raises(error):
        resp.consume_initiation_untrusted(_raw_initiation(payload), 1, 0.0)
    assert resp.last_timestamp_ns is None


def test_canonical_msgpack_payload_accepted() -> None:
    resp = Responder(BOB, ALICE.public, os.urandom)
    resp.consume_initiation_untrusted(_raw_initiation(msgpack.packb([1, 7, 5])), 1, 0.0)
    assert resp.last_timestamp_ns == 5


def test_bad_mac1_rejected_before_any_dh(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_dh = noise._dh

    def counting_dh(private: bytes, public: bytes) -> bytes:
        calls.append(1)
        return real_dh(private, public)

    resp = Responder(BOB, ALICE.public, os.urandom)
    packet = bytearray(_initiation()[1])
    packet[-1] ^= 1
    monkeypatch.setattr(noise, "_dh", counting_dh)
    for _ in range(int(RATE_LIMIT) * 2):
        with pytest.raises(AuthenticationError, match="mac1"):
            resp.consume_initiation_untrusted(bytes(packet), 1, 0.0)
    assert calls == []
    # Nor did they spend the rate limit.
    resp.consume_initiation_untrusted(_initiation()[1], 1, 0.0)
    assert calls


def test_rate_limit() -> None:
    resp = Responder(BOB, ALICE.public, os.urandom)
    n = int(RATE_LIMIT)
    for i in range(n):
        resp.consume_initiation_untrusted(_initiation(ts=T0 + i)[1], i, 100.0)
    with pytest.raises(HandshakeError, match="rate limited"):
        resp.consume_initiation_untrusted(_initiation(ts=T0 + n)[1], n, 100.0)
    with pytest.raises(HandshakeError, match="rate limited"):
        resp.consume_initiation_untrusted(_initiation(ts=T0 + n)[1], n, 100.01)
    resp.consume_initiation_untrusted(_initiation(ts=T0 + n)[1], n, 100.03)  # 1.5 tokens
    assert resp.last_timestamp_ns == T0 + n


def test_oversize_and_wrong_type() -> None:
    resp = Responder(BOB, ALICE.public, os.urandom)
    init, packet = _initiation()
    with pytest.raises(LimitError):
        resp.consume_initiation_untrusted(packet + b"\x00", 1, 0.0)
    with pytest.raises(DecodeError):
        resp.consume_initiation_untrusted(b"\x02" + packet[1:], 1, 0.0)
    with pytest.raises(DecodeError):
        resp.consume_initiation_untrusted(b"", 1, 0.0)
    with pytest.raises(LimitError):
        init.consume_response_untrusted(b"\x02" + bytes(RESPONSE_MAX), 0.0)
    with pytest.raises(HandshakeError):  # addressed to another initiation
        init.consume_response_untrusted(b"\x02" + bytes(RESPONSE_MAX - 1), 0.0)


def test_keeps_own_initiation_lower_key_wins() -> None:
    low, high = sorted([ALICE.public, BOB.public], key=lambda k: k.raw)
    assert keeps_own_initiation(low, high)
    assert not keeps_own_initiation(high, low)


# --- fuzz: untrusted packets raise only RemoteProtocolError ---------------------------

_VALID_INIT = _initiation(ts=T0, index=7)


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None, extra: bytes) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        buf[pos % len(buf)] ^= value or 1
    out = bytes(buf[:cut] if cut is not None else buf) + extra
    return out


MUTATION = st.tuples(
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.none() | st.integers(0, 90), st.binary(max_size=8), st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(mutation=MUTATION)
def test_fuzz_initiation(mutation: tuple[list[tuple[int, int]], int | None, bytes, bool]) -> None:
    edits, cut, extra, fix_mac = mutation
    packet = _mutate(_VALID_INIT[1], edits, cut, extra)
    if fix_mac and len(packet) > 16:  # get past mac1 into the Noise and payload checks
        body = packet[:-16]
        packet = body + compute_mac1(mac1_key(BOB.public.x25519()), body)
    resp = Responder(BOB, ALICE.public, os.urandom)
    try:
        resp.consume_initiation_untrusted(packet, 1, 0.0)
    except RemoteProtocolError:
        assert resp.last_timestamp_ns is None


@settings(max_examples=300, deadline=None)
@given(mutation=MUTATION)
def test_fuzz_response(mutation: tuple[list[tuple[int, int]], int | None, bytes, bool]) -> None:
    edits, cut, extra, fix_mac = mutation
    init, packet = _initiation()
    _, response = Responder(BOB, ALICE.public, os.urandom) \
        .consume_initiation_untrusted(packet, 9, 0.0)
    mutated = _mutate(response, edits, cut, extra)
    if fix_mac and len(mutated) > 16:
        body = mutated[:-16]
        mutated = body + compute_mac1(mac1_key(ALICE.public.x25519()), body)
    if mutated == response:
        return
    with pytest.raises(RemoteProtocolError):
        init.consume_response_untrusted(mutated, 0.0)
    init.consume_response_untrusted(response, 0.0)  # the genuine one still works


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=120))
def test_fuzz_random_bytes(data: bytes) -> None:
    init, _ = _initiation()
    resp = Responder(BOB, ALICE.public, os.urandom)
    for consume in (lambda: resp.consume_initiation_untrusted(data, 1, 0.0),
                    lambda: init.consume_response_untrusted(data, 0.0)):
        with pytest.raises(RemoteProtocolError):
            consume()


def test_rewritten_responder_index_is_refused_and_the_genuine_response_still_works() -> None:
    """The header's sender index is not covered by Noise; its copy in the payload is."""
    init, packet = _initiation()
    _, response = Responder(BOB, ALICE.public, os.urandom).consume_initiation_untrusted(
        packet, 9, 0.0)
    body = bytearray(response[:-16])
    body[1:5] = (1234).to_bytes(4, "big")
    forged = bytes(body) + compute_mac1(mac1_key(ALICE.public.x25519()), bytes(body))
    with pytest.raises(HandshakeError):
        init.consume_response_untrusted(forged, 0.0)
    session = init.consume_response_untrusted(response, 0.0)
    assert session.their_index == 9
