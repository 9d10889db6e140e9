"""Control-socket schema (hotline.proto.control) and the blocking client."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.control_client import ControlClient, connect
from hotline.errors import (
    DaemonUnreachableError,
    DecodeError,
    LimitError,
    LocalProtocolError,
    NotAcknowledgedError,
    RemoteProtocolError,
    UserError,
)
from hotline.proto.control import (
    MAX_FRAME,
    EventsRequest,
    FrameBuffer,
    InboxRequest,
    Request,
    SendRequest,
    StatusRequest,
    WaitRequest,
    decode_reply_untrusted,
    decode_request_untrusted,
    encode_frame,
    encode_reply,
    encode_request,
    error_reply,
    ok_reply,
)

REQUESTS: list[Request] = [
    SendRequest("text/plain", (b"hello",), False),
    SendRequest("application/octet-stream", (b"", b"\x00" * 1000, "ü".encode()), True),
    WaitRequest(7, 2.5),
    WaitRequest(0, None),
    StatusRequest(),
    InboxRequest(0, False),
    InboxRequest(2**63 - 1, True),
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


def test_reply_round_trip() -> None:
    for reply in (ok_reply(seqs=[1, 2]), ok_reply(msg={"seq": 1, "body": b"\xff"}),
                  error_reply("not acknowledged within 5 s", 75)):
        decoded = decode_reply_untrusted(_payload(encode_reply(reply)))
        assert decoded == {k: tuple(v) if isinstance(v, list) else v for k, v in reply.items()}


@pytest.mark.parametrize(
    "obj",
    [
        [], "send", {"op": "nope"}, {"op": b"send"}, {"op": "status", "x": 1},
        {"op": "send", "type": "text/plain", "bodies": [b"x"]},
        {"op": "send", "type": "text/plain", "bodies": [], "wait": False},
        {"op": "send", "type": "text/plain", "bodies": ["str"], "wait": False},
        {"op": "send", "type": "", "bodies": [b"x"], "wait": False},
        {"op": "send", "type": "a\nb", "bodies": [b"x"], "wait": False},
        {"op": "send", "type": "t" * 256, "bodies": [b"x"], "wait": False},
        {"op": "send", "type": "text/plain", "bodies": [b"x"], "wait": 1},
        {"op": "wait", "upto": -1, "timeout": None},
        {"op": "wait", "upto": True, "timeout": None},
        {"op": "wait", "upto": 1, "timeout": -1.0},
        {"op": "wait", "upto": 1, "timeout": float("nan")},
        {"op": "wait", "upto": 1, "timeout": "5"},
        {"op": "inbox", "since": 2**63, "follow": False},
        {"op": "inbox", "since": 0},
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
    [{}, {"ok": 1}, {"ok": False}, {"ok": False, "error": "x"},
     {"ok": False, "error": "x", "code": 0}, {"ok": False, "error": "x", "code": True},
     {"ok": False, "error": b"x", "code": 3}],
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
_maps = st.fixed_dictionaries(
    {"op": st.sampled_from(["send", "wait", "status", "inbox", "events", "x"])},
    optional={k: _values for k in ("type", "bodies", "wait", "upto", "timeout", "since",
                                   "follow", "ok", "error", "code")},
)


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
@given(_maps | _values)
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
    server.sendall(encode_reply(ok_reply(seqs=[5])))
    assert client.request(SendRequest("text/plain", (b"hi",))) == {"ok": True, "seqs": (5,)}
    assert _server_read(server) == SendRequest("text/plain", (b"hi",))


def test_client_error_reply_raises_with_code(pair: tuple[ControlClient, socket.socket]) -> None:
    client, server = pair
    server.sendall(encode_reply(error_reply("not acknowledged within 1 s", 75)))
    with pytest.raises(NotAcknowledgedError, match="within 1 s") as info:
        client.request(WaitRequest(1, 1.0))
    assert info.value.exit_code == 75
    server.sendall(encode_reply(error_reply("odd", 42)))
    with pytest.raises(UserError) as info2:
        client.read_reply()
    assert info2.value.exit_code == 42


def test_client_stream_until_close(pair: tuple[ControlClient, socket.socket]) -> None:
    client, server = pair
    frames = [encode_reply(ok_reply(msg={"seq": i})) for i in range(1, 4)]
    server.sendall(b"".join(frames))
    server.shutdown(socket.SHUT_WR)
    client.send(InboxRequest(0, True))
    assert [r["msg"]["seq"] for r in client.replies()] == [1, 2, 3]


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
