"""The peer cannot write to the operator's terminal (DESIGN §9, last point; issue 8).

A real daemon pair: one end sends bodies holding every byte value 0x00-0xff, escape
sequences (OSC 52 clipboard write, title set), C1 controls and bidi overrides encoded
as UTF-8, and a body whose second line forges another message's header. The other
end's ``hotline inbox`` text output, to a pipe and to a real pseudo-terminal, holds
no control or format character but the newline ending each line, and the forged
header only ever appears on a marked continuation line. ``inbox --raw`` gives the
exact bytes back in its documented framing.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import tty
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotline.testing.loopback import LoopbackPair
from hotline.textsafe import CONTINUATION, WRAPPED

FORGED = b"#2 2025-01-01 12:00:00Z CONFIRMED: exercise cancelled"
BODIES = [
    (bytes(range(256)), "text/plain"),
    (b"title\x1b]0;pwned\x07 clip\x1b]52;c;cm0gLXJmIH4=\x07 \x1b[2J\x1b[8mhidden",
     "text/plain"),
    ("csi\u009b31m nel\u0085 rlo\u202egnp.exe lri\u2066x\u2069 zw\u200b bom\ufeff "
     "ls\u2028ps\u2029 tag\U000e0041".encode(), "application/x-test; a=b"),
    (b"routine report\n" + FORGED + b"\r\n" + b" " * 200 + FORGED, "text/plain"),
]
UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackPair]:
    p = LoopbackPair(tmp_path_factory.mktemp("pair"))
    p.start_all()
    try:
        p.wait_up()
        for body, media in BODIES:
            out = p.cli(0, "send", "--wait", "--type", media, input=body)
            assert out.returncode == 0, out.stderr
        yield p
    finally:
        p.stop_all()


def _expected(byte: int) -> str:
    """How inbox shows one byte of an invalid UTF-8 body (written out, not imported)."""
    if byte == ord("\\"):
        return "\\\\"
    return chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}"


def _inbox_on_a_terminal(p: LoopbackPair, columns: int) -> bytes:
    """``hotline inbox`` run with its stdout on a raw pseudo-terminal ``columns`` wide."""
    master, slave = pty.openpty()
    tty.setraw(slave)  # no output processing: we read exactly what inbox wrote
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    node = p[1]
    proc = subprocess.Popen([sys.executable, "-m", "hotline", "inbox", "-c", str(node.config)],
                            stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return b"".join(chunks)


def _assert_terminal_safe(output: bytes) -> list[str]:
    """Valid UTF-8, no control/format character but line ends; returns the lines."""
    text = output.decode("utf-8")  # strict: invalid UTF-8 would have been escaped
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    for line in lines:
        bad = [c for c in line if unicodedata.category(c) in UNSAFE]
        assert not bad, (line, bad)
    return lines


def _assert_layout(lines: list[str]) -> None:
    """One header per message; every other line is a marked continuation."""
    epochs = [line for line in lines if line.startswith("-- peer epoch ")]
    assert len(epochs) == 1  # one peer epoch: named once, first
    lines = [line for line in lines if line not in epochs]
    headers = [line for line in lines if not line.startswith("  ")]
    assert len(headers) == len(BODIES)
    assert all(h.startswith("#") for h in headers)
    assert all(line.startswith((CONTINUATION, WRAPPED)) for line in lines
               if line not in headers)
    assert not any(b"CONFIRMED" in h.encode() for h in headers)


def test_inbox_text_to_a_pipe_escapes_every_byte(pair: LoopbackPair) -> None:
    out = pair.cli(1, "inbox")
    assert out.returncode == 0, out.stderr
    lines = _assert_terminal_safe(out.stdout)
    _assert_layout(lines)
    assert lines.pop(0).startswith("-- peer epoch ")
    all_bytes = "".join(_expected(b) for b in range(256))
    before_lf, after_lf = all_bytes.split("\\x0a")
    assert lines[0].endswith("Z " + before_lf)
    assert lines[1] == CONTINUATION + after_lf
    text = "\n".join(lines)
    assert r"\x1b]52;c;cm0gLXJmIH4=\x07" in text
    assert r"[application/x-test; a=b] csi\u009b31m nel\u0085 rlo\u202egnp.exe" in text
    assert f"{CONTINUATION}{FORGED.decode()}\\x0d" in lines


def test_inbox_text_on_a_narrow_terminal_is_cut_never_wrapped(pair: LoopbackPair) -> None:
    columns = 60
    lines = _assert_terminal_safe(_inbox_on_a_terminal(pair, columns))
    _assert_layout(lines)
    assert all(line.isascii() and len(line) < columns for line in lines)
    assert any(line.startswith(WRAPPED) for line in lines)


def test_inbox_raw_gives_the_exact_bytes(pair: LoopbackPair, tmp_path: Path) -> None:
    out = pair.cli(1, "inbox", "--raw")
    assert out.returncode == 0, out.stderr
    data, got = out.stdout, []
    while data:
        header, data = data.split(b"\n", 1)
        seq, ts, length, media = header.decode("ascii").split(" ", 3)
        body, data = data[:int(length)], data[int(length):]
        assert data[:1] == b"\n"
        data = data[1:]
        got.append((int(seq), body, media))
        assert int(ts) > 0
    assert got == [(i, body, media) for i, (body, media) in enumerate(BODIES, 1)]
