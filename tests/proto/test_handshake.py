"""The hotline KKpsk2 handshake: packets, pinning, replay guard, mac1/mac2, psk choice, fuzz."""

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
from hotline.proto.cookie import add_macs, compute_mac, mac1_key
from hotline.proto.handshake import (
    INITIATION_MAX,
    PROLOGUE,
    PROTOCOL_NAME,
    RESPONSE_MAX,
    Initiation,
    Responder,
    keeps_own_initiation,
)
from hotline.proto.identity import Identity, PublicKey
from hotline.proto.pq import PskRing, psk_of
from hotline.proto.records import RatchetRecord

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(32, 64)))
EVE = Identity.from_seed(bytes(range(64, 96)))
T0 = 1_700_000_000_000_000_000


def _initiation(ts: int = T0, index: int = 7, our: Identity = ALICE,
                their: PublicKey = BOB.public) -> tuple[Initiation, bytes]:
    return Initiation.start(our, their, index, ts, 10.0, os.urandom)


def _remac(body: bytes, receiver: PublicKey) -> bytes:
    """``body`` with a valid mac1 for ``receiver`` (what anyone with its .pub can do)."""
    return add_macs(body, mac1_key(receiver.x25519()), None)


def test_full_handshake_both_ways() -> None:
    for initiator, responder in ((ALICE, BOB), (BOB, ALICE)):
        init, packet = _initiation(our=initiator, their=responder.public, index=0xDEADBEEF)
        assert len(packet) == INITIATION_MAX == 127
        resp = Responder(responder, initiator.public, os.urandom)
        r_session, response = resp.consume_initiation_untrusted(packet, 42, 11.0)
        assert len(response) == RESPONSE_MAX == 96
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
        assert i_session.handshake_hash == r_session.handshake_hash
        assert not i_session.pq
        assert not r_session.pq


def test_session_keys_carry_transport_packets() -> None:
    init, packet = _initiation()
    r_session, response = Responder(BOB, ALICE.public, os.urandom) \
        .consume_initiation_untrusted(packet, 1, 0.0)
    i_session = init.consume_response_untrusted(response, 0.0)
    for sender, receiver in ((i_session, r_session), (r_session, i_session)):
        sealed = noise.CipherState(sender.send_key).encrypt_with_ad(b"ad", b"confirm")
        assert noise.CipherState(receiver.recv_key).decrypt_with_ad(b"ad", sealed) == b"confirm"


def test_interop_with_noiseprotocol_transcript() -> None:
    """Our packets carry a standard Noise KKpsk2 message: noiseprotocol reads message 1
    (its psk is needed only from message 2 on)."""
    from noise.connection import Keypair, NoiseConnection

    conn = NoiseConnection.from_name(PROTOCOL_NAME.encode())
    conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, BOB.x25519_private())
    conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, ALICE.public.x25519())
    conn.set_prologue(PROLOGUE)
    conn.set_psks(psk=psk_of(None, None))
    conn.start_handshake()
    _, packet = _initiation(index=5)
    payload = conn.read_message(packet[5:-32])
    assert msgpack.unpackb(payload) == [1, 5, T0, PskRing(None, None).offered_ids()]


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
    forged = _remac(response[:-32], ALICE.public)
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
                              rs=BOB.public.x25519(), psks=None, rng=os.urandom)
    body = b"\x01" + struct.pack(">I", index) + hs.write_message(payload)
    return _remac(body, BOB.public)


IDS = PskRing(None, None).offered_ids()


