"""The daemon works under hotline@.service's restrictions, applied without systemd.

There is no systemd as PID 1 where the suite runs, so each restriction of the unit is
reproduced with the tool the kernel offers, and a real daemon pair must still come
up and exchange an acknowledged message under it:

============================  ===============================================
unit directive                reproduced here with
============================  ===============================================
CapabilityBoundingSet= ,      ``setpriv --bounding-set=-all --inh-caps=-all``
AmbientCapabilities=          (checked in /proc/PID/status: CapBnd/CapEff 0)
NoNewPrivileges=yes           ``setpriv --no-new-privs`` (NoNewPrivs: 1)
User=/Group= hotline          ``setpriv --reuid=65534 --regid=65534 --clear-groups``
UMask=0077                    ``umask 077`` (the store files end up 0600, the
                              control socket 0660 as the daemon sets it)
ProtectSystem=strict          ``unshare --mount`` + every mount remounted read-only
                              except the state directory (and /proc, /sys, /dev)
ProtectHome=yes, PrivateTmp   an empty tmpfs over /root, /home and /tmp
PrivateIPC=, ProtectHostname  ``unshare --ipc --uts``
MemoryDenyWriteExecute=yes    ``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)``
                              (Linux >= 6.3; skipped with the reason otherwise)
============================  ===============================================

Not reproduced here: ``SystemCallFilter=@system-service`` (the set is compiled into
systemd; there is no tool that applies it without systemd running the service),
PrivateUsers=, PrivateDevices=, ProtectKernel*=, RestrictAddressFamilies= and
LoadCredential=. Those need systemd itself: see the ``slow`` test at the end, which
boots systemd in a PID+mount namespace and follows README's install section.

As an unprivileged user the daemon cannot read the interpreter where it lives under
a 0700 home (as with pyenv under /root); so the sandboxed daemon runs on the system's
``/usr/bin/python3.X`` of the same version, with this checkout and the test
interpreter's site-packages bind-mounted read-only under /opt/hotline — exactly what
ProtectHome= would force on such an installation.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio

from hotline.loopback import LoopbackPair

REPO = Path(__file__).resolve().parents[2]
SITE = Path(trio.__file__).resolve().parents[1]  # site-packages with trio, cryptography…
SYS_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
NOBODY = 65534
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
DROP_PRIVS = ["--no-new-privs", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]

# Run inside the sandbox by the system python: optionally turn on MDWE (it then holds
# for every later mapping: extension modules load r-x, never W+X), then the CLI.
LAUNCH = """\
import ctypes, os, sys
if os.environ.get("HOTLINE_TEST_MDWE"):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        sys.exit("PR_SET_MDWE failed: errno %d" % ctypes.get_errno())
sys.path[:0] = ["/opt/hotline/src", "/opt/hotline/site"]
from hotline.cli import main
sys.exit(main(sys.argv[1:]))
"""

# unshare runs this as root in the new mount namespace; it ends by exec'ing setpriv.
# $1 the pair's directory, $2 the checkout, $3 site-packages; then the command.
SANDBOX_SH = r"""
set -eu
work=$1 src=$2 site=$3
shift 3
mount -t tmpfs -o mode=0755 hotline-opt /opt
mkdir -p /opt/hotline/src /opt/hotline/site /opt/hotline/work
mount --bind "$src" /opt/hotline/src
mount --bind "$site" /opt/hotline/site
mount --bind "$work" /opt/hotline/work
for home in /root /home /tmp; do
    [ -d "$home" ] && mount -t tmpfs -o mode=0755 hotline-empty "$home"
done
for mp in $(awk '{print $5}' /proc/self/mountinfo); do
    case "$mp" in
        /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/opt/hotline/work) continue ;;
    esac
    mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
if touch /.hotline-rw-probe 2>/dev/null; then
    echo "sandbox: / is still writable" >&2
    exit 70
fi
exec "$@"
"""


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (util-linux)")
    return path


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare --mount, setpriv --reuid), as in CI")


def _mdwe_supported() -> bool:
    """Whether PR_SET_MDWE works here (Linux >= 6.3), probed in a child process."""
    probe = (
        "import ctypes,sys; libc=ctypes.CDLL(None, use_errno=True); "
        f"sys.exit(0 if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0 "
        "else 1)"
    )
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def _start(pair: LoopbackPair, index: int, cmd: Sequence[str],
           env: dict[str, str] | None = None) -> None:
    """Start daemon ``index`` as ``cmd`` (a wrapper that ends by exec'ing the daemon)."""
    node = pair[index]
    with node.log_path.open("ab") as log:
        node.proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})


def _proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _logs(pair: LoopbackPair) -> str:
    return "\n".join(f"{n.name}: {line}" for n in pair.nodes for line in n.log_lines()[-20:])


def _exchange(pair: LoopbackPair) -> None:
    """Both up; one message each way, acknowledged; each inbox holds the other's."""
    try:
        pair.wait_up(timeout=20)
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{_logs(pair)}") from err
    for sender, receiver in ((0, 1), (1, 0)):
        text = f"from {pair[sender].name} in the sandbox"
        sent = pair.cli(sender, "send", "--wait", text)
        assert sent.returncode == 0, sent.stderr.decode() + _logs(pair)
        inbox = pair.cli(receiver, "inbox")
        assert text in inbox.stdout.decode(), inbox.stdout.decode() + _logs(pair)


