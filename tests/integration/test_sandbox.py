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
LoadCredential=. Those need systemd itself: the two tests at the end boot systemd
in its own PID, mount, network and cgroup namespaces, follow README's install section
for both ends (the daemons then run under the whole unit: Seccomp: 2, uid hotline, no
capabilities) and check that WatchdogSec= restarts a wedged daemon but not one whose
peer is gone.

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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import trio

from hotline.testing.loopback import LoopbackPair

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



# --- the real unit, under a real systemd -------------------------------------------------
#
# systemd (the host's /lib/systemd/systemd) boots as PID 1 of a new PID, mount, UTS,
# IPC, network and cgroup namespace, on an overlay of / whose writable layer is a tmpfs:
# whatever README's steps install (/etc/systemd/system, the hotline user, /etc/hotline)
# lands in that tmpfs and vanishes with it. /sys and /proc/sys are read-only (so the
# boot leaves udev, sysctl and binfmt alone, as in any container), the boot target is
# basic.target only, CAP_SYS_MODULE/SYS_TIME/SYS_BOOT are out of its bounding set, and
# its cgroups live under a child cgroup of ours that is removed afterwards. Boot takes
# under a second; the whole test a few seconds.
#
# The unit's ExecStart=/usr/local/bin/hotline is a launcher (the stand-in for `pip
# install .`, which would need the network) running the system python on this checkout
# and the test interpreter's site-packages, both bind-mounted read-only under
# /opt/hotline: the interpreter here lives under /root, which ProtectHome= hides.

README = REPO / "README.md"
SYSTEMD_BIN = Path("/lib/systemd/systemd")
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# README lines the test does not run as written, and why.
README_SKIP = {
    "pip install .": "replaced by the /usr/local/bin/hotline launcher (no network here)",
    "journalctl -u hotline@moscow -f": "follows forever",
}

BOOT_SH = r"""
set -eu
W=$1 src=$2 site=$3 py=$4
mount -t tmpfs -o mode=0755 hotline-boot "$W"
mkdir "$W/upper" "$W/work" "$W/root"
R=$W/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/upper,workdir=$W/work" "$R"
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount --rbind /sys "$R/sys"
umount -R "$R/sys/fs/cgroup"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
mount -o remount,bind,ro "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mkdir -p "$R/opt/hotline/src" "$R/opt/hotline/site" "$R/usr/local/bin"
mount --bind "$src" "$R/opt/hotline/src"
mount -o remount,bind,ro "$R/opt/hotline/src"
mount --bind "$site" "$R/opt/hotline/site"
mount -o remount,bind,ro "$R/opt/hotline/site"
printf '#!%s -I\n%s' "$py" "$5" > "$R/usr/local/bin/hotline"
chmod 0755 "$R/usr/local/bin/hotline"
printf '[Unit]\nDescription=hotline test boot\nRequires=basic.target\nAfter=basic.target\n' \
    > "$R/etc/systemd/system/hotline-boot.target"
echo hotline-test > "$R/etc/hostname"
cd "$R"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot || true
# systemd leaves propagation to the container manager; credentials need it shared.
mount --make-rshared /
exec setpriv --bounding-set=-sys_module,-sys_time,-sys_boot,-wake_alarm \
    env -i container=hotline-test /lib/systemd/systemd --system \
    --unit=hotline-boot.target --show-status=no
"""


def _cgroup2_dir() -> Path | None:
    """Our cgroup in the cgroup2 hierarchy, if one is mounted and writable."""
    mount = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.split()[0] == "cgroup2":
            mount = Path(pre.split()[4])
            break
    ours = next((ln[3:] for ln in Path("/proc/self/cgroup").read_text().splitlines()
                 if ln.startswith("0::")), None)
    if mount is None or ours is None:
        return None
    path = mount / ours.lstrip("/")
    return path if os.access(path, os.W_OK) else None


