"""systemd/: the unit verifies, its sandbox scores <= 1.2, sysusers/tmpfiles apply.

Uses the real systemd tools (skipped where they are missing). ``verify`` checks that
ExecStart's binary exists, so it runs on a copy of the unit whose ExecStart points at
this interpreter (``python -m hotline``); everything else is the shipped unit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "hotline@.service"
MAX_EXPOSURE = 1.2


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_has_the_contract_directives() -> None:
    d = _directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["ExecStart"] == ["/usr/local/bin/hotline run -c /etc/hotline/%i.toml"]
    assert d["RestartPreventExitStatus"] == ["78 77"]
    assert d["Restart"] == ["on-failure"]
    assert d["LoadCredential"] == ["identity:/etc/hotline/keys/%i"]
    assert d["User"] == d["Group"] == ["hotline"]
    assert d["CapabilityBoundingSet"] == [""]
    assert d["RuntimeDirectoryMode"] == ["0750"]
    assert d["UMask"] == ["0077"]
    assert "WatchdogSec" in d


def test_unit_verifies(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    text = UNIT.read_text().replace(
        "ExecStart=/usr/local/bin/hotline",
        f"ExecStart={sys.executable} -m hotline",
    )
    unit = tmp_path / "hotline@link.service"
    unit.write_text(text)
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    # verify also loads the units we depend on; ignore complaints about *other* units
    # of the host (a container may have half a systemd).
    ours = [line for line in proc.stderr.splitlines() if "hotline" in line]
    assert not ours, proc.stderr


def test_unit_exposure_score() -> None:
    analyze = _tool("systemd-analyze")
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    if match is None and "--offline" in proc.stderr:
        pytest.skip("this systemd-analyze has no --offline (needs v250+)")
    assert match is not None, proc.stdout + proc.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, proc.stdout


def test_sysusers_and_tmpfiles_apply(tmp_path: Path) -> None:
    sysusers, tmpfiles = _tool("systemd-sysusers"), _tool("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    lines = [
        line for line in (SYSTEMD / "hotline.sysusers").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    subprocess.run([sysusers, f"--root={tmp_path}", "--inline", *lines],
                   check=True, capture_output=True, timeout=60)
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(r"^hotline:x:\d+:\d+:hotline secure line:/var/lib/hotline:", passwd, re.M)
    proc = subprocess.run(
        [tmpfiles, f"--root={tmp_path}", "--create", "-"],
        input=(SYSTEMD / "hotline.tmpfiles").read_text(), text=True,
        capture_output=True, check=False, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "etc/hotline").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "etc/hotline/keys").stat().st_mode & 0o777 == 0o700
