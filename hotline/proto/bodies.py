"""The bodies of hotline's own message types: operator acks and drills (DESIGN §9, §10).

Both are ordinary envelopes — signed, numbered, chained, stored, exported and verified
like any message — whose body is a msgpack **map** (so a reader sees field names)::

    application/vnd.hotline.ack    {"lane": L, "seq": S, "chain": 32B, "comment": str}
    application/vnd.hotline.drill  {"kind": "drill", "operator": bool, "deadline": float}
                                   {"kind": "answer", "lane": L, "seq": S, "chain": 32B}

An **ack** goes in the lane of the message it acknowledges (L), back to its sender;
``chain`` is the SHA-256 of the acknowledged envelope's exact bytes, so the ack names
one message beyond doubt. A **drill** (lane ``priority``) asks the far daemon to answer
at once, and with ``operator`` its operator to acknowledge it within ``deadline``
seconds; the **answer** names the drill the same way an ack does.

Bodies come from the peer: ``decode_*_untrusted`` check the size first, unpack with
limits on every length (``strict_map_key``, ``use_list=False``, ext types refused),
then check the exact schema, and raise only ``DecodeError``/``LimitError``.

``describe`` gives the one line ``inbox`` shows instead of such a body, and
``needs_operator_ack`` says which received messages our operator owes an ack
(``inbox``, ``inbox --pending``, ``status`` ``operator_owed``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from hotline.errors import DecodeError, LimitError
from hotline.proto.envelope import HASH_LEN, Envelope
from hotline.proto.lanes import LANES, MAX_SEQ, message_id

ACK_TYPE = "application/vnd.hotline.ack"
DRILL_TYPE = "application/vnd.hotline.drill"
MAX_COMMENT = 1024  # bytes of UTF-8 (the control socket's limit too)
MAX_BODY = MAX_COMMENT + 256  # an ack with the longest comment fits well within this
MAX_DRILL_DEADLINE = 10**7  # seconds (~115 days)

_ACK_FIELDS = frozenset({"lane", "seq", "chain", "comment"})
_DRILL_FIELDS = frozenset({"kind", "operator", "deadline"})
_ANSWER_FIELDS = frozenset({"kind", "lane", "seq", "chain"})


@dataclass(frozen=True)
class AckBody:
    """An operator acknowledgement of message ``seq`` of ``lane`` whose hash is ``chain``."""

    lane: int
    seq: int
    chain: bytes
    comment: str = ""


@dataclass(frozen=True)
class DrillCall:
    """A drill: answer at once; with ``operator``, the operator acks within ``deadline`` s."""

    operator: bool
    deadline: float


@dataclass(frozen=True)
class DrillAnswer:
    """The far daemon's answer to drill ``seq`` of ``lane`` (hash ``chain``)."""

    lane: int
    seq: int
    chain: bytes


def encode_ack(ack: AckBody) -> bytes:
    """The body of an ``application/vnd.hotline.ack`` envelope."""
    return _pack({"lane": ack.lane, "seq": ack.seq, "chain": ack.chain,
                  "comment": ack.comment})


def encode_drill(call: DrillCall) -> bytes:
    """The body of a drill."""
    return _pack({"kind": "drill", "operator": call.operator, "deadline": call.deadline})


def encode_answer(answer: DrillAnswer) -> bytes:
    """The body of a drill's answer."""
    return _pack({"kind": "answer", "lane": answer.lane, "seq": answer.seq,
                  "chain": answer.chain})


def decode_ack_untrusted(body: bytes) -> AckBody:
    """The peer's ack body, checked.

    Raises:
        DecodeError, LimitError: not an ack body (see the module header).
    """
    m = _unpack_map_untrusted(body, _ACK_FIELDS)
    comment = m["comment"]
    if not isinstance(comment, str) or len(comment.encode()) > MAX_COMMENT:
        raise DecodeError(f"ack comment must be a string of at most {MAX_COMMENT} bytes")
    return AckBody(*_names_message(m), comment)


