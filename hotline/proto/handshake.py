"""The hotline link handshake: Noise KKpsk2 with WireGuard-style framing (DESIGN §2, §11).

Owns: the two handshake packets, the responder's replay guard and the
crossed-initiation rule. Noise itself is ``noise.py``; the mac1/mac2 fields and cookie
replies are ``cookie.py``; what an initiation must pass before it may cost a
Diffie-Hellman (repeats, cookies, rate limits) is ``guard.py``.

Protocol ``Noise_KKpsk2_25519_ChaChaPoly_BLAKE2s``, prologue ``b"hotline/1"``; both
static keys are the X25519 forms of the pinned Ed25519 keys (``identity.py``). The psk,
mixed in at the end of the response, makes the transport keys depend on the
post-quantum ratchet and the optional ``psk_file`` as well as on X25519 (``pq.py``).
Packets::

    initiation  01 | sender_index(4) | e(32) | AEAD(payload1)(42+16) | mac1 | mac2
    response    02 | sender_index(4) | receiver_index(4) | e(32) | AEAD(payload2) | mac1 | mac2

(indexes big-endian; mac1 and mac2 are 16 bytes each, ``cookie.py``).

``payload1`` is msgpack ``[1, sender_index, timestamp_ns, psk_ids]``: ``psk_ids`` is 24
bytes, the 8-byte ids of the psks we can key the session with, newest first, zero-filled
(``PskRing.offered_ids``; always 24 bytes, so the size says nothing of our ratchet).
We encode it with fixed-width ints (uint32, uint64, still plain msgpack) so every
initiation is exactly 127 bytes; receivers accept any msgpack encoding that fits the
115..127-byte bounds. The responder keys its response with its newest psk among those
named (KKpsk2 needs the psk only from the response on, so the choice can wait for the
decrypted initiation); we, reading the response, try the psks we named in turn, each on
a copy of the handshake state, newest first.
``payload2`` is msgpack ``[1, sender_index]`` (the index again, now authenticated): 92..96 bytes.
Sizes are checked before anything else, then the type byte, then mac1 (one hash, no
Diffie-Hellman). mac2 is checked by ``guard.py`` when the responder is under load; an
initiator does not check the mac2 of a response, as a response costs it a DH only when
it names the index of its one pending initiation (random, fresh each time).
KK pins both ends: an initiation from any key but the pinned one fails the ``ss`` DH
and so its AEAD tag.

Replay: message 1 can be replayed by anyone who saw it, so the responder accepts only a
timestamp strictly greater than the last one it *accepted*, updated only after the whole
message authenticated and parsed (as WireGuard's TAI64N). The initiator must keep its
timestamps increasing across restarts (wall-clock ns; ``sessions.py`` forces monotony).
The responder can be given the last accepted timestamp at construction (the daemon
persists it), so a captured initiation is refused after a restart too.

Key confirmation: the responder learns its keys here but must not send transport data
until the initiator's first transport packet has decrypted with them (that proves the
initiator holds the keys and the initiation was not a replay). That rule is enforced in
``sessions.py``/``link.py``, which treat a responder session as unconfirmed.

Crossed initiations: ``keeps_own_initiation`` — the end whose Ed25519 public key is
lower (byte-wise on the raw 32 bytes, the same bytes both ends pin) keeps its own
initiation. The Ed25519 bytes are chosen over the X25519 ones because they are what
operators see and compare (fingerprints); either would do as long as both ends agree.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from hotline.errors import (
    AuthenticationError,
    DecodeError,
    HandshakeError,
    LimitError,
    LocalProtocolError,
    ReplayError,
)
from hotline.proto.cookie import MACS_LEN, add_macs, check_mac1_untrusted, mac1_key, mac1_of
from hotline.proto.identity import Identity, PublicKey
from hotline.proto.noise import DHLEN, TAGLEN, HandshakeState, x25519_public
from hotline.proto.pq import PSK_ID_LEN, PSK_SLOTS, PskChoice, PskRing

PROTOCOL_NAME = "Noise_KKpsk2_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"hotline/1"
VERSION = 1

TYPE_INITIATION = 1
TYPE_RESPONSE = 2
MAX_INDEX = 2**32 - 1
MAX_TIMESTAMP = 2**64 - 1

_INIT_HEADER = 1 + 4
_RESP_HEADER = 1 + 4 + 4
_IDS_LEN = PSK_SLOTS * PSK_ID_LEN
# [1, uint32, uint64, bin8(24)] in fixed width: fixarray, fixint, 0xce + 4, 0xcf + 8,
# 0xc4 len + 24.
INITIATION_PAYLOAD_MAX = 1 + 1 + 5 + 9 + 2 + _IDS_LEN
INITIATION_PAYLOAD_MIN = 4 + 2 + _IDS_LEN  # [1, 0, 0, ids] in the shortest msgpack form
INITIATION_MAX = _INIT_HEADER + DHLEN + INITIATION_PAYLOAD_MAX + TAGLEN + MACS_LEN  # 127
INITIATION_MIN = _INIT_HEADER + DHLEN + INITIATION_PAYLOAD_MIN + TAGLEN + MACS_LEN  # 115
# [1, uint32] in fixed width; the index is repeated inside the encrypted payload so
# that the header's (otherwise unauthenticated) sender index cannot be rewritten.
RESPONSE_PAYLOAD_MAX = 1 + 1 + 5
RESPONSE_PAYLOAD_MIN = 3  # [1, 0] in the shortest msgpack form
RESPONSE_MIN = _RESP_HEADER + DHLEN + RESPONSE_PAYLOAD_MIN + TAGLEN + MACS_LEN  # 92
RESPONSE_MAX = _RESP_HEADER + DHLEN + RESPONSE_PAYLOAD_MAX + TAGLEN + MACS_LEN  # 96

Rng = Callable[[int], bytes]


# --- framing --------------------------------------------------------------------------


def check_size_untrusted(packet: bytes, kind: int, low: int, high: int) -> None:
    """Check a handshake packet's size (first) and type byte.

    Raises:
        LimitError: longer than ``high``. DecodeError: shorter than ``low`` or not ``kind``.
    """
    if len(packet) > high:
        raise LimitError(f"handshake packet of {len(packet)} bytes, at most {high}")
    if len(packet) < low:
        raise DecodeError(f"handshake packet of {len(packet)} bytes, at least {low}")
    if packet[0] != kind:
        raise DecodeError(f"handshake packet type {packet[0]}, expected {kind}")


# --- payloads -------------------------------------------------------------------------


def _encode_initiation_payload(sender_index: int, timestamp_ns: int, psk_ids: bytes) -> bytes:
    return (b"\x94\x01" + struct.pack(">BIBQ", 0xCE, sender_index, 0xCF, timestamp_ns)
            + bytes([0xC4, len(psk_ids)]) + psk_ids)


def _unpack_untrusted(data: bytes, max_items: int, max_bin: int = 0) -> tuple[Any, ...]:
    try:
        obj = msgpack.unpackb(
            data, use_list=False, strict_map_key=True, max_str_len=0, max_bin_len=max_bin,
            max_array_len=max_items, max_map_len=0, max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError("handshake payload is not valid msgpack") from exc
    if not isinstance(obj, tuple):
        raise DecodeError("handshake payload is not a msgpack array")
    return obj


def _is_uint(value: object, maximum: int) -> bool:
    return type(value) is int and 0 <= value <= maximum


def _check_version_untrusted(items: tuple[Any, ...]) -> None:
    if not items or type(items[0]) is not int:
        raise DecodeError("handshake payload without a version")
    if items[0] != VERSION:
        raise HandshakeError(f"unsupported handshake version {items[0]}")


def _decode_initiation_payload_untrusted(data: bytes, header_index: int) -> tuple[int, bytes]:
    """Checks ``[1, sender_index, timestamp_ns, psk_ids]``; returns (timestamp, psk_ids)."""
    items = _unpack_untrusted(data, 4, _IDS_LEN)
    _check_version_untrusted(items)
    if len(items) != 4 or not _is_uint(items[1], MAX_INDEX) \
            or not _is_uint(items[2], MAX_TIMESTAMP) \
            or type(items[3]) is not bytes or len(items[3]) != _IDS_LEN:
        raise DecodeError("initiation payload is not [version, index, timestamp, psk_ids]")
    if items[1] != header_index:
        raise HandshakeError("initiation payload index differs from its header")
    timestamp: int = items[2]
    return timestamp, items[3]


def _encode_response_payload(sender_index: int) -> bytes:
    return b"\x92\x01" + struct.pack(">BI", 0xCE, sender_index)


def _check_response_payload_untrusted(data: bytes, header_index: int) -> None:
    """Checks ``[1, sender_index]`` and that the index is the header's."""
    items = _unpack_untrusted(data, 2)
    _check_version_untrusted(items)
    if len(items) != 2 or not _is_uint(items[1], MAX_INDEX):
        raise DecodeError("response payload is not [version, index]")
    if items[1] != header_index:
        raise HandshakeError("response payload index differs from its header")


