"""Log lines: the heartbeat contract, JSON, journald prefixes and the native socket.

The endpoint decides what is logged (``hotline.proto.notices``: a ``Notice`` per event,
``heartbeat_notice`` for the DESIGN §5 line); ``hotline.daemon.logs`` only renders.
"""

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
    Logger,
    format_line,
    format_value,
    journal_datagram,
)
from hotline.proto.lanes import NAMES
from hotline.proto.notices import Notice, heartbeat_notice
from hotline.proto.status import LaneSnapshot, LinkSnapshot, OperatorItem, PathSnapshot

TCP, UDP = "tcp://203.0.113.7:7411", "udp://203.0.113.7:7411"


def snap(state: str = "up", **kw: Any) -> LinkSnapshot:
    fields: dict[str, Any] = {
        "peer": "moscow", "state": state, "active": TCP,
        "paths": (PathSnapshot(TCP, "up", 0.42, 0.1), PathSnapshot(UDP, "down", 3.0, 9.5)),
        "lanes": (LaneSnapshot(), LaneSnapshot(), LaneSnapshot(), LaneSnapshot(12, 11, 7)),
        "skew_ms": -1.5, "session_age_s": 30.0,
    }
    fields.update(kw)
    return LinkSnapshot(**fields)


def text_line(notice: Notice) -> str:
    """The text line the daemon writes for a notice."""
    return format_line(notice.kind, notice.fields)


def emit(log: Logger, notice: Notice) -> None:
    """What the runner does with each of the endpoint's notices."""
    log.emit(notice.kind, notice.priority, notice.fields, notice.json)


def test_heartbeat_line_contract() -> None:
    assert text_line(heartbeat_notice(snap())) == (
        f"heartbeat peer=moscow state=up active={TCP} rtt_ms=0.42 "
        f"paths={TCP}:up:0.42,{UDP}:down out_seq=12 acked=11 in_seq=7 backlog=1 "
        "skew_ms=-1.50 pq=no"
    )
    assert text_line(heartbeat_notice(snap(pq=True))).endswith(" skew_ms=-1.50 pq=yes")


def test_heartbeat_line_counts_routine_seqs_and_every_lane_backlog() -> None:
    """``out_seq``/``acked``/``in_seq`` are the routine lane's (its ids are bare seqs);
    ``backlog`` is every lane's unacknowledged messages."""
    lanes = (LaneSnapshot(5, 2, 9), LaneSnapshot(1, 0, 0), LaneSnapshot(), LaneSnapshot(12, 11, 7))
    assert text_line(heartbeat_notice(snap(lanes=lanes))) == (
        f"heartbeat peer=moscow state=up active={TCP} rtt_ms=0.42 "
        f"paths={TCP}:up:0.42,{UDP}:down out_seq=12 acked=11 in_seq=7 backlog=5 "
        "skew_ms=-1.50 pq=no"
    )


def test_heartbeat_line_unknowns() -> None:
    s = LinkSnapshot("moscow", "down", None, (PathSnapshot(TCP, "down"),))
    assert text_line(heartbeat_notice(s)) == (
        f"heartbeat peer=moscow state=down active=- rtt_ms=- paths={TCP}:down "
        "out_seq=0 acked=0 in_seq=0 backlog=0 skew_ms=- pq=no"
    )


def test_heartbeat_priority_follows_the_state() -> None:
    assert [heartbeat_notice(snap(s)).priority for s in ("up", "degraded", "down")] == [6, 4, 4]


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
    emit(log, heartbeat_notice(snap()))
    log.state("moscow", UDP, "up")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["ts"] == "2023-11-14T22:13:20.250Z"
    assert first["event"] == "heartbeat"
    assert first["priority"] == 6
    assert first["paths"][0] == {"url": TCP, "state": "up", "rtt_ms": 0.42,
                                 "last_heard_s": 0.1}
    assert second == {"ts": "2023-11-14T22:13:20.250Z", "event": "state", "priority": 5,
                      "peer": "moscow", "path": UDP, "change": "up", "reason": None}


def test_json_heartbeat_is_the_status_json_object() -> None:
    """DESIGN §6 and §9: the JSON heartbeat's fields are exactly ``status --json``."""
    s = snap(lanes=(LaneSnapshot(2, 1, 3), LaneSnapshot(), LaneSnapshot(), LaneSnapshot(12, 11, 7)),
             operator_pending=(OperatorItem("Z2", 4.0, 596.0),),
             operator_owed=(OperatorItem("O1", 700.0, -100.0),))
    out = io.StringIO()
    emit(Logger(out, "json", clock=lambda: 0.0), heartbeat_notice(s))
    obj = json.loads(out.getvalue())
    assert {k: v for k, v in obj.items() if k not in ("ts", "event", "priority")} == json.loads(
        json.dumps(s.to_json_dict()))
    for key in ("peer", "state", "active", "rtt_ms", "paths", "out_seq", "acked", "in_seq",
                "backlog", "skew_ms", "lanes", "operator_pending", "operator_owed"):
        assert key in obj
    assert (obj["out_seq"], obj["acked"], obj["in_seq"], obj["backlog"]) == (12, 11, 7, 2)
    assert list(obj["lanes"]) == list(NAMES)
    assert obj["lanes"]["flash"] == {"out_seq": 2, "acked": 1, "in_seq": 3, "backlog": 1}
    assert obj["lanes"]["routine"] == {"out_seq": 12, "acked": 11, "in_seq": 7, "backlog": 1}
    assert obj["operator_pending"] == [{"id": "Z2", "age_s": 4.0, "deadline_s": 596.0}]
    assert obj["operator_owed"] == [{"id": "O1", "age_s": 700.0, "deadline_s": -100.0}]


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
    emit(log, heartbeat_notice(snap()))
    remove()
    emit(log, heartbeat_notice(snap()))
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
    emit(log, heartbeat_notice(snap()))
    emit(log, heartbeat_notice(snap("degraded")))
    log.state("moscow", TCP, "up")
    log.state("moscow", TCP, "down", "timeout")
    log.auth("moscow", "bad signature")
    log.insecure("/k", "mode 0644")
    prefixes = [line[:3] for line in _read(logfile)]
    assert prefixes == ["<6>", "<4>", "<5>", "<4>", "<3>", "<2>"]
    assert _read(logfile)[0] == "<6>" + text_line(heartbeat_notice(snap()))


def test_no_prefix_when_journal_stream_is_another_file(logfile: TextIO) -> None:
    log = Logger.from_env(logfile, environ={"JOURNAL_STREAM": "1:2"})
    emit(log, heartbeat_notice(snap()))
    assert _read(logfile) == [text_line(heartbeat_notice(snap()))]


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
    emit(log, heartbeat_notice(snap()))
    fields = _parse_native(sock.recv(65536))
    assert fields["MESSAGE"] == text_line(heartbeat_notice(snap()))
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
