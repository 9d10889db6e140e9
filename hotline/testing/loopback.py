"""Two real daemons on loopback: the pair behind ``hotline demo``, ``bench`` and the tests.

``LoopbackPair`` makes a directory with two identities (``washington`` and
``moscow``), two configs and two state directories, and starts each daemon as a real
subprocess (``python -m hotline run``). Every path a daemon dials can be routed
through a port of the caller's choosing (a fault proxy), so the demo and the tests
can black-hole, delay or corrupt one path without touching the daemons.

Talking to a daemon goes through the real CLI client code (``control_client``), so
what is exercised is what an operator runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotline.keyfile import save_identity
from hotline.proto.identity import Identity

NAMES = ("washington", "moscow")


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (for both TCP and UDP when asked twice)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port number free for both TCP and UDP on ``host``."""
    for _ in range(50):
        port = free_port(socket.SOCK_STREAM, host)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            try:
                u.bind((host, port))
            except OSError:
                continue
        return port
    raise OSError("no port free for both TCP and UDP")


def _toml_value(value: Any) -> str:
    """A TOML value: JSON's spelling, but a dict is an inline table."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    return json.dumps(value)


def _url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


@dataclass
class Node:
    """One end of the pair: its files, ports and process."""

    name: str
    dir: Path
    host: str
    port: int
    config: Path = field(init=False)
    key: Path = field(init=False)
    state_dir: Path = field(init=False)
    log_path: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.key = self.dir / "keys" / self.name
        self.config = self.dir / f"{self.name}.toml"
        self.state_dir = self.dir / "state" / self.name
        self.log_path = self.dir / f"{self.name}.log"

    def log_lines(self, kind: str | None = None) -> list[str]:
        """This daemon's log lines (timestamp stripped), optionally of one event kind."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            head, _, rest = line.partition(" ")
            if head[:1].isdigit() and "T" in head:  # an ISO-8601 timestamp prefix
                line = rest
            if kind is None or line.split(" ", 1)[0] == kind:
                out.append(line)
        return out

    @property
    def control(self) -> Path:
        """The daemon's control socket."""
        return self.state_dir / "control.sock"

    def listen_urls(self) -> list[str]:
        """What this daemon binds: TCP and UDP on one port."""
        return [_url("tcp", self.host, self.port), _url("udp", self.host, self.port)]


