"""Control-socket schema (hotline.proto.control) and the blocking client."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline import errors
from hotline.control_client import ControlClient, connect
from hotline.errors import (
    DaemonUnreachableError,
    DecodeError,
    LimitError,
    LocalProtocolError,
    NotAcknowledgedError,
    RemoteProtocolError,
    StoreFailedError,
    UserError,
)
from hotline.proto.control import (
    MAX_COMMENT,
    MAX_FRAME,
    FrameBuffer,
    decode_reply_untrusted,
    decode_request_untrusted,
    encode_frame,
    encode_reply,
    encode_request,
    error_reply,
    ok_reply,
    outcome_reply,
)
from hotline.proto.lanes import FLASH, IMMEDIATE, PRIORITY, ROUTINE
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
from hotline.proto.status import LaneSnapshot, LinkSnapshot, OperatorItem, PathSnapshot

REQUESTS: list[Request] = [
    SendRequest("text/plain", (b"hello",)),
    SendRequest("application/octet-stream", (b"", b"\x00" * 1000, "ü".encode()), ROUTINE,
                (), True, False, 2.5),
    SendRequest("text/plain", (b"a", b"b"), FLASH, ("batch-7:1", "batch-7:2"), True, True, 0.0),
    SendRequest("text/plain; charset=utf-8", (b"x",), IMMEDIATE, ("x" * MAX_SEND_ID,),
                False, True, None),
    SendRequest("text/plain", (b"x",), PRIORITY, ("é" * (MAX_SEND_ID // 2),)),
    WaitRequest(ROUTINE, 7, 2.5),
    WaitRequest(FLASH, 0, None),
    WaitRequest(IMMEDIATE, 2**63 - 1, 600.0, True, 3),
    StatusRequest(),
    OperatorAckRequest(((FLASH, 1),)),
    OperatorAckRequest(((FLASH, 3), (IMMEDIATE, 2**63 - 1), (ROUTINE, 9)),
                       "é" * (MAX_COMMENT // 2)),  # exactly MAX_COMMENT bytes
    DrillRequest(),
    InboxRequest(),
    InboxRequest(0, None, True),
    InboxRequest(2**63 - 1, None, False, True),
    InboxRequest(0, (FLASH, 17), True, True),
    InboxRequest(12, (ROUTINE, 1234)),
    EventsRequest(),
]


def _payload(frame: bytes) -> bytes:
    (n,) = struct.unpack(">I", frame[:4])
    assert len(frame) == 4 + n
    return frame[4:]


def _packed(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


@pytest.mark.parametrize("req", REQUESTS, ids=repr)
def test_request_round_trip(req: Request) -> None:
    assert decode_request_untrusted(_payload(encode_request(req))) == req


def test_every_request_type_is_round_tripped() -> None:
    assert {type(r) for r in REQUESTS} == set(typing.get_args(Request))


def test_wire_form_of_a_send() -> None:
    """The map a client sends for ``send -p flash --id X --wait`` (DESIGN §6, §9)."""
    req = SendRequest("text/plain", (b"a",), FLASH, ("X:1",), True, False, 5.0)
    assert msgpack.unpackb(_payload(encode_request(req))) == {
        "op": "send", "type": "text/plain", "bodies": [b"a"], "lane": 0, "ids": ["X:1"],
        "wait": True, "wait_operator": False, "timeout": 5.0}
    ack = OperatorAckRequest(((FLASH, 3),), "ok")
    assert msgpack.unpackb(_payload(encode_request(ack))) == {
        "op": "ack", "ids": [[0, 3]], "comment": "ok"}


def test_reply_round_trip() -> None:
    for reply in (ok_reply(ids=[[FLASH, 1], [FLASH, 2]]), ok_reply(msg={"seq": 1, "body": b"\xff"}),
                  error_reply(NotAcknowledgedError, "not acknowledged within 5 s")):
        decoded = decode_reply_untrusted(_payload(encode_reply(reply)))
        assert decoded == msgpack.unpackb(_packed(reply), use_list=False)


def test_error_reply_names_the_class_and_its_exit_code() -> None:
    assert error_reply(StoreFailedError, "disk full") == {
        "ok": False, "error": "disk full", "kind": "StoreFailedError", "code": 74}


# --- outcomes: encoded here and nowhere else ----------------------------------------------

_SNAPSHOT = LinkSnapshot(
    "moscow", "up", "tcp://203.0.113.7:7411",
    (PathSnapshot("tcp://203.0.113.7:7411", "up", 0.42, 0.1),),
    (LaneSnapshot(1, 1, 0), LaneSnapshot(), LaneSnapshot(), LaneSnapshot(12, 11, 7)),
    operator_pending=(OperatorItem("Z1", 3.0, 597.0),),
)


@pytest.mark.parametrize(
    ("outcome", "reply"),
    [
        (Stored(((FLASH, 1), (ROUTINE, 2**63 - 1))),
         {"ok": True, "ids": [[0, 1], [3, 2**63 - 1]]}),
        (Stored(()), {"ok": True, "ids": []}),
        (Acknowledged(IMMEDIATE, 9), {"ok": True, "lane": 1, "acked": 9}),
        (StatusReport(_SNAPSHOT), {"ok": True, "status": _SNAPSHOT.to_json_dict()}),
        (Refused(NotAcknowledgedError, "not acknowledged within 5 s"),
         {"ok": False, "error": "not acknowledged within 5 s", "kind": "NotAcknowledgedError",
          "code": 75}),
        (Refused(StoreFailedError, "disk full"),
         {"ok": False, "error": "disk full", "kind": "StoreFailedError", "code": 74}),
    ],
    ids=["stored", "stored-none", "acknowledged", "status", "refused-75", "refused-74"],
)
def test_outcome_reply(outcome: Outcome, reply: dict[str, Any]) -> None:
    assert outcome_reply(outcome) == reply
    # and it crosses the socket
    decoded = decode_reply_untrusted(_payload(encode_reply(outcome_reply(outcome))))
    assert decoded == msgpack.unpackb(_packed(reply), use_list=False)


def test_every_outcome_type_has_a_reply() -> None:
    assert set(typing.get_args(Outcome)) == {Stored, Acknowledged, StatusReport, Refused}


# --- refusals -----------------------------------------------------------------------------

_SEND = {"op": "send", "type": "text/plain", "bodies": [b"x"], "lane": 3, "ids": [],
         "wait": False, "wait_operator": False, "timeout": None}
_WAIT = {"op": "wait", "lane": 3, "upto": 1, "timeout": None, "operator": False, "first": 0}
_INBOX = {"op": "inbox", "cursor": 0, "since": None, "follow": False, "pending": False}
_ACK = {"op": "ack", "ids": [[0, 1]], "comment": ""}


def _without(m: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != key}


def test_the_valid_maps_used_below_decode() -> None:
    for m in (_SEND, _WAIT, _INBOX, _ACK, {"op": "status"}, {"op": "events"}, {"op": "drill"}):
        decode_request_untrusted(_packed(m))


@pytest.mark.parametrize(
    "obj",
    [
        [], "send", {"op": "nope"}, {"op": b"send"}, {"op": 1}, {},
        {"op": "status", "x": 1}, {"op": "events", "follow": True}, {"op": "drill", "now": 1},
        # send
        *({**_without(_SEND, k)} for k in _SEND if k != "op"),
        {**_SEND, "extra": 1},
        {**_SEND, "seqs": [1]},
        {**_SEND, "bodies": []}, {**_SEND, "bodies": ["str"]}, {**_SEND, "bodies": b"x"},
        {**_SEND, "bodies": [b"x", None]},
        {**_SEND, "type": ""}, {**_SEND, "type": "a\nb"}, {**_SEND, "type": "t" * 256},
        {**_SEND, "type": "text"}, {**_SEND, "type": "a/" + "b" * 63}, {**_SEND, "type": None},
        {**_SEND, "lane": 4}, {**_SEND, "lane": -1}, {**_SEND, "lane": True},
        {**_SEND, "lane": None}, {**_SEND, "lane": "flash"}, {**_SEND, "lane": 0.0},
        {**_SEND, "ids": None}, {**_SEND, "ids": "a"}, {**_SEND, "ids": [""]},
        {**_SEND, "ids": [b"a"]}, {**_SEND, "ids": [1]},
        {**_SEND, "ids": ["x" * (MAX_SEND_ID + 1)]},
        {**_SEND, "ids": ["é" * (MAX_SEND_ID // 2 + 1)]},  # 130 bytes in 65 characters
        {**_SEND, "ids": ["a", "b"]},  # two ids, one body
        {**_SEND, "bodies": [b"x", b"y"], "ids": ["a"]},
        {**_SEND, "wait": 1}, {**_SEND, "wait": None}, {**_SEND, "wait_operator": "yes"},
        {**_SEND, "timeout": -1.0}, {**_SEND, "timeout": float("nan")},
        {**_SEND, "timeout": float("inf")}, {**_SEND, "timeout": "5"},
        {**_SEND, "timeout": True},
        # wait
        *({**_without(_WAIT, k)} for k in _WAIT if k != "op"),
        {**_WAIT, "upto": -1}, {**_WAIT, "upto": True}, {**_WAIT, "upto": 2**63},
        {**_WAIT, "upto": 1.0}, {**_WAIT, "lane": 4}, {**_WAIT, "lane": None},
        {**_WAIT, "timeout": -1.0}, {**_WAIT, "timeout": float("nan")},
        {**_WAIT, "timeout": "5"}, {**_WAIT, "operator": 1}, {**_WAIT, "first": -1},
        {**_WAIT, "first": None}, {**_WAIT, "extra": 0},
        # inbox
        *({**_without(_INBOX, k)} for k in _INBOX if k != "op"),
        {**_INBOX, "cursor": -1}, {**_INBOX, "cursor": 2**63}, {**_INBOX, "cursor": None},
        {**_INBOX, "since": 5}, {**_INBOX, "since": [3]}, {**_INBOX, "since": [3, 1, 1]},
        {**_INBOX, "since": [4, 1]}, {**_INBOX, "since": [3, 0]}, {**_INBOX, "since": [3, -1]},
        {**_INBOX, "since": [3, True]}, {**_INBOX, "since": [True, 1]},
        {**_INBOX, "since": [3, 2**63]}, {**_INBOX, "since": "Z17"},
        {**_INBOX, "follow": 1}, {**_INBOX, "pending": None},
        # ack
        *({**_without(_ACK, k)} for k in _ACK if k != "op"),
        {**_ACK, "ids": []}, {**_ACK, "ids": None}, {**_ACK, "ids": [0, 1]},
        {**_ACK, "ids": [[0]]}, {**_ACK, "ids": [[0, 0]]}, {**_ACK, "ids": [[4, 1]]},
        {**_ACK, "ids": [[-1, 1]]}, {**_ACK, "ids": [[True, 1]]}, {**_ACK, "ids": [[0, 1.0]]},
        {**_ACK, "ids": [[0, 1], "Z2"]}, {**_ACK, "comment": None},
        {**_ACK, "comment": b"seen"}, {**_ACK, "comment": "x" * (MAX_COMMENT + 1)},
        {**_ACK, "comment": "é" * (MAX_COMMENT // 2 + 1)},  # over the limit in bytes
        {**_ACK, "extra": 1},
    ],
)
def test_bad_requests(obj: Any) -> None:
    with pytest.raises(DecodeError):
        decode_request_untrusted(_packed(obj))


@pytest.mark.parametrize(
    "payload",
    [
        b"", b"\xc1", _packed({"op": "status"}) + b"\x00", _packed({1: 2}),
        _packed({"op": msgpack.ExtType(1, b"x")}),
        b"\x81\xa2op\xd4\x01\x00",  # fixext1
        b"\x81\xa2op\xc7\x00\x05",  # ext8 of length 0
        b"\x81\xa2op\xa2\xff\xfe",  # invalid UTF-8 str
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 G items
        b"\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
    ],
)
def test_bad_payloads(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_request_untrusted(payload)
    with pytest.raises(RemoteProtocolError):
        decode_reply_untrusted(payload)


@pytest.mark.parametrize(
    "obj",
    [{}, {"ok": 1}, {"ok": None}, {"ok": False}, {"ok": False, "error": "x"},
     {"ok": False, "kind": "UserError"}, {"ok": False, "error": "x", "code": 75},
     {"ok": False, "error": "x", "kind": 3}, {"ok": False, "error": b"x", "kind": "UserError"},
     {"ok": False, "error": "x", "kind": None}, [True]],
)
def test_bad_replies(obj: Any) -> None:
    with pytest.raises(DecodeError):
        decode_reply_untrusted(_packed(obj))


def test_encode_refuses_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        encode_reply({"seqs": [1]})
    with pytest.raises(LocalProtocolError):
        encode_reply({"ok": True, "x": object()})
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * (MAX_FRAME + 1))


def test_frame_buffer_incremental() -> None:
    stream = b"".join(encode_request(r) for r in REQUESTS)
    buf = FrameBuffer()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += buf.feed_untrusted(stream[i : i + 1])
    assert [decode_request_untrusted(p) for p in out] == REQUESTS
    assert buf.pending == 0


def test_frame_buffer_limit_checked_from_header() -> None:
    buf = FrameBuffer(max_frame=10)
    assert buf.feed_untrusted(struct.pack(">I", 10) + b"x" * 10) == [b"x" * 10]
    with pytest.raises(LimitError):
        buf.feed_untrusted(struct.pack(">I", 11))


# --- fuzz -------------------------------------------------------------------------------

_leaf = (st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats()
         | st.text(max_size=20) | st.binary(max_size=20))
_values = st.recursive(
    _leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                               max_size=4),
    max_leaves=6)
_VALID_MAPS = (_SEND, _WAIT, _INBOX, _ACK, {"op": "status"}, {"op": "events"}, {"op": "drill"},
               {"ok": True}, {"ok": False, "error": "x", "kind": "UserError", "code": 2})


@st.composite
def _maps(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request or reply map with some fields replaced, removed or added."""
    m = dict(draw(st.sampled_from(_VALID_MAPS)))
    keys = sorted({*m, "op", "ok", "extra"})
    for key in draw(st.lists(st.sampled_from(keys), max_size=3)):
        if draw(st.booleans()):
            m[key] = draw(_values)
        else:
            m.pop(key, None)
    return m


