"""The link's configuration file: the DESIGN §7 TOML contract, checked strictly.

``find_config(config, link)`` picks the file (``-c FILE``; ``-i LINK`` meaning
``/etc/hotline/LINK.toml``; or the only ``*.toml`` in ``/etc/hotline/``; the directory
can be moved with ``$HOTLINE_CONFIG_DIR``, for tests). ``load_config(path)`` parses it
with ``tomllib`` into a frozen ``Config``:

* Unknown keys, at the top level and in ``[peer]``, are errors naming the key (a typo
  must not silently fall back to a default). Types and ranges are checked:
  ``heartbeat > 0``, ``dead_after > heartbeat``, ``0 < rekey_after < 180`` (a session
  older than 180 s is refused, DESIGN §2), ``max_message`` in 1..1 MiB, at least one
  peer path, path URLs ``tcp://HOST:PORT`` / ``udp://HOST:PORT`` (IPv6 as ``[::1]``).
* Operator acknowledgement (DESIGN §9): ``operator_ack`` lists precedences (``flash``,
  ``immediate``, ``priority``, ``routine``; default flash and immediate);
  ``operator_deadline`` is a table of seconds per precedence (default ``{flash = 600,
  immediate = 1800}``, kept only for lanes in ``operator_ack``; setting one for a lane
  not in ``operator_ack`` is an error).
* Supervision (DESIGN §10): ``metrics = "HOST:PORT"`` (off when absent; port 0 picks a
  free port, for tests); ``alert_command`` an argv list whose first element is an
  absolute path (no shell, no $PATH search; ``[]`` = none); ``alert_every`` (300),
  ``alert_after`` (30), ``alert_timeout`` (10: then the command is killed),
  ``drill_deadline`` (600) seconds above 0; ``drill_every``
  (43200) seconds, 0 = off; ``drill_operator`` (false).
* Relative paths (``key``, ``state_dir``, ``control``, a ``peer.key`` file) are
  relative to the config file's directory.
* The identity key: ``$CREDENTIALS_DIRECTORY/identity`` when systemd handed it over
  with ``LoadCredential=identity:…`` (DESIGN §8), else ``key``. Likewise the optional
  post-quantum pre-shared secret (DESIGN §11): ``$CREDENTIALS_DIRECTORY/psk``
  (``LoadCredential=psk:…``), else ``psk_file``, else none.
* ``control`` defaults to ``$RUNTIME_DIRECTORY/hotline.sock`` (the daemon under
  systemd), else ``state_dir/control.sock``. So that client commands run from a shell
  (no ``$RUNTIME_DIRECTORY``) still find a daemon run by ``hotline@LINK.service``,
  ``/run/hotline/LINK/hotline.sock`` is used when it exists and
  ``state_dir/control.sock`` does not (LINK = the config file's stem).

Every problem is one ``ConfigError`` line ``CONFIGPATH: what is wrong`` (exit 78),
except a config we may not read: ``AccessDeniedError`` (exit 77).
Fast client commands import this module, so it must not import trio or cryptography
(``hotline.proto.identity`` parses public keys in pure Python and loads cryptography
lazily; a test checks the import graph).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hotline.errors import AccessDeniedError, ConfigError, KeyFileError
from hotline.keyfile import load_public_key
from hotline.proto.identity import PublicKey
from hotline.proto.supervision import PRECEDENCES

CONFIG_DIR = Path("/etc/hotline")
RUNTIME_BASE = Path("/run/hotline")
MAX_MESSAGE_LIMIT = 1 << 20
DEFAULT_MAX_BACKLOG = 10_000_000  # DESIGN §4b: the disk, not RAM, bounds the backlog
MAX_BACKLOG_LIMIT = 1_000_000_000
MAX_SESSION_AGE = 180.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_TOP_KEYS = {
    "key", "listen", "state_dir", "control", "heartbeat", "dead_after", "redundant",
    "log_every", "rekey_after", "max_message", "receipt_every", "max_backlog", "peer",
    # DESIGN §9 and §10: operator acknowledgement and supervision
    "operator_ack", "operator_deadline", "metrics", "alert_command", "alert_every",
    "alert_after", "alert_timeout", "drill_every", "drill_operator", "drill_deadline",
    "psk_file",
}
DEFAULT_OPERATOR_DEADLINE: Mapping[str, float] = {"flash": 600.0, "immediate": 1800.0}
_PEER_KEYS = {"name", "key", "paths"}


@dataclass(frozen=True)
class PathSpec:
    """One transport address: ``tcp://host:port`` or ``udp://host:port``."""

    url: str
    scheme: Literal["tcp", "udp"]
    host: str  # IPv6 without brackets
    port: int


