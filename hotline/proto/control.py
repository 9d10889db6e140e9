"""The local control-socket protocol: request and reply schema (sans-IO, DESIGN §6).

A control connection is a Unix stream socket carrying **frames**: a 4-byte
big-endian length, then that many bytes of one msgpack **map** with string keys.
The client sends requests; the daemon answers each with one or more replies.

Requests (``op`` selects the kind; every field is type-checked on decode)::

    {"op": "send",   "type": str, "bodies": [bin, ...], "wait": bool}
    {"op": "wait",   "upto": int, "timeout": float | nil}
    {"op": "status"}
    {"op": "inbox",  "since": int, "follow": bool}
    {"op": "events"}

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": str, "code": int}``
(``code`` is the exit code the CLI should use, DESIGN §6). Per request:

* ``send``: after the envelopes are committed, ``{"ok": true, "seqs": [int, ...]}``.
  With ``"wait": true`` a second reply follows once the peer acknowledged the last
  of them: ``{"ok": true, "acked": int, "ack_ms": float}`` (no timeout: the client
  gives up by closing the connection, or uses the ``wait`` op instead).
* ``wait``: ``{"ok": true, "acked": int, "ack_ms": float}`` once our cumulative ack
  reaches ``upto``, or ``{"ok": false, "code": 75, ...}`` after ``timeout`` seconds.
* ``status``: ``{"ok": true, "status": {...}}`` with the DESIGN §6 ``status --json``
  keys (``hotline.daemon.logs.LinkSnapshot.to_json_dict``).
* ``inbox``: one ``{"ok": true, "msg": {"seq", "ts", "type", "body": bin}}`` per
  received message above ``since``, in order; without ``follow`` then
  ``{"ok": true, "end": true}``; with ``follow`` it never ends (close to stop).
* ``events``: a stream of ``{"ok": true, "event": {...}}`` (the daemon's log events
  as JSON objects), until the client closes.

Untrusted side: both ends decode with msgpack limits (nothing larger than the frame),
``strict_map_key=True``, ext types refused, then a schema check. The functions
ending in ``_untrusted`` raise only ``DecodeError``/``LimitError``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from hotline.errors import DecodeError, LimitError, LocalProtocolError
from hotline.proto.envelope import is_media_type

MAX_FRAME = (1 << 20) + 4096  # one max_message (≤ 1 MiB) body plus the map around it
MAX_ITEMS = 4096  # max array/map length anywhere in a frame
MAX_TYPE_LEN = 255  # media type string length
_HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class SendRequest:
    """Store these bodies as messages of ``type`` (one envelope each) and send them."""

    type: str
    bodies: tuple[bytes, ...]
    wait: bool = False


@dataclass(frozen=True)
class WaitRequest:
    """Answer once everything up to ``upto`` is acknowledged, or after ``timeout`` s."""

    upto: int
    timeout: float | None = None


@dataclass(frozen=True)
class StatusRequest:
    """The link's state as a ``status --json`` object."""


@dataclass(frozen=True)
class InboxRequest:
    """Received messages with seq above ``since``; keep streaming if ``follow``."""

    since: int = 0
    follow: bool = False


@dataclass(frozen=True)
class EventsRequest:
    """Stream the daemon's log events."""


Request = SendRequest | WaitRequest | StatusRequest | InboxRequest | EventsRequest


