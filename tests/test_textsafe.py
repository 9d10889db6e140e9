"""hotline/textsafe.py: nothing the peer writes reaches the terminal unescaped.

Hypothesis checks the three properties the module promises for any input: no
control, format or separator character comes out (bar the newline between lines);
the output decodes back to the exact input (so it is unambiguous and nothing is
dropped); and a body's lines can never look like a header, cut to the width or not.
"""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotline.textsafe import (
    CONTINUATION,
    WRAPPED,
    escape,
    escape_bytes,
    has_unsafe_chars,
    message_lines,
)

UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}
HEAD = "#2 2025-01-01 12:00:00Z"
ESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8})|(\\))")
any_text = st.text(st.characters(blacklist_categories=()))  # surrogates included
widths = st.one_of(st.none(), st.integers(min_value=1, max_value=200))


def unescape(text: str) -> str:
    """The inverse of ``escape``, written from the documented forms."""
    def one(m: re.Match[str]) -> str:
        byte, bmp, astral, backslash = m.groups()
        if backslash:
            return "\\"
        if byte:
            value = int(byte, 16)
            return chr(value) if value < 0x80 else chr(0xDC00 + value)  # a raw byte
        return chr(int(bmp or astral, 16))
    return ESCAPE.sub(one, text)


def unescape_bytes(text: str) -> bytes:
    return unescape(text).encode("utf-8", "surrogateescape")


def columns(row: str) -> int:
    return sum(1 if ord(c) < 0x1100 else 2 for c in row)


def assert_safe(text: str) -> None:
    bad = [c for c in text if unicodedata.category(c) in UNSAFE]
    assert not bad, (text, bad)


@given(any_text)
def test_escaped_text_is_safe_and_decodes_back(text: str) -> None:
    shown = escape(text)
    assert_safe(shown)
    assert unescape(shown) == text


@given(st.binary())
def test_escaped_bytes_are_safe_and_decode_back(data: bytes) -> None:
    shown = escape_bytes(data)
    assert_safe(shown)
    assert unescape_bytes(shown) == data


@given(any_text)
def test_has_unsafe_chars_means_escape_changes_more_than_backslashes(text: str) -> None:
    assert has_unsafe_chars(text) == (escape(text) != text.replace("\\", "\\\\"))


@pytest.mark.parametrize("code", [*range(0x20), 0x7F, *range(0x80, 0xA0)])
def test_every_control_character_is_escaped(code: int) -> None:
    assert escape(chr(code)) == (f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")


@pytest.mark.parametrize("code", [0x061C, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F,
                                  *range(0x202A, 0x202F), 0x2028, 0x2029, 0x2060,
                                  *range(0x2066, 0x206A), 0xFEFF, 0x00AD])
def test_bidi_and_invisible_format_characters_are_escaped(code: int) -> None:
    assert escape(f"a{chr(code)}b") == f"a\\u{code:04x}b"


def test_raw_bytes_and_encoded_characters_are_told_apart() -> None:
    assert escape_bytes(b"\x9b") == "\\x9b"  # a byte that is not UTF-8
    assert escape_bytes("\u009b".encode()) == "\\u009b"  # the character CSI, as UTF-8
    assert escape_bytes("\U000e0041".encode()) == "\\U000e0041"


def test_printable_text_of_any_script_is_kept() -> None:
    text = "Москва — 華盛頓 ✓ café\u0301 ¡hola! 1\u00a0000"
    assert escape(text) == text
    assert not has_unsafe_chars(text)


def test_a_body_cannot_forge_a_header_line() -> None:
    body = b"ok\n#3 2025-01-01 12:00:01Z CONFIRMED: exercise cancelled\r\n\x1b[1A\x1b[2K"
    assert message_lines(HEAD, body) == [
        f"{HEAD} ok",
        f"{CONTINUATION}#3 2025-01-01 12:00:01Z CONFIRMED: exercise cancelled\\x0d",
        f"{CONTINUATION}\\x1b[1A\\x1b[2K",
    ]


def test_a_body_padded_to_the_screen_width_is_cut_not_wrapped() -> None:
    body = b"x" * 20 + b"#3 2025-01-01 12:00:01Z CONFIRMED"
    rows = message_lines("#2", body, width=44)
    assert rows[0] == "#2 " + "x" * 20 + "#3 2025-01-01 12:00:"  # 43 columns
    assert rows[1:] == [f"{WRAPPED}01Z CONFIRMED"]


@given(st.binary(), widths)
def test_message_lines_are_safe_marked_and_decode_back(body: bytes, width: int | None) -> None:
    rows = message_lines(HEAD, body, width)
    for row in rows:
        assert_safe(row)
        assert "\n" not in row
    assert rows[0].startswith(HEAD + " ")
    assert all(row.startswith((CONTINUATION, WRAPPED)) for row in rows[1:])
    if width is not None:
        assert all(columns(row) <= max(width - 1, 24) for row in rows)
    logical: list[str] = []
    for row in rows:
        if row.startswith(WRAPPED) and logical:
            logical[-1] += row[len(WRAPPED):]
        else:
            logical.append(row.removeprefix(CONTINUATION))
    logical[0] = logical[0].removeprefix(HEAD + " ")
    assert b"\n".join(unescape_bytes(line) for line in logical) == body


@given(st.text(st.characters(min_codepoint=0x400, max_codepoint=0x2FFFF,
                             blacklist_categories=("Cs",))), widths)
def test_wide_characters_never_overflow_the_width(text: str, width: int | None) -> None:
    rows = message_lines(HEAD, text.encode(), width)
    if width is not None:
        assert all(columns(row) <= max(width - 1, 24) for row in rows)
