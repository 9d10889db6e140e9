"""``hotline demo``: the whole product on one machine, narrated.

From nothing, in a temporary directory: two identities (``washington`` and
``moscow``), two configs, two real daemons on loopback with TCP as the primary path
and UDP as the hot standby — each path through a small fault proxy so that the TCP
path can be cut the way a real circuit fails (packets silently vanish, no RST).
Messages go both ways with ``hotline send --wait``. Precedence: moscow's daemon goes
away, thousands of routine messages queue at washington, then a FLASH; when moscow
is back the FLASH is the first thing in its inbox (``Z1``). Operator acknowledgement:
``send -p flash --wait-operator`` waits in the background until moscow's operator runs
``hotline ack``, with ``status`` showing what awaits the far operator before and
after. Then a stream of messages is sent while TCP is black-holed mid-way, the link
fails over to UDP, every message arrives once and in order, TCP comes back and is
primary again. The heartbeat log, ``status`` and ``verify`` are shown. Every step
runs the real CLI, as an operator would; what the peer wrote reaches the terminal only
through the CLI's escaped text output.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hotline.errors import CheckFailedError
from hotline.testing.loopback import ProxiedPair

_STREAM = 40
_BACKLOG = 3000


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _show(pair: ProxiedPair, index: int, *args: str, stdin: bytes | None = None,
          quiet: bool = False, head: int | None = None) -> str:
    """Run ``hotline ARGS`` for node ``index``, print the command and its output (only
    the first ``head`` lines of it, if given); raise CheckFailedError if it fails."""
    node = pair[index]
    shown = " ".join(shlex.quote(a) for a in args)
    if not quiet:
        print(f"$ hotline {args[0]} -c {node.name}.toml {shown[len(args[0]) + 1:]}", flush=True)
    result = pair.cli(index, *args, input=stdin)
    out = result.stdout.decode()
    if not quiet and out:
        lines = out.rstrip().splitlines()
        print("\n".join(lines[:head]), flush=True)
        if head is not None and len(lines) > head:
            print(f"  … ({len(lines) - head:,} more lines)", flush=True)
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
        _precedence(pair)
        _operator_ack(pair)
        _failover(pair)
        _say("8. re-check every signature, chain link and receipt at both ends")
        _show(pair, 0, "verify")
        _show(pair, 1, "verify")
    finally:
        pair.close()
    _say("done: no message lost or repeated; both daemons stopped cleanly")


def _precedence(pair: ProxiedPair) -> None:
    """A FLASH sent after a routine backlog is the first thing the peer stores."""
    _say(f"4. precedence: moscow's daemon goes away, {_BACKLOG:,} routine messages queue, "
         "then a FLASH")
    before = _lane(pair, 1, "routine")["in_seq"]
    pair.kill(1, signal.SIGTERM)
    pair.wait_for(lambda: (pair.status(0) or {}).get("state") == "down", 30,
                  "washington to see moscow gone")
    print("  moscow's daemon stopped; washington's link is down")
    backlog = b"".join(b"routine report %d\n" % i for i in range(1, _BACKLOG + 1))
    _show(pair, 0, "send", "--lines", stdin=backlog, quiet=True)
    print(f"  {_BACKLOG:,} routine messages stored at washington, waiting for moscow")
    _show(pair, 0, "send", "-p", "flash", "FLASH: unidentified launch detected. Confirm.")
    _show(pair, 0, "status", head=7)
    print("  moscow's daemon starts again …")
    pair.start(1)
    pair.wait_for(lambda: _lane(pair, 1, "routine")["in_seq"] >= before + _BACKLOG, 60,
                  "moscow to receive the backlog")
    _show(pair, 1, "inbox", "--since", str(before), head=5)
    first = _received_after(pair, before)[0]
    if first != "Z1":
        raise CheckFailedError(f"moscow stored {first} first, not the FLASH Z1")
    print(f"  the FLASH Z1 came first: stored by moscow before all {_BACKLOG:,} routine "
          "messages queued ahead of it, which followed in order")


def _operator_ack(pair: ProxiedPair) -> None:
    """``send --wait-operator`` returns once the far operator runs ``hotline ack``."""
    _say("5. operator acknowledgement: a FLASH that waits for a person at the far end")
    print(f"  washington awaits moscow's operator for: {_pending(pair)}")
    node = pair[0]
    args = ["send", "-p", "flash", "--wait-operator", "--timeout", "60",
            "FLASH: acknowledge in person."]
    print(f"$ hotline send -c {node.name}.toml {shlex.join(args[1:])} &", flush=True)
    started = time.monotonic()
    sender = subprocess.Popen([sys.executable, "-m", "hotline", args[0], "-c",
                               str(node.config), *args[1:]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pair.wait_for(lambda: "Z2" in _pending(pair), 30, "Z2 to await moscow's operator")
        print(f"  washington awaits moscow's operator for: {_pending(pair)}")
        _show(pair, 1, "inbox", "--pending")
        _show(pair, 1, "ack", "Z1", "Z2", "--comment", "Seen. Standing by.")
        out, err = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    if sender.returncode != 0:
        raise CheckFailedError(f"send --wait-operator failed: {err.decode().strip()}")
    print(f"  [background send] printed {out.decode().strip()!r} and returned (exit 0) "
          f"{time.monotonic() - started:.2f} s after it started, once moscow's operator "
          "acknowledged")
    pair.wait_for(lambda: _pending(pair) == "none", 30, "washington to record the acks")
    print(f"  washington awaits moscow's operator for: {_pending(pair)}")
    _show(pair, 0, "inbox")


def _failover(pair: ProxiedPair) -> None:
    """TCP black-holed mid-stream: failover to UDP, nothing lost; TCP back as primary."""
    _say(f"6. cut the TCP path (black hole, no RST) in the middle of {_STREAM} messages")
    mark = len(pair[0].log_lines())
    lines = [f"stream message {i}\n".encode() for i in range(1, _STREAM + 1)]
    _show(pair, 0, "send", "--lines", stdin=b"".join(lines[:20]), quiet=True)
    pair.set_faults("tcp", blackhole=True)
    cut_at = time.monotonic()
    print("  TCP black-holed; sending the rest and waiting for acknowledgement …")
    _show(pair, 0, "send", "--lines", "--wait", "--timeout", "30",
          stdin=b"".join(lines[20:]), quiet=True)
    print(f"  all {_STREAM} acknowledged {time.monotonic() - cut_at:.2f} s after the cut")
    mark = _log_tail(pair, 0, mark, ("state", "heartbeat"))
    _check_inbox(pair)
    _show(pair, 0, "status")
    _say("7. restore TCP: it becomes the primary path again")
    pair.set_faults("tcp", blackhole=False)
    pair.wait_for(lambda: _active_scheme(pair) == "tcp", 30, "TCP to be primary again")
    _log_tail(pair, 0, mark, ("state", "heartbeat"))
    _show(pair, 0, "status")


def _lane(pair: ProxiedPair, index: int, name: str) -> dict[str, int]:
    """One precedence lane of node ``index``'s ``status --json`` (zeros if no answer)."""
    status = pair.status(index)
    lanes = status.get("lanes") if status else None
    return dict(lanes[name]) if isinstance(lanes, dict) else {"in_seq": 0}


def _pending(pair: ProxiedPair) -> str:
    """Ids washington's ``status --json`` lists in ``operator_pending``, or "none"."""
    items = (pair.status(0) or {}).get("operator_pending") or []
    return " ".join(str(item["id"]) for item in items) or "none"


def _received_after(pair: ProxiedPair, routine_seq: int) -> list[str]:
    """Ids in moscow's inbox after routine message ``routine_seq``, in stored order."""
    out = pair.cli(1, "inbox", "--json", "--since", str(routine_seq)).stdout.decode()
    return [json.loads(line)["id"] for line in out.splitlines()]


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