# --- sessions -------------------------------------------------------------------------


@dataclass
class Session:
    """Transport keys of one completed handshake (fed to ``packet.py``).

    ``our_index`` names this session in packets sent to us; ``their_index`` in packets
    we send. A responder's session is unconfirmed until the initiator's first transport
    packet decrypts (see the module header). ``psk`` is the psk that keyed it (its
    ratchet secret and whether it is post-quantum); ``handshake_hash`` binds the
    session's ratchet step (``pq.py``).
    """

    our_index: int
    their_index: int
    is_initiator: bool
    created_at: float
    send_key: bytes
    recv_key: bytes
    psk: PskChoice
    handshake_hash: bytes

    @property
    def pq(self) -> bool:
        """The keys depend on a secret that X25519 cannot reveal (ratchet or psk_file)."""
        return self.psk.pq


def _session(hs: HandshakeState, our_index: int, their_index: int, now: float,
             psk: PskChoice) -> Session:
    c1, c2 = hs.split()  # the initiator sends with c1
    send, recv = (c1, c2) if hs.initiator else (c2, c1)
    assert send.key is not None
    assert recv.key is not None
    return Session(our_index, their_index, hs.initiator, now, send.key, recv.key, psk,
                   hs.handshake_hash)


def _check_index(index: int) -> None:
    if not _is_uint(index, MAX_INDEX):
        raise LocalProtocolError("a session index is a uint32")


