"""Where ML-KEM-768 is missing (``cryptography`` on an OpenSSL below 3.5), the daemon and
``hotline check`` refuse with one line and exit 78 (DESIGN §11), never a traceback.

The missing backend is played by a ``sitecustomize`` that makes the real backend say
it lacks ML-KEM, exactly the check ``cryptography`` itself makes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hotline.testing.loopback import LoopbackPair

NO_MLKEM = """\
from cryptography.hazmat.backends.openssl.backend import backend
backend.mlkem_supported = lambda: False
"""


@pytest.mark.parametrize("command", ["check", "run"])
def test_no_mlkem_is_one_line_and_exit_78(tmp_path: Path, command: str) -> None:
    pair = LoopbackPair(tmp_path / "pair")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_MLKEM)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-m", "hotline", command, "-c", str(pair[0].config)],
                         env={**os.environ, "PYTHONPATH": path}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 78, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert "post-quantum key exchange unavailable" in out.stderr
    assert "lacks ML-KEM-768" in out.stderr
    assert "cryptography >= 48 with OpenSSL >= 3.5" in out.stderr
