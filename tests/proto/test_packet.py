"""Transport packets: layout, seal/open round trips, and refusals that change nothing."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.errors import (
    AuthenticationError,
    DecodeError,
    LimitError,
    LocalProtocolError,
    ReplayError,
)
from hotline.proto.packet import (
    AEAD_TAG_LEN,
    MAX_COUNTER,
    PACKET_INITIATION,
    PACKET_RESPONSE,
    PACKET_TRANSPORT,
    TCP_MAX_PACKET,
    TRANSPORT_HEADER_LEN,
    TRANSPORT_OVERHEAD,
    UDP_MAX_DATAGRAM,
    TransportOpener,
    TransportSealer,
    packet_type_untrusted,
    receiver_index_untrusted,
    seal_transport,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def test_constants():
    assert (PACKET_INITIATION, PACKET_RESPONSE, PACKET_TRANSPORT) == (1, 2, 3)
    assert (TRANSPORT_HEADER_LEN, AEAD_TAG_LEN, TRANSPORT_OVERHEAD) == (13, 16, 29)
    assert UDP_MAX_DATAGRAM == 1232
    assert TCP_MAX_PACKET == 16448


def test_layout_matches_design_independently():
    """03 | index BE | counter BE | ChaCha20-Poly1305(nonce = 0^4 || LE64, AD = header)."""
    packet = seal_transport(KEY, 0x01020304, 0x1122334455667788, b"hello")
    header = b"\x03\x01\x02\x03\x04\x11\x22\x33\x44\x55\x66\x77\x88"
    assert packet[:13] == header
    nonce = b"\x00" * 4 + struct.pack("<Q", 0x1122334455667788)
    assert packet[13:] == ChaCha20Poly1305(KEY).encrypt(nonce, b"hello", header)
    assert len(packet) == 5 + TRANSPORT_OVERHEAD


def test_round_trip_and_replay():
    opener = TransportOpener(KEY)
    packet = seal_transport(KEY, 7, 0, b"payload")
    assert opener.open_untrusted(packet) == b"payload"
    with pytest.raises(ReplayError):
        opener.open_untrusted(packet)


def test_sealer_counts_up():
    sealer = TransportSealer(KEY, 9)
    opener = TransportOpener(KEY)
    packets = [sealer.seal(bytes([i]) * i) for i in range(5)]
    assert sealer.counter == 5
    for i, packet in reversed(list(enumerate(packets))):
        assert struct.unpack(">Q", packet[5:13])[0] == i
        assert opener.open_untrusted(packet) == bytes([i]) * i


def test_sealer_exhaustion():
    sealer = TransportSealer(KEY, 1)
    sealer.counter = MAX_COUNTER
    last = sealer.seal(b"x")
    assert struct.unpack(">Q", last[5:13])[0] == 2**64 - 2
    with pytest.raises(LocalProtocolError):
        sealer.seal(b"y")
    assert TransportOpener(KEY).open_untrusted(last) == b"x"


def test_sealer_too_large_does_not_consume_counter():
    sealer = TransportSealer(KEY, 1)
    with pytest.raises(LocalProtocolError):
        sealer.seal(bytes(TCP_MAX_PACKET))
    assert sealer.counter == 0


@pytest.mark.parametrize(
    ("index", "counter", "size"),
    [(-1, 0, 0), (2**32, 0, 0), (0, -1, 0), (0, 2**64 - 1, 0), (0, 0, TCP_MAX_PACKET - 28)],
)
def test_seal_refuses_bad_arguments(index, counter, size):
    with pytest.raises(LocalProtocolError):
        seal_transport(KEY, index, counter, bytes(size))


def test_largest_payload_fits():
    packet = seal_transport(KEY, 0, 0, bytes(TCP_MAX_PACKET - TRANSPORT_OVERHEAD))
    assert len(packet) == TCP_MAX_PACKET
    assert TransportOpener(KEY).open_untrusted(packet) == bytes(TCP_MAX_PACKET - 29)


def test_bad_key_length_is_local_error():
    with pytest.raises(LocalProtocolError):
        seal_transport(b"short", 0, 0, b"")
    with pytest.raises(LocalProtocolError):
        TransportOpener(b"short")


def test_wrong_key_fails_without_state_change():
    opener = TransportOpener(KEY)
    forged = seal_transport(OTHER_KEY, 0, 5, b"evil")
    with pytest.raises(AuthenticationError):
        opener.open_untrusted(forged)
    assert opener.window.highest is None
    assert opener.open_untrusted(seal_transport(KEY, 0, 5, b"good")) == b"good"


@pytest.mark.parametrize("position", [0, 1, 4, 5, 12, 13, 20, -1])
def test_any_flipped_bit_refused(position):
    opener = TransportOpener(KEY)
    packet = bytearray(seal_transport(KEY, 3, 100, b"some payload"))
    packet[position] ^= 0x01
    with pytest.raises((AuthenticationError, DecodeError)):
        opener.open_untrusted(bytes(packet))
    assert opener.window.can_accept(100)


def test_forged_huge_counter_does_not_move_window():
    opener = TransportOpener(KEY)
    assert opener.open_untrusted(seal_transport(KEY, 0, 1, b"a")) == b"a"
    forged = bytearray(seal_transport(KEY, 0, 2**63, b"b"))
    forged[-1] ^= 0xFF
    with pytest.raises(AuthenticationError):
        opener.open_untrusted(bytes(forged))
    assert opener.open_untrusted(seal_transport(KEY, 0, 2, b"c")) == b"c"


def test_replay_checked_before_aead():
    opener = TransportOpener(KEY, window_size=16)
    opener.open_untrusted(seal_transport(KEY, 0, 100, b""))
    garbage = seal_transport(OTHER_KEY, 0, 50, b"")  # too old AND unauthentic
    with pytest.raises(ReplayError):
        opener.open_untrusted(garbage)


def test_open_refuses_short_wrong_type_and_oversize():
    opener = TransportOpener(KEY)
    packet = seal_transport(KEY, 0, 0, b"")
    with pytest.raises(DecodeError):
        opener.open_untrusted(packet[:-1])
    with pytest.raises(DecodeError):
        opener.open_untrusted(b"\x02" + packet[1:])
    with pytest.raises(LimitError):
        opener.open_untrusted(b"\x03" + bytes(TCP_MAX_PACKET))


def test_packet_type():
    assert packet_type_untrusted(b"\x01") == 1
    assert packet_type_untrusted(b"\x02rest") == 2
    assert packet_type_untrusted(seal_transport(KEY, 0, 0, b"")) == 3
    assert packet_type_untrusted(b"\x04cookie") == 4
    for bad in (b"", b"\x00", b"\x05", b"\xff"):
        with pytest.raises(DecodeError):
            packet_type_untrusted(bad)


def test_receiver_index():
    assert receiver_index_untrusted(seal_transport(KEY, 0xDEADBEEF, 0, b"")) == 0xDEADBEEF
    response = b"\x02" + struct.pack(">II", 1, 0xCAFE) + bytes(64)
    assert receiver_index_untrusted(response) == 0xCAFE
    for bad in (b"\x01" + bytes(100), b"\x02" + bytes(7), b"\x03\x00\x00\x00", b""):
        with pytest.raises(DecodeError):
            receiver_index_untrusted(bad)


@settings(max_examples=100, deadline=None)
@given(
    index=st.integers(0, 2**32 - 1),
    counter=st.integers(0, MAX_COUNTER),
    payload=st.binary(max_size=2000),
)
def test_round_trip_property(index, counter, payload):
    packet = seal_transport(KEY, index, counter, payload)
    assert packet_type_untrusted(packet) == PACKET_TRANSPORT
    assert receiver_index_untrusted(packet) == index
    assert TransportOpener(KEY).open_untrusted(packet) == payload