@dataclass(frozen=True, kw_only=True)
class Config:
    """A loaded, validated link configuration (DESIGN §7)."""

    path: Path  # the config file
    key_path: Path  # our private key (or the systemd credential)
    listen: tuple[PathSpec, ...]
    state_dir: Path
    control: Path
    heartbeat: float = 1.0
    dead_after: float = 3.0
    redundant: bool = False
    log_every: float = 60.0
    rekey_after: float = 120.0
    max_message: int = 65536
    receipt_every: float = 1.0
    max_backlog: int = DEFAULT_MAX_BACKLOG
    peer_name: str
    peer_key: PublicKey
    peer_paths: tuple[PathSpec, ...]
    # DESIGN §9: lanes whose messages need the far operator's ack, and their deadlines
    operator_ack: tuple[str, ...] = ("flash", "immediate")
    operator_deadline: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_OPERATOR_DEADLINE))
    # DESIGN §10: supervision
    metrics: tuple[str, int] | None = None  # (host, port) for /metrics; None = off
    alert_command: tuple[str, ...] = ()  # argv, no shell; () = journal lines only
    alert_every: float = 300.0
    alert_after: float = 30.0
    alert_timeout: float = 10.0  # seconds an alert command may run before it is killed
    drill_every: float = 43200.0  # 0 = no scheduled drills
    drill_operator: bool = False
    drill_deadline: float = 600.0
    psk_file: Path | None = None  # the out-of-band pre-shared secret (DESIGN §11)

    @property
    def link(self) -> str:
        """The link's name: the config file's stem (``hotline@LINK``)."""
        return self.path.stem


def config_dir() -> Path:
    """``$HOTLINE_CONFIG_DIR`` if set, else ``/etc/hotline``."""
    return Path(os.environ.get("HOTLINE_CONFIG_DIR") or CONFIG_DIR)


def find_config(config: str | None, link: str | None) -> Path:
    """The config file for ``-c FILE`` / ``-i LINK`` / neither (the only one there).

    Raises:
        ConfigError: a bad link name, or no single config file to choose.
    """
    if config is not None:
        return Path(config)
    directory = config_dir()
    if link is not None:
        if not _NAME.fullmatch(link):
            raise ConfigError(f"bad link name {link!r}: use letters, digits, '.', '_', '-'")
        return directory / f"{link}.toml"
    try:
        found = sorted(p for p in directory.glob("*.toml") if p.is_file())
    except OSError as err:
        raise ConfigError(f"{directory}: cannot list configs: {err.strerror}") from err
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"no config in {directory}/: give -c FILE or -i LINK")
    names = ", ".join(p.stem for p in found)
    raise ConfigError(f"several configs in {directory}/ ({names}): choose one with -i LINK")


def parse_path_url(url: str, *, allow_port_zero: bool = False) -> PathSpec:
    """Parse ``tcp://host:port`` or ``udp://host:port`` (IPv6 host as ``[::1]``).

    Args:
        allow_port_zero: accept port 0 (a listener on an ephemeral port, for tests).

    Raises:
        ConfigError: naming the bad URL and the expected form.
    """
    bad = f"bad path URL {url!r}: want tcp://HOST:PORT or udp://HOST:PORT"
    if not isinstance(url, str):
        raise ConfigError(f"bad path URL {url!r}: not a string")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("tcp", "udp"):
        raise ConfigError(bad)
    host, port = _split_host_port(rest, bad)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ConfigError(f"bad path URL {url!r}: port out of range")
    return PathSpec(url, "tcp" if scheme == "tcp" else "udp", host, port)


