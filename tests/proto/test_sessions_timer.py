"""SessionManager's deadlines are acted on at exactly the instant get_timer names.

``get_timer`` returns sums (``created_at + REJECT_AFTER``, ``pending + REKEY_TIMEOUT``);
the checks must use the same sums, since ``(t + d) - t`` may round below ``d`` — then a
driver that sleeps until the deadline would wake, find nothing due, and spin."""

from __future__ import annotations

import os

from hotline.proto.identity import Identity
from hotline.proto.sessions import REJECT_AFTER, REKEY_TIMEOUT, SessionManager

T = 1021.3925932814333  # (T + 5) - T < 5 and (T + 180) - T < 180 in binary floating point
OURS, THEIRS = Identity.from_seed(bytes(32)), Identity.from_seed(bytes([1]) * 32)


def test_a_deadline_that_rounds_is_still_due_at_its_instant() -> None:
    assert (T + REKEY_TIMEOUT) - T < REKEY_TIMEOUT
    assert (T + REJECT_AFTER) - T < REJECT_AFTER
    ours = SessionManager(OURS, THEIRS.public, os.urandom, 120.0)
    theirs = SessionManager(THEIRS, OURS.public, os.urandom, 120.0)
    initiation = ours.start_initiation(T, 1)
    deadline = ours.get_timer(can_initiate=True)
    assert deadline == T + REKEY_TIMEOUT
    assert ours.wants_initiation(deadline)  # the retry is due at the instant named

    response = theirs.on_initiation_untrusted(initiation, T, None, address_proven=True).response
    assert response is not None
    ours.on_response_untrusted(response, T)
    assert ours.current is not None
    ours.expire(T + REJECT_AFTER)  # the session is gone at the instant named
    assert ours.current is None
