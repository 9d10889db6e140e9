"""TCP length framing, and fragmentation of link frames into transport plaintexts.

Owns two layers of DESIGN §3:

* **TCP framing.** A TCP path carries packets as ``length (4, BE) | packet``.
  ``TcpFrameDecoder`` turns a byte stream back into packets. The length is checked
  against ``max_packet`` (and refused when zero) as soon as its 4 bytes are in, before
  any of the body is buffered; the buffer therefore never holds more than one partial
  packet plus what a single ``feed_untrusted`` call brought. A bad length poisons the
  stream for good: a TCP stream cannot be resynchronised, the caller must close it.

* **Fragmentation.** A link frame larger than one packet's plaintext (``path_mtu - 29``
  bytes) travels as fragments. Each transport plaintext starts with a tag::

      00 | frame                                               whole frame
      01 | frag_id (4, BE) | index (2, BE) | count (2, BE) | chunk   one fragment
      02 | (length (2, BE) | frame)*                           bundle of small frames

  ``pack_frames`` packs one turn's frames for a path: small ones share a bundle (one
  AEAD operation, one TCP frame or datagram, one receive event for many messages —
  the per-packet costs dominate a small message's), large ones are fragmented.

  ``split_frame`` cuts a frame into equal chunks (the last one may be shorter).
  ``Reassembler`` collects fragments per ``frag_id``; everything read from a fragment
  header is bounded before it is stored: ``index < count``, a consistent ``count`` and
  chunk size per ``frag_id``, ``(count - 1) * chunk + 1 <= max_frame``, at most
  ``max_partial`` incomplete frames and ``max_buffered`` bytes in all (oldest evicted
  first), and partial frames older than ``timeout`` seconds dropped. Duplicated
  fragments are ignored. A lost fragment is never recovered here: the reliable layer
  resends the whole message, under a new ``frag_id``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TypeVar

from hotline.errors import DecodeError, LimitError, LocalProtocolError
from hotline.proto.packet import TCP_MAX_PACKET

TCP_LENGTH_LEN = 4
TAG_WHOLE = 0
TAG_FRAGMENT = 1
TAG_BUNDLE = 2
BUNDLE_ITEM_HEADER_LEN = 2
WHOLE_HEADER_LEN = 1
FRAGMENT_HEADER_LEN = 9
MAX_FRAGMENTS = 0xFFFF
MIN_CHUNK = 64
"""Smallest chunk of a non-last fragment: keeps per-fragment bookkeeping small."""

T = TypeVar("T")
_LENGTH = struct.Struct(">I")
_FRAGMENT = struct.Struct(">BIHH")
_ITEM = struct.Struct(">H")


# --- TCP framing ----------------------------------------------------------------------


def encode_tcp_frame(packet: bytes) -> bytes:
    """Prefix ``packet`` with its 4-byte big-endian length for a TCP path.

    Raises:
        LocalProtocolError: an empty packet or one over TCP_MAX_PACKET.
    """
    if not 0 < len(packet) <= TCP_MAX_PACKET:
        raise LocalProtocolError(f"cannot frame a packet of {len(packet)} bytes")
    return _LENGTH.pack(len(packet)) + packet


class TcpFrameDecoder:
    """Splits a TCP byte stream into packets.

    Args:
        max_packet: the largest packet length accepted (normally TCP_MAX_PACKET).
    """

    __slots__ = ("_buffer", "_failed", "_max_packet", "_need")

    def __init__(self, max_packet: int = TCP_MAX_PACKET) -> None:
        if max_packet < 1:
            raise LocalProtocolError(f"max_packet must be >= 1, not {max_packet}")
        self._max_packet = max_packet
        self._buffer = bytearray()
        self._need = 0  # body length of the packet being read; 0 while reading a header
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held that do not form a complete packet yet."""
        return len(self._buffer)

    def feed_untrusted(self, data: bytes) -> list[bytes]:
        """Add bytes read from the stream; return the packets they complete, in order.

        Raises:
            LimitError: a length prefix of zero or over ``max_packet`` (now or earlier:
                the stream stays failed).
        """
        if self._failed:
            raise LimitError("TCP stream already failed on a bad length prefix")
        self._buffer += data
        packets: list[bytes] = []
        pos = 0
        while True:
            if not self._need:
                if len(self._buffer) - pos < TCP_LENGTH_LEN:
                    break
                self._need = self._read_length(pos)
                pos += TCP_LENGTH_LEN
            if len(self._buffer) - pos < self._need:
                break
            packets.append(bytes(self._buffer[pos : pos + self._need]))
            pos += self._need
            self._need = 0
        del self._buffer[:pos]
        return packets

    def _read_length(self, pos: int) -> int:
        length: int = _LENGTH.unpack_from(self._buffer, pos)[0]
        if not 0 < length <= self._max_packet:
            self._failed = True
            self._buffer.clear()
            raise LimitError(f"TCP frame length {length} outside 1..{self._max_packet}")
        return length