def _packable(obj: Any) -> bytes | None:
    try:
        return _packed(obj)
    except (OverflowError, ValueError, TypeError):
        return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    for decode in (decode_request_untrusted, decode_reply_untrusted):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)


@settings(max_examples=150, deadline=None)
@given(_maps() | _values)
def test_fuzz_structured(obj: Any) -> None:
    data = _packable(obj)
    if data is None:
        return
    try:
        req = decode_request_untrusted(data)
    except RemoteProtocolError:
        pass
    else:  # whatever decodes, re-encodes to the same request
        assert decode_request_untrusted(_payload(encode_request(req))) == req
    try:
        reply = decode_reply_untrusted(data)
    except RemoteProtocolError:
        pass
    else:
        assert isinstance(reply["ok"], bool)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=20))
def test_fuzz_frame_buffer(data: bytes, cuts: list[int]) -> None:
    buf = FrameBuffer(max_frame=100)
    pos = 0
    try:
        for n in [*cuts, len(data)]:
            for payload in buf.feed_untrusted(data[pos : pos + n]):
                assert len(payload) <= 100
            pos += n
    except LimitError:
        pass
    assert buf.pending < 4 + 100


# --- the client -------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[ControlClient, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(5)
    client = ControlClient(a, "/run/test.sock")
    yield client, b
    client.close()
    b.close()


