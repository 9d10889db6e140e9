"""ReplayWindow: RFC 6479 sliding window, checked against a plain set-based model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.errors import LocalProtocolError
from hotline.proto.replay import COUNTER_LIMIT, DEFAULT_WINDOW, ReplayWindow


def accept(window: ReplayWindow, counter: int) -> bool:
    """What the opener does: check, then (the AEAD having passed) mark."""
    if not window.can_accept(counter):
        return False
    window.mark(counter)
    return True


class ModelWindow:
    """The specification, without any cleverness: a set of every counter seen."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.top = -1

    def accept(self, counter: int) -> bool:
        if not 0 <= counter < COUNTER_LIMIT or counter in self.seen:
            return False
        if self.top - counter >= self.size:
            return False
        self.seen.add(counter)
        self.top = max(self.top, counter)
        return True


def test_default_size_is_8128():
    assert ReplayWindow().size == DEFAULT_WINDOW == 8128


def test_in_order_all_accepted_once():
    window = ReplayWindow()
    assert all(accept(window, c) for c in range(20000))
    assert window.highest == 19999
    assert not any(window.can_accept(c) for c in range(19990, 20000))


def test_duplicate_rejected():
    window = ReplayWindow()
    assert accept(window, 5)
    assert not window.can_accept(5)
    assert not accept(window, 5)


def test_reordering_within_window_accepted():
    window = ReplayWindow()
    assert accept(window, 10000)
    for c in range(10000 - 1, 10000 - DEFAULT_WINDOW, -1):
        assert accept(window, c), c
    assert not accept(window, 10000 - DEFAULT_WINDOW)  # exactly size below: too old


def test_too_old_rejected():
    window = ReplayWindow(size=64)
    assert accept(window, 1000)
    assert not window.can_accept(1000 - 64)
    assert window.can_accept(1000 - 63)


def test_can_accept_does_not_change_state():
    window = ReplayWindow()
    for _ in range(3):
        assert window.can_accept(7)
    assert window.highest is None
    assert accept(window, 7)


def test_big_jump_forgets_old_bits_and_keeps_new():
    window = ReplayWindow()
    for c in range(100):
        accept(window, c)
    assert accept(window, 10**12)
    assert not window.can_accept(99)
    assert window.can_accept(10**12 - 1)
    assert accept(window, 10**12 - DEFAULT_WINDOW + 1)
    # The ring slots the old counters used are clean after the jump.
    jump = 10**12 + 64 * 128 * 7 + 3
    assert accept(window, jump)
    assert all(window.can_accept(jump - d) for d in range(1, DEFAULT_WINDOW))


def test_counter_range():
    window = ReplayWindow()
    assert not window.can_accept(-1)
    assert not window.can_accept(COUNTER_LIMIT)  # 2**64 - 1 is refused
    assert not window.can_accept(2**64)
    assert accept(window, COUNTER_LIMIT - 1)
    assert not window.can_accept(COUNTER_LIMIT - 1)


def test_mark_without_check_is_a_local_error():
    window = ReplayWindow()
    window.mark(3)
    with pytest.raises(LocalProtocolError):
        window.mark(3)
    with pytest.raises(LocalProtocolError):
        window.mark(COUNTER_LIMIT)


def test_bad_size_refused():
    with pytest.raises(LocalProtocolError):
        ReplayWindow(0)


@pytest.mark.parametrize("size", [1, 2, 63, 64, 65, 127, 128, 200, 8128])
def test_window_exact_edge(size):
    window = ReplayWindow(size)
    top = 5 * size + 77
    assert accept(window, top)
    assert window.can_accept(top - size + 1) == (size > 1)
    assert not window.can_accept(top - size)


counters = st.one_of(
    st.integers(min_value=0, max_value=3000),
    st.integers(min_value=-2, max_value=2**64 + 1),
    st.integers(min_value=2**64 - 400, max_value=2**64 - 1),
)


@settings(max_examples=300, deadline=None)
@given(
    size=st.sampled_from([1, 7, 64, 100, 128, 300, 1000]),
    steps=st.lists(
        st.tuples(st.sampled_from(["abs", "rel"]), counters, st.integers(-400, 400)),
        max_size=120,
    ),
)
def test_matches_reference_model(size, steps):
    window, model = ReplayWindow(size), ModelWindow(size)
    last = 0
    for kind, absolute, delta in steps:
        counter = absolute if kind == "abs" else last + delta
        expected = model.accept(counter)
        assert window.can_accept(counter) == expected
        if expected:
            window.mark(counter)
            last = counter
    for probe in {last + d for d in range(-size - 2, 3)}:
        expected = 0 <= probe < COUNTER_LIMIT and probe not in model.seen and (
            model.top - probe < size
        )
        assert window.can_accept(probe) == expected