def _split_host_port(rest: str, bad: str) -> tuple[str, int]:
    host, colon, port_text = rest.rpartition(":")
    if not colon or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ConfigError(bad)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as err:
            raise ConfigError(f"{bad} ({host!r} is not an IPv6 address)") from err
    elif ":" in host:
        raise ConfigError(f"{bad} (write an IPv6 address in brackets: [{host}])")
    elif not _HOSTNAME.fullmatch(host):
        raise ConfigError(bad)
    return host, int(port_text)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file.

    Args:
        path: the TOML file.
        environ: the environment to take ``CREDENTIALS_DIRECTORY``,
            ``RUNTIME_DIRECTORY`` and ``STATE_DIRECTORY`` from (default ``os.environ``).

    Raises:
        ConfigError: ``PATH: what is wrong`` (``KeyFileError`` for a bad peer key).
        AccessDeniedError: the file exists but we may not read it.
    """
    path = Path(path)
    env = os.environ if environ is None else environ
    return _Loader(path, _read_toml(path), env).config()


def _credential_present(path: Path) -> bool:
    """True unless systemd certainly handed over no such credential.

    A credential we cannot even stat (an unreadable credentials directory) still counts:
    the key loader then names *it* in its error, instead of sending the operator to the
    on-disk key file the service was never meant to read.
    """
    try:
        path.stat()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except PermissionError as err:
        raise AccessDeniedError(f"{path}: cannot read config: {err.strerror} (configs are "
                                "root:hotline 0640: join the hotline group)") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text") from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err


class _Loader:
    """Reads one parsed TOML document into a ``Config``; every error names the file."""

    def __init__(self, path: Path, data: dict[str, Any], env: Mapping[str, str]) -> None:
        self.path, self.data, self.env = path, data, env
        self.base = path.parent

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.path}: {what}")

    def config(self) -> Config:
        self.check_keys(self.data, _TOP_KEYS, "")
        peer = self.data.get("peer")
        if not isinstance(peer, dict):
            raise self.fail("missing [peer] table (name, key, paths)")
        self.check_keys(peer, _PEER_KEYS, "peer.")
        heartbeat = self.seconds("heartbeat", 1.0)
        dead_after = self.seconds("dead_after", 3.0)
        if dead_after <= heartbeat:
            raise self.fail(f"'dead_after' ({dead_after}) must be more than "
                            f"'heartbeat' ({heartbeat})")
        state_dir = self.state_dir()
        operator_ack = self.operator_ack()
        return Config(
            path=self.path, key_path=self.key_path(), listen=self.listen(),
            state_dir=state_dir, control=self.control(state_dir), heartbeat=heartbeat,
            dead_after=dead_after, redundant=self.boolean("redundant", False),
            log_every=self.seconds("log_every", 60.0),
            rekey_after=self.seconds("rekey_after", 120.0, below=MAX_SESSION_AGE),
            max_message=self.max_message(), receipt_every=self.seconds("receipt_every", 1.0),
            max_backlog=self.integer("max_backlog", DEFAULT_MAX_BACKLOG, 1, MAX_BACKLOG_LIMIT),
            peer_name=self.peer_name(peer), peer_key=self.peer_key(peer),
            peer_paths=self.peer_paths(peer), psk_file=self.psk_file(),
            operator_ack=operator_ack,
            operator_deadline=self.operator_deadline(operator_ack), metrics=self.metrics(),
            alert_command=self.alert_command(), alert_every=self.seconds("alert_every", 300.0),
            alert_after=self.seconds("alert_after", 30.0),
            alert_timeout=self.seconds("alert_timeout", 10.0),
            drill_every=self.seconds("drill_every", 43200.0, zero_is_off=True),
            drill_operator=self.boolean("drill_operator", False),
            drill_deadline=self.seconds("drill_deadline", 600.0),
        )

    def check_keys(self, table: Mapping[str, Any], known: set[str], prefix: str) -> None:
        for key in table:
            if key not in known:
                raise self.fail(f"unknown key '{prefix}{key}' (known: {', '.join(sorted(known))})")

    # -- scalars --

    def seconds(self, key: str, default: float, below: float | None = None, *,
                zero_is_off: bool = False) -> float:
        return self.seconds_value(key, self.data.get(key, default), below,
                                  zero_is_off=zero_is_off)

    def seconds_value(self, key: str, value: object, below: float | None = None, *,
                      zero_is_off: bool = False) -> float:
        low = "0 or more (0 = off)" if zero_is_off else "above 0"
        limit = f" and less than {below:g}" if below else ""
        problem = self.fail(f"'{key}' must be a number of seconds {low}{limit}, not {value!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise problem
        seconds = float(value)
        if (not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_is_off)
                or (below and seconds >= below)):
            raise problem
        return seconds

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"'{key}' must be true or false, not {value!r}")
        return value

    def max_message(self) -> int:
        return self.integer("max_message", 65536, 1, MAX_MESSAGE_LIMIT, "(bytes)")

    def integer(self, key: str, default: int, low: int, high: int, unit: str = "") -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            unit = f" {unit}" if unit else ""
            raise self.fail(f"'{key}' must be an integer in {low}..{high}{unit}, not {value!r}")
        return value

    def file_path(self, value: object, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise self.fail(f"'{key}' must be a non-empty path string, not {value!r}")
        return self.base / Path(value).expanduser()

    # -- operator acknowledgement (DESIGN §9) and supervision (DESIGN §10) --

    def operator_ack(self) -> tuple[str, ...]:
        value = self.data.get("operator_ack", ["flash", "immediate"])
        if not isinstance(value, list) or not all(v in PRECEDENCES for v in value):
            raise self.fail(f"'operator_ack' must be a list of precedences among "
                            f"{', '.join(PRECEDENCES)}, not {value!r}")
        if len(set(value)) != len(value):
            raise self.fail("'operator_ack' lists the same precedence twice")
        return tuple(p for p in PRECEDENCES if p in value)

    def operator_deadline(self, ack: tuple[str, ...]) -> dict[str, float]:
        if "operator_deadline" not in self.data:
            return {lane: s for lane, s in DEFAULT_OPERATOR_DEADLINE.items() if lane in ack}
        table = self.data["operator_deadline"]
        if not isinstance(table, dict):
            raise self.fail("'operator_deadline' must be a table of seconds per precedence, "
                            "like {flash = 600, immediate = 1800}")
        self.check_keys(table, set(PRECEDENCES), "operator_deadline.")
        for lane in table:
            if lane not in ack:
                raise self.fail(f"'operator_deadline.{lane}' is set but '{lane}' is not in "
                                "'operator_ack' (no operator acknowledges those messages)")
        return {lane: self.seconds_value(f"operator_deadline.{lane}", table[lane])
                for lane in PRECEDENCES if lane in table}

    def metrics(self) -> tuple[str, int] | None:
        value = self.data.get("metrics")
        if value is None:
            return None
        bad = f"'metrics' must be \"HOST:PORT\" like \"127.0.0.1:9411\", not {value!r}"
        if not isinstance(value, str):
            raise self.fail(bad)
        try:
            host, port = _split_host_port(value, bad)
        except ConfigError as err:
            raise self.fail(str(err)) from err
        if port > 65535:
            raise self.fail(f"'metrics': port out of range in {value!r}")
        return host, port

    def alert_command(self) -> tuple[str, ...]:
        value = self.data.get("alert_command", [])
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise self.fail("'alert_command' must be a list of strings (argv, no shell), like "
                            '["/usr/local/bin/page", "--line", "x"]')
        if any("\0" in a for a in value):
            raise self.fail("'alert_command' holds a NUL character")
        if value and not value[0].startswith("/"):
            raise self.fail(f"'alert_command' must start with the program's absolute path, not "
                            f"{value[0]!r} (there is no shell and no $PATH search)")
        return tuple(value)

    # -- paths on disk --

    def key_path(self) -> Path:
        creds = self.env.get("CREDENTIALS_DIRECTORY")
        if creds and _credential_present(Path(creds) / "identity"):
            return Path(creds) / "identity"
        if "key" not in self.data:
            raise self.fail("missing key 'key' (our private key file)")
        return self.file_path(self.data["key"], "key")

    def psk_file(self) -> Path | None:
        creds = self.env.get("CREDENTIALS_DIRECTORY")
        if creds and _credential_present(Path(creds) / "psk"):
            return Path(creds) / "psk"
        if "psk_file" not in self.data:
            return None
        return self.file_path(self.data["psk_file"], "psk_file")

    def state_dir(self) -> Path:
        if "state_dir" in self.data:
            return self.file_path(self.data["state_dir"], "state_dir")
        from_systemd = self.env.get("STATE_DIRECTORY", "").split(":")[0]
        if from_systemd:
            return Path(from_systemd)
        raise self.fail("missing key 'state_dir' (where the message store lives)")

    def control(self, state_dir: Path) -> Path:
        if "control" in self.data:
            return self.file_path(self.data["control"], "control")
        runtime = self.env.get("RUNTIME_DIRECTORY", "").split(":")[0]
        if runtime:
            return Path(runtime) / "hotline.sock"
        ours, service = state_dir / "control.sock", RUNTIME_BASE / self.path.stem / "hotline.sock"
        if not ours.exists() and service.exists():
            return service
        return ours

    # -- transport paths --

    def urls(self, table: Mapping[str, Any], key: str, name: str, listen: bool) -> tuple[
            PathSpec, ...]:
        value = table.get(key)
        if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
            raise self.fail(f"'{name}' must be a list of path URLs like \"tcp://HOST:PORT\"")
        if len(set(value)) != len(value):
            raise self.fail(f"'{name}' lists the same URL twice")
        try:
            return tuple(parse_path_url(u, allow_port_zero=listen) for u in value)
        except ConfigError as err:
            raise self.fail(f"'{name}': {err}") from err

    def listen(self) -> tuple[PathSpec, ...]:
        if "listen" not in self.data:
            raise self.fail("missing key 'listen' (give [] for an end that only dials)")
        return self.urls(self.data, "listen", "listen", listen=True)

    def peer_paths(self, peer: Mapping[str, Any]) -> tuple[PathSpec, ...]:
        if "paths" not in peer:
            raise self.fail("missing key 'peer.paths' (the peer's addresses)")
        paths = self.urls(peer, "paths", "peer.paths", listen=False)
        if not paths:
            raise self.fail("'peer.paths' needs at least one path URL")
        return paths

    # -- the peer --

    def peer_name(self, peer: Mapping[str, Any]) -> str:
        name = peer.get("name")
        if name is None:
            raise self.fail("missing key 'peer.name'")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise self.fail(f"'peer.name' must be 1-64 letters, digits, '.', '_', '-', "
                            f"not {name!r}")
        return name

    def peer_key(self, peer: Mapping[str, Any]) -> PublicKey:
        spec = peer.get("key")
        if spec is None:
            raise self.fail("missing key 'peer.key' (a 'ssh-ed25519 AAAA…' line or .pub path)")
        if not isinstance(spec, str) or not spec.strip():
            raise self.fail("'peer.key' must be a 'ssh-ed25519 AAAA…' line or a .pub path")
        try:
            return load_public_key(spec, self.base)
        except KeyFileError as err:
            raise KeyFileError(f"{self.path}: peer.key: {err}") from err