# --- framing --------------------------------------------------------------------------


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its 4-byte big-endian length.

    Raises:
        LocalProtocolError: if ``payload`` is over ``MAX_FRAME``.
    """
    if len(payload) > MAX_FRAME:
        raise LocalProtocolError(f"control frame of {len(payload)} bytes is over {MAX_FRAME}")
    return _HEADER.pack(len(payload)) + payload


class FrameBuffer:
    """Incremental frame decoder: feed bytes as they arrive, get whole payloads out."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._max = max_frame
        self._buf = bytearray()

    def feed_untrusted(self, data: bytes) -> list[bytes]:
        """Append ``data``; return every payload now complete (possibly none).

        Raises:
            LimitError: a frame announces more than ``max_frame`` bytes (checked from
                its header, before buffering the body). The stream is then unusable.
        """
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buf)
            if length > self._max:
                raise LimitError(f"control frame of {length} bytes is over {self._max}")
            end = _HEADER.size + length
            if len(self._buf) < end:
                break
            out.append(bytes(self._buf[_HEADER.size : end]))
            del self._buf[:end]
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered that do not make a whole frame yet."""
        return len(self._buf)


# --- requests -------------------------------------------------------------------------


def encode_request(req: Request) -> bytes:
    """The frame (length prefix included) carrying ``req``."""
    return encode_frame(_pack(_request_map(req)))


def _request_map(req: Request) -> dict[str, Any]:
    if isinstance(req, SendRequest):
        return {"op": "send", "type": req.type, "bodies": list(req.bodies), "wait": req.wait}
    if isinstance(req, WaitRequest):
        return {"op": "wait", "upto": req.upto, "timeout": req.timeout}
    if isinstance(req, InboxRequest):
        return {"op": "inbox", "since": req.since, "follow": req.follow}
    if isinstance(req, StatusRequest):
        return {"op": "status"}
    return {"op": "events"}


def decode_request_untrusted(payload: bytes) -> Request:
    """Decode and schema-check one request payload (the frame without its header).

    Raises:
        DecodeError: bad msgpack, not a map, unknown op, a missing, extra or
            mistyped field.
        LimitError: over a size limit.
    """
    m = _unpack_map_untrusted(payload)
    op = m.get("op")
    if op == "send":
        _fields(m, {"op", "type", "bodies", "wait"})
        return SendRequest(_media_type(m["type"]), _bodies(m["bodies"]), _bool(m, "wait"))
    if op == "wait":
        _fields(m, {"op", "upto", "timeout"})
        return WaitRequest(_seq(m, "upto"), _timeout(m["timeout"]))
    if op == "inbox":
        _fields(m, {"op", "since", "follow"})
        return InboxRequest(_seq(m, "since"), _bool(m, "follow"))
    if op == "status":
        _fields(m, {"op"})
        return StatusRequest()
    if op == "events":
        _fields(m, {"op"})
        return EventsRequest()
    raise DecodeError(f"unknown control op {str(op)[:40]!r}")


def _fields(m: Mapping[str, Any], want: set[str]) -> None:
    if set(m) != want:
        missing, extra = sorted(want - set(m)), sorted(set(m) - want)
        raise DecodeError(f"control request fields: missing {missing}, unexpected {extra}")


def _bool(m: Mapping[str, Any], key: str) -> bool:
    value = m[key]
    if not isinstance(value, bool):
        raise DecodeError(f"control field {key!r} must be a boolean")
    return value


def _seq(m: Mapping[str, Any], key: str) -> int:
    value = m[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise DecodeError(f"control field {key!r} must be an integer in 0..2^63-1")
    return value


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError("control field 'timeout' must be a number or nil")
    if not math.isfinite(value) or value < 0:
        raise DecodeError("control field 'timeout' must be finite and not negative")
    return float(value)


def _media_type(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TYPE_LEN:
        raise DecodeError(f"control field 'type' must be a string of 1..{MAX_TYPE_LEN}")
    if not is_media_type(value):
        raise DecodeError(f"type {value!r} is not a media type such as text/plain "
                          "(type/subtype, at most 64 ASCII characters)")
    return value


def _bodies(value: object) -> tuple[bytes, ...]:
    if not isinstance(value, tuple) or not value:
        raise DecodeError("control field 'bodies' must be a non-empty array")
    if not all(isinstance(b, bytes) for b in value):
        raise DecodeError("control field 'bodies' must hold binary strings only")
    return value


# --- replies --------------------------------------------------------------------------


def ok_reply(**fields: Any) -> dict[str, Any]:
    """``{"ok": true, **fields}``."""
    return {"ok": True, **fields}


def error_reply(error: str, code: int) -> dict[str, Any]:
    """``{"ok": false, "error": error, "code": code}`` (code: the CLI's exit code)."""
    return {"ok": False, "error": error, "code": code}


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    """The frame carrying ``reply`` (a map with str keys; bytes values stay binary).

    Raises:
        LocalProtocolError: no boolean ``ok``, or not encodable, or too big.
    """
    if not isinstance(reply.get("ok"), bool):
        raise LocalProtocolError("a control reply needs a boolean 'ok'")
    return encode_frame(_pack(dict(reply)))


def decode_reply_untrusted(payload: bytes) -> dict[str, Any]:
    """Decode one reply payload and check its envelope (``ok``, ``error``, ``code``).

    Arrays come back as tuples. The op-specific fields are the caller's to check.

    Raises:
        DecodeError: bad msgpack, not a map, or a malformed ok/error/code.
        LimitError: over a size limit.
    """
    m = _unpack_map_untrusted(payload)
    ok = m.get("ok")
    if not isinstance(ok, bool):
        raise DecodeError("control reply without a boolean 'ok'")
    if not ok:
        error, code = m.get("error"), m.get("code")
        if not isinstance(error, str):
            raise DecodeError("control error reply without a string 'error'")
        if isinstance(code, bool) or not isinstance(code, int) or not 0 < code < 256:
            raise DecodeError("control error reply without an exit 'code' in 1..255")
    return m


# --- msgpack with limits --------------------------------------------------------------


def _pack(m: dict[str, Any]) -> bytes:
    try:
        data: bytes = msgpack.packb(m, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as err:
        raise LocalProtocolError(f"control message not encodable: {err}") from err
    return data


def _refuse_ext(code: int, data: bytes) -> object:
    raise DecodeError(f"msgpack ext type {code} is not allowed")


def _unpack_map_untrusted(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_FRAME:
        raise LimitError(f"control frame of {len(payload)} bytes is over {MAX_FRAME}")
    try:
        value = msgpack.unpackb(
            payload, raw=False, use_list=False, strict_map_key=True,
            max_bin_len=MAX_FRAME, max_str_len=MAX_FRAME, max_array_len=MAX_ITEMS,
            max_map_len=MAX_ITEMS, max_ext_len=0, ext_hook=_refuse_ext,
        )
    except Exception as err:  # msgpack raises many types (ValueError, ExtraData, …)
        raise DecodeError(f"control frame is not valid msgpack: {type(err).__name__}") from err
    if not isinstance(value, dict):
        raise DecodeError("control frame is not a msgpack map")
    return value
