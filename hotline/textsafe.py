"""Text for the operator's terminal: nothing the peer wrote can control it (DESIGN §9).

A message body, its media type and anything else the far end chose reach the
operator's terminal through this module only. It imports nothing heavy (client
commands stay fast) and follows one rule, **escape, never drop**:

* These characters are shown escaped, never written: C0 controls (U+0000-U+001F, so
  also ESC, CR, TAB and, inside a one-line field, LF), DEL (U+007F), C1 controls
  (U+0080-U+009F, e.g. CSI U+009B, which some terminals obey as ESC ``[``), and every
  other character whose Unicode category is ``Cf`` (format: the bidi embeddings and
  overrides U+202A-U+202E, isolates U+2066-U+2069, marks U+200E/U+200F/U+061C, the
  zero-width characters U+200B-U+200D, U+2060, U+FEFF, soft hyphen U+00AD, tag
  characters U+E0000-U+E007F…), ``Zl``/``Zp`` (U+2028, U+2029) or ``Cs`` (a lone
  surrogate). These can move the cursor, rewrite the screen, set the title, write the
  clipboard (OSC 52), or hide and reorder text. Everything else, Cyrillic and CJK
  included, is printed as it is.
* The forms are Python's: ``\\x1b`` (C0, DEL), ``\\u009b`` / ``\\u202e`` /
  ``\\U000e0041`` (a character), and ``\\xNN`` with NN ≥ 80 for a **byte** that is
  not valid UTF-8 (invalid input is escaped byte by byte, never replaced); a backslash
  itself is ``\\\\``. So the output is unambiguous: it decodes back to the exact bytes.
* ``message_lines`` lays out a record (``head`` then a body) on lines that a body can
  never make look like a header. The head and the body's first line share the first
  line; every further body line starts with ``CONTINUATION`` (``"  | "``), and with a
  ``width`` (the terminal's, when output is a terminal) a line longer than that is cut
  and goes on after ``WRAPPED`` (``"  + "``), so the terminal never wraps a line
  itself: a body padded to the screen's width cannot push text to the start of a
  screen row. Headers start with a non-space character; every row a body produces
  starts with two spaces.

Widths are estimated high, never low: printable ASCII is one column, other characters
below U+1100 one, everything from U+1100 up (CJK, emoji) two. A terminal that draws
East Asian "ambiguous" characters (some Greek and Cyrillic letters) two columns wide
may still wrap such a line itself.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator

CONTINUATION = "  | "
WRAPPED = "  + "
_MIN_WIDTH = 24

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_PLAIN_ASCII = re.compile(r"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII bar the backslash
_NOT_PLAIN = re.compile(r"[^\x20-\x5b\x5d-\x7e]+")
_TOKEN = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|\\)|.", re.DOTALL)
_ESCAPED_BYTES = range(0xDC80, 0xDD00)  # what "surrogateescape" makes of invalid bytes


def escape(text: str) -> str:
    """One line of text, safe to write to a terminal (see the module header).

    Args:
        text: any string; a newline in it is escaped too (``\\x0a``), and a lone
            surrogate U+DC80-U+DCFF (Python's stand-in for an undecodable byte) is shown
            as that byte, ``\\xNN``.

    Returns:
        The text with every control, format and separator character, and the
        backslash, escaped; printable ASCII only if the input was.
    """
    if _PLAIN_ASCII.fullmatch(text):
        return text
    return _NOT_PLAIN.sub(_escape_run, text)


def escape_bytes(data: bytes) -> str:
    """Bytes from the peer as one safe line: UTF-8 where valid, ``\\xNN`` per bad byte.

    Args:
        data: any bytes.

    Returns:
        The escaped text (``escape`` of the decoded bytes).
    """
    return escape(data.decode("utf-8", "surrogateescape"))


def has_unsafe_chars(text: str) -> bool:
    """True if ``text`` holds a character that ``escape`` escapes, the backslash aside.

    Args:
        text: any string.

    Returns:
        Whether writing ``text`` raw could control or mislead a terminal.
    """
    return not _PLAIN_ASCII.fullmatch(text) and any(map(_is_unsafe, text))


def message_lines(head: str, body: bytes, width: int | None = None) -> list[str]:
    """The lines (without newlines) that show one record: ``head``, then ``body``.

    Args:
        head: the record's header, written by us (e.g. ``#17 2025-01-01 12:00:00Z``);
            it must start with a non-space character. It is escaped too.
        body: the peer's bytes; each of its lines is escaped, the first follows
            ``head`` after one space, the others follow ``CONTINUATION``.
        width: the terminal's width in columns, or None (no cutting, e.g. a pipe).
            Lines are cut to fit ``width - 1`` columns (at least 24); each piece after
            the first goes on after ``WRAPPED``. An escape is never cut in two.

    Returns:
        At least one line; the first starts with ``head``, every other with two spaces.
    """
    first, *rest = body.split(b"\n")
    logical = [(f"{escape(head)} {escape_bytes(first)}", "")]
    logical += [(escape_bytes(line), CONTINUATION) for line in rest]
    if width is None:
        return [marker + text for text, marker in logical]
    columns = max(width - 1, _MIN_WIDTH)
    return [row for text, marker in logical for row in _cut(marker, text, columns)]


@functools.lru_cache(maxsize=4096)
def _is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


@functools.lru_cache(maxsize=4096)
def _escape_char(char: str) -> str:
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    if not _is_unsafe(char):
        return char
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _escape_run(match: re.Match[str]) -> str:
    return "".join(map(_escape_char, match.group()))


def _columns(token: str) -> int:
    """Columns a token of escaped text takes, estimated high (see the module header)."""
    if len(token) > 1 or ord(token) < 0x1100:
        return len(token)
    return 2


def _cut(marker: str, text: str, columns: int) -> Iterator[str]:
    """``marker + text`` as rows of at most ``columns`` columns, continued after WRAPPED."""
    row, used = [marker], len(marker)
    for match in _TOKEN.finditer(text):
        token = match.group()
        size = _columns(token)
        if used + size > columns and len(row) > 1:
            yield "".join(row)
            row, used = [WRAPPED], len(WRAPPED)
        row.append(token)
        used += size
    yield "".join(row)