def _server_read(sock: socket.socket) -> Request:
    buf = FrameBuffer()
    while True:
        frames = buf.feed_untrusted(sock.recv(65536))
        if frames:
            return decode_request_untrusted(frames[0])


def test_client_request_reply(pair: tuple[ControlClient, socket.socket]) -> None:
    client, server = pair
    req = SendRequest("text/plain", (b"hi",), FLASH, ("op-1",), True)
    server.sendall(encode_reply(outcome_reply(Stored(((FLASH, 5),)))))
    assert client.request(req) == {"ok": True, "ids": ((FLASH, 5),)}
    assert _server_read(server) == req


_USER_ERRORS = sorted(
    (cls for cls in vars(errors).values()
     if isinstance(cls, type) and issubclass(cls, UserError)),
    key=lambda cls: cls.__name__)


def test_the_error_classes_carry_the_contract_exit_codes() -> None:
    """DESIGN §6 exit codes (and 74 for a store failure, issue 9), fixed by the class."""
    assert {cls.__name__: cls.exit_code for cls in _USER_ERRORS} == {
        "AccessDeniedError": 77, "BacklogFullError": 75, "CheckFailedError": 1,
        "ConfigError": 78, "DaemonUnreachableError": 3, "KeyFileError": 78,
        "KeyPermissionError": 77, "NotAcknowledgedError": 75, "StoreFailedError": 74,
        "UsageError": 2, "UserError": 2,
    }


