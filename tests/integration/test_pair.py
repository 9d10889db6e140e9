"""Two real daemon subprocesses on loopback, driven through the real CLI.

These are the "Done when" checks of the daemon issue: messages both ways with status,
failover when TCP is black-holed (through the fault proxy, no RST), redundant mode,
return to TCP, wrong and unpinned keys refused. Timings are printed, not asserted
(``hotline bench`` measures them); the assertions are about what happened.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotline.keyfile import save_identity
from hotline.proto.identity import Identity
from hotline.testing.loopback import LoopbackPair, ProxiedPair


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[LoopbackPair]:
    p = LoopbackPair(tmp_path)
    p.start_all()
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[ProxiedPair]:
    p = ProxiedPair(tmp_path)
    p.start_all()
    try:
        yield p
    finally:
        p.close()


def _inbox(p: LoopbackPair, index: int) -> list[dict[str, object]]:
    out = p.cli(index, "inbox", "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.decode().splitlines()]


def _active(p: LoopbackPair, index: int) -> str:
    status = p.status(index)
    assert status is not None
    return str(status["active"])


def test_messages_both_ways_and_status(pair: LoopbackPair) -> None:
    pair.wait_up()
    sent = pair.cli(0, "send", "--wait", "--json", "hello moscow")
    assert sent.returncode == 0, sent.stderr
    reply = json.loads(sent.stdout)
    assert reply["seq"] == 1
    assert reply["acked"] is True
    assert pair.cli(1, "send", "--wait", "hello washington").stdout == b"1\n"
    assert [m["body"] for m in _inbox(pair, 1)] == ["hello moscow"]
    assert [m["body"] for m in _inbox(pair, 0)] == ["hello washington"]
    status = json.loads(pair.cli(0, "status", "--json").stdout)
    assert status["state"] == "up"
    assert status["peer"] == "moscow"
    assert status["active"].startswith("tcp://")
    assert [p["state"] for p in status["paths"]] == ["up", "up"]
    assert all(isinstance(p["rtt_ms"], float) for p in status["paths"])
    assert status["out_seq"] == 1
    assert status["acked"] == 1
    assert status["in_seq"] == 1
    assert status["backlog"] == 0


def test_binary_body_and_stdin(pair: LoopbackPair) -> None:
    pair.wait_up()
    body = bytes(range(256)) * 100
    sent = pair.cli(0, "send", "--wait", "--type", "application/octet-stream", input=body)
    assert sent.returncode == 0, sent.stderr
    [msg] = _inbox(pair, 1)
    assert msg["type"] == "application/octet-stream"
    assert "body" not in msg
    import base64

    assert base64.b64decode(str(msg["body_b64"])) == body


def test_failover_to_udp_on_tcp_black_hole_and_back(proxied: ProxiedPair) -> None:
    proxied.wait_up()
    first = "".join(f"before {i}\n" for i in range(50)).encode()
    assert proxied.cli(0, "send", "--lines", "--wait", input=first).returncode == 0
    proxied.set_faults("tcp", blackhole=True)
    cut = time.monotonic()
    rest = "".join(f"after {i}\n" for i in range(50)).encode()
    out = proxied.cli(0, "send", "--lines", "--wait", "--timeout", "30", input=rest)
    assert out.returncode == 0, out.stderr
    print(f"50 messages acked {time.monotonic() - cut:.2f}s after the TCP black hole")
    proxied.wait_for(lambda: _active(proxied, 0).startswith("udp://"), 15, "UDP primary")
    print(f"UDP primary {time.monotonic() - cut:.2f}s after the cut")
    bodies = [m["body"] for m in _inbox(proxied, 1)]
    assert bodies == [f"before {i}" for i in range(50)] + [f"after {i}" for i in range(50)]
    assert any("change=failover" in x for x in proxied[0].log_lines("state"))
    proxied.set_faults("tcp", blackhole=False)
    proxied.wait_for(lambda: _active(proxied, 0).startswith("tcp://"), 30, "TCP primary again")
    assert proxied.cli(0, "send", "--wait", "back on tcp").returncode == 0
    assert _inbox(proxied, 1)[-1]["body"] == "back on tcp"


def test_redundant_mode_does_not_stall(tmp_path: Path) -> None:
    p = ProxiedPair(tmp_path, settings={"redundant": True})
    p.start_all()
    try:
        p.wait_up()
        p.set_faults("tcp", blackhole=True)
        out = p.cli(0, "send", "--wait", "--json", "--timeout", "30", "no stall")
        assert out.returncode == 0, out.stderr
        status = p.status(0)
        assert status is not None
        # Acknowledged while TCP was not even declared down yet: nothing waited for it.
        assert status["paths"][0]["state"] == "up"
        print(f"redundant ack_ms={json.loads(out.stdout)['ack_ms']}")
    finally:
        p.close()


def test_wrong_pinned_key_is_refused_with_a_logged_reason(tmp_path: Path) -> None:
    p = LoopbackPair(tmp_path)
    wrong = Identity.generate().public.openssh_line("impostor")
    config = p[1].config.read_text().splitlines()
    p[1].config.write_text("\n".join(
        f'key = "{wrong}"' if line.startswith("key = \"ssh-") else line for line in config
    ) + "\n")
    p.start_all()
    try:
        p.wait_for(lambda: bool(p[0].log_lines("auth") + p[1].log_lines("auth")),
                   20, "an auth log line")
        assert p.status(0)["state"] == "down"  # type: ignore[index]
        assert p.status(1)["state"] == "down"  # type: ignore[index]
        refused = [p.status(i)["dropped"].get("AuthenticationError", 0)  # type: ignore[index]
                   for i in (0, 1)]
        assert sum(refused) >= 1
        assert p.cli(0, "send", "--wait", "--timeout", "1", "x").returncode == 75
    finally:
        p.stop_all()
    line = (p[0].log_lines("auth") + p[1].log_lines("auth"))[0]
    assert "reason=" in line


def test_stranger_with_unpinned_key_gets_nothing(tmp_path: Path) -> None:
    """A third party that knows moscow's key but is not pinned there is refused."""
    p = LoopbackPair(tmp_path)
    stranger_key = tmp_path / "keys" / "stranger"
    save_identity(stranger_key, Identity.generate(), "stranger")
    text = p[0].config.read_text().replace('key = "keys/washington"', 'key = "keys/stranger"')
    text = text.replace('state_dir = "state/washington"', 'state_dir = "state/stranger"')
    p[0].config.write_text(text)
    (tmp_path / "state" / "stranger").mkdir()
    p.start_all()
    try:
        p.cli(0, "send", "secret from a stranger")
        p.wait_for(lambda: bool(p[0].log_lines("auth") + p[1].log_lines("auth")),
                   20, "an auth log line")
        time.sleep(1.0)
        assert _inbox(p, 1) == []
        assert p.status(1)["state"] == "down"  # type: ignore[index]
    finally:
        p.stop_all()


