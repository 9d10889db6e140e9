"""`hotline keygen` and `hotline pubkey`, in-process (cli.main) and as `python -m hotline`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hotline.cli import main
from hotline.keyfile import load_identity, save_identity
from hotline.proto.identity import Identity

REPO = Path(__file__).resolve().parent.parent


def _hotline(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hotline", *args], capture_output=True,
                          text=True, env=env, check=False)


def test_keygen_matches_ssh_keygen_fingerprint(tmp_path: Path, ssh_keygen: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "washington"
    assert main(["keygen", str(key)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert str(key) + ".pub" in out[0]
    pub_line = (tmp_path / "washington.pub").read_text().strip()
    assert pub_line.endswith(" washington")  # default comment: the file's name
    assert out[1] == pub_line
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    ssh_fp = subprocess.run([ssh_keygen, "-lf", str(key) + ".pub"], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert out[2] == ssh_fp
    assert main(["pubkey", str(key)]) == 0
    assert capsys.readouterr().out.splitlines() == [pub_line, ssh_fp]
    assert main(["pubkey", str(key) + ".pub"]) == 0
    assert capsys.readouterr().out.splitlines() == [pub_line, ssh_fp]
    # ssh accepts our private file and derives the same public line.
    derived = subprocess.run([ssh_keygen, "-y", "-f", str(key)], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert derived == pub_line


def test_pubkey_of_ssh_keygen_key(tmp_path: Path, ssh_keygen: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k"
    subprocess.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
                   check=True)
    ssh_fp = subprocess.run([ssh_keygen, "-lf", f"{key}.pub"], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert main(["pubkey", str(key)]) == 0
    line, fp = capsys.readouterr().out.splitlines()
    assert fp == ssh_fp  # "256 SHA256:... no comment (ED25519)"
    assert line == (tmp_path / "k.pub").read_text().strip()


def test_keygen_comment_and_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k"
    assert main(["keygen", str(key), "--comment", "moscow end"]) == 0
    first = load_identity(key)
    assert (tmp_path / "k.pub").read_text().endswith(" moscow end\n")
    assert main(["keygen", str(key)]) == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "already exists" in err
    assert load_identity(key) == first
    assert main(["keygen", str(key), "--force"]) == 0
    assert load_identity(key) != first
    assert main(["keygen", str(tmp_path / "x"), "--comment", "a\nb"]) == 2


def test_permission_refusal_in_process(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k"
    save_identity(key, Identity.from_seed(b"\x01" * 32), "c")
    key.chmod(0o644)
    assert main(["pubkey", str(key)]) == 77
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"hotline: private key {key} is readable by group/others "
                            f"(mode 0644); fix with: chmod 600 {key}\n")


def test_permission_refusal_subprocess(tmp_path: Path) -> None:
    key = tmp_path / "k"
    save_identity(key, Identity.from_seed(b"\x01" * 32), "c")
    key.chmod(0o640)
    proc = _hotline("pubkey", str(key))
    assert proc.returncode == 77
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "chmod 600" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_subprocess_keygen_and_errors(tmp_path: Path) -> None:
    key = tmp_path / "k"
    proc = _hotline("keygen", str(key))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "k.pub").exists()
    proc = _hotline("pubkey", str(tmp_path / "missing"))
    assert proc.returncode == 78
    assert proc.stderr.count("\n") == 1
    (tmp_path / "bad.pub").write_text("ssh-rsa AAAA x\n")
    proc = _hotline("pubkey", str(tmp_path / "bad.pub"))
    assert proc.returncode == 78
    assert "unsupported key type" in proc.stderr
