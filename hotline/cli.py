"""The ``hotline`` command line: argument parsing and dispatch, nothing else.

Each command lives in its own module under ``hotline/commands/`` with a
``run(args: argparse.Namespace) -> int`` function, imported only when that command
runs. That keeps client commands (``send``, ``inbox``, ``status``) fast: they never
import trio or cryptography. Every ``UserError`` becomes one line on stderr and its
exit code (DESIGN §6); nothing an operator can cause prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hotline.errors import HotlineError, UsageError

EX_USAGE = 2

INBOX_TEXT_HELP = (
    "Print received messages: '#SEQ DATE TIME [TYPE] first line of the body'. The peer "
    "never writes to your terminal: control and format characters and invalid UTF-8 are "
    "shown escaped (\\x1b, \\u202e, \\xff; a backslash as \\\\); each further line of a "
    "body starts with two spaces and '| ', and on a terminal a line too long for it is "
    "cut and goes on in a line that starts with two spaces and '+ '. Message headers "
    "never start with a space. --json and --raw give the exact text or bytes."
)
INBOX_RAW_HELP = (
    "exact bytes for scripts: per message a line 'SEQ TS_NS LENGTH TYPE', then exactly "
    "LENGTH body bytes, then a newline (read the line, read LENGTH bytes, skip one byte)"
)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so usage errors share one path."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _add_link_options(p: argparse.ArgumentParser) -> None:
    """``-c FILE`` or ``-i LINK``; with neither, the only config in /etc/hotline/."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("-c", "--config", metavar="FILE", help="config file of the link")
    g.add_argument(
        "-i", "--link", metavar="LINK", help="link name, meaning /etc/hotline/LINK.toml"
    )


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


def build_parser() -> argparse.ArgumentParser:
    """The full ``hotline`` argument parser (DESIGN §6 contract)."""
    parser = _Parser(prog="hotline", description="A secure, always-on line between two ends.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("keygen", help="make an Ed25519 identity (OpenSSH format)")
    p.add_argument("path", help="private key file to write; the public line goes to PATH.pub")
    p.add_argument("--comment", default=None, help="comment for the .pub line")
    p.add_argument("--force", action="store_true", help="overwrite existing files")

    p = sub.add_parser("pubkey", help="print the .pub line and fingerprint of a key")
    p.add_argument("path", help="private key or .pub file")

    p = sub.add_parser("run", help="run the daemon in the foreground")
    _add_link_options(p)
    p.add_argument("--log-format", choices=["text", "json"], default="text")

    p = sub.add_parser("check", help="validate config, keys and permissions")
    _add_link_options(p)

    p = sub.add_parser("send", help="send a message (TEXT or stdin)")
    _add_link_options(p)
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

    p = sub.add_parser("inbox", help="print received messages", description=INBOX_TEXT_HELP)
    _add_link_options(p)
    p.add_argument("--since", type=_message_id, default=None, metavar="ID",
                   help="only messages received after message ID (Z17, O4, P9, 1234)")
    p.add_argument("--follow", action="store_true", help="keep printing new messages")
    p.add_argument("--pending", action="store_true",
                   help="only messages still owed our operator's acknowledgement")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON object per message")
    form.add_argument("--raw", action="store_true", help=INBOX_RAW_HELP)

    p = sub.add_parser("status", help="show the link's state")
    _add_link_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object")

    p = sub.add_parser("verify", help="re-check every stored signature, chain link, receipt")
    _add_link_options(p)

    p = sub.add_parser("ack", help="acknowledge received messages as their operator")
    _add_link_options(p)
    p.add_argument("ids", nargs="+", type=_message_id, metavar="ID",
                   help="message ids (Z17, O4, P9, 1234)")
    p.add_argument("--comment", default="", help="a comment signed with the acknowledgement")

    p = sub.add_parser("export", help="write a message and its SSH signature to DIR")
    _add_link_options(p)
    p.add_argument("id", type=_message_id, metavar="ID", help="message id (Z17, O4, P9, 1234)")
    p.add_argument("dir", help="directory to write msg, msg.sig and allowed_signers into "
                   "(created 0700 if missing); exit 77 if it is a symlink, not ours, "
                   "writable by others without the sticky bit, or holds a symlink or a "
                   "foreign file under one of those names")
    p.add_argument("--direction", choices=["in", "out"], default="in",
                   help="received (in, default) or sent (out) message")

    p = sub.add_parser("demo", help="two daemons on loopback: messages, failover, logs")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")

    p = sub.add_parser("bench", help="measure handshake, RTT, acked msgs/s, failover")
    p.add_argument("--messages", type=int, default=5000, help="messages for the rate test")
    p.add_argument("--json", action="store_true", help="one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hotline`` console script. Returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
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
