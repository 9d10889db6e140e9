"""Shared by the client commands (send, inbox, status): find the config, connect.

Imports only the fast-path modules (config, control_client): no trio, no cryptography.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hotline.config import Config, find_config, load_config
from hotline.control_client import ControlClient, connect


def load(args: argparse.Namespace) -> Config:
    """The config named by ``-c``/``-i`` (or the only one in /etc/hotline)."""
    return load_config(find_config(args.config, args.link))


def open_client(config: Config, timeout: float | None = None) -> ControlClient:
    """Connect to the daemon of ``config`` (exit 3 if it is not running)."""
    return connect(config.control, link=config.peer_name, timeout=timeout)


def print_json(obj: dict[str, Any]) -> None:
    """One compact JSON object per line, flushed at once (scripts read it live)."""
    import json  # only --json output needs it (~1 ms of start-up)

    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()
