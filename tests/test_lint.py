"""The code stays `ruff` clean and `mypy --strict` clean on hotline/ (STYLE.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _tool(name: str) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")


def test_ruff_clean() -> None:
    _tool("ruff")
    out = subprocess.run(["ruff", "check", "."], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_clean() -> None:
    _tool("mypy")
    out = subprocess.run([sys.executable, "-m", "mypy", "hotline"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