@pytest.mark.parametrize(("payload", "error"), [
    (msgpack.packb([2, 7, T0, IDS]), HandshakeError),
    (msgpack.packb([1, 8, T0, IDS]), HandshakeError),
    (msgpack.packb([1, 7, T0]), DecodeError),
    (msgpack.packb([1, 7, -1, IDS]), DecodeError),
    (msgpack.packb([1, 7, True, IDS]), DecodeError),
    (msgpack.packb([1, 7, T0, IDS[:16]]), DecodeError),
    (msgpack.packb([1, 7, T0, IDS + IDS[:8]]), LimitError),
    (msgpack.packb([1, 7, T0, "x" * 24]), DecodeError),
    (msgpack.packb({1: 2}), DecodeError),
    (b"\xc1\xc1\xc1\xc1", DecodeError),
    (msgpack.packb([1, 7, T0, bytes(24)]), HandshakeError),
], ids=["version", "index", "short", "negative", "bool", "ids-short", "ids-long", "ids-str",
        "map", "garbage", "no-psk-in-common"])
def test_bad_initiation_payload(payload: bytes, error: type[Exception]) -> None:
    resp = Responder(BOB, ALICE.public, os.urandom)
    with pytest.raises(error):
        resp.consume_initiation_untrusted(_raw_initiation(payload), 1, 0.0)
    assert resp.last_timestamp_ns is None


def test_canonical_msgpack_payload_accepted() -> None:
    resp = Responder(BOB, ALICE.public, os.urandom)
    resp.consume_initiation_untrusted(_raw_initiation(msgpack.packb([1, 7, 5, IDS])), 1, 0.0)
    assert resp.last_timestamp_ns == 5