def _check_restricted(pair: LoopbackPair, uid: int) -> None:
    for node in pair.nodes:
        assert node.proc is not None
        assert node.proc.poll() is None, _logs(pair)
        st = _proc_status(node.proc.pid)
        assert st["Uid"].split()[0] == str(uid), st["Uid"]
        assert int(st["CapEff"], 16) == 0, st
        assert int(st["CapPrm"], 16) == 0, st
        assert int(st["CapBnd"], 16) == 0, st
        assert int(st["CapAmb"], 16) == 0, st
        assert st["NoNewPrivs"] == "1", st


def _check_modes(pair: LoopbackPair, owner: int) -> None:
    """UMask=0077: what the daemon made is private; the control socket is 0660."""
    for node in pair.nodes:
        made = [p for p in node.state_dir.rglob("*")]
        assert made, f"nothing in {node.state_dir}"
        for path in made:
            st = path.lstat()
            if stat.S_ISSOCK(st.st_mode):
                assert stat.S_IMODE(st.st_mode) == 0o660, (path, oct(st.st_mode))
            else:
                assert stat.S_IMODE(st.st_mode) & 0o077 == 0, (path, oct(st.st_mode))
            assert st.st_uid == owner, (path, st.st_uid)


def _mounts(pid: int) -> dict[str, str]:
    """Mount point -> per-mount options, as process ``pid`` sees them (last one wins)."""
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        out[fields[4]] = fields[5]
    return out


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[LoopbackPair]:
    p = LoopbackPair(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def test_no_capabilities_no_new_privs_umask(pair: LoopbackPair) -> None:
    """CapabilityBoundingSet= (empty), NoNewPrivileges=yes, UMask=0077, as root."""
    setpriv = _need("setpriv")
    for i, node in enumerate(pair.nodes):
        cmd = ["sh", "-c", 'umask 077 && exec "$@"', "sh", setpriv, *DROP_PRIVS,
               sys.executable, "-m", "hotline", "run", "-c", str(node.config)]
        _start(pair, i, cmd)
    _exchange(pair)
    _check_restricted(pair, os.geteuid())
    _check_modes(pair, os.geteuid())


def test_memory_deny_write_execute(pair: LoopbackPair) -> None:
    """MemoryDenyWriteExecute=yes via PR_SET_MDWE: CPython, trio and cryptography cope."""
    if not _mdwe_supported():
        pytest.skip(f"PR_SET_MDWE unsupported by this kernel ({os.uname().release}; "
                    "needs Linux >= 6.3)")
    for i, node in enumerate(pair.nodes):
        code = LAUNCH.replace('["/opt/hotline/src", "/opt/hotline/site"]', repr([str(REPO)]))
        _start(pair, i, [sys.executable, "-c", code, "run", "-c", str(node.config)],
               {"HOTLINE_TEST_MDWE": "1"})
    # LAUNCH exits non-zero if PR_SET_MDWE fails, so a pair that is up runs under it.
    _exchange(pair)


def test_mdwe_refuses_write_execute_mappings() -> None:
    """The MDWE the test above applies really is in force (a W+X mmap is refused)."""
    if not _mdwe_supported():
        pytest.skip(f"PR_SET_MDWE unsupported by this kernel ({os.uname().release})")
    code = (
        "import ctypes, mmap, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"assert libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("mdwe", [False, True], ids=["plain", "mdwe"])
def test_unprivileged_read_only_system(tmp_path: Path, mdwe: bool) -> None:
    """All the above at once, as uid 65534, on a read-only system with empty homes.

    Only the pair's directory (keys, configs, state) is writable, as StateDirectory=
    is under ProtectSystem=strict; IPC and UTS namespaces are private.
    """
    _need_root()
    unshare, setpriv = _need("unshare"), _need("setpriv")
    if not SYS_PYTHON.exists():
        pytest.skip(f"{SYS_PYTHON} is missing: no interpreter outside a home directory")
    probe = subprocess.run([str(SYS_PYTHON), "-I", "-c", "import sys; sys.path[:0] = "
                            f"[{str(REPO)!r}, {str(SITE)!r}]; import hotline.cli, trio, "
                            "cryptography, msgpack"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"{SYS_PYTHON} cannot load {SITE}: {probe.stderr.decode()[-200:]}")
    if mdwe and not _mdwe_supported():
        pytest.skip(f"PR_SET_MDWE unsupported by this kernel ({os.uname().release})")
    p = LoopbackPair(tmp_path)
    try:
        for path in [tmp_path, *tmp_path.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
        for i, node in enumerate(p.nodes):
            config = f"/opt/hotline/work/{node.config.name}"
            cmd = [unshare, "--mount", "--propagation", "private", "--ipc", "--uts",
                   "sh", "-c", SANDBOX_SH, "sh", str(tmp_path), str(REPO), str(SITE),
                   "sh", "-c", 'umask 077 && exec "$@"', "sh",
                   setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                   *DROP_PRIVS, str(SYS_PYTHON), "-I", "-c", LAUNCH, "run", "-c", config]
            _start(p, i, cmd, {"HOTLINE_TEST_MDWE": "1"} if mdwe else {})
        _exchange(p)
        _check_restricted(p, NOBODY)
        _check_modes(p, NOBODY)
        for node in p.nodes:
            assert node.proc is not None
            assert os.readlink(f"/proc/{node.proc.pid}/ns/ipc") != os.readlink(
                "/proc/self/ns/ipc")
            mounts = _mounts(node.proc.pid)
            assert "ro" in mounts["/"].split(","), mounts["/"]
            assert "rw" in mounts["/opt/hotline/work"].split(","), mounts
            assert "ro" in mounts["/opt/hotline/src"].split(","), mounts
        codes = [p.kill(i, signal.SIGTERM) for i in range(2)]
        assert codes == [0, 0], _logs(p)
    finally:
        p.stop_all()