def test_ipv6_loopback(tmp_path: Path) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    p = LoopbackPair(tmp_path, host="::1")
    p.start_all()
    try:
        p.wait_up()
        status = p.status(0)
        assert status is not None
        assert status["active"].startswith("tcp://[::1]:")
        assert p.cli(0, "send", "--wait", "over IPv6").returncode == 0
        assert [m["body"] for m in _inbox(p, 1)] == ["over IPv6"]
    finally:
        p.stop_all()


def test_rekey_under_traffic(tmp_path: Path) -> None:
    """Sessions are replaced every rekey_after seconds without losing a message."""
    p = LoopbackPair(tmp_path, settings={"rekey_after": 1.0})
    p.start_all()
    try:
        p.wait_up()
        for i in range(6):
            out = p.cli(0, "send", "--wait", "--timeout", "20", f"across rekeys {i}")
            assert out.returncode == 0, out.stderr
            time.sleep(0.5)
        handshakes = p[0].log_lines("handshake") + p[1].log_lines("handshake")
        assert len(handshakes) >= 3
        assert [m["body"] for m in _inbox(p, 1)] == [f"across rekeys {i}" for i in range(6)]
    finally:
        p.stop_all()


def _follow_inbox(p: LoopbackPair, index: int) -> subprocess.Popen[str]:
    """``hotline inbox --follow --json`` of node ``index``, running."""
    return subprocess.Popen(
        [sys.executable, "-m", "hotline", "inbox", "-c", str(p[index].config), "--follow",
         "--json"], stdout=subprocess.PIPE, text=True)