def _handshake_state(our: Identity, their: PublicKey, initiator: bool,
                     rng: Rng) -> HandshakeState:
    # The psk is set once it is known (responder) or tried per candidate (initiator).
    return HandshakeState(PROTOCOL_NAME, initiator, PROLOGUE, s=our.x25519_private(),
                          rs=their.x25519(), psks=None, rng=rng)


# --- initiator ------------------------------------------------------------------------


class Initiation:
    """One outstanding initiation: waits for the matching response.

    Use ``Initiation.start``. Once a response has authenticated (whether or not its
    payload was acceptable) the object is spent; further responses raise HandshakeError.
    ``mac1`` is our packet's mac1: a cookie reply to it is sealed with it as AD.
    """

    def __init__(self, hs: HandshakeState, our_index: int, our_mac1_key: bytes,
                 created_at: float, mac1: bytes, psks: tuple[PskChoice, ...]) -> None:
        self._hs = hs
        self.our_index = our_index
        self.created_at = created_at
        self.mac1 = mac1
        self._mac1_key = our_mac1_key
        self._psks = psks
        self._spent = False

    @classmethod
    def start(cls, our: Identity, their: PublicKey, our_index: int, timestamp_ns: int,
              now: float, rng: Rng, cookie: bytes | None = None,
              psks: PskRing | None = None) -> tuple[Initiation, bytes]:
        """Begin a handshake to the pinned peer ``their``.

        Args:
            our_index: the index the peer must put in its response (uint32).
            timestamp_ns: strictly greater than any earlier one we sent (wall-clock ns).
            now: monotonic seconds (stored as ``created_at``). rng: ephemeral key source.
            cookie: the peer's fresh cookie for our address, for mac2 (None: zeros).
            psks: the psks we may key the session with (None: only the base psk of a
                link without ``psk_file`` and ratchet).

        Returns:
            (the pending initiation, the 127-byte initiation packet).
        """
        _check_index(our_index)
        if not _is_uint(timestamp_ns, MAX_TIMESTAMP):
            raise LocalProtocolError("timestamp_ns must be a uint64")
        ring = psks or PskRing(None, None)
        hs = _handshake_state(our, their, True, rng)
        payload = _encode_initiation_payload(our_index, timestamp_ns, ring.offered_ids())
        body = (bytes([TYPE_INITIATION]) + struct.pack(">I", our_index)
                + hs.write_message(payload))
        packet = add_macs(body, mac1_key(their.x25519()), cookie)
        our_key = mac1_key(x25519_public(our.x25519_private()))
        return cls(hs, our_index, our_key, now, mac1_of(packet), ring.choices), packet

    def consume_response_untrusted(self, packet: bytes, now: float) -> Session:
        """Complete the handshake with the peer's response packet.

        Each psk we named is tried, newest first, on a copy of the handshake state (two
        DHs each); the first whose AEAD tag verifies keys the session.

        Raises:
            LimitError / DecodeError: wrong size or type. AuthenticationError: bad mac1
                or AEAD tag with every psk we named (forged, not from the pinned peer, or
                the peer's psk_file differs). HandshakeError: not addressed to this
                initiation, already spent, or an unacceptable version.
        """
        check_size_untrusted(packet, TYPE_RESPONSE, RESPONSE_MIN, RESPONSE_MAX)
        their_index, receiver = struct.unpack_from(">II", packet, 1)
        if receiver != self.our_index:
            raise HandshakeError("response to another initiation")
        body = check_mac1_untrusted(self._mac1_key, packet)
        if self._spent:
            raise HandshakeError("initiation already answered")
        for psk in self._psks:
            trial = self._hs.copy()
            trial.set_psks([psk.psk])
            try:
                trial.read_message(body[_RESP_HEADER:],
                                   lambda p: _check_response_payload_untrusted(p, their_index))
            except AuthenticationError:
                continue
            self._hs, self._spent = trial, True
            return _session(trial, self.our_index, their_index, now, psk)
        raise AuthenticationError("response authenticates with none of the psks we named")


