"""Client commands start fast: they import neither trio nor cryptography (DESIGN §6)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", ["send", "inbox", "status"])
def test_client_command_imports_no_trio_or_cryptography(command: str) -> None:
    code = (
        "import sys\n"
        "from hotline.cli import build_parser\n"
        f"import hotline.commands.{command}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'cryptography'))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == ""


def test_unreachable_daemon_is_one_line_and_exit_3(tmp_path) -> None:
    from hotline.testing.loopback import LoopbackPair

    pair = LoopbackPair(tmp_path)
    result = pair.cli(0, "status")
    assert result.returncode == 3
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "daemon not reachable" in lines[0]