class BootedSystemd:
    """systemd as PID 1 of its own namespaces (see the comment above); ``sh`` runs in it."""

    def __init__(self, workdir: Path, cgroup_parent: Path) -> None:
        self.cgroup = cgroup_parent / f"hotline-test-{os.getpid()}-{id(self)}"
        self.cgroup.mkdir()
        self.log = workdir / "boot.log"
        mnt = workdir / "mnt"
        mnt.mkdir()
        launcher = LAUNCH.replace("HOTLINE_TEST_MDWE", "HOTLINE_TEST_MDWE_UNUSED")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.cgroup),
                 "unshare", "--pid", "--fork", "--mount", "--propagation", "private",
                 "--uts", "--ipc", "--net", "--cgroup",
                 "sh", "-c", BOOT_SH, "sh", str(mnt), str(REPO), str(SITE), str(SYS_PYTHON),
                 launcher],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self._find_systemd()

    def _find_systemd(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        for _ in range(300):
            for kid in children.read_text().split() if children.exists() else []:
                if Path(f"/proc/{kid}/comm").read_text().strip() == "systemd":
                    pid = int(kid)
                    if Path(f"/proc/{pid}/root/run/systemd/private").exists():
                        return pid
            if self.proc.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"], check=False)
        raise AssertionError(f"systemd did not boot: {self.log.read_text()[-2000:]}")

    def sh(self, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with sh as root inside, from the checkout (/opt/hotline/src)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "-r", "-w",
             "env", "-i", f"PATH={CLEAN_PATH}", "LANG=C.UTF-8",
             "sh", "-c", f"cd /opt/hotline/src && {script}"],
            capture_output=True, text=True, timeout=timeout, check=False)

    def ok(self, script: str, timeout: float = 60) -> str:
        """``sh`` that must succeed; returns its stdout."""
        out = self.sh(script, timeout)
        assert out.returncode == 0, f"$ {script}\n{out.stdout}\n{out.stderr}"
        return out.stdout

    def close(self) -> None:
        os.kill(self.pid, signal.SIGKILL)  # PID 1 of the namespace: takes all with it
        try:
            self.proc.wait(timeout=20)
        finally:
            for d in sorted(self.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                if d.is_dir():
                    d.rmdir()
            self.cgroup.rmdir()


def readme_service_blocks() -> list[str]:
    """The ```sh blocks of README's "## Install as a service" section, in order."""
    import re

    text = README.read_text()
    start = text.index("## Install as a service\n")
    end = text.find("\n## ", start + 1)
    section = text[start:] if end == -1 else text[start:end]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def _for_end(block: str, end: str, pub_of: Callable[[str], str]) -> str:
    """README's block (written for Washington) as the ``end`` machine runs it here.

    Both ends share one network namespace: Washington listens on 7411, Moscow on 7412,
    each dials the other on 127.0.0.1. ``pub_of(name)`` is the .pub line ``name`` sent.
    """
    import re

    other = {"washington": "moscow", "moscow": "washington"}
    kept = [ln for ln in block.splitlines()
            if ln.split("#")[0].strip() not in README_SKIP]
    text = "\n".join(kept) + "\n"
    if end == "moscow":
        text = re.sub(r"washington|moscow", lambda m: other[m.group(0)], text)
    own, peer = ("7411", "7412") if end == "washington" else ("7412", "7411")
    text = text.replace("0.0.0.0:7411", f"127.0.0.1:{own}")
    text = text.replace("203.0.113.7:7411", f"127.0.0.1:{peer}")
    return re.sub(r"ssh-ed25519 AAAAC3Nz… (\w+)", lambda m: pub_of(m.group(1)), text)


def test_readme_service_section_matches_the_files() -> None:
    """What README tells an operator to install is what systemd/ ships."""
    blocks = "\n".join(readme_service_blocks())
    for line in ("install -m 0644 systemd/hotline@.service /etc/systemd/system/",
                 "systemd/hotline.sysusers /etc/sysusers.d/hotline.conf",
                 "systemd/hotline.tmpfiles /etc/tmpfiles.d/hotline.conf",
                 "systemd-tmpfiles --create hotline.conf",
                 "systemctl enable --now hotline@moscow",
                 "journalctl -u hotline@moscow HOTLINE_EVENT=heartbeat -o json"):
        assert line in blocks, line
    unit = (REPO / "systemd" / "hotline@.service").read_text()
    assert "ExecStart=/usr/local/bin/hotline run -c /etc/hotline/%i.toml" in unit
    assert "LoadCredential=identity:/etc/hotline/keys/%i" in unit
    assert "StateDirectory=hotline/%i" in unit
    assert "RuntimeDirectory=hotline/%i" in unit
    assert "u hotline " in (REPO / "systemd" / "hotline.sysusers").read_text()
    tmpfiles = (REPO / "systemd" / "hotline.tmpfiles").read_text()
    assert "d /etc/hotline      0755 root root" in tmpfiles
    assert "d /etc/hotline/keys 0700 root root" in tmpfiles
    for skipped in README_SKIP:
        assert skipped in blocks, f"README_SKIP names a line README no longer has: {skipped}"


def _boot(tmp_path: Path) -> BootedSystemd:
    _need_root()
    for tool in ("unshare", "nsenter", "setpriv"):
        _need(tool)
    if not SYSTEMD_BIN.exists():
        pytest.skip(f"{SYSTEMD_BIN} is missing (apt-get install systemd)")
    if not SYS_PYTHON.exists():
        pytest.skip(f"{SYS_PYTHON} is missing: no interpreter the unit may run")
    cgroup = _cgroup2_dir()
    if cgroup is None:
        pytest.skip("no writable cgroup2 hierarchy to put the booted systemd in")
    return BootedSystemd(tmp_path, cgroup)


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[BootedSystemd]:
    """A booted systemd on which both ends followed README's install section."""
    boot = _boot(tmp_path)
    try:
        _follow_readme(boot)
        yield boot
    finally:
        boot.close()


def test_readme_install_under_systemd(installed: BootedSystemd) -> None:
    """Boot systemd, follow README's install section for both ends, and check the result.

    The daemons then run under the whole unit: seccomp @system-service, PrivateUsers,
    MemoryDenyWriteExecute, LoadCredential, ProtectSystem=strict, Type=notify…
    """
    _check_services(installed)


def test_systemd_watchdog_restarts_a_wedged_daemon_not_a_lonely_one(
        installed: BootedSystemd) -> None:
    """With WatchdogSec=2: the peer stopping causes no restart; a wedged runner does."""
    boot = installed
    boot.ok("mkdir -p /etc/systemd/system/hotline@moscow.service.d && printf "
            "'[Service]\\nWatchdogSec=2\\n' > /etc/systemd/system/hotline@moscow.service.d/"
            "wd.conf && systemctl daemon-reload && systemctl restart hotline@moscow")
    assert boot.ok("systemctl show -p WatchdogUSec --value hotline@moscow").strip() == "2s"
    boot.ok("systemctl stop hotline@washington")
    boot.ok("sleep 7")  # 3.5 watchdog periods with the peer gone
    shown = boot.ok("systemctl show -p NRestarts -p ActiveState -p StatusText hotline@moscow")
    assert "NRestarts=0" in shown, shown
    assert "ActiveState=active" in shown, shown
    assert "link down" in shown, shown

    boot.ok("printf '[Service]\\nEnvironment=HOTLINE_FAULT_WEDGE_RUNNER_AFTER=1\\n' > "
            "/etc/systemd/system/hotline@moscow.service.d/wedge.conf && systemctl "
            "daemon-reload && systemctl restart hotline@moscow")
    boot.ok("for i in $(seq 300); do systemctl show -p NRestarts --value hotline@moscow "
            "| grep -qv '^0$' && exit 0; sleep 0.1; done; exit 1")
    journal = boot.ok("journalctl -u hotline@moscow --no-pager")
    assert "Watchdog timeout" in journal, journal[-3000:]


def _follow_readme(boot: BootedSystemd) -> None:
    boot.ok("systemctl is-system-running --wait || systemctl --failed --no-pager")
    link_of = {"washington": "moscow", "moscow": "washington"}  # each names the other

    def pub_of(name: str) -> str:
        return boot.ok(f"cat /etc/hotline/keys/{link_of[name]}.pub").strip()

    blocks = readme_service_blocks()
    assert len(blocks) == 5, blocks
    for block in blocks:
        for end in ("washington", "moscow"):
            boot.ok("set -e\n" + _for_end(block, end, pub_of))


def _check_services(boot: BootedSystemd) -> None:
    active = boot.ok("systemctl is-active hotline@moscow hotline@washington")
    assert active.split() == ["active", "active"], active
    enabled = boot.ok("systemctl is-enabled hotline@moscow hotline@washington")
    assert enabled.split() == ["enabled", "enabled"], enabled  # started at every boot
    boot.ok("for i in $(seq 100); do hotline status -i moscow --json | grep -q '\"state\": *"
            "\"up\"' && exit 0; sleep 0.1; done; hotline status -i moscow; exit 1")
    # Each end sent one message while the other might not have been up yet.
    boot.ok("for i in $(seq 100); do hotline inbox -i washington | grep -q 'hello from "
            "washington' && hotline inbox -i moscow | grep -q 'hello from moscow' && exit 0; "
            "sleep 0.1; done; exit 1")
    status_text = boot.ok("systemctl show -p StatusText --value hotline@moscow")
    assert "link up to moscow" in status_text, status_text
    journal = boot.ok("journalctl -u hotline@moscow HOTLINE_EVENT=heartbeat -o json")
    assert '"HOTLINE_PEER":"moscow"' in journal.replace(" ", ""), journal[-2000:]
    pid = boot.ok("systemctl show -p MainPID --value hotline@moscow").strip()
    status = dict(line.split(":", 1) for line in boot.ok(f"cat /proc/{pid}/status").splitlines()
                  if ":" in line)
    uid = boot.ok("id -u hotline").strip()
    assert status["Uid"].split()[0] == uid, status["Uid"]
    assert int(status["CapEff"], 16) == 0, status
    assert int(status["CapBnd"], 16) == 0, status
    assert status["NoNewPrivs"].strip() == "1", status["NoNewPrivs"]
    assert status["Seccomp"].strip() == "2", status["Seccomp"]  # the syscall filter
    modes = boot.ok("stat -c '%a %U %n' /run/hotline/moscow/hotline.sock "
                    "/var/lib/hotline/moscow/hotline.db /etc/hotline/keys/moscow")
    assert modes.split("\n")[:3] == [
        "660 hotline /run/hotline/moscow/hotline.sock",
        "600 hotline /var/lib/hotline/moscow/hotline.db",
        "600 root /etc/hotline/keys/moscow",
    ], modes
    boot.ok("systemctl stop hotline@moscow")
    result = boot.ok("systemctl show -p Result -p ExecMainStatus hotline@moscow")
    assert "Result=success" in result, result
    assert "ExecMainStatus=0" in result, result
