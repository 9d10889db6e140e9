"""Config loading (DESIGN §7), ``hotline check``, and the fast-import guarantee."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hotline.cli import main
from hotline.config import (
    Config,
    PathSpec,
    find_config,
    load_config,
    parse_path_url,
)
from hotline.errors import ConfigError
from hotline.keyfile import save_identity
from hotline.proto.identity import Identity

OURS = Identity.from_seed(bytes(range(32)))
THEIRS = Identity.from_seed(bytes(range(1, 33)))

GOOD = """\
key = "keys/ours"
listen = ["tcp://0.0.0.0:7411", "udp://[::]:7411"]
state_dir = "state"
heartbeat = 0.5
dead_after = 2
[peer]
name = "moscow"
key = "keys/theirs.pub"
paths = ["tcp://203.0.113.7:7411", "udp://[2001:db8::1]:7411"]
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory with keys/ours (0600), keys/theirs(.pub) and link.toml."""
    (tmp_path / "keys").mkdir()
    save_identity(tmp_path / "keys" / "ours", OURS, "ours")
    save_identity(tmp_path / "keys" / "theirs", THEIRS, "theirs")
    (tmp_path / "link.toml").write_text(GOOD)
    return tmp_path


def test_load_good(site: Path) -> None:
    c = load_config(site / "link.toml", environ={})
    assert c.path == site / "link.toml"
    assert c.key_path == site / "keys" / "ours"
    assert c.state_dir == site / "state"
    assert c.control == site / "state" / "control.sock"
    assert c.listen == (PathSpec("tcp://0.0.0.0:7411", "tcp", "0.0.0.0", 7411),
                        PathSpec("udp://[::]:7411", "udp", "::", 7411))
    assert c.peer_paths[1] == PathSpec("udp://[2001:db8::1]:7411", "udp", "2001:db8::1", 7411)
    assert (c.heartbeat, c.dead_after, c.redundant, c.log_every) == (0.5, 2.0, False, 60.0)
    assert (c.rekey_after, c.max_message, c.receipt_every) == (120.0, 65536, 1.0)
    assert c.peer_name == "moscow"
    assert c.peer_key == THEIRS.public
    assert c.link == "link"


def test_inline_peer_key_and_all_options(site: Path) -> None:
    line = THEIRS.public.openssh_line("theirs")
    (site / "link.toml").write_text(
        'key = "keys/ours"\nlisten = []\nstate_dir = "/var/lib/x"\ncontrol = "c.sock"\n'
        "redundant = true\nlog_every = 5\nrekey_after = 30\nmax_message = 1048576\n"
        f'receipt_every = 0.25\n[peer]\nname = "m"\nkey = "{line}"\n'
        'paths = ["tcp://peer.example.org:1"]\n')
    c = load_config(site / "link.toml", environ={})
    assert c.peer_key == THEIRS.public
    assert c.listen == ()
    assert c.state_dir == Path("/var/lib/x")
    assert c.control == site / "c.sock"
    assert (c.redundant, c.log_every, c.rekey_after) == (True, 5.0, 30.0)
    assert (c.max_message, c.receipt_every) == (1 << 20, 0.25)


def test_systemd_environment(site: Path) -> None:
    creds = site / "creds"
    creds.mkdir()
    (creds / "identity").write_bytes((site / "keys" / "ours").read_bytes())
    env = {"CREDENTIALS_DIRECTORY": str(creds), "RUNTIME_DIRECTORY": "/run/hotline/link"}
    c = load_config(site / "link.toml", environ=env)
    assert c.key_path == creds / "identity"
    assert c.control == Path("/run/hotline/link/hotline.sock")


def test_credentials_dir_without_identity_uses_key(site: Path) -> None:
    c = load_config(site / "link.toml", environ={"CREDENTIALS_DIRECTORY": str(site)})
    assert c.key_path == site / "keys" / "ours"


def test_state_dir_from_systemd(site: Path) -> None:
    text = GOOD.replace('state_dir = "state"\n', "")
    (site / "link.toml").write_text(text)
    c = load_config(site / "link.toml", environ={"STATE_DIRECTORY": "/var/lib/hotline/l"})
    assert c.state_dir == Path("/var/lib/hotline/l")


def test_supervision_defaults(site: Path) -> None:
    """DESIGN §9/§10 keys: operator acks for flash and immediate, no metrics, no command."""
    c = load_config(site / "link.toml", environ={})
    assert c.operator_ack == ("flash", "immediate")
    assert c.operator_deadline == {"flash": 600.0, "immediate": 1800.0}
    assert (c.metrics, c.alert_command) == (None, ())
    assert (c.alert_every, c.alert_after, c.alert_timeout) == (300.0, 30.0, 10.0)
    assert (c.drill_every, c.drill_operator, c.drill_deadline) == (43200.0, False, 600.0)


def test_supervision_keys(site: Path) -> None:
    (site / "link.toml").write_text(_replace("dead_after = 2\n", """dead_after = 2
