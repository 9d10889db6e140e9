"""The daemon's log: heartbeat lines and events as key=value text, JSON or journald fields.

Every log record is an **event**: a kind (``heartbeat``, ``state``, ``auth``, …), a
syslog priority and ordered fields. It is rendered three ways:

* **text** (default): ``KIND key=value key=value …``. Values are printed bare unless
  they are empty or contain a space, quote, ``=``, a control character (C0, DEL, C1)
  or a format character (bidi overrides, zero-width…, hotline/textsafe.py); then they
  are JSON-quoted with every non-ASCII character as ``\\uXXXX``
  (``reason="connection refused"``), so a log line on a terminal is inert. Unknown
  numbers print as ``-``.
  The heartbeat line is a DESIGN §5 **contract**::

      heartbeat peer=NAME state=up|degraded|down active=URL rtt_ms=0.42
        paths=URL:up:0.42,URL:down out_seq=… acked=… in_seq=… backlog=… skew_ms=…
        pq=yes|no

  (one line; its fields come from ``proto/notices.heartbeat_notice``). Other kinds:
  ``state peer=… path=URL change=up|down|failover reason=…``,
  ``auth peer=… path=… reason=…``, ``insecure path=… reason=…``,
  ``handshake peer=… path=… result=ok|failed reason=…``, ``daemon …``, ``control …``,
  ``alert alert=EVENT peer=… severity=… text=…`` (DESIGN §10; priority 3 or 2) and
  ``alert_command alert=EVENT result=ok|exit N|killed by SIG…|timeout|cannot run|queue
  full …`` (hotline/daemon/alerts.py).
* **json** (``--log-format json``): one object per line, ``{"ts": ISO-8601 UTC,
  "event": KIND, "priority": N, …fields}``; the heartbeat's fields are exactly the
  ``status --json`` object (DESIGN §6), so ``paths`` is a list of objects there.
* **journald**: under systemd (``$JOURNAL_STREAM`` names our output stream), either
  (a) one datagram per event to journald's native socket
  ``/run/systemd/journal/socket`` with structured fields ``MESSAGE`` (the text or
  JSON line), ``PRIORITY``, ``SYSLOG_IDENTIFIER=hotline``, ``MESSAGE_ID`` (a fixed
  UUID per kind, for ``journalctl MESSAGE_ID=…``), ``HOTLINE_EVENT``, and one
  ``HOTLINE_<KEY>`` per field (``HOTLINE_PEER``, ``HOTLINE_STATE``,
  ``HOTLINE_RTT_MS``, …); or (b) when that socket is missing or a send fails, the
  line on the stream with a ``<N>`` priority prefix, which journald strips and
  turns into the priority. Exactly one of the two per event, never both, so the
  journal holds each event once.

Priorities (syslog): 6 heartbeat with the link up · 5 a path or the link came up ·
4 missed beats, a path or the link down, failover · 3 authentication or signature
failure · 2 an insecure key file · 7 debug (dropped unless ``debug=True``).

The logger never receives keys or message bodies: callers pass fingerprints, seqs and
reasons only. ``add_sink`` lets the control server stream events (``events`` op).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from hotline.daemon.unixdgram import UnixDatagramSender
from hotline.proto.notices import CRIT, DEBUG, ERR, INFO, NOTICE, WARNING
from hotline.textsafe import has_unsafe_chars

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "hotline"

__all__ = ["CRIT", "DEBUG", "ERR", "INFO", "NOTICE", "WARNING", "Logger"]

MESSAGE_IDS: dict[str, str] = {
    "heartbeat": "37e8be07f86f4db3a513ca792e2118eb",
    "state": "73d6ed72f4124721bfb183a8a671ea13",
    "auth": "b77dbef238a447538b8a8aac6870e3d3",
    "insecure": "8f40e2057ca6416fa5843a09630764cc",
    "handshake": "49bfc48d8f5c485cb981951185d16ec8",
    "daemon": "220dab8710d64d09aaee435e566e4b0a",
    "control": "f9d4c517f0d249d299db5afef87b2d3d",
    "epoch": "0f2a47ecd01b42f9a9a921a9e73b4e5e",
    "error": "f023fea4b5294c66be0e3298ba7d1cdb",
    "debug": "b363d0b31fc242749684858bb71bf96a",
    "alert": "1025156a86a4447881a5ff544a6cda79",
    "alert_command": "753514e965f7468e9a5ee6dc8b776b50",
}

LinkState = Literal["up", "degraded", "down"]
LogFormat = Literal["text", "json"]
Sink = Callable[[dict[str, Any]], None]


# --- rendering ------------------------------------------------------------------------

_BARE = re.compile(r"[^\s\"=\\\x00-\x1f\x7f]+")


def format_value(value: object) -> str:
    """One value of a key=value line: bare if safe, else JSON-quoted; None is ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.2f}"
    text = str(value)
    safe = _BARE.fullmatch(text) and not has_unsafe_chars(text)
    return text if safe else json.dumps(text)  # ASCII-only: \u escapes for the rest


def _plain(value: object) -> str:
    """A value for a journald field: no quoting needed (the protocol is binary-safe)."""
    if isinstance(value, bool | float):
        return format_value(value)
    return str(value)


def utc_stamp(seconds: float) -> str:
    """Unix seconds as ISO-8601 UTC with milliseconds: ``2025-01-31T12:00:00.000Z``."""
    ts = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_line(kind: str, fields: Mapping[str, object]) -> str:
    """``KIND key=value …`` in the order of ``fields``."""
    return " ".join([kind, *(f"{k}={format_value(v)}" for k, v in fields.items())])


# --- journald -------------------------------------------------------------------------


