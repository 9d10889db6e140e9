"""``hotline demo`` — README's first command — runs green and shows what it claims."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_green_and_shows_its_stories() -> None:
    result = subprocess.run([sys.executable, "-m", "hotline", "demo"], capture_output=True,
                            timeout=180)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    # precedence: the FLASH queued behind the routine backlog is moscow's first message
    assert "\n#Z1 FLASH " in out
    assert "the FLASH Z1 came first" in out
    # operator acknowledgement: pending before, the waiting sender returns, none after
    assert "awaits moscow's operator for: Z1 Z2" in out
    assert "acknowledges Z2: Seen. Standing by." in out
    assert "returned (exit 0)" in out
    assert "awaits moscow's operator for: none" in out
    # failover and back
    assert "change=failover" in out
    assert "moscow received all 40 stream messages exactly once, in order" in out
    assert "change=primary" in out
    assert out.count(": OK") == 2
    assert "heartbeat peer=moscow state=" in out
    assert "\x1b" not in out