# --- fragmentation --------------------------------------------------------------------


def split_frame(frame: bytes, max_plaintext: int, frag_id: int) -> list[bytes]:
    """Cut ``frame`` into transport plaintexts of at most ``max_plaintext`` bytes.

    Returns:
        ``[00 | frame]`` when it fits, else ``01 | frag_id | index | count | chunk``
        fragments with equal chunks (the last may be shorter).

    Raises:
        LocalProtocolError: ``frag_id`` outside 32 bits, ``max_plaintext`` too small
            for a MIN_CHUNK fragment, or a frame needing over 65535 fragments.
    """
    if WHOLE_HEADER_LEN + len(frame) <= max_plaintext:
        return [bytes([TAG_WHOLE]) + frame]
    if not 0 <= frag_id < 2**32:
        raise LocalProtocolError(f"frag_id {frag_id} out of range")
    chunk = max_plaintext - FRAGMENT_HEADER_LEN
    if chunk < MIN_CHUNK:
        raise LocalProtocolError(f"max_plaintext {max_plaintext} too small to fragment")
    count = -(-len(frame) // chunk)
    if count > MAX_FRAGMENTS:
        raise LocalProtocolError(f"frame of {len(frame)} bytes needs {count} fragments")
    return [
        _FRAGMENT.pack(TAG_FRAGMENT, frag_id, index, count)
        + frame[index * chunk : (index + 1) * chunk]
        for index in range(count)
    ]


def pack_frames(frames: list[bytes], max_plaintext: int, next_frag_id: int) -> tuple[
    list[bytes], int
]:
    """Pack link frames into as few transport plaintexts as fit ``max_plaintext``.

    Small frames that arrive in the same turn share one packet as a *bundle*
    ``02 | (length(2 BE) | frame)*`` — one AEAD operation, one TCP frame or datagram
    and one receive event for many messages. A frame that fits alone goes out as
    ``00 | frame``; a frame too large for one packet is fragmented (``split_frame``).

    Returns:
        (plaintexts, the next unused fragment id).
    """
    packed, next_frag_id = pack_tagged([(frame, None) for frame in frames], max_plaintext,
                                       next_frag_id)
    return [plaintext for group, _ in packed for plaintext in group], next_frag_id


def pack_tagged(frames: list[tuple[bytes, T]], max_plaintext: int, next_frag_id: int
                ) -> tuple[list[tuple[list[bytes], list[T]]], int]:
    """``pack_frames``, keeping track of which frames the plaintexts carry: every frame
    comes with a tag; the result is groups of plaintexts — a bundle or whole frame
    alone, or ALL the fragments of one frame — each with the tags of its frames. The
    link uses it to know which messages a packet (or a fragmented message's packets,
    which arrive all or none) carried.

    Returns:
        ([(plaintexts, tags)], the next unused fragment id).
    """
    out: list[tuple[list[bytes], list[T]]] = []
    bundle: list[bytes] = []
    tags: list[T] = []
    size = 1
    for frame, tag in frames:
        item = BUNDLE_ITEM_HEADER_LEN + len(frame)
        if bundle and size + item > max_plaintext:
            out.append(([_close_bundle(bundle)], tags))
            bundle, tags, size = [], [], 1
        if 1 + item <= max_plaintext and len(frame) <= 0xFFFF:
            bundle.append(frame)
            tags.append(tag)
            size += item
            continue
        out.append((split_frame(frame, max_plaintext, next_frag_id), [tag]))
        next_frag_id = (next_frag_id + 1) & 0xFFFFFFFF
    if bundle:
        out.append(([_close_bundle(bundle)], tags))
    return out, next_frag_id


def _close_bundle(frames: list[bytes]) -> bytes:
    if len(frames) == 1:
        return bytes([TAG_WHOLE]) + frames[0]
    return bytes([TAG_BUNDLE]) + b"".join(_ITEM.pack(len(f)) + f for f in frames)


def unbundle_untrusted(plaintext: bytes) -> list[bytes]:
    """The frames of a ``02`` bundle plaintext.

    Raises:
        DecodeError: not a bundle, an empty bundle, or an item overrunning the packet.
    """
    if not plaintext or plaintext[0] != TAG_BUNDLE:
        raise DecodeError("not a bundle")
    frames: list[bytes] = []
    pos, end = 1, len(plaintext)
    while pos < end:
        if end - pos < BUNDLE_ITEM_HEADER_LEN:
            raise DecodeError("truncated bundle item header")
        (length,) = _ITEM.unpack_from(plaintext, pos)
        pos += BUNDLE_ITEM_HEADER_LEN
        if length == 0 or length > end - pos:
            raise DecodeError(f"bundle item of {length} bytes overruns the packet")
        frames.append(plaintext[pos : pos + length])
        pos += length
    if not frames:
        raise DecodeError("empty bundle")
    return frames


@dataclass
class _Partial:
    """Fragments received so far for one frag_id."""

    count: int
    created_at: float
    chunk_len: int = 0  # length of the non-last chunks, 0 until one arrived
    last_len: int = 0  # length of the last chunk, 0 until it arrived
    size: int = 0  # bytes held
    chunks: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class _Fragment:
    frag_id: int
    index: int
    count: int
    chunk: bytes

    @property
    def is_last(self) -> bool:
        return self.index == self.count - 1


def _parse_fragment_untrusted(plaintext: bytes) -> _Fragment:
    if len(plaintext) <= FRAGMENT_HEADER_LEN:
        raise DecodeError(f"fragment of {len(plaintext)} bytes has no chunk")
    _tag, frag_id, index, count = _FRAGMENT.unpack_from(plaintext)
    if count < 1 or index >= count:
        raise DecodeError(f"fragment index {index} of count {count}")
    return _Fragment(frag_id, index, count, plaintext[FRAGMENT_HEADER_LEN:])


class Reassembler:
    """Rebuilds link frames from transport plaintexts (whole or fragmented).

    Args:
        max_frame: the largest frame accepted, in bytes.
        max_partial: most incomplete frames held at once (oldest evicted beyond).
        timeout: seconds after its first fragment that an incomplete frame is dropped.
        max_buffered: most bytes held across all incomplete frames (oldest evicted
            beyond); default ``8 * max_frame``.
    """

    def __init__(
        self,
        max_frame: int,
        max_partial: int = 64,
        timeout: float = 10.0,
        max_buffered: int | None = None,
    ) -> None:
        if max_frame < 1 or max_partial < 1 or timeout <= 0:
            raise LocalProtocolError("max_frame, max_partial and timeout must be positive")
        self._max_frame = max_frame
        self._max_partial = max_partial
        self._timeout = timeout
        self._max_buffered = max(max_buffered or 8 * max_frame, max_frame)
        self._partials: dict[int, _Partial] = {}  # insertion order = age order
        self._buffered = 0

    @property
    def buffered(self) -> int:
        """Bytes held in incomplete frames."""
        return self._buffered

    @property
    def pending(self) -> int:
        """Number of incomplete frames held."""
        return len(self._partials)

    def add_untrusted(self, plaintext: bytes, now: float) -> bytes | None:
        """Take one decrypted transport plaintext.

        Returns:
            The whole frame once complete (its fragments are then forgotten), else None.
            A whole frame may be empty (``b""``): test the result with ``is None``.

        Raises:
            DecodeError: empty, unknown tag, bad fragment header, or a fragment that
                contradicts earlier ones of its frag_id (that partial is dropped).
            LimitError: a frame over ``max_frame`` (that partial is dropped).
        """
        self._expire(now)
        if not plaintext:
            raise DecodeError("empty transport plaintext")
        tag = plaintext[0]
        if tag == TAG_WHOLE:
            if len(plaintext) - WHOLE_HEADER_LEN > self._max_frame:
                raise LimitError(f"frame of {len(plaintext) - 1} bytes over the limit")
            return plaintext[WHOLE_HEADER_LEN:]
        if tag != TAG_FRAGMENT:
            raise DecodeError(f"unknown plaintext tag {tag}")
        return self._add_fragment(_parse_fragment_untrusted(plaintext), now)

    def _add_fragment(self, frag: _Fragment, now: float) -> bytes | None:
        partial = self._partials.get(frag.frag_id)
        if partial is None:
            partial = self._new_partial(frag, now)
        elif frag.index in partial.chunks:
            return None  # duplicate
        try:
            self._check_fits(partial, frag)
        except (DecodeError, LimitError):
            self._drop(frag.frag_id)
            raise
        partial.chunks[frag.index] = frag.chunk
        partial.size += len(frag.chunk)
        self._buffered += len(frag.chunk)
        if len(partial.chunks) == partial.count:
            self._drop(frag.frag_id)
            return b"".join(partial.chunks[i] for i in range(partial.count))
        self._enforce_budget(keep=frag.frag_id)
        return None

    def _new_partial(self, frag: _Fragment, now: float) -> _Partial:
        if (frag.count - 1) * MIN_CHUNK + 1 > self._max_frame:
            raise LimitError(f"{frag.count} fragments cannot fit a {self._max_frame}-byte frame")
        while len(self._partials) >= self._max_partial:
            self._drop(next(iter(self._partials)))
        partial = _Partial(count=frag.count, created_at=now)
        self._partials[frag.frag_id] = partial
        return partial

    def _check_fits(self, partial: _Partial, frag: _Fragment) -> None:
        """Refuse a fragment inconsistent with its siblings or growing past max_frame."""
        if frag.count != partial.count:
            raise DecodeError(f"fragment count {frag.count} != {partial.count} seen before")
        size = len(frag.chunk)
        if frag.is_last:
            chunk_len, last_len = partial.chunk_len, size
        else:
            if size < MIN_CHUNK or (partial.chunk_len and size != partial.chunk_len):
                raise DecodeError(f"fragment chunk of {size} bytes inconsistent")
            chunk_len, last_len = size, partial.last_len
        if chunk_len and last_len > chunk_len:
            raise DecodeError("last fragment longer than the others")
        total = (partial.count - 1) * (chunk_len or MIN_CHUNK) + max(last_len, 1)
        if total > self._max_frame:
            raise LimitError(f"fragmented frame of >= {total} bytes over the limit")
        partial.chunk_len, partial.last_len = chunk_len, last_len

    def _enforce_budget(self, keep: int) -> None:
        """Evict the oldest partials (never ``keep``) while over ``max_buffered``."""
        for frag_id in list(self._partials):
            if self._buffered <= self._max_buffered:
                break
            if frag_id != keep:
                self._drop(frag_id)

    def _expire(self, now: float) -> None:
        while self._partials:
            frag_id, oldest = next(iter(self._partials.items()))
            if now - oldest.created_at <= self._timeout:
                break
            self._drop(frag_id)

    def _drop(self, frag_id: int) -> None:
        partial = self._partials.pop(frag_id)
        self._buffered -= partial.size