class LoopbackPair:
    """Two daemons on loopback; see the module header.

    Args:
        root: an empty directory to work in.
        route: maps (dialling node name, scheme, target port) to the port it should dial;
            the identity by default. A fault proxy listens on the returned port.
        settings: extra top-level config keys (e.g. ``{"redundant": True}``).
        node_settings: more keys for one node only, by name (``{"washington": {…}}``).
        host: ``127.0.0.1`` or ``::1``.
    """

    def __init__(
        self,
        root: Path,
        route: Callable[[str, str, int], int] | None = None,
        settings: dict[str, Any] | None = None,
        host: str = "127.0.0.1",
        log_format: str = "text",
        node_settings: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.root = root
        self.route = route or (lambda _n, _s, port: port)
        self.settings = settings or {}
        self.node_settings = node_settings or {}
        self.log_format = log_format
        self.nodes = [Node(n, root, host, free_port_pair(host)) for n in NAMES]
        (root / "keys").mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            save_identity(node.key, Identity.generate(), node.name)
            node.state_dir.mkdir(parents=True, exist_ok=True)
        for node, peer in ((self.nodes[0], self.nodes[1]), (self.nodes[1], self.nodes[0])):
            node.config.write_text(self._config_text(node, peer))

    def __getitem__(self, index: int) -> Node:
        return self.nodes[index]

    def _config_text(self, node: Node, peer: Node) -> str:
        peer_pub = (peer.key.parent / f"{peer.name}.pub").read_text().strip()
        paths = [
            _url(scheme, peer.host, self.route(node.name, scheme, peer.port))
            for scheme in ("tcp", "udp")
        ]
        lines = [
            f'key = "keys/{node.name}"',
            f"listen = {json.dumps(node.listen_urls())}",
            f'state_dir = "state/{node.name}"',
        ]
        settings = {**self.settings, **self.node_settings.get(node.name, {})}
        lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
        lines += [
            "",
            "[peer]",
            f'name = "{peer.name}"',
            f'key = "{peer_pub}"',
            f"paths = {json.dumps(paths)}",
        ]
        return "\n".join(lines) + "\n"

    # --- processes ----------------------------------------------------------------

    def start(self, index: int, env: dict[str, str] | None = None) -> None:
        """Start daemon ``index`` (its log appends to ``node.log_path``)."""
        node = self.nodes[index]
        log = node.log_path.open("ab")
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "hotline", "run", "-c", str(node.config),
             "--log-format", self.log_format],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
        log.close()

    def start_all(self) -> None:
        """Start both daemons."""
        for i in range(len(self.nodes)):
            self.start(i)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> int | None:
        """Send ``sig`` to daemon ``index`` and reap it; returns its exit code."""
        proc = self.nodes[index].proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
        finally:
            self.nodes[index].proc = None

    def stop_all(self) -> None:
        """SIGTERM both daemons (graceful shutdown) and reap them."""
        for i in range(len(self.nodes)):
            self.kill(i, signal.SIGTERM)

    # --- talking to the daemons ---------------------------------------------------

    def cli(self, index: int, *args: str, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """Run ``hotline ARGS -c CONFIG`` for node ``index`` as a subprocess."""
        node = self.nodes[index]
        cmd = [sys.executable, "-m", "hotline", args[0], "-c", str(node.config), *args[1:]]
        return subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)

    def status(self, index: int) -> dict[str, Any] | None:
        """``status --json`` of node ``index``, or None if its daemon does not answer."""
        from hotline.control_client import connect
        from hotline.errors import UserError
        from hotline.proto.requests import StatusRequest

        try:
            with connect(self.nodes[index].control, timeout=10) as client:
                reply = client.request(StatusRequest())
        except (UserError, OSError):
            return None
        status = reply.get("status")
        return status if isinstance(status, dict) else None

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0,
                 what: str = "condition") -> float:
        """Poll ``predicate`` until true; returns the seconds it took. Raises TimeoutError."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(0.02)
        raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")

    def wait_up(self, indexes: Sequence[int] = (0, 1), all_paths: bool = True,
                timeout: float = 30.0) -> float:
        """Wait until the given daemons report the link up (every path, if ``all_paths``)."""
        want = ("up",) if all_paths else ("up", "degraded")

        def ready() -> bool:
            for i in indexes:
                st = self.status(i)
                if st is None or st.get("state") not in want:
                    return False
            return True

        return self.wait_for(ready, timeout, "the link to come up")


class ProxiedPair(LoopbackPair):
    """A LoopbackPair whose every dialled path goes through a fault proxy subprocess.

    Proxy names are ``DIALLER.SCHEME`` (``washington.tcp`` carries what washington
    dials on moscow's TCP port, and the replies). ``set_faults("tcp", blackhole=True)``
    changes both directions of a scheme at once.
    """

    def __init__(self, root: Path, settings: dict[str, Any] | None = None,
                 seed: int = 1, log_format: str = "text",
                 node_settings: dict[str, dict[str, Any]] | None = None) -> None:
        self._plan: list[dict[str, Any]] = []
        super().__init__(root, route=self._route, settings=settings, log_format=log_format,
                         node_settings=node_settings)
        from hotline.testing.faultproxy import FaultProxyProcess

        self.proxy = FaultProxyProcess({"seed": seed, "proxies": self._plan})

    def _route(self, dialler: str, scheme: str, target_port: int) -> int:
        kind = socket.SOCK_STREAM if scheme == "tcp" else socket.SOCK_DGRAM
        port = free_port(kind)
        spec: dict[str, Any] = {
            "name": f"{dialler}.{scheme}", "kind": scheme,
            "listen": f"127.0.0.1:{port}", "target": f"127.0.0.1:{target_port}",
        }
        if scheme == "tcp":
            spec["frame_aware"] = True
        self._plan.append(spec)
        return port

    def set_faults(self, scheme: str, **faults: Any) -> None:
        """Change the faults of every proxy carrying ``scheme`` (both directions)."""
        for spec in self._plan:
            if spec["kind"] == scheme:
                self.proxy.set(spec["name"], **faults)

    def close(self) -> None:
        """Stop both daemons and the proxy."""
        self.stop_all()
        self.proxy.close()
