"""keyfile.py: permissions, no-overwrite, ssh-keygen interop, pinned public keys."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hotline.errors import KeyFileError, KeyPermissionError
from hotline.keyfile import (
    load_identity,
    load_identity_with_comment,
    load_public_key,
    load_public_key_file,
    public_path,
    save_identity,
)
from hotline.proto.identity import Identity


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def ident() -> Identity:
    return Identity.from_seed(b"\x07" * 32)


def test_save_then_load(tmp_path: Path, ident: Identity) -> None:
    key = tmp_path / "washington"
    old = os.umask(0)
    try:
        save_identity(key, ident, "washington")
    finally:
        os.umask(old)
    assert _mode(key) == 0o600
    assert _mode(public_path(key)) == 0o644
    assert load_identity(key) == ident
    assert load_identity_with_comment(str(key)) == (ident, "washington")
    assert public_path(key).read_text() == ident.public.openssh_line("washington") + "\n"
    assert load_public_key_file(public_path(key)) == (ident.public, "washington")


def test_refuses_to_overwrite_without_force(tmp_path: Path, ident: Identity) -> None:
    key = tmp_path / "k"
    save_identity(key, ident, "a")
    other = Identity.from_seed(b"\x08" * 32)
    with pytest.raises(KeyFileError, match="already exists"):
        save_identity(key, other, "b")
    assert load_identity(key) == ident
    # A stray .pub alone also blocks, and nothing is written.
    lonely = tmp_path / "lonely"
    public_path(lonely).write_text("x\n")
    with pytest.raises(KeyFileError, match="already exists"):
        save_identity(lonely, other, "b")
    assert not lonely.exists()


def test_force_overwrites_and_fixes_modes(tmp_path: Path, ident: Identity) -> None:
    key = tmp_path / "k"
    save_identity(key, ident, "a")
    key.chmod(0o644)
    public_path(key).chmod(0o600)
    other = Identity.from_seed(b"\x08" * 32)
    save_identity(key, other, "b", force=True)
    assert _mode(key) == 0o600
    assert _mode(public_path(key)) == 0o644
    assert load_identity(key) == other
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o601, 0o610])
def test_group_or_other_access_is_refused(tmp_path: Path, ident: Identity, mode: int) -> None:
    key = tmp_path / "k"
    save_identity(key, ident, "a")
    key.chmod(mode)
    with pytest.raises(KeyPermissionError) as info:
        load_identity(key)
    assert str(info.value) == (
        f"private key {key} is readable by group/others (mode {mode:04o}); "
        f"fix with: chmod 600 {key}")
    assert info.value.exit_code == 77


def test_owner_only_modes_are_accepted(tmp_path: Path, ident: Identity) -> None:
    key = tmp_path / "k"
    save_identity(key, ident, "a")
    key.chmod(0o400)
    assert load_identity(key) == ident


def test_missing_directory_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=re.escape(str(tmp_path / "nope"))):
        load_identity(tmp_path / "nope")
    (tmp_path / "d").mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_identity(tmp_path / "d")
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_identity(tmp_path / "fifo")
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_public_key("fifo", tmp_path)
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello")
    junk.chmod(0o600)
    msg = re.escape(f"private key {junk}: not an OpenSSH private key")
    with pytest.raises(KeyFileError, match=msg):
        load_identity(junk)


def test_unreadable_file(tmp_path: Path, ident: Identity, no_dac_override: list[str]) -> None:
    key = tmp_path / "k"
    save_identity(key, ident, "a")
    key.chmod(0o000)
    proc = subprocess.run([*no_dac_override, sys.executable, "-m", "hotline", "pubkey", str(key)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == KeyFileError.exit_code
    assert "cannot read" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_ssh_keygen_key_loads(tmp_path: Path, ssh_keygen: str) -> None:
    key = tmp_path / "k"
    subprocess.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", "op@box", "-f", str(key)],
                   check=True)
    ident, comment = load_identity_with_comment(key)
    assert comment == "op@box"
    assert ident.public.openssh_line(comment) + "\n" == public_path(key).read_text()
    # Our writer reproduces ssh-keygen's file byte for byte given its checkint.
    text = key.read_bytes()
    checkint = _checkint(text)
    assert ident.to_openssh_private(comment, checkint) == text


def _checkint(text: bytes) -> int:
    import base64

    from hotline.proto.sshwire import SSHReader

    r = SSHReader(base64.b64decode(b"".join(text.strip().splitlines()[1:-1])))
    r.raw(15)
    for _ in range(3):
        r.string()
    r.uint32()
    r.string()
    return SSHReader(r.string()).uint32()


def test_ssh_keygen_accepts_our_private_key(tmp_path: Path, ssh_keygen: str,
                                            ident: Identity) -> None:
    key = tmp_path / "k"
    save_identity(key, ident, "our comment")
    out = subprocess.run([ssh_keygen, "-y", "-f", str(key)], check=True, capture_output=True,
                         text=True).stdout
    assert out.split()[:2] == ident.public.openssh_line().split()
    assert out.strip() == ident.public.openssh_line("our comment")


def test_ssh_keygen_refuses_encrypted_and_we_explain(tmp_path: Path, ssh_keygen: str) -> None:
    key = tmp_path / "k"
    subprocess.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "secret", "-f", str(key)],
                   check=True)
    with pytest.raises(KeyFileError, match="passphrase-protected"):
        load_identity(key)


def test_load_public_key_line_or_path(tmp_path: Path, ident: Identity) -> None:
    line = ident.public.openssh_line("moscow")
    assert load_public_key(line, tmp_path) == ident.public
    assert load_public_key("  " + line + "\n", tmp_path) == ident.public
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "moscow.pub").write_text("# pinned\n\n" + line + "\n")
    assert load_public_key("keys/moscow.pub", tmp_path) == ident.public
    assert load_public_key(str(keys / "moscow.pub"), Path("/nonexistent")) == ident.public


def test_load_public_key_errors(tmp_path: Path, ident: Identity) -> None:
    with pytest.raises(KeyFileError, match="cannot read public key"):
        load_public_key("missing.pub", tmp_path)
    save_identity(tmp_path / "k", ident, "x")
    with pytest.raises(KeyFileError, match="is a private key"):
        load_public_key("k", tmp_path)
    (tmp_path / "empty.pub").write_text("\n# nothing\n")
    with pytest.raises(KeyFileError, match="no 'ssh-ed25519"):
        load_public_key("empty.pub", tmp_path)
    (tmp_path / "rsa.pub").write_text("ssh-rsa AAAAB3NzaC1yc2E x\n")
    with pytest.raises(KeyFileError, match=r"rsa\.pub: unsupported key type"):
        load_public_key("rsa.pub", tmp_path)
    with pytest.raises(KeyFileError):
        load_public_key("ssh-rsa AAAAB3NzaC1yc2E x", tmp_path)