@pytest.mark.parametrize("error", _USER_ERRORS, ids=lambda cls: cls.__name__)
def test_client_raises_the_class_named_by_kind(pair: tuple[ControlClient, socket.socket],
                                               error: type[UserError]) -> None:
    client, server = pair
    server.sendall(encode_reply(outcome_reply(Refused(error, "why, in one line"))))
    with pytest.raises(error, match="why, in one line") as info:
        client.request(WaitRequest(ROUTINE, 1, 1.0))
    assert type(info.value) is error
    assert info.value.exit_code == error.exit_code


def test_client_exit_code_comes_from_the_class_not_the_wire(
        pair: tuple[ControlClient, socket.socket]) -> None:
    client, server = pair
    reply = {**error_reply(NotAcknowledgedError, "not acknowledged within 1 s"), "code": 42}
    server.sendall(encode_reply(reply))
    with pytest.raises(NotAcknowledgedError, match="within 1 s") as info:
        client.read_reply()
    assert info.value.exit_code == 75


@pytest.mark.parametrize(
    "kind",
    ["NoSuchError", "", "HotlineError", "LocalProtocolError", "DecodeError", "StoreError",
     "Exception", "SystemExit", "user_error_class", "__builtins__", "annotations"],
)
def test_client_unknown_or_foreign_kind_is_a_plain_user_error(
        pair: tuple[ControlClient, socket.socket], kind: str) -> None:
    """A kind that names no UserError (or something else in errors.py) never raises
    anything but ``UserError``: a daemon's reply cannot make the client crash or exit 0."""
    client, server = pair
    server.sendall(encode_reply({"ok": False, "error": "odd", "kind": kind, "code": 0}))
    with pytest.raises(UserError, match="odd") as info:
        client.read_reply()
    assert type(info.value) is UserError
    assert info.value.exit_code == UserError.exit_code


