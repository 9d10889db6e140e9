"""The ``hotline`` command line: argument parsing and dispatch, nothing else.

Each command lives in its own module under ``hotline/commands/`` with a
``run(args: argparse.Namespace) -> int`` function, imported only when that command
runs. That keeps client commands (``send``, ``inbox``, ``status``) fast: they never
import trio or cryptography. Every ``UserError`` becomes one line on stderr and its
exit code (DESIGN §6); nothing an operator can cause prints a traceback.

Start-up cost is part of the contract (``send`` and ``status`` within 3x a bare
``python -c pass``), so parsing does as little as it can: when the command line names
a command, the parser is built for that command alone (all of them only for
``hotline --help`` or a word that is no command), and help is laid out for the
terminal without argparse's per-formatter ``import shutil``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from hotline.errors import HotlineError, UsageError

EX_USAGE = 2

INBOX_TEXT_HELP = (
    "Print received messages: '#ID [PRECEDENCE] DATE TIME [TYPE] first line of the body' "
    "(ID as Z17, O4, P9 or a bare routine seq). The peer never writes to your terminal: "
    "control and format characters and invalid UTF-8 are shown escaped (\\x1b, \\u202e, "
    "\\xff; a backslash as \\\\); each further line of a body starts with two spaces and "
    "'| ', and on a terminal a line too long for it is cut and goes on in a line that "
    "starts with two spaces and '+ '. Message headers never start with a space; a line "
    "'-- peer epoch HEX --' comes first and whenever the peer's epoch changes. --json and "
    "--raw give the exact text or bytes."
)
INBOX_RAW_HELP = (
    "exact bytes for scripts: per message a line 'ID TS_NS LENGTH TYPE', then exactly "
    "LENGTH body bytes, then a newline (read the line, read LENGTH bytes, skip one byte)"
)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so usage errors share one path."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, with the width read without importing ``shutil``.

    argparse makes a formatter for every ``add_argument`` (to check the metavar), and
    each one imports ``shutil`` for the terminal width: ~2 ms of a client command.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_columns() - 2)


def _terminal_columns() -> int:
    """``$COLUMNS``, else the width of stdout's terminal, else 80 (as shutil does)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _lane(text: str) -> int:
    from hotline.proto.lanes import parse_lane

    try:
        return parse_lane(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _message_id(text: str) -> tuple[int, int]:
    from hotline.proto.lanes import parse_message_id

    try:
        return parse_message_id(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _send_id(text: str) -> str:
    if not 0 < len(text.encode()) <= 128:
        raise argparse.ArgumentTypeError("an id is 1..128 bytes")
    return text


def _link_options(p: argparse.ArgumentParser) -> None:
    """``-c FILE`` or ``-i LINK``; with neither, the only config in /etc/hotline/."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("-c", "--config", metavar="FILE", help="config file of the link")
    g.add_argument(
        "-i", "--link", metavar="LINK", help="link name, meaning /etc/hotline/LINK.toml"
    )


def _keygen(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="private key file to write; the public line goes to PATH.pub")
    p.add_argument("--comment", default=None, help="comment for the .pub line")
    p.add_argument("--force", action="store_true", help="overwrite existing files")


def _pubkey(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="private key or .pub file")


def _run(p: argparse.ArgumentParser) -> None:
    _link_options(p)
    p.add_argument("--log-format", choices=["text", "json"], default="text")


def _send(p: argparse.ArgumentParser) -> None:
    _link_options(p)
    p.add_argument("-p", "--precedence", type=_lane, default=3, metavar="P",
                   help="flash, immediate, priority or routine (Z, O, P, R; default routine)")
    p.add_argument("--wait", action="store_true",
                   help="return only once the peer stored it (acknowledged)")
    p.add_argument("--wait-operator", action="store_true",
                   help="return only once the peer's operator acknowledged it (hotline ack)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="with --wait/--wait-operator: give up after S seconds (exit 75)")
    p.add_argument("--id", type=_send_id, default=None, metavar="ID",
                   help="idempotency id: a later send with the same ID stores nothing and "
                        "prints the first one's id (with --lines, line k carries ID:k)")
    p.add_argument("--lines", action="store_true", help="send each stdin line as a message")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("--type", default="text/plain", help="media type (default text/plain)")
    p.add_argument("text", nargs="?", default=None, help="message text (default: stdin)")


def _inbox(p: argparse.ArgumentParser) -> None:
    _link_options(p)
    p.description = INBOX_TEXT_HELP
    since = p.add_mutually_exclusive_group()
    since.add_argument("--since", type=_message_id, default=None, metavar="ID",
                       help="only messages received after message ID (Z17, O4, P9, 1234)")
    since.add_argument("--after", type=int, default=0, metavar="N",
                       help="only messages after inbox cursor N (the 'n' of --json)")
    p.add_argument("--follow", action="store_true", help="keep printing new messages")
    p.add_argument("--pending", action="store_true",
                   help="only messages still owed our operator's acknowledgement")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON object per message")
    form.add_argument("--raw", action="store_true", help=INBOX_RAW_HELP)


def _ack(p: argparse.ArgumentParser) -> None:
    _link_options(p)
    p.add_argument("ids", nargs="+", type=_message_id, metavar="ID",
                   help="message ids (Z17, O4, P9, 1234)")
    p.add_argument("--comment", default="", help="a comment signed with the acknowledgement")


def _drill(p: argparse.ArgumentParser) -> None:
    _link_options(p)
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up waiting for the result after S seconds (exit 75; default "
                        "drill_deadline + 5)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _status(p: argparse.ArgumentParser) -> None:
    _link_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object")


def _export(p: argparse.ArgumentParser) -> None:
    _link_options(p)
    p.add_argument("id", type=_message_id, metavar="ID", help="message id (Z17, O4, P9, 1234)")
    p.add_argument("dir", help="directory to write msg, msg.sig and allowed_signers into "
                   "(created 0700 if missing); exit 77 if it is a symlink, not ours, "
                   "writable by others without the sticky bit, or holds a symlink or a "
                   "foreign file under one of those names")
    p.add_argument("--direction", choices=["in", "out"], default="in",
                   help="received (in, default) or sent (out) message")


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")


def _bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--messages", type=int, metavar="N",
                   help="lines through `send --lines --wait` (default 20000)")
    p.add_argument("--backlog", type=int, metavar="N",
                   help="routine backlog behind each FLASH trial (default 100000)")
    p.add_argument("--trials", type=int, metavar="N",
                   help="FLASH trials, on loopback and again delayed (default 20)")
    p.add_argument("--delay", type=float, metavar="MS", dest="delay_ms",
                   help="delayed FLASH and WAN profile: one-way delay added each way "
                   "(default 100)")
    p.add_argument("--rate", type=float, metavar="MBIT", dest="rate_mbit",
                   help="WAN profile: bottleneck rate each way, Mbit/s (default 1)")
    p.add_argument("--queue", type=int, metavar="N",
                   help="WAN profile: bottleneck queue in packets (default 50)")
    p.add_argument("--quick", action="store_true",
                   help="a short smoke run (small counts, rough figures)")
    p.add_argument("--json", action="store_true", help="one JSON object")


# command -> (one-line help, adds its arguments); the order is the order of --help.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "keygen": ("make an Ed25519 identity (OpenSSH format)", _keygen),
    "pubkey": ("print the .pub line and fingerprint of a key", _pubkey),
    "run": ("run the daemon in the foreground", _run),
    "check": ("validate config, keys and permissions", _link_options),
    "send": ("send a message (TEXT or stdin)", _send),
    "inbox": ("print received messages", _inbox),
    "ack": ("acknowledge received messages as their operator", _ack),
    "drill": ("run a drill now: the far daemon (and operator) must answer", _drill),
    "status": ("show the link's state", _status),
    "verify": ("re-check every stored signature, chain link, receipt", _link_options),
    "export": ("write a message and its SSH signature to DIR", _export),
    "demo": ("two daemons on loopback: messages, precedence, operator ack, failover",
             _demo),
    "bench": ("measure the floor, throughput, send→ack, FLASH latency, failover, WAN",
              _bench),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``hotline`` argument parser (DESIGN §6 contract).

    Args:
        only: if it names a command, the parser knows only that command (it parses
            any command line that runs ``only`` as the full parser does); None for all.
    """
    parser = _Parser(prog="hotline", description="A secure, always-on line between two ends.",
                     formatter_class=_Formatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS if only is None else [only]:
        help_text, add_arguments = COMMANDS[name]
        add_arguments(sub.add_parser(name, help=help_text, formatter_class=_Formatter))
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command an argv runs: its first word not an option (None if help comes first)."""
    for word in argv:
        if word in ("-h", "--help"):
            return None
        if not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hotline`` console script. Returns the exit code."""
    if argv is None:
        argv = sys.argv[1:]
    try:
        command = _command_of(argv)
        args = build_parser(command if command in COMMANDS else None).parse_args(argv)
        if args.version:
            from hotline import __version__

            print(f"hotline {__version__}")
            return 0
        if args.command is None:
            raise UsageError("hotline: a command is required (see hotline --help)")
        module = importlib.import_module(f"hotline.commands.{args.command}")
        code: int = module.run(args)
        return code
    except HotlineError as err:
        print(f"hotline: {err}" if not str(err).startswith("hotline") else str(err),
              file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
