"""A send-only AF_UNIX datagram socket for local service managers (sd_notify, journald).

Opened on first use, non-blocking (a full receiver costs one failed ``sendto``, never
a stalled event loop), and it never raises: monitoring must not take the daemon down.
"""

from __future__ import annotations

import socket


class UnixDatagramSender:
    """Sends datagrams to one AF_UNIX address (a path, or ``\\0name`` for abstract)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock: socket.socket | None = None

    def send(self, data: bytes) -> OSError | None:
        """Send one datagram; returns the error instead of raising it (None: sent)."""
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as err:
            return err
        return None

    def close(self) -> None:
        """Close the socket (a later ``send`` reopens it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
