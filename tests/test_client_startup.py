"""Client commands start fast: an import budget by module list, not by timing (DESIGN §6).

Each command runs in a fresh ``python -I -S`` (no site: nothing preloaded, so every
module the command pulls in is seen) and reports what it imported. Client commands
(send, inbox, status, ack, drill) import neither trio nor cryptography; key commands import no
config, socket or msgpack code; none imports what only the daemon or a test needs.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from hotline.testing.loopback import LoopbackPair

REPO = Path(__file__).resolve().parent.parent

# Never on a command's start-up path: the daemon's and the tests' modules, and stdlib
# modules that cost milliseconds (argparse's help formatter would import shutil; json
# is for --json output only).
NEVER = ("trio", "sqlite3", "asyncio", "ssl", "subprocess", "threading", "logging",
         "shutil", "json", "hotline.store", "hotline.daemon", "hotline.transport",
         "hotline.testing", "hotline.bench", "hotline.demo")
CLIENT_NEVER = (*NEVER, "cryptography")
KEY_NEVER = (*NEVER, "msgpack", "socket", "tomllib", "hotline.config", "hotline.control_client")


def imported_by(argv: list[str]) -> tuple[int, set[str]]:
    """Run ``hotline ARGV`` in a bare interpreter; its exit code and the modules it added."""
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    code = (
        f"import sys\nsys.path[:0] = {paths!r}\nbefore = set(sys.modules)\n"
        f"from hotline.cli import main\ncode = main({argv!r})\n"
        "print('\\n' + ' '.join(sorted(set(sys.modules) - before)))\n"
        "print(code)\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True, timeout=60)
    *_, modules, exit_code = out.stdout.splitlines()
    return int(exit_code), set(modules.split())


def over_budget(modules: set[str], never: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in never))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> LoopbackPair:
    return LoopbackPair(tmp_path_factory.mktemp("startup"))  # configs and keys, no daemons


@pytest.mark.parametrize("argv", [["status"], ["send", "hello"], ["inbox"], ["ack", "Z1"],
                                  ["drill"]])
def test_client_command_stays_in_its_import_budget(pair: LoopbackPair, argv: list[str]) -> None:
    code, modules = imported_by([argv[0], "-c", str(pair[0].config), *argv[1:]])
    assert code == 3  # no daemon: the whole path up to connecting ran
    assert f"hotline.commands.{argv[0]}" in modules
    assert over_budget(modules, CLIENT_NEVER) == []


@pytest.mark.parametrize("suffix", ["", ".pub"])
def test_pubkey_stays_in_its_import_budget(pair: LoopbackPair, suffix: str) -> None:
    code, modules = imported_by(["pubkey", f"{pair[0].key}{suffix}"])
    assert code == 0
    assert over_budget(modules, KEY_NEVER) == []


def test_keygen_stays_in_its_import_budget(tmp_path: Path) -> None:
    code, modules = imported_by(["keygen", str(tmp_path / "k")])
    assert code == 0
    assert over_budget(modules, KEY_NEVER) == []


def test_unreachable_daemon_is_one_line_and_exit_3(pair: LoopbackPair) -> None:
    result = pair.cli(0, "status")
    assert result.returncode == 3
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "daemon not reachable" in lines[0]
