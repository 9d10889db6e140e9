"""Log lines: the heartbeat contract, JSON, journald prefixes and the native socket."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from hotline.daemon.logs import (
    MESSAGE_IDS,
    HeartbeatSchedule,
    LinkSnapshot,
    Logger,
    PathSnapshot,
    format_value,
    heartbeat_line,
    journal_datagram,
)
from hotline.errors import DecodeError

TCP, UDP = "tcp://203.0.113.7:7411", "udp://203.0.113.7:7411"


def snap(state: str = "up", **kw: Any) -> LinkSnapshot:
    fields: dict[str, Any] = {
        "peer": "moscow", "state": state, "active": TCP,
        "paths": (PathSnapshot(TCP, "up", 0.42, 0.1), PathSnapshot(UDP, "down", 3.0, 9.5)),
        "out_seq": 12, "acked": 11, "in_seq": 7, "backlog": 1, "skew_ms": -1.5,
        "session_age_s": 30.0,
    }
    fields.update(kw)
    return LinkSnapshot(**fields)


def test_heartbeat_line_contract() -> None:
    assert heartbeat_line(snap()) == (
        f"heartbeat peer=moscow state=up active={TCP} rtt_ms=0.42 "
        f"paths={TCP}:up:0.42,{UDP}:down out_seq=12 acked=11 in_seq=7 backlog=1 "
        "skew_ms=-1.50"
    )


def test_heartbeat_line_unknowns() -> None:
    s = LinkSnapshot("moscow", "down", None, (PathSnapshot(TCP, "down"),))
    assert heartbeat_line(s) == (
        f"heartbeat peer=moscow state=down active=- rtt_ms=- paths={TCP}:down "
        "out_seq=0 acked=0 in_seq=0 backlog=0 skew_ms=-"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"), ("two words", '"two words"'), ("", '""'), ("a=b", '"a=b"'),
        ('q"uote', '"q\\"uote"'), ("line\nbreak", '"line\\nbreak"'), (None, "-"),
        (True, "true"), (3, "3"), (0.123, "0.12"),
        ("csi\u009b2J", '"csi\\u009b2J"'), ("rlo\u202eexe", '"rlo\\u202eexe"'),
        ("esc\x1b]0;t\x07", '"esc\\u001b]0;t\\u0007"'), ("del\x7f", '"del\\u007f"'),
        ("\u041c\u043e\u0441\u043a\u0432\u0430", "\u041c\u043e\u0441\u043a\u0432\u0430"),
    ],
)
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text


def test_text_events() -> None:
    out = io.StringIO()
    log = Logger(out)
    log.state("moscow", TCP, "down", "no packet for 3.0 s")
    log.auth("moscow", "bad mac1", UDP)
    log.insecure("/etc/hotline/keys/x", "mode 0644")
    log.event("daemon", 5, action="ready", paths=2)
    log.state("moscow", None, "up")
    assert out.getvalue().splitlines() == [
        f'state peer=moscow path={TCP} change=down reason="no packet for 3.0 s"',
        f'auth peer=moscow path={UDP} reason="bad mac1"',
        'insecure path=/etc/hotline/keys/x reason="mode 0644"',
        "daemon action=ready paths=2",
        "state peer=moscow path=- change=up reason=-",
    ]


def test_json_format() -> None:
    out = io.StringIO()
    log = Logger(out, "json", clock=lambda: 1_700_000_000.25)
    log.heartbeat(snap())
    log.state("moscow", UDP, "up")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["ts"] == "2023-11-14T22:13:20.250Z"
    assert first["event"] == "heartbeat"
    assert first["priority"] == 6
    for key in ("peer", "state", "active", "paths", "out_seq", "acked", "in_seq",
                "backlog", "skew_ms"):
        assert key in first
    assert first["paths"][0] == {"url": TCP, "state": "up", "rtt_ms": 0.42,
                                 "last_heard_s": 0.1}
    assert second == {"ts": "2023-11-14T22:13:20.250Z", "event": "state", "priority": 5,
                      "peer": "moscow", "path": UDP, "change": "up", "reason": None}


def test_status_json_round_trip() -> None:
    s = snap()
    d = json.loads(json.dumps(s.to_json_dict()))
    assert LinkSnapshot.from_json_dict_untrusted(d) == LinkSnapshot(
        **{**s.__dict__, "paths": tuple(s.paths)})


@pytest.mark.parametrize("bad", [{}, {"peer": 1}, [], {**snap().to_json_dict(), "acked": "x"}])
def test_status_json_bad(bad: Any) -> None:
    with pytest.raises(DecodeError):
        LinkSnapshot.from_json_dict_untrusted(bad)


def test_debug_dropped_unless_enabled() -> None:
    out = io.StringIO()
    Logger(out).event("debug", 7, what="x")
    assert out.getvalue() == ""
    Logger(out, debug=True).event("debug", 7, what="x")
    assert out.getvalue() == "debug what=x\n"


def test_timestamps() -> None:
    out = io.StringIO()
    Logger(out, timestamps=True, clock=lambda: 0.0).event("daemon", 5, action="ready")
    assert out.getvalue() == "1970-01-01T00:00:00.000Z daemon action=ready\n"


def test_sinks_get_event_objects() -> None:
    got: list[dict[str, Any]] = []
    log = Logger(io.StringIO())
    remove = log.add_sink(got.append)
    log.heartbeat(snap())
    remove()
    log.heartbeat(snap())
    assert len(got) == 1
    assert got[0]["event"] == "heartbeat"
    assert got[0]["state"] == "up"


# --- journald ---------------------------------------------------------------------------


@pytest.fixture
def logfile(tmp_path: Path) -> Iterator[TextIO]:
    with open(tmp_path / "log", "w+") as f:
        yield f


def _journal_env(stream: TextIO) -> dict[str, str]:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def _read(stream: TextIO) -> list[str]:
    stream.seek(0)
    return stream.read().splitlines()


def test_priority_prefixes_under_journal(logfile: TextIO, tmp_path: Path) -> None:
    log = Logger.from_env(logfile, environ=_journal_env(logfile),
                          journal_path=str(tmp_path / "no-journal"))
    log.heartbeat(snap())
    log.heartbeat(snap("degraded"))
    log.state("moscow", TCP, "up")
    log.state("moscow", TCP, "down", "timeout")
    log.auth("moscow", "bad signature")
    log.insecure("/k", "mode 0644")
    prefixes = [line[:3] for line in _read(logfile)]
    assert prefixes == ["<6>", "<4>", "<5>", "<4>", "<3>", "<2>"]
    assert _read(logfile)[0] == "<6>" + heartbeat_line(snap())


def test_no_prefix_when_journal_stream_is_another_file(logfile: TextIO) -> None:
    log = Logger.from_env(logfile, environ={"JOURNAL_STREAM": "1:2"})
    log.heartbeat(snap())
    assert _read(logfile) == [heartbeat_line(snap())]


def _parse_native(data: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            data = rest
        else:
            (n,) = struct.unpack("<Q", rest[:8])
            fields[line.decode()] = rest[8 : 8 + n].decode()
            assert rest[8 + n : 9 + n] == b"\n"
            data = rest[9 + n :]
    return fields


@pytest.fixture
def journal(unix_dgram: tuple[socket.socket, str]) -> tuple[socket.socket, str]:
    return unix_dgram


def test_native_journal_fields(logfile: TextIO, journal: tuple[socket.socket, str]) -> None:
    sock, path = journal
    log = Logger.from_env(logfile, environ=_journal_env(logfile), journal_path=path)
    log.heartbeat(snap())
    fields = _parse_native(sock.recv(65536))
    assert fields["MESSAGE"] == heartbeat_line(snap())
    assert fields["PRIORITY"] == "6"
    assert fields["SYSLOG_IDENTIFIER"] == "hotline"
    assert fields["MESSAGE_ID"] == MESSAGE_IDS["heartbeat"]
    assert fields["HOTLINE_EVENT"] == "heartbeat"
    assert fields["HOTLINE_PEER"] == "moscow"
    assert fields["HOTLINE_STATE"] == "up"
    assert fields["HOTLINE_RTT_MS"] == "0.42"
    log.auth("moscow", "bad mac1")
    fields = _parse_native(sock.recv(65536))
    assert fields["PRIORITY"] == "3"
    assert fields["HOTLINE_REASON"] == "bad mac1"
    assert _read(logfile) == []  # native socket used: nothing on the stream too
    assert log.journal is not None
    log.journal.close()


def test_native_falls_back_to_stream(logfile: TextIO, tmp_path: Path) -> None:
    dead = tmp_path / "dead.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(dead))
    sock.close()  # the file stays, nobody listens
    log = Logger.from_env(logfile, environ=_journal_env(logfile), journal_path=str(dead))
    assert log.journal is not None
    log.state("moscow", TCP, "down", "timeout")
    assert _read(logfile) == [f"<4>state peer=moscow path={TCP} change=down reason=timeout"]
    log.journal.close()


def test_journal_datagram_binary_safe() -> None:
    data = journal_datagram({"MESSAGE": "a\nb", "PRIORITY": "6"})
    assert data == b"MESSAGE\n" + struct.pack("<Q", 3) + b"a\nb\nPRIORITY=6\n"
    assert _parse_native(data) == {"MESSAGE": "a\nb", "PRIORITY": "6"}


# --- schedule ---------------------------------------------------------------------------


def test_heartbeat_schedule() -> None:
    sched = HeartbeatSchedule(60.0)
    assert sched.due(snap(), 0.0)
    assert not sched.due(snap(out_seq=99), 30.0)  # counters alone are no change
    assert sched.due(snap("degraded"), 31.0)  # state change: at once
    assert not sched.due(snap("degraded"), 32.0)
    down_udp = (PathSnapshot(TCP, "up", 0.4), PathSnapshot(UDP, "up", 0.5))
    assert sched.due(snap("degraded", paths=down_udp), 33.0)  # a path changed
    assert sched.due(snap("degraded", paths=down_udp), 93.0)  # log_every elapsed