def test_inbox_follow_and_the_events_stream(pair: LoopbackPair) -> None:
    from hotline.control_client import connect
    from hotline.proto.control import EventsRequest

    pair.wait_up()
    follow = _follow_inbox(pair, 1)
    try:
        with connect(pair[0].control, timeout=20) as events:
            events.send(EventsRequest())
            for i in range(3):
                assert pair.cli(0, "send", f"followed {i}").returncode == 0
            assert follow.stdout is not None
            got = [json.loads(follow.stdout.readline())["body"] for _ in range(3)]
            assert got == [f"followed {i}" for i in range(3)]
            pair.kill(1)  # the peer goes away: washington logs the path going down
            kinds: list[tuple[str, str]] = []
            while ("state", "down") not in kinds:
                event = events.read_reply()["event"]
                kinds.append((event["event"], str(event.get("change"))))
    finally:
        follow.kill()
        follow.communicate()


def test_backlog_limit_refuses_send_while_the_peer_is_away(tmp_path: Path) -> None:
    """Flow control toward clients: memory cannot grow without bound while the peer is down."""
    p = LoopbackPair(tmp_path, settings={"max_backlog": 3})
    p.start(0)  # moscow never starts
    try:
        p.wait_for(lambda: p.status(0) is not None, 20, "washington's control socket")
        # --lines sends what stdin holds as one request: refused whole, nothing stored
        out = p.cli(0, "send", "--lines", input=b"one\ntwo\nthree\nfour\nfive\n")
        assert out.stdout == b""
        assert out.returncode == 75, out.stderr
        assert b"backlog" in out.stderr
        for seq, body in enumerate(("one", "two", "three"), start=1):
            stored = p.cli(0, "send", body)
            assert stored.stdout.split() == [str(seq).encode()]
        refused = p.cli(0, "send", "four")
        assert refused.returncode == 75
        assert b"backlog" in refused.stderr
        assert p.status(0)["backlog"] == 3  # type: ignore[index]
        p.start(1)
        p.wait_up()
        assert p.cli(0, "send", "--wait", "four").returncode == 0
        assert [m["body"] for m in _inbox(p, 1)] == ["one", "two", "three", "four"]
    finally:
        p.stop_all()


def test_a_daemon_waiting_for_its_peer_sleeps(tmp_path: Path) -> None:
    """No busy loop while the peer is away (every deadline moves on)."""
    import os

    p = LoopbackPair(tmp_path)
    p.start(0)
    try:
        p.wait_for(lambda: p.status(0) is not None, 20, "washington's control socket")
        pid = p[0].proc.pid  # type: ignore[union-attr]

        def cpu_seconds() -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu_seconds()
        time.sleep(3.0)
        used = cpu_seconds() - before
        print(f"CPU used in 3 s without a peer: {used:.2f} s")
        assert used < 0.9  # a spinning loop uses ~3 s; an idle one ~0.01 s
    finally:
        p.stop_all()


def test_a_bad_media_type_is_a_usage_error_not_a_crash(pair: LoopbackPair) -> None:
    pair.wait_up()
    for bad in ("bogus", "text/" + "x" * 80, "tëxt/plain"):
        out = pair.cli(0, "send", "--type", bad, "hi")
        assert out.returncode == 2, out.stderr
        assert b"media type" in out.stderr
    assert pair.status(0) is not None  # the daemon is still there
    assert pair.cli(0, "send", "--wait", "still fine").returncode == 0


def test_inbox_follow_continues_into_a_new_peer_epoch(pair: LoopbackPair) -> None:
    """The peer lost its store (new epoch, seqs restart at 1): followers still see it all."""
    import shutil

    pair.wait_up()
    follow = _follow_inbox(pair, 1)
    try:
        assert follow.stdout is not None
        for i in range(2):
            assert pair.cli(0, "send", "--wait", f"old epoch {i}").returncode == 0
        seen = [json.loads(follow.stdout.readline()) for _ in range(2)]
        pair.kill(0)
        shutil.rmtree(pair[0].state_dir)
        pair[0].state_dir.mkdir()
        pair.start(0)
        pair.wait_up()
        assert pair.cli(0, "send", "--wait", "new epoch 0").returncode == 0
        seen.append(json.loads(follow.stdout.readline()))
        assert [(m["seq"], m["body"]) for m in seen] == [
            (1, "old epoch 0"), (2, "old epoch 1"), (1, "new epoch 0")]
        assert any("peer started a new epoch" in x for x in pair[1].log_lines("epoch"))
    finally:
        follow.kill()
        follow.communicate()
