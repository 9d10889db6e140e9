"""``hotline status`` text board: every string it shows is escaped for the terminal."""

from __future__ import annotations

from hotline.commands.status import render


def test_status_board_escapes_control_characters() -> None:
    board = render({
        "peer": "mos\x1b]0;owned\x07cow", "state": "up", "active": "tcp://h\u202e:1",
        "out_seq": 1, "acked": 1, "backlog": 0, "in_seq": 2, "skew_ms": 0.5,
        "dropped": {"Decode\x9bError": 3},
        "paths": [{"url": "udp://h\x85:1", "state": "down", "rtt_ms": None,
                   "last_heard_s": None}],
    })
    assert "\x1b" not in board
    assert "\x07" not in board
    assert "\u202e" not in board
    assert "\x9b" not in board
    assert "\x85" not in board
    assert "link to mos\\x1b]0;owned\\x07cow: UP   active path: tcp://h\\u202e:1" in board
    assert "refused packets: Decode\\u009bError 3" in board
    assert "udp://h\\u0085:1" in board
