"""Congestion control end to end: two real endpoints over a simulated thin circuit.

hotline/testing/wan.py runs the product's endpoints (real stores) with TCP cut and UDP
through a 1 Mbit/s bottleneck with 100 ms one-way delay and a 50-packet queue (issue
12), in simulated time: the figures are deterministic, so they are asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hotline.testing.wan import WanRun

RATE, DELAY, QUEUE = 1_000_000, 0.1, 50
RTT = 2 * DELAY


def _run(tmp_path: Path, messages: int, flash_after: float):
    wan = WanRun(tmp_path, RATE, DELAY, QUEUE)
    try:
        return wan.run(messages, 1000, flash_after=flash_after)
    finally:
        wan.close()


def test_flash_behind_a_backlog_on_a_thin_circuit(tmp_path: Path) -> None:
    result = _run(tmp_path, 800, flash_after=4.0)
    serialisation = 1232 * 8 / RATE
    assert result.flash_ack_s is not None
    assert result.flash_ack_s <= 2 * RTT + serialisation
    assert result.resent < 0.05 * result.messages


@pytest.mark.slow
def test_goodput_and_retransmissions_on_a_thin_circuit(tmp_path: Path) -> None:
    result = _run(tmp_path, 3000, flash_after=10.0)
    assert result.goodput_bits >= 0.8 * RATE  # signed message bytes delivered
    assert result.resent < 0.05 * result.messages
    assert result.flash_ack_s is not None
    assert result.flash_ack_s <= 2 * RTT + 1232 * 8 / RATE