def journal_datagram(fields: Mapping[str, str]) -> bytes:
    """Encode fields in journald's native protocol (systemd's JOURNAL_NATIVE_PROTOCOL).

    ``KEY=value\\n``, or for a value holding a newline the binary-safe form
    ``KEY\\n<64-bit LE length><value>\\n``.
    """
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def journal_field_name(key: str) -> str:
    """``rtt_ms`` → ``HOTLINE_RTT_MS`` (journald allows ``[A-Z0-9_]``, no leading ``_``)."""
    return "HOTLINE_" + re.sub(r"[^A-Z0-9_]", "_", key.upper())


class JournalSocket:
    """Datagram sender to journald's native socket; ``send`` never raises."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sender = UnixDatagramSender(path)

    def send(self, fields: Mapping[str, str]) -> bool:
        """Send one entry; False if it could not be sent (caller falls back)."""
        return self._sender.send(journal_datagram(fields)) is None

    def close(self) -> None:
        """Close the socket."""
        self._sender.close()


def stream_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True if ``$JOURNAL_STREAM`` (``DEV:INODE``) is ``stream``'s file (systemd.exec(5))."""
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        st = os.fstat(stream.fileno())
        dev, ino = (int(x) for x in value.split(":"))
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


# --- the logger -----------------------------------------------------------------------


@dataclass
class Logger:
    """Writes events as text or JSON lines to ``stream``, or to journald.

    Attributes:
        stream: where lines go (stderr in the daemon).
        fmt: ``"text"`` or ``"json"``.
        priority_prefix: prefix lines with ``<N>`` (journald stream protocol).
        journal: send events to this native socket instead of the stream.
        timestamps: prefix text lines with an ISO-8601 UTC time (JSON always has ``ts``).
        debug: emit priority-7 events.
    """

    stream: TextIO
    fmt: LogFormat = "text"
    priority_prefix: bool = False
    journal: JournalSocket | None = None
    timestamps: bool = False
    debug: bool = False
    clock: Callable[[], float] = time.time
    _sinks: list[Sink] = field(default_factory=list)

    @classmethod
    def from_env(cls, stream: TextIO, fmt: LogFormat = "text", *,
                 environ: Mapping[str, str] | None = None,
                 journal_path: str = JOURNAL_SOCKET, debug: bool = False) -> Logger:
        """The logger for this process: journald when ``stream`` is the journal.

        Native socket if ``journal_path`` exists, else ``<N>``-prefixed stream lines;
        outside systemd plain lines.
        """
        env = os.environ if environ is None else environ
        if not stream_is_journal(stream, env):
            return cls(stream, fmt, debug=debug)
        journal = JournalSocket(journal_path) if os.path.exists(journal_path) else None
        return cls(stream, fmt, priority_prefix=True, journal=journal, debug=debug)

    def add_sink(self, sink: Sink) -> Callable[[], None]:
        """Also pass every event (as its JSON object) to ``sink``; returns a remover.

        A sink is called synchronously and must not raise or block.
        """
        self._sinks.append(sink)
        return lambda: self._sinks.remove(sink) if sink in self._sinks else None

    # -- event helpers (the kinds the daemon uses) --

    def state(self, peer: str, path: str | None, change: str, reason: str = "") -> None:
        """A path (or, with ``path`` None, the link) changed: up, down or failover."""
        priority = NOTICE if change == "up" else WARNING
        self.emit("state", priority,
                  {"peer": peer, "path": path, "change": change, "reason": reason or None})

    def auth(self, peer: str, reason: str, path: str | None = None) -> None:
        """An authentication, handshake or signature check failed (priority 3)."""
        self.emit("auth", ERR, {"peer": peer, "path": path, "reason": reason})

    def insecure(self, path: str, reason: str) -> None:
        """A key file or directory with unsafe permissions (priority 2)."""
        self.emit("insecure", CRIT, {"path": path, "reason": reason})

    def event(self, kind: str, priority: int = INFO, **fields: object) -> None:
        """Any other event, e.g. ``event("daemon", NOTICE, action="ready")``."""
        self.emit(kind, priority, fields)

    # -- output --

    def emit(self, kind: str, priority: int, fields: Mapping[str, object],
             json_fields: Mapping[str, Any] | None = None) -> None:
        """Render one event and write it to the journal or the stream, and to sinks."""
        if priority >= DEBUG and not self.debug:
            return
        obj = self._json_obj(kind, priority, fields if json_fields is None else json_fields)
        for sink in list(self._sinks):
            sink(obj)
        if self.fmt == "json":
            message = json.dumps(obj, separators=(",", ":"), default=str)
        else:
            message = format_line(kind, fields)
        if self.journal is not None and self.journal.send(
                self._journal_fields(kind, priority, fields, message)):
            return
        self._write(priority, message)

    def _json_obj(self, kind: str, priority: int, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {"ts": utc_stamp(self.clock()), "event": kind, "priority": priority, **fields}

    def _journal_fields(self, kind: str, priority: int, fields: Mapping[str, object],
                        message: str) -> dict[str, str]:
        out = {
            "MESSAGE": message, "PRIORITY": str(priority),
            "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER, "HOTLINE_EVENT": kind,
        }
        if kind in MESSAGE_IDS:
            out["MESSAGE_ID"] = MESSAGE_IDS[kind]
        for key, value in fields.items():
            if value is not None:
                out[journal_field_name(key)] = _plain(value)
        return out

    def _write(self, priority: int, message: str) -> None:
        prefix = f"<{priority}>" if self.priority_prefix else ""
        if self.timestamps and self.fmt == "text":
            prefix += utc_stamp(self.clock()) + " "
        try:
            self.stream.write(f"{prefix}{message}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken log stream must not stop the link