def test_client_reads_the_second_reply_of_a_waiting_send(
        pair: tuple[ControlClient, socket.socket]) -> None:
    client, server = pair
    server.sendall(encode_reply(outcome_reply(Stored(((IMMEDIATE, 4),))))
                   + encode_reply({**outcome_reply(Acknowledged(IMMEDIATE, 4)), "ack_ms": 1.5}))
    assert client.request(SendRequest("text/plain", (b"x",), IMMEDIATE, wait=True))["ids"] == (
        (IMMEDIATE, 4),)
    assert client.read_reply() == {"ok": True, "lane": IMMEDIATE, "acked": 4, "ack_ms": 1.5}


def test_client_stream_until_close(pair: tuple[ControlClient, socket.socket]) -> None:
    client, server = pair
    frames = [encode_reply(ok_reply(msg={"seq": i})) for i in range(1, 4)]
    server.sendall(b"".join(frames))
    server.shutdown(socket.SHUT_WR)
    client.send(InboxRequest(0, None, True))
    assert [r["msg"]["seq"] for r in client.replies()] == [1, 2, 3]
    assert _server_read(server) == InboxRequest(0, None, True)


@pytest.mark.parametrize("junk", [b"\x00\x00\x00\x02\xc1\xc1", b"\x00\x00\x00\x09abc",
                                  b"\xff\xff\xff\xff"])
def test_client_bad_or_truncated_reply(pair: tuple[ControlClient, socket.socket],
                                       junk: bytes) -> None:
    client, server = pair
    server.sendall(junk)
    server.shutdown(socket.SHUT_WR)
    with pytest.raises(DaemonUnreachableError):
        client.read_reply()


def test_connect_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "none.sock"
    with pytest.raises(DaemonUnreachableError, match="hotline@moscow") as info:
        connect(path, link="moscow")
    assert info.value.exit_code == 3
    assert str(path) in str(info.value)


def test_connect_refused(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # a stale socket file: nobody listening
    with pytest.raises(DaemonUnreachableError):
        connect(path)


def test_connect_ok(tmp_path: Path) -> None:
    path = tmp_path / "ok.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen()
        with connect(path, timeout=5) as client:
            conn, _ = s.accept()
            with conn:
                conn.sendall(encode_reply(ok_reply(status={"peer": "x"})))
                assert client.request(StatusRequest())["status"] == {"peer": "x"}


def test_connect_permission_denied(tmp_path: Path, no_dac_override: list[str]) -> None:
    path = tmp_path / "locked.sock"
    code = (
        "import sys\n"
        "from hotline.control_client import connect\n"
        "from hotline.errors import AccessDeniedError\n"
        "try:\n"
        f"    connect({str(path)!r})\n"
        "except AccessDeniedError as err:\n"
        "    print(err); sys.exit(err.exit_code)\n"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen()
        path.chmod(0o000)
        proc = subprocess.run([*no_dac_override, sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 77, proc.stdout + proc.stderr
    assert "not allowed to connect" in proc.stdout
