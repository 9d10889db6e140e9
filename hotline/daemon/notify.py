"""sd_notify: tell systemd we are ready, alive, busy or stopping (DESIGN §8).

The protocol is one AF_UNIX datagram of ``KEY=value`` lines sent to the socket named
by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket). That is all
libsystemd's ``sd_notify()`` does, so no dependency is needed.

* ``Notifier.from_env()`` reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
  ``WATCHDOG_PID``. Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
* ``ready()`` once config, key, store and listeners are up (never waiting for the
  peer); ``status(text)`` for ``systemctl status``; ``watchdog()`` from the heartbeat
  task every ``watchdog_interval()`` seconds (half of ``WATCHDOG_USEC``, as
  sd_watchdog_enabled(3) advises) while the event loop is healthy; ``stopping()`` on
  shutdown.

Sends are synchronous: the socket is non-blocking, so a full receive queue costs one
failed ``sendto`` and never blocks the event loop. A failed send is logged at debug
level and swallowed: monitoring must never take the daemon down.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from hotline.daemon.unixdgram import UnixDatagramSender

log = logging.getLogger("hotline.notify")


def _address(value: str) -> str | None:
    """``NOTIFY_SOCKET`` as a sendto() address: ``@x`` is the abstract ``\\0x``."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock:… and other forms are not supported: behave as unset


class Notifier:
    """Sends sd_notify(3) messages; a no-op when ``address`` is None."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        """Args:
        address: socket path, or ``\\0name`` for an abstract socket; None disables.
        watchdog_usec: the ``WATCHDOG_USEC`` systemd gave us, None if no watchdog.
        """
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._sender = UnixDatagramSender(address or "")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        env = os.environ if environ is None else environ
        address = _address(env.get("NOTIFY_SOCKET", ""))
        return cls(address, _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (plus an optional status line). Returns whether it was sent."""
        extra = {"STATUS": status} if status is not None else {}
        return self.notify({"READY": "1", **extra})

    def status(self, text: str) -> bool:
        """``STATUS=text``, shown by ``systemctl status``."""
        return self.notify({"STATUS": text})

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the event loop is alive. Call every ``watchdog_interval()`` s."""
        return self.notify({"WATCHDOG": "1"})

    def stopping(self) -> bool:
        """``STOPPING=1``: we are shutting down on purpose."""
        return self.notify({"STOPPING": "1"})

    def watchdog_interval(self) -> float | None:
        """Seconds between ``watchdog()`` calls (half of ``WATCHDOG_USEC``), or None."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def notify(self, fields: Mapping[str, str]) -> bool:
        """Send one datagram of ``KEY=value`` lines. Never raises; False if not sent."""
        if self._address is None:
            return False
        message = "\n".join(f"{k}={_one_line(v)}" for k, v in fields.items()).encode()
        err = self._sender.send(message)
        if err is not None:
            log.debug("sd_notify %s failed: %s", ",".join(fields), err)
            return False
        return True

    def close(self) -> None:
        """Close the socket (a later call reopens it)."""
        self._sender.close()


def _one_line(value: str) -> str:
    """A value may not span lines: a newline would start a new assignment."""
    return value.replace("\r", " ").replace("\n", " ")


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """``WATCHDOG_USEC`` if it is valid and meant for this process (``WATCHDOG_PID``)."""
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None