metrics = "[::1]:9411"
alert_command = ["/usr/local/bin/page-duty", "--line", "x y"]
alert_every = 60
alert_after = 0.5
alert_timeout = 2.5
drill_every = 0
drill_operator = true
drill_deadline = 30
operator_ack = ["routine", "flash"]
operator_deadline = { routine = 86400, flash = 120.5 }
"""))
    c = load_config(site / "link.toml", environ={})
    assert c.metrics == ("::1", 9411)
    assert c.alert_command == ("/usr/local/bin/page-duty", "--line", "x y")
    assert (c.alert_every, c.alert_after, c.alert_timeout) == (60.0, 0.5, 2.5)
    assert (c.drill_every, c.drill_operator, c.drill_deadline) == (0.0, True, 30.0)
    assert c.operator_ack == ("flash", "routine")  # in precedence order
    assert c.operator_deadline == {"flash": 120.5, "routine": 86400.0}


@pytest.mark.parametrize(("line", "attribute", "want"), [
    ('metrics = "127.0.0.1:0"', "metrics", ("127.0.0.1", 0)),  # a free port, for tests
    ('metrics = "localhost:9411"', "metrics", ("localhost", 9411)),
    ("alert_command = []", "alert_command", ()),
    # the default deadlines are kept only for the lanes that need an ack
    ('operator_ack = ["immediate"]', "operator_deadline", {"immediate": 1800.0}),
    ("operator_ack = []", "operator_deadline", {}),
])
def test_supervision_edge_values(site: Path, line: str, attribute: str, want: object) -> None:
    (site / "link.toml").write_text(_replace("dead_after = 2\n", f"dead_after = 2\n{line}\n"))
    assert getattr(load_config(site / "link.toml", environ={}), attribute) == want


# --- every error: one line, the right exit code -------------------------------------------


def _replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


BAD = [
    (_replace("heartbeat = 0.5", "hartbeat = 0.5"), "unknown key 'hartbeat'"),
    (_replace('name = "moscow"', 'name = "moscow"\nport = 1'), "unknown key 'peer.port'"),
    (_replace("heartbeat = 0.5", "heartbeat = 0"), "'heartbeat' must be a number"),
    (_replace("heartbeat = 0.5", "heartbeat = true"), "'heartbeat' must be a number"),
    (_replace("heartbeat = 0.5", 'heartbeat = "1"'), "'heartbeat' must be a number"),
    (_replace("heartbeat = 0.5", "heartbeat = nan"), "'heartbeat' must be a number"),
    (_replace("dead_after = 2", "dead_after = 0.5"), "'dead_after' (0.5) must be more than"),
    (_replace("dead_after = 2", "dead_after = 2\nrekey_after = 180"), "less than 180"),
    (_replace("dead_after = 2", "dead_after = 2\nmax_message = 0"), "'max_message' must be"),
    (_replace("dead_after = 2", "dead_after = 2\nmax_message = 1048577"), "'max_message'"),
    (_replace("dead_after = 2", "dead_after = 2\nmax_message = 1.5"), "'max_message'"),
    (_replace("dead_after = 2", "dead_after = 2\nredundant = 1"), "'redundant' must be true"),
    (_replace('key = "keys/ours"\n', ""), "missing key 'key'"),
    (_replace('key = "keys/ours"', "key = 3"), "'key' must be a non-empty path"),
    (_replace('state_dir = "state"\n', ""), "missing key 'state_dir'"),
    (_replace('listen = ["tcp://0.0.0.0:7411", "udp://[::]:7411"]\n', ""),
     "missing key 'listen'"),
    (_replace('"tcp://0.0.0.0:7411"', '"http://0.0.0.0:80"'), "bad path URL 'http://0.0.0.0:80'"),
    (_replace('"tcp://0.0.0.0:7411"', '"tcp://::1:7411"'), "in brackets"),
    (_replace('"tcp://0.0.0.0:7411"', '"tcp://[zz]:7411"'), "not an IPv6 address"),
    (_replace('"tcp://0.0.0.0:7411"', '"tcp://0.0.0.0:70000"'), "port out of range"),
    (_replace('"tcp://0.0.0.0:7411"', '"tcp://0.0.0.0"'), "bad path URL"),
    (_replace('"tcp://0.0.0.0:7411"', '"tcp://a b:1"'), "bad path URL"),
    (_replace('"tcp://0.0.0.0:7411"', '"udp://[::]:7411"'), "same URL twice"),
    (_replace('listen = ["tcp://0.0.0.0:7411", "udp://[::]:7411"]', 'listen = "tcp://a:1"'),
     "'listen' must be a list"),
    (_replace('paths = ["tcp://203.0.113.7:7411", "udp://[2001:db8::1]:7411"]', "paths = []"),
     "at least one path"),
    (_replace('"tcp://203.0.113.7:7411"', '"tcp://203.0.113.7:0"'), "port out of range"),
    (_replace('paths = ["tcp://203.0.113.7:7411", "udp://[2001:db8::1]:7411"]\n', ""),
     "missing key 'peer.paths'"),
    (_replace('name = "moscow"\n', ""), "missing key 'peer.name'"),
    (_replace('name = "moscow"', 'name = "mos cow"'), "'peer.name' must be"),
    (_replace('key = "keys/theirs.pub"\n', ""), "missing key 'peer.key'"),
    (_replace('key = "keys/theirs.pub"', 'key = "keys/nope.pub"'), "peer.key: cannot read"),
    (_replace('key = "keys/theirs.pub"', 'key = "ssh-rsa AAAAB3 x"'), "peer.key: unsupported"),
    (_replace('key = "keys/theirs.pub"', 'key = "ssh-ed25519 !!!"'), "peer.key:"),
    (_replace('key = "keys/theirs.pub"', 'key = "keys/theirs"'), "is a private key"),
    (_replace("[peer]", "[peeer]"), "unknown key 'peeer'"),
    (_replace("dead_after = 2", "dead_after = 2\nmetrics = \"9411\""),
     "'metrics' must be \"HOST:PORT\""),
    (_replace("dead_after = 2", "dead_after = 2\nmetrics = 9411"),
     "'metrics' must be \"HOST:PORT\""),
    (_replace("dead_after = 2", "dead_after = 2\nmetrics = \"::1:9411\""),
     "in brackets"),
    (_replace("dead_after = 2", "dead_after = 2\nmetrics = \"127.0.0.1:70000\""),
     "'metrics': port out of range"),
    (_replace("dead_after = 2", "dead_after = 2\nalert_command = \"/bin/page\""),
     "'alert_command' must be a list of strings"),
    (_replace("dead_after = 2", "dead_after = 2\nalert_command = [\"/bin/page\", 1]"),
     "'alert_command' must be a list of strings"),
    (_replace("dead_after = 2", "dead_after = 2\nalert_command = [\"page-duty\"]"),
     "'alert_command' must start with the program's absolute"),
    (_replace("dead_after = 2", "dead_after = 2\nalert_command = [\"/bin/page\", \"a\\u0000b\"]"),
     "'alert_command' holds a NUL"),
    (_replace("dead_after = 2", "dead_after = 2\nalert_every = 0"),
     "'alert_every' must be a number of seconds above 0"),
    (_replace("dead_after = 2", "dead_after = 2\nalert_after = -1"),
     "'alert_after' must be a number of seconds above 0"),
    (_replace("dead_after = 2", "dead_after = 2\ndrill_every = -1"),
     "'drill_every' must be a number of seconds 0 or more (0 = off)"),
    (_replace("dead_after = 2", "dead_after = 2\ndrill_every = inf"),
     "'drill_every' must be a number of seconds"),
    (_replace("dead_after = 2", "dead_after = 2\ndrill_deadline = 0"),
     "'drill_deadline' must be a number of seconds above 0"),
    (_replace("dead_after = 2", "dead_after = 2\ndrill_operator = \"yes\""),
     "'drill_operator' must be true or false"),
    (_replace("dead_after = 2", "dead_after = 2\noperator_ack = [\"urgent\"]"),
     "'operator_ack' must be a list of precedences among flash"),
    (_replace("dead_after = 2", "dead_after = 2\noperator_ack = \"flash\""),
     "'operator_ack' must be a list of precedences"),
    (_replace("dead_after = 2", "dead_after = 2\noperator_ack = [\"flash\", \"flash\"]"),
     "'operator_ack' lists the same precedence twice"),
    (_replace("dead_after = 2", "dead_after = 2\noperator_deadline = 600"),
     "'operator_deadline' must be a table of seconds"),
    (_replace("dead_after = 2", "dead_after = 2\noperator_deadline = {urgent = 1}"),
     "unknown key 'operator_deadline.urgent'"),
    (_replace("dead_after = 2", "dead_after = 2\noperator_deadline = {routine = 60}"),
     "'operator_deadline.routine' is set but 'routine' is not"),
    (_replace("dead_after = 2", "dead_after = 2\noperator_deadline = {flash = 0}"),
     "'operator_deadline.flash' must be a number of seconds"),
    (_replace("dead_after = 2", "dead_after = 2\noperator_deadline = {flash = \"600\"}"),
     "'operator_deadline.flash' must be a number"),
    (GOOD.split("[peer]")[0], "missing [peer] table"),
    ("key = \n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_config_errors(site: Path, capsys: pytest.CaptureFixture[str], text: str,
                       message: str) -> None:
    (site / "link.toml").write_text(text)
    assert main(["check", "-c", str(site / "link.toml")]) == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"hotline: {site / 'link.toml'}: "), err
    assert message in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(tmp_path / "nope.toml")]) == 78
    err = capsys.readouterr().err
    assert err == f"hotline: {tmp_path / 'nope.toml'}: cannot read config: No such file or " \
                  "directory\n"


def test_not_utf8(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "link.toml").write_bytes(b"key = '\xff'\n")
    assert main(["check", "-c", str(site / "link.toml")]) == 78
    assert "not UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "spec"),
    [
        ("tcp://127.0.0.1:7411", PathSpec("tcp://127.0.0.1:7411", "tcp", "127.0.0.1", 7411)),
        ("udp://[::1]:1", PathSpec("udp://[::1]:1", "udp", "::1", 1)),
        ("tcp://peer-1.example.org:65535",
         PathSpec("tcp://peer-1.example.org:65535", "tcp", "peer-1.example.org", 65535)),
    ],
)
def test_parse_path_url(url: str, spec: PathSpec) -> None:
    assert parse_path_url(url) == spec


@pytest.mark.parametrize(
    "url",
    ["", "tcp://", "tcp://:1", "tcp://h:", "tcp://h:+1", "tcp://h:1/x", "TCP://h:1",
     "tcp:/h:1", "tcp://[::1:1", "tcp://u@h:1", "tcp://h:0", "tcp://h:٣"],
)
def test_parse_path_url_bad(url: str) -> None:
    with pytest.raises(ConfigError, match="bad path URL"):
        parse_path_url(url)


def test_port_zero_for_listeners() -> None:
    assert parse_path_url("tcp://127.0.0.1:0", allow_port_zero=True).port == 0


# --- find_config --------------------------------------------------------------------------


def test_find_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTLINE_CONFIG_DIR", str(tmp_path))
    assert find_config("x.toml", None) == Path("x.toml")
    assert find_config(None, "moscow") == tmp_path / "moscow.toml"
    with pytest.raises(ConfigError, match="no config in"):
        find_config(None, None)
    (tmp_path / "moscow.toml").write_text("")
    assert find_config(None, None) == tmp_path / "moscow.toml"
    (tmp_path / "tokyo.toml").write_text("")
    with pytest.raises(ConfigError, match=r"several configs .*\(moscow, tokyo\)") as info:
        find_config(None, None)
    assert info.value.exit_code == 78
    with pytest.raises(ConfigError, match="bad link name"):
        find_config(None, "../etc/passwd")


def test_dash_i_through_cli(site: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOTLINE_CONFIG_DIR", str(site))
    assert main(["check", "-i", "link"]) == 0
    assert main(["check"]) == 0  # the only config there
    assert capsys.readouterr().out.count("config OK") == 2


# --- hotline check ------------------------------------------------------------------------


def test_check_ok(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(site / "link.toml")]) == 0
    ok, pq = capsys.readouterr().out.splitlines()
    assert ok == (f"config OK: link moscow, our key {OURS.public.fingerprint()}, "
                  f"peer key {THEIRS.public.fingerprint()}")
    assert pq.startswith("post-quantum: ML-KEM-768 (cryptography ")
    assert pq.endswith("; no psk_file: sessions are pq from the first rekey; no store yet")
    assert not (site / "state").exists()  # check changes nothing


def test_check_psk_file(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "link.toml").write_text('psk_file = "keys/link.psk"\n' + GOOD)
    psk = site / "keys" / "link.psk"
    psk.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    psk.chmod(0o600)
    assert load_config(site / "link.toml", environ={}).psk_file == psk
    assert main(["check", "-c", str(site / "link.toml")]) == 0
    assert f"; psk_file {psk}: every session is pq;" in capsys.readouterr().out
    psk.chmod(0o640)
    assert main(["check", "-c", str(site / "link.toml")]) == 77
    assert "chmod 600" in capsys.readouterr().err
    for bad in (b"short", bytes(32), base64.b64encode(os.urandom(31)), os.urandom(33)):
        psk.write_bytes(bad)
        psk.chmod(0o600)
        assert main(["check", "-c", str(site / "link.toml")]) == 78
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "psk_file" in err
    psk.write_bytes(os.urandom(32))  # raw bytes do too
    assert main(["check", "-c", str(site / "link.toml")]) == 0


def test_psk_from_systemd_credentials(site: Path) -> None:
    (site / "creds").mkdir()
    (site / "creds" / "psk").write_bytes(os.urandom(32))
    config = load_config(site / "link.toml", environ={"CREDENTIALS_DIRECTORY": str(site / "creds")})
    assert config.psk_file == site / "creds" / "psk"


def test_check_insecure_key(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.chmod(site / "keys" / "ours", 0o640)
    assert main(["check", "-c", str(site / "link.toml")]) == 77
    assert "chmod 600" in capsys.readouterr().err


def test_check_missing_key(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "keys" / "ours").unlink()
    assert main(["check", "-c", str(site / "link.toml")]) == 78
    assert "keys/ours" in capsys.readouterr().err


def test_check_peer_is_us(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "link.toml").write_text(GOOD.replace("keys/theirs.pub", "keys/ours.pub"))
    assert main(["check", "-c", str(site / "link.toml")]) == 1
    assert "peer.key is our own key" in capsys.readouterr().err


def test_check_state_dir_is_a_file(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "state").write_text("")
    assert main(["check", "-c", str(site / "link.toml")]) == 1
    assert "is not a directory" in capsys.readouterr().err


# --- import cost --------------------------------------------------------------------------


def test_client_modules_import_neither_trio_nor_cryptography(site: Path) -> None:
    """Fast client commands load config and talk to the daemon without the heavy deps."""
    code = (
        "import sys\n"
        "from hotline.config import load_config\n"
        "import hotline.control_client, hotline.daemon.logs, hotline.daemon.notify\n"
        f"c = load_config({str(site / 'link.toml')!r})\n"
        "c.peer_key.fingerprint()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('trio', 'cryptography', 'cffi', '_cffi_backend'))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert proc.stdout.strip() == ""


def test_config_is_frozen(site: Path) -> None:
    c = load_config(site / "link.toml", environ={})
    assert isinstance(c, Config)
    with pytest.raises(AttributeError):
        c.heartbeat = 2.0  # type: ignore[misc]


def test_unreadable_config_is_a_permission_problem(site: Path,
                                                   no_dac_override: list[str]) -> None:
    os.chmod(site / "link.toml", 0)
    proc = subprocess.run(
        [*no_dac_override, sys.executable, "-m", "hotline", "check", "-c",
         str(site / "link.toml")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 77
    assert "Permission denied" in proc.stderr


def test_client_finds_the_service_socket(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a shell (no $RUNTIME_DIRECTORY) a client finds hotline@LINK's socket."""
    import hotline.config as config_module

    run = site / "run"
    monkeypatch.setattr(config_module, "RUNTIME_BASE", run)
    assert load_config(site / "link.toml", environ={}).control == site / "state/control.sock"
    (run / "link").mkdir(parents=True)
    (run / "link" / "hotline.sock").touch()
    assert load_config(site / "link.toml", environ={}).control == run / "link/hotline.sock"
    (site / "state").mkdir()
    (site / "state" / "control.sock").touch()  # a daemon run by hand wins
    assert load_config(site / "link.toml", environ={}).control == site / "state/control.sock"


def test_unreadable_credentials_dir_is_named_not_skipped(site: Path,
                                                         no_dac_override: list[str]) -> None:
    """A credential we cannot read is reported as such, not silently replaced by ``key``."""
    creds = site / "creds"
    creds.mkdir()
    (creds / "identity").write_text("x")
    creds.chmod(0)
    code = (
        "import os\n"
        "from hotline.config import load_config\n"
        f"print(load_config({str(site / 'link.toml')!r}, "
        f"environ={{'CREDENTIALS_DIRECTORY': {str(creds)!r}}}).key_path)\n"
    )
    try:
        proc = subprocess.run([*no_dac_override, sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=60)
    finally:
        creds.chmod(0o700)
    assert proc.stdout.strip() == str(creds / "identity"), proc.stderr


def test_max_backlog_defaults_to_design_figure(site: Path) -> None:
    """DESIGN §4b: 10,000,000 messages by default (the disk bounds it, not RAM)."""
    assert load_config(site / "link.toml", environ={}).max_backlog == 10_000_000
