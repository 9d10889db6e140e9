"""Transport packets: the encrypted data plane of a Noise session (DESIGN §3).

Owns the packet-type constants and size limits shared by every path, the header parse
used to dispatch incoming packets, and sealing/opening of transport packets::

    03 | receiver_index (4, BE) | counter (8, BE) | ChaCha20-Poly1305(payload) + tag (16)

(Types 1 and 2 are the handshake packets of ``handshake.py``, 4 the cookie reply of
``cookie.py``.)

The counter is explicit and is the AEAD nonce (4 zero bytes ‖ LE64(counter), as Noise
and WireGuard), so packets survive loss, reordering and duplication across paths; the
13-byte header is the associated data, so no header bit can be altered unnoticed.

Opening follows the order that keeps forged packets harmless (DESIGN §2, §3): parse the
header, ask the replay window (cheap, no state change), check the AEAD tag, and only then
mark the counter. A packet that fails anywhere changes nothing.

ChaCha20Poly1305 objects are created once per key (``TransportSealer``/``TransportOpener``
hold theirs; ``seal_transport`` keeps a small cache) as their construction costs about as
much as sealing a short packet.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from hotline.errors import (
    AuthenticationError,
    DecodeError,
    LimitError,
    LocalProtocolError,
    ReplayError,
)
from hotline.proto.replay import COUNTER_LIMIT, DEFAULT_WINDOW, ReplayWindow

PACKET_INITIATION = 1
PACKET_RESPONSE = 2
PACKET_TRANSPORT = 3
PACKET_COOKIE_REPLY = 4
PACKET_TYPES = frozenset({PACKET_INITIATION, PACKET_RESPONSE, PACKET_TRANSPORT,
                          PACKET_COOKIE_REPLY})

TRANSPORT_HEADER_LEN = 13
AEAD_TAG_LEN = 16
TRANSPORT_OVERHEAD = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN
"""Bytes a transport packet adds to its plaintext (29)."""

UDP_MAX_DATAGRAM = 1232
"""Largest UDP datagram we send (IPv6 minimum MTU 1280 - 40 - 8)."""
TCP_MAX_PACKET = 16384 + 64
"""Largest packet carried in one TCP frame."""

MAX_COUNTER = COUNTER_LIMIT - 1
"""Largest usable counter (2**64 - 2): the window refuses 2**64 - 1."""

_HEADER = struct.Struct(">BIQ")
_INDEX = struct.Struct(">I")
_NONCE_PAD = b"\x00\x00\x00\x00"
_NONCE_COUNTER = struct.Struct("<Q")
_KEY_LEN = 32
_CACHE_MAX = 16

_aead_cache: dict[bytes, ChaCha20Poly1305] = {}


def _aead(key: bytes) -> ChaCha20Poly1305:
    """A ChaCha20Poly1305 for ``key``, from a small cache (evicted oldest-first)."""
    aead = _aead_cache.get(key)
    if aead is None:
        aead = _new_aead(key)
        if len(_aead_cache) >= _CACHE_MAX:
            del _aead_cache[next(iter(_aead_cache))]
        _aead_cache[key] = aead
    return aead


def _new_aead(key: bytes) -> ChaCha20Poly1305:
    if len(key) != _KEY_LEN:
        raise LocalProtocolError(f"transport key must be {_KEY_LEN} bytes, not {len(key)}")
    return ChaCha20Poly1305(key)


def _nonce(counter: int) -> bytes:
    return _NONCE_PAD + _NONCE_COUNTER.pack(counter)


def packet_type_untrusted(packet: bytes) -> int:
    """The type byte of a packet from the wire.

    Returns:
        PACKET_INITIATION, PACKET_RESPONSE, PACKET_TRANSPORT or PACKET_COOKIE_REPLY.

    Raises:
        DecodeError: for an empty packet or an unknown type.
    """
    if not packet:
        raise DecodeError("empty packet")
    kind = packet[0]
    if kind not in PACKET_TYPES:
        raise DecodeError(f"unknown packet type {kind}")
    return kind


def receiver_index_untrusted(packet: bytes) -> int:
    """The receiver's index of a response, transport packet or cookie reply (for dispatch).

    Raises:
        DecodeError: for an initiation (it has none), an unknown type, or a packet too
            short to hold the index.
    """
    kind = packet_type_untrusted(packet)
    if kind == PACKET_INITIATION:
        raise DecodeError("an initiation packet carries no receiver index")
    offset = 5 if kind == PACKET_RESPONSE else 1
    if len(packet) < offset + 4:
        raise DecodeError(f"packet of {len(packet)} bytes too short for a receiver index")
    index: int = _INDEX.unpack_from(packet, offset)[0]
    return index


def _check_seal_args(receiver_index: int, counter: int, payload_len: int) -> None:
    if not 0 <= receiver_index < 2**32:
        raise LocalProtocolError(f"receiver index {receiver_index} out of range")
    if not 0 <= counter <= MAX_COUNTER:
        raise LocalProtocolError(f"counter {counter} out of range (rekey needed)")
    if payload_len + TRANSPORT_OVERHEAD > TCP_MAX_PACKET:
        raise LocalProtocolError(
            f"payload of {payload_len} bytes over the packet limit of {TCP_MAX_PACKET}"
        )


def _seal(aead: ChaCha20Poly1305, receiver_index: int, counter: int, payload: bytes) -> bytes:
    _check_seal_args(receiver_index, counter, len(payload))
    header = _HEADER.pack(PACKET_TRANSPORT, receiver_index, counter)
    return header + aead.encrypt(_nonce(counter), payload, header)


def seal_transport(key: bytes, receiver_index: int, counter: int, payload: bytes) -> bytes:
    """Encrypt ``payload`` into one transport packet.

    Args:
        key: the 32-byte sending key of the session.
        receiver_index: the peer's session index (0 <= i < 2**32).
        counter: this packet's counter, unique per key (0 <= c <= 2**64 - 2).
        payload: the inner plaintext.

    Raises:
        LocalProtocolError: bad key length, index or counter out of range, or a packet
            that would exceed TCP_MAX_PACKET.
    """
    return _seal(_aead(key), receiver_index, counter, payload)


class TransportSealer:
    """Seals packets for one session direction, numbering them 0, 1, 2, ...

    ``counter`` is the counter the next packet will use; the link rekeys well before
    it runs out (at 2**60, DESIGN §2).
    """

    __slots__ = ("_aead", "counter", "receiver_index")

    def __init__(self, key: bytes, receiver_index: int) -> None:
        self._aead = _new_aead(key)
        self.receiver_index = receiver_index
        self.counter = 0

    def seal(self, payload: bytes) -> bytes:
        """Encrypt ``payload`` with the next counter.

        Raises:
            LocalProtocolError: counters exhausted, or the packet would be too large
                (the counter is not consumed then).
        """
        packet = _seal(self._aead, self.receiver_index, self.counter, payload)
        self.counter += 1
        return packet


class TransportOpener:
    """Opens transport packets for one session direction, refusing replays.

    Args:
        key: the 32-byte receiving key of the session.
        window_size: anti-replay window size (DESIGN §3: 8128).
    """

    __slots__ = ("_aead", "window")

    def __init__(self, key: bytes, window_size: int = DEFAULT_WINDOW) -> None:
        self._aead = _new_aead(key)
        self.window = ReplayWindow(window_size)

    def open_untrusted(self, packet: bytes) -> bytes:
        """Authenticate and decrypt one transport packet from the wire.

        Returns:
            The payload (inner plaintext).

        Raises:
            DecodeError: too short, or not a transport packet.
            LimitError: longer than TCP_MAX_PACKET.
            ReplayError: counter already seen or too old (checked before the AEAD).
            AuthenticationError: the AEAD tag does not verify (no state changed).
        """
        counter = self._parse_header(packet)
        if not self.window.can_accept(counter):
            raise ReplayError(f"transport counter {counter} replayed or too old")
        header = packet[:TRANSPORT_HEADER_LEN]
        try:
            payload = self._aead.decrypt(_nonce(counter), packet[TRANSPORT_HEADER_LEN:], header)
        except InvalidTag:
            raise AuthenticationError("transport packet failed authentication") from None
        self.window.mark(counter)
        return payload

    @staticmethod
    def _parse_header(packet: bytes) -> int:
        """Check length and type; return the counter."""
        if len(packet) < TRANSPORT_OVERHEAD:
            raise DecodeError(f"transport packet of {len(packet)} bytes is too short")
        if len(packet) > TCP_MAX_PACKET:
            raise LimitError(f"transport packet of {len(packet)} bytes is over the limit")
        kind, _index, counter = _HEADER.unpack_from(packet)
        if kind != PACKET_TRANSPORT:
            raise DecodeError(f"packet type {kind} is not a transport packet")
        result: int = counter
        return result