def decode_drill_untrusted(body: bytes) -> DrillCall | DrillAnswer:
    """The peer's drill or drill answer, checked.

    Raises:
        DecodeError, LimitError: neither (see the module header).
    """
    m = _unpack_map_untrusted(body, None)
    kind = m.get("kind")
    if kind == "drill":
        _exact(m, _DRILL_FIELDS)
        operator, deadline = m["operator"], m["deadline"]
        if not isinstance(operator, bool):
            raise DecodeError("drill 'operator' must be a boolean")
        if (isinstance(deadline, bool) or not isinstance(deadline, int | float)
                or not math.isfinite(deadline) or not 0 <= deadline <= MAX_DRILL_DEADLINE):
            raise DecodeError(f"drill 'deadline' must be seconds in 0..{MAX_DRILL_DEADLINE}")
        return DrillCall(operator, float(deadline))
    if kind == "answer":
        _exact(m, _ANSWER_FIELDS)
        return DrillAnswer(*_names_message(m))
    raise DecodeError("drill body 'kind' must be 'drill' or 'answer'")


def needs_operator_ack(env: Envelope, lanes: Collection[int]) -> bool:
    """Whether the receiver's operator owes an ack for ``env``: a message of a lane in
    ``lanes`` (config ``operator_ack``) that is not itself an ack or a drill, or a drill
    that asks for one."""
    if env.type == ACK_TYPE:
        return False
    if env.type == DRILL_TYPE:
        try:
            call = decode_drill_untrusted(env.body)
        except (DecodeError, LimitError):
            return False
        return isinstance(call, DrillCall) and call.operator
    return env.lane in lanes


def describe(env: Envelope) -> str | None:
    """What ``inbox`` shows for an ack or a drill (None for other types): e.g.
    ``acknowledges Z1: seen``. The comment is the peer's text: escape it for display."""
    try:
        if env.type == ACK_TYPE:
            ack = decode_ack_untrusted(env.body)
            said = f": {ack.comment}" if ack.comment else ""
            return f"acknowledges {message_id(ack.lane, ack.seq)}{said}"
        if env.type == DRILL_TYPE:
            drill = decode_drill_untrusted(env.body)
            if isinstance(drill, DrillAnswer):
                return f"drill answer to {message_id(drill.lane, drill.seq)}"
            own = message_id(env.lane, env.seq)
            if drill.operator:
                return (f"drill: our daemon answered; acknowledge it with "
                        f"'hotline ack {own}' within {drill.deadline:g} s")
            return "drill: our daemon answered; nothing to do"
    except (DecodeError, LimitError) as err:
        return f"malformed {env.type} body ({err})"
    return None


# --- msgpack with limits ----------------------------------------------------------------


def _pack(m: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(m, use_bin_type=True)
    return data


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext type {code} is not allowed")


def _unpack_map_untrusted(body: bytes, fields: frozenset[str] | None) -> Mapping[str, Any]:
    if len(body) > MAX_BODY:
        raise LimitError(f"body of {len(body)} bytes is over {MAX_BODY}")
    try:
        value = msgpack.unpackb(
            body, raw=False, use_list=False, strict_map_key=True, max_bin_len=HASH_LEN,
            max_str_len=MAX_COMMENT, max_array_len=0, max_map_len=8, max_ext_len=0,
            ext_hook=_refuse_ext)
    except Exception as err:  # msgpack raises many types (ValueError, ExtraData, …)
        raise DecodeError(f"body is not valid msgpack: {type(err).__name__}") from err
    if not isinstance(value, dict):
        raise DecodeError("body is not a msgpack map")
    if fields is not None:
        _exact(value, fields)
    return value


def _exact(m: Mapping[str, Any], fields: frozenset[str]) -> None:
    if set(m) != fields:
        raise DecodeError(f"body fields must be exactly {sorted(fields)}")


def _names_message(m: Mapping[str, Any]) -> tuple[int, int, bytes]:
    """(lane, seq, chain) of the message an ack or answer names."""
    lane, seq, chain = m["lane"], m["seq"], m["chain"]
    if type(lane) is not int or lane not in LANES:
        raise DecodeError("'lane' must be 0 (flash) .. 3 (routine)")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise DecodeError("'seq' must be an integer in 1..2^63-1")
    if not isinstance(chain, bytes) or len(chain) != HASH_LEN:
        raise DecodeError(f"'chain' must be {HASH_LEN} bytes")
    return lane, seq, chain