def test_bad_mac1_rejected_before_any_dh(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_dh = noise._dh

    def counting_dh(private: bytes, public: bytes) -> bytes:
        calls.append(1)
        return real_dh(private, public)

    resp = Responder(BOB, ALICE.public, os.urandom)
    packet = bytearray(_initiation()[1])
    packet[-17] ^= 1  # the last byte of mac1
    monkeypatch.setattr(noise, "_dh", counting_dh)
    for _ in range(10):
        with pytest.raises(AuthenticationError, match="mac1"):
            resp.consume_initiation_untrusted(bytes(packet), 1, 0.0)
    assert calls == []
    resp.consume_initiation_untrusted(_initiation()[1], 1, 0.0)
    assert calls


def test_mac2_is_zero_without_a_cookie_and_covers_mac1_with_one() -> None:
    cookie = bytes(range(16))
    _, plain = _initiation()
    init, with_cookie = Initiation.start(ALICE, BOB.public, 7, T0, 0.0, os.urandom, cookie)
    assert plain[-16:] == bytes(16)
    assert with_cookie[-16:] == compute_mac(cookie, with_cookie[:-16])
    assert init.mac1 == with_cookie[-32:-16]
    _, response = Responder(BOB, ALICE.public, os.urandom) \
        .consume_initiation_untrusted(with_cookie, 1, 0.0, cookie)
    assert response[-16:] == compute_mac(cookie, response[:-16])
    init.consume_response_untrusted(response, 0.0)


def test_responder_with_a_persisted_floor_refuses_a_captured_initiation() -> None:
    """A restart must not reopen the replay window (DESIGN §2b): the daemon stores the
    last accepted timestamp and hands it to the new responder."""
    captured = _initiation(ts=T0)[1]
    before_restart = Responder(BOB, ALICE.public, os.urandom)
    before_restart.consume_initiation_untrusted(captured, 1, 0.0)
    persisted = before_restart.last_timestamp_ns
    assert persisted == T0
    after_restart = Responder(BOB, ALICE.public, os.urandom, last_timestamp_ns=persisted)
    with pytest.raises(ReplayError):
        after_restart.consume_initiation_untrusted(captured, 1, 0.0)
    assert after_restart.last_timestamp_ns == T0
    after_restart.consume_initiation_untrusted(_initiation(ts=T0 + 1)[1], 2, 0.0)
    assert after_restart.last_timestamp_ns == T0 + 1


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
    if fix_mac and len(packet) > 32:  # get past mac1 into the Noise and payload checks
        packet = _remac(packet[:-32], BOB.public)
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
    if fix_mac and len(mutated) > 32:
        mutated = _remac(mutated[:-32], ALICE.public)
    if len(mutated) == len(response) and mutated[:-16] == response[:-16]:
        init.consume_response_untrusted(mutated, 0.0)  # an initiator does not check mac2
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
    body = bytearray(response[:-32])
    body[1:5] = (1234).to_bytes(4, "big")
    forged = _remac(bytes(body), ALICE.public)
    with pytest.raises(HandshakeError):
        init.consume_response_untrusted(forged, 0.0)
    session = init.consume_response_untrusted(response, 0.0)
    assert session.their_index == 9


# --- which psk keys the session (DESIGN §11) ------------------------------------------

R1, R2, R3 = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32


def _handshake(ours: PskRing, theirs: PskRing):
    init, packet = Initiation.start(ALICE, BOB.public, 7, T0, 0.0, os.urandom, psks=ours)
    r_session, response = Responder(BOB, ALICE.public, os.urandom, psks=theirs) \
        .consume_initiation_untrusted(packet, 9, 0.0)
    i_session = init.consume_response_untrusted(response, 0.0)
    assert (i_session.send_key, i_session.recv_key) == (r_session.recv_key, r_session.send_key)
    assert i_session.psk == r_session.psk
    return i_session


@pytest.mark.parametrize(("ours", "theirs", "used"), [
    (RatchetRecord(R2, R1), RatchetRecord(R2, R1), R2),  # in step: the newest
    (RatchetRecord(R1, None), RatchetRecord(R2, R1), R1),  # our reply was lost
    (RatchetRecord(R2, R1), RatchetRecord(R1, None), R1),  # theirs was
    (RatchetRecord(R3, R2), RatchetRecord(R2, R1), R2),
    (None, RatchetRecord(R2, R1), None),  # our store was wiped: base psk, classical
    (RatchetRecord(R2, R1), None, None),
    (RatchetRecord(R3, None), RatchetRecord(R2, R1), None),  # nothing in common
], ids=["in-step", "we-lag", "they-lag", "two-steps", "we-wiped", "they-wiped", "disjoint"])
def test_the_newest_psk_both_hold_keys_the_session(
        ours: RatchetRecord | None, theirs: RatchetRecord | None, used: bytes | None) -> None:
    session = _handshake(PskRing(None, ours), PskRing(None, theirs))
    assert session.psk.ratchet == used
    assert session.pq == (used is not None)


def test_psk_file_makes_even_the_first_session_pq_and_must_match() -> None:
    secret = bytes(range(32))
    session = _handshake(PskRing(secret, None), PskRing(secret, None))
    assert session.pq
    assert session.psk.ratchet is None
    _, packet = Initiation.start(ALICE, BOB.public, 7, T0, 0.0, os.urandom,
                                 psks=PskRing(secret, None))
    with pytest.raises(HandshakeError, match="psk_file"):
        Responder(BOB, ALICE.public, os.urandom).consume_initiation_untrusted(packet, 9, 0.0)


def test_a_response_keyed_with_a_psk_we_did_not_name_fails_and_changes_nothing() -> None:
    """The responder's ring decides nothing the initiator did not offer: a response keyed
    with any other psk fails every trial, and the genuine one still completes."""
    init, packet = Initiation.start(ALICE, BOB.public, 7, T0, 0.0, os.urandom,
                                    psks=PskRing(None, RatchetRecord(R1, None)))
    hs = noise.HandshakeState(PROTOCOL_NAME, False, PROLOGUE, s=BOB.x25519_private(),
                              rs=ALICE.public.x25519(), psks=None, rng=os.urandom)
    hs.read_message(packet[5:-32])
    hs.set_psks([psk_of(None, R3)])
    body = b"\x02" + struct.pack(">II", 9, 7) + hs.write_message(b"\x92\x01\x09")
    with pytest.raises(AuthenticationError, match="none of the psks"):
        init.consume_response_untrusted(_remac(body, ALICE.public), 0.0)
    _, genuine = Responder(BOB, ALICE.public, os.urandom,
                           psks=PskRing(None, RatchetRecord(R1, None))) \
        .consume_initiation_untrusted(packet, 9, 0.0)
    assert init.consume_response_untrusted(genuine, 0.0).psk.ratchet == R1
