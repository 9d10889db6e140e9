"""The local control-socket protocol: request and reply schema (sans-IO, DESIGN §6).

A control connection is a Unix stream socket carrying **frames**: a 4-byte
big-endian length, then that many bytes of one msgpack **map** with string keys.
The client sends requests; the daemon answers each with one or more replies. Requests
decode into the one request vocabulary (``requests.py``); the daemon's outcomes are
encoded here, at the socket edge, and nowhere else.

Requests (``op`` selects the kind; every field is type-checked on decode)::

    {"op": "send", "type": str, "bodies": [bin, ...], "lane": 0..3, "ids": [str, ...],
     "wait": bool, "wait_operator": bool, "timeout": float | nil}
    {"op": "wait", "lane": 0..3, "upto": int, "timeout": float | nil,
     "operator": bool, "first": int}
    {"op": "status"}
    {"op": "inbox", "cursor": int, "since": [lane, seq] | nil, "follow": bool,
     "pending": bool}
    {"op": "events"}
    {"op": "ack", "ids": [[lane, seq], ...], "comment": str}
    {"op": "drill"}

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": str, "kind": str,
"code": int}`` (``kind`` names the ``errors.py`` class, which fixes the exit code;
``code`` is that code, for scripts). Per request:

* ``send``: after the envelopes are committed, ``{"ok": true, "ids": [[lane, seq], ...]}``.
  With ``wait``/``wait_operator`` a second reply follows once the peer (its operator)
  acknowledged the last of them: ``{"ok": true, "lane": int, "acked": int,
  "ack_ms": float}``, or an error reply after ``timeout``.
* ``wait``: the same second reply on its own.
* ``status``: ``{"ok": true, "status": {...}}``, the ``status --json`` object
  (``proto/status.py``).
* ``inbox``: one ``{"ok": true, "msg": {...}}`` per received message after the
  cursor, in order; without ``follow`` then ``{"ok": true, "end": true}``; with
  ``follow`` it never ends (close to stop).
* ``events``: a stream of ``{"ok": true, "event": {...}}`` (the daemon's log events
  as JSON objects), until the client closes.
* ``ack``: ``{"ok": true, "ids": [[lane, seq], ...]}``: our ack envelopes, stored.

Untrusted side: both ends decode with msgpack limits (nothing larger than the frame),
``strict_map_key=True``, ext types refused, then a schema check. The functions
ending in ``_untrusted`` raise only ``DecodeError``/``LimitError``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from hotline.errors import DecodeError, LimitError, LocalProtocolError, UserError
from hotline.proto.envelope import is_media_type
from hotline.proto.lanes import LANES, MAX_SEQ
from hotline.proto.requests import (
    MAX_SEND_ID,
    Acknowledged,
    DrillRequest,
    EventsRequest,
    InboxRequest,
    OperatorAckRequest,
    Outcome,
    Refused,
    Request,
    SendRequest,
    StatusReport,
    StatusRequest,
    Stored,
    WaitRequest,
)

MAX_FRAME = (1 << 20) + 4096  # one max_message (≤ 1 MiB) body plus the map around it
MAX_ITEMS = 4096  # max array/map length anywhere in a frame
MAX_TYPE_LEN = 255  # media type string length
MAX_COMMENT = 1024
_HEADER = struct.Struct(">I")


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
        return {"op": "send", "type": req.type, "bodies": list(req.bodies), "lane": req.lane,
                "ids": list(req.send_ids), "wait": req.wait,
                "wait_operator": req.wait_operator, "timeout": req.timeout}
    if isinstance(req, WaitRequest):
        return {"op": "wait", "lane": req.lane, "upto": req.upto, "timeout": req.timeout,
                "operator": req.operator, "first": req.first}
    if isinstance(req, InboxRequest):
        return {"op": "inbox", "cursor": req.cursor,
                "since": None if req.since is None else list(req.since),
                "follow": req.follow, "pending": req.pending}
    if isinstance(req, OperatorAckRequest):
        return {"op": "ack", "ids": [list(i) for i in req.ids], "comment": req.comment}
    if isinstance(req, StatusRequest):
        return {"op": "status"}
    if isinstance(req, DrillRequest):
        return {"op": "drill"}
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
    decoder = _DECODERS.get(op) if isinstance(op, str) else None
    if decoder is None:
        raise DecodeError(f"unknown control op {str(op)[:40]!r}")
    return decoder(m)


def _send(m: Mapping[str, Any]) -> SendRequest:
    _fields(m, {"op", "type", "bodies", "lane", "ids", "wait", "wait_operator", "timeout"})
    bodies = _bodies(m["bodies"])
    ids = _send_ids(m["ids"])
    if ids and len(ids) != len(bodies):
        raise DecodeError("control field 'ids' must hold one id per body, or none")
    return SendRequest(_media_type(m["type"]), bodies, _lane(m["lane"]), ids,
                       _bool(m, "wait"), _bool(m, "wait_operator"), _timeout(m["timeout"]))


def _wait(m: Mapping[str, Any]) -> WaitRequest:
    _fields(m, {"op", "lane", "upto", "timeout", "operator", "first"})
    return WaitRequest(_lane(m["lane"]), _seq(m, "upto"), _timeout(m["timeout"]),
                       _bool(m, "operator"), _seq(m, "first"))


def _inbox(m: Mapping[str, Any]) -> InboxRequest:
    _fields(m, {"op", "cursor", "since", "follow", "pending"})
    since = None if m["since"] is None else _message_id(m["since"])
    return InboxRequest(_seq(m, "cursor"), since, _bool(m, "follow"), _bool(m, "pending"))


def _ack(m: Mapping[str, Any]) -> OperatorAckRequest:
    _fields(m, {"op", "ids", "comment"})
    ids = m["ids"]
    if not isinstance(ids, tuple) or not ids:
        raise DecodeError("control field 'ids' must be a non-empty array")
    comment = m["comment"]
    if not isinstance(comment, str) or len(comment.encode()) > MAX_COMMENT:
        raise DecodeError(f"control field 'comment' must be a string of at most "
                          f"{MAX_COMMENT} bytes")
    return OperatorAckRequest(tuple(_message_id(i) for i in ids), comment)


def _bare(cls: type[StatusRequest] | type[EventsRequest] | type[DrillRequest]
          ) -> Callable[[Mapping[str, Any]], Request]:
    def decode(m: Mapping[str, Any]) -> Request:
        _fields(m, {"op"})
        return cls()

    return decode


_DECODERS: dict[str, Callable[[Mapping[str, Any]], Request]] = {
    "send": _send, "wait": _wait, "inbox": _inbox, "ack": _ack,
    "status": _bare(StatusRequest), "events": _bare(EventsRequest), "drill": _bare(DrillRequest),
}


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
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise DecodeError(f"control field {key!r} must be an integer in 0..2^63-1")
    return value


def _lane(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in LANES:
        raise DecodeError("control field 'lane' must be 0 (flash) .. 3 (routine)")
    return value


def _message_id(value: object) -> tuple[int, int]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise DecodeError("a message id must be a [lane, seq] pair")
    lane, seq = _lane(value[0]), value[1]
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise DecodeError("a message id's seq must be an integer in 1..2^63-1")
    return lane, seq


def _send_ids(value: object) -> tuple[str, ...]:
    if not isinstance(value, tuple):
        raise DecodeError("control field 'ids' must be an array")
    for item in value:
        if not isinstance(item, str) or not 0 < len(item.encode()) <= MAX_SEND_ID:
            raise DecodeError(f"a send id must be a string of 1..{MAX_SEND_ID} bytes")
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


def error_reply(error: type[UserError], message: str) -> dict[str, Any]:
    """``{"ok": false, "error": message, "kind": name, "code": exit code}``."""
    return {"ok": False, "error": message, "kind": error.__name__, "code": error.exit_code}


def outcome_reply(outcome: Outcome) -> dict[str, Any]:
    """The reply map for an endpoint outcome (the only place outcomes become bytes)."""
    if isinstance(outcome, Stored):
        return ok_reply(ids=[list(i) for i in outcome.ids])
    if isinstance(outcome, Acknowledged):
        return ok_reply(lane=outcome.lane, acked=outcome.upto)
    if isinstance(outcome, StatusReport):
        return ok_reply(status=outcome.status.to_json_dict())
    assert isinstance(outcome, Refused)
    return error_reply(outcome.error, outcome.message)


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
        error, kind = m.get("error"), m.get("kind")
        if not isinstance(error, str) or not isinstance(kind, str):
            raise DecodeError("control error reply without a string 'error' and 'kind'")
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
