"""Two real daemons report post-quantum sessions (DESIGN §11): from the first rekey, over
TCP and UDP or over UDP alone, across a restart (the ratchet is stored), after a wiped
store (classical once, then post-quantum again), and from the first session with
``psk_file``. ``rekey_after`` is small so that the first rekey comes soon."""

from __future__ import annotations

import base64
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from hotline.testing.loopback import LoopbackPair, free_port

REKEY = 2.0
WAIT = 60.0


def _pair(root: Path, **kw: Any) -> LoopbackPair:
    settings = {"rekey_after": REKEY, "heartbeat": 0.5, "dead_after": 2.0}
    return LoopbackPair(root, settings={**settings, **kw.pop("settings", {})}, **kw)


def _pq(pair: LoopbackPair, index: int) -> bool:
    status = pair.status(index)
    return bool(status and status.get("state") in ("up", "degraded") and status.get("pq"))


def _wait_pq(pair: LoopbackPair) -> None:
    pair.wait_for(lambda: _pq(pair, 0) and _pq(pair, 1), WAIT, "pq: true at both ends")


def _handshakes(pair: LoopbackPair, index: int) -> list[str]:
    """``pq=yes``/``pq=no`` of each handshake line in daemon ``index``'s log."""
    return [word for line in pair[index].log_lines("handshake")
            for word in line.split() if word.startswith("pq=")]


def test_pq_from_the_first_rekey_across_restart_and_wipe(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    pair.start_all()
    try:
        pair.wait_up(timeout=WAIT)
        _wait_pq(pair)
        assert _handshakes(pair, 0)[0] == "pq=no"  # the first session: no ratchet yet
        heartbeat = pair[0].log_lines("heartbeat")[-1]
        assert heartbeat.endswith(("pq=yes", "pq=no"))

        before = len(_handshakes(pair, 1))  # restart: the ratchet is in the store
        pair.kill(1, signal.SIGTERM)
        pair.start(1)
        pair.wait_for(lambda: len(_handshakes(pair, 1)) > before, WAIT, "a handshake")
        assert _handshakes(pair, 1)[before] == "pq=yes"
        _wait_pq(pair)

        pair.kill(1, signal.SIGTERM)  # wipe: classical once, then the ratchet again
        shutil.rmtree(pair[1].state_dir)
        before = len(_handshakes(pair, 1))
        pair.start(1)
        pair.wait_for(lambda: len(_handshakes(pair, 1)) > before + 1, WAIT, "two handshakes")
        assert _handshakes(pair, 1)[before:before + 2] == ["pq=no", "pq=yes"]
        _wait_pq(pair)
        assert pair.cli(1, "check").stdout.decode().splitlines()[1].endswith(
            "ratchet secrets stored")
    finally:
        pair.stop_all()


def test_pq_over_udp_alone(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there: TCP never connects
    pair = _pair(tmp_path, route=lambda _n, scheme, port: dead if scheme == "tcp" else port)
    pair.start_all()
    try:
        pair.wait_up(all_paths=False, timeout=WAIT)
        _wait_pq(pair)
        status = pair.status(0)
        assert status is not None
        assert str(status["active"]).startswith("udp://")
    finally:
        pair.stop_all()


def test_pq_from_the_first_session_with_psk_file(tmp_path: Path) -> None:
    pair = _pair(tmp_path, settings={"psk_file": "link.psk", "rekey_after": 120.0})
    psk = tmp_path / "link.psk"
    psk.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    psk.chmod(0o600)
    pair.start_all()
    try:
        pair.wait_up(timeout=WAIT)
        _wait_pq(pair)
        assert _handshakes(pair, 0)[0] == "pq=yes"
        assert _handshakes(pair, 1)[0] == "pq=yes"
    finally:
        pair.stop_all()
