"""Precedence lanes and message ids (DESIGN §9, a **contract**).

Military messaging (ACP 121/127, STANAG 4406) has four precedences. Each is a *lane*:
its own seqs (from 1 per epoch), hash chain, window, acks, HELLO state and receipts,
so a FLASH never waits behind a routine backlog. Lane numbers are what envelopes carry
(0 = flash … 3 = routine); letters are what operators type and read.

Message ids: ``Z17`` (flash 17), ``O4`` (immediate), ``P9`` (priority) and, for
routine, the bare seq ``1234`` (scripts written for one lane keep working; ``R1234`` is
accepted too). ``parse_message_id`` raises ``ValueError`` with a message meant for the
operator; it is pure Python so the fast client commands can import it.
"""

from __future__ import annotations

from typing import Final

FLASH: Final = 0
IMMEDIATE: Final = 1
PRIORITY: Final = 2
ROUTINE: Final = 3
LANES: Final = (FLASH, IMMEDIATE, PRIORITY, ROUTINE)  # highest precedence first

NAMES: Final = ("flash", "immediate", "priority", "routine")
LETTERS: Final = ("Z", "O", "P", "R")
_BY_WORD: Final = {
    **{name: lane for lane, name in enumerate(NAMES)},
    **{letter.lower(): lane for lane, letter in enumerate(LETTERS)},
}
MAX_SEQ: Final = 2**63 - 1


def lane_name(lane: int) -> str:
    """``"flash"`` … ``"routine"``."""
    return NAMES[lane]


def parse_lane(text: str) -> int:
    """A lane from its name or letter, any case (``flash``, ``Z``, ``routine``, ``r``).

    Raises:
        ValueError: not a precedence.
    """
    lane = _BY_WORD.get(text.strip().lower())
    if lane is None:
        raise ValueError(
            f"unknown precedence {text!r}: use flash, immediate, priority or routine "
            "(or Z, O, P, R)")
    return lane


def message_id(lane: int, seq: int) -> str:
    """The operator's id of message ``seq`` in ``lane``: ``Z17``, ``O4``, ``P9``, ``1234``."""
    return str(seq) if lane == ROUTINE else f"{LETTERS[lane]}{seq}"


def parse_message_id(text: str) -> tuple[int, int]:
    """``(lane, seq)`` from an id: ``Z17``, ``O4``, ``P9``, ``R12`` or a bare ``12``.

    Raises:
        ValueError: not a message id (the message says what is expected).
    """
    word = text.strip()
    lane = ROUTINE
    if word[:1].isalpha():
        lane = _BY_WORD.get(word[0].lower(), -1)
        word = word[1:]
        if lane < 0:
            raise ValueError(_bad_id(text))
    if not word.isdigit() or not word.isascii() or not 1 <= int(word) <= MAX_SEQ:
        raise ValueError(_bad_id(text))
    return lane, int(word)


def _bad_id(text: str) -> str:
    return (f"{text!r} is not a message id: use Z17 (flash), O4 (immediate), P9 "
            "(priority) or 1234 / R1234 (routine)")
