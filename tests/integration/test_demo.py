"""``hotline demo`` — README's first command — runs green and shows what it claims."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_green_and_shows_failover() -> None:
    result = subprocess.run([sys.executable, "-m", "hotline", "demo"], capture_output=True,
                            timeout=180)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "change=failover" in out
    assert "moscow received all 40 stream messages exactly once, in order" in out
    assert "change=primary" in out
    assert out.count(": OK") == 2
    assert "heartbeat peer=moscow state=" in out
