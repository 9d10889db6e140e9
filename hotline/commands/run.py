"""``hotline run``: the daemon in the foreground (systemd runs exactly this)."""

from __future__ import annotations

import argparse
import sys

from hotline.errors import KeyPermissionError


def run(args: argparse.Namespace) -> int:
    """Load the config, then run the daemon until SIGTERM/SIGINT (exit 0)."""
    import trio

    from hotline.config import find_config, load_config
    from hotline.daemon.logs import Logger
    from hotline.daemon.notify import Notifier
    from hotline.daemon.supervisor import run_daemon

    config = load_config(find_config(args.config, args.link))
    logger = Logger.from_env(sys.stderr, args.log_format)
    if not logger.priority_prefix and logger.journal is None:
        logger.timestamps = True  # a terminal or a file: say when; journald stamps its own
    notifier = Notifier.from_env()
    try:
        trio.run(run_daemon, config, logger, notifier)
    except KeyPermissionError as err:
        logger.insecure(str(config.key_path), str(err))
        raise
    return 0