# --- responder ------------------------------------------------------------------------


class Responder:
    """The long-lived responder side for one pinned peer: Noise and the replay guard.

    It spends a Diffie-Hellman on every initiation that passes mac1, so the caller
    screens initiations first (``guard.HandshakeGuard``).

    Args:
        last_timestamp_ns: the last initiation timestamp accepted before (persisted
            by the daemon), or None; only later timestamps are accepted.
        psks: the psks we may key a session with, read at each initiation (None: only
            the base psk of a link without ``psk_file`` and ratchet).
    """

    def __init__(self, our: Identity, their: PublicKey, rng: Rng,
                 last_timestamp_ns: int | None = None, psks: PskRing | None = None) -> None:
        self._our = our
        self._their = their
        self._rng = rng
        self._psks = psks or PskRing(None, None)
        self._mac1_key = mac1_key(x25519_public(our.x25519_private()))
        self._their_mac1_key = mac1_key(their.x25519())
        if last_timestamp_ns is not None and not _is_uint(last_timestamp_ns, MAX_TIMESTAMP):
            raise LocalProtocolError("last_timestamp_ns must be a uint64 or None")
        self.last_timestamp_ns = last_timestamp_ns

    def consume_initiation_untrusted(self, packet: bytes, our_index: int, now: float,
                                     cookie: bytes | None = None) -> tuple[Session, bytes]:
        """Answer an initiation from the pinned peer.

        Order of checks, cheapest first: size, type, mac1 (no DH yet), Noise (the DH
        and AEAD), payload, replay, a psk in common. Only full success changes the
        replay state.

        Args:
            our_index: the index the initiator must use to reach the new session.
            now: monotonic seconds.
            cookie: the peer's fresh cookie for our address, for our response's mac2.

        Returns:
            (the new, unconfirmed responder session, the response packet).

        Raises:
            LimitError / DecodeError: wrong size, type or payload. AuthenticationError:
                bad mac1 or AEAD (e.g. not the pinned peer). HandshakeError: wrong
                version/index, or no psk in common. ReplayError: timestamp not newer.
        """
        _check_index(our_index)
        check_size_untrusted(packet, TYPE_INITIATION, INITIATION_MIN, INITIATION_MAX)
        body = check_mac1_untrusted(self._mac1_key, packet)
        (their_index,) = struct.unpack_from(">I", body, 1)
        hs = _handshake_state(self._our, self._their, False, self._rng)
        payload = hs.read_message(body[_INIT_HEADER:])
        timestamp, psk_ids = _decode_initiation_payload_untrusted(payload, their_index)
        if self.last_timestamp_ns is not None and timestamp <= self.last_timestamp_ns:
            raise ReplayError("initiation timestamp not newer than the last accepted")
        psk = self._psks.choose_untrusted(psk_ids)
        hs.set_psks([psk.psk])
        response = self._response(hs, our_index, their_index, cookie)
        self.last_timestamp_ns = timestamp
        return _session(hs, our_index, their_index, now, psk), response

    def _response(self, hs: HandshakeState, our_index: int, their_index: int,
                  cookie: bytes | None) -> bytes:
        body = (bytes([TYPE_RESPONSE]) + struct.pack(">II", our_index, their_index)
                + hs.write_message(_encode_response_payload(our_index)))
        return add_macs(body, self._their_mac1_key, cookie)


def keeps_own_initiation(our: PublicKey, their: PublicKey) -> bool:
    """When two initiations cross, True if we keep ours (and drop theirs).

    The end with the lower raw Ed25519 public key keeps its own; both ends compute
    the same answer from the same two pinned keys.
    """
    return our.raw < their.raw
