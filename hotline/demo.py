"""``hotline demo``: the whole product on one machine, narrated.

From nothing, in a temporary directory: two identities (``washington`` and
``moscow``), two configs, two real daemons on loopback with TCP as the primary path
and UDP as the hot standby — each path through a small fault proxy so that the TCP
path can be cut the way a real circuit fails (packets silently vanish, no RST).
Messages go both ways with ``hotline send --wait``; then a stream of messages is sent
while TCP is black-holed mid-way, the link fails over to UDP, every message arrives
once and in order, TCP comes back and is primary again. The heartbeat log, ``status``
and ``verify`` are shown. Every step runs the real CLI, as an operator would.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from hotline.errors import CheckFailedError
from hotline.testing.loopback import ProxiedPair

_STREAM = 40


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _show(pair: ProxiedPair, index: int, *args: str, stdin: bytes | None = None,
          quiet: bool = False) -> str:
    node = pair[index]
    shown = " ".join(shlex.quote(a) for a in args)
    if not quiet:
        print(f"$ hotline {args[0]} -c {node.name}.toml {shown[len(args[0]) + 1:]}", flush=True)
    result = pair.cli(index, *args, input=stdin)
    out = result.stdout.decode()
    if not quiet and out:
        print(out.rstrip(), flush=True)
    if result.returncode != 0:
        raise CheckFailedError(
            f"demo step failed (exit {result.returncode}): hotline {shown}: "
            f"{result.stderr.decode().strip()}")
    return out


def _log_tail(pair: ProxiedPair, index: int, since: int, kinds: tuple[str, ...]) -> int:
    lines = pair[index].log_lines()
    for line in lines[since:]:
        if line.split(" ", 1)[0] in kinds:
            print(f"  [{pair[index].name} log] {line}")
    return len(lines)


def run_demo(root: Path) -> None:
    """Run the narrated demo in ``root`` (an empty directory)."""
    _say(f"1. two identities and configs in {root}")
    pair = ProxiedPair(root, settings={"log_every": 5})
    try:
        for node in pair.nodes:
            pub = (node.key.parent / f"{node.name}.pub").read_text().strip()
            print(f"  {node.name}: {pub[:40]}…  ({node.config.name})")
        print((root / "washington.toml").read_text())
        _say("2. start both daemons (TCP primary, UDP hot standby) and wait for the link")
        pair.start_all()
        took = pair.wait_up(timeout=30)
        print(f"  link up on both paths after {took:.2f} s")
        _show(pair, 0, "status")
        _say("3. messages both ways, each acknowledged by the far end")
        _show(pair, 0, "send", "--wait", "Washington to Moscow: line check.")
        _show(pair, 1, "send", "--wait", "Moscow to Washington: loud and clear.")
        _show(pair, 1, "inbox")
        _say(f"4. cut the TCP path (black hole, no RST) in the middle of {_STREAM} messages")
        mark = len(pair[0].log_lines())
        lines = "".join(f"stream message {i}\n" for i in range(1, _STREAM + 1)).encode()
        first, second = lines.splitlines(keepends=True)[:20], lines.splitlines(keepends=True)[20:]
        _show(pair, 0, "send", "--lines", stdin=b"".join(first), quiet=True)
        pair.set_faults("tcp", blackhole=True)
        cut_at = time.monotonic()
        print("  TCP black-holed; sending the rest and waiting for acknowledgement …")
        _show(pair, 0, "send", "--lines", "--wait", "--timeout", "30",
              stdin=b"".join(second), quiet=True)
        print(f"  all {_STREAM} acknowledged {time.monotonic() - cut_at:.2f} s after the cut")
        mark = _log_tail(pair, 0, mark, ("state", "heartbeat"))
        _check_inbox(pair)
        _show(pair, 0, "status")
        _say("5. restore TCP: it becomes the primary path again")
        pair.set_faults("tcp", blackhole=False)
        pair.wait_for(lambda: _active_scheme(pair) == "tcp", 30, "TCP to be primary again")
        _log_tail(pair, 0, mark, ("state", "heartbeat"))
        _show(pair, 0, "status")
        _say("6. re-check every signature, chain link and receipt at both ends")
        _show(pair, 0, "verify")
        _show(pair, 1, "verify")
    finally:
        pair.close()
    _say("done: no message lost or repeated; both daemons stopped cleanly")


def _active_scheme(pair: ProxiedPair) -> str | None:
    status = pair.status(0)
    active = status.get("active") if status else None
    return active.split(":", 1)[0] if isinstance(active, str) else None


def _check_inbox(pair: ProxiedPair) -> None:
    out = pair.cli(1, "inbox", "--json").stdout.decode().splitlines()
    bodies = [json.loads(line)["body"] for line in out]
    stream = [b for b in bodies if b.startswith("stream message")]
    expected = [f"stream message {i}" for i in range(1, _STREAM + 1)]
    if stream != expected:
        raise CheckFailedError(f"moscow's inbox is not the stream in order: {stream!r}")
    print(f"  moscow received all {_STREAM} stream messages exactly once, in order")


def main(keep: bool = False) -> int:
    """Entry point of ``hotline demo``; a failed step is one line and exit 1."""
    try:
        return _main(keep)
    except (TimeoutError, RuntimeError, OSError) as err:
        raise CheckFailedError(f"demo failed: {err}") from err


def _main(keep: bool) -> int:
    if keep:
        root = Path(tempfile.mkdtemp(prefix="hotline-demo-"))
        run_demo(root)
        print(f"kept {root}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="hotline-demo-") as tmp:
        run_demo(Path(tmp))
    return 0
