"""SSH wire encoding (RFC 4251 §5): uint32 and length-prefixed strings.

Shared by the OpenSSH key format (``identity``) and SSHSIG signatures (``envelope``).
``SSHReader`` parses untrusted bytes: every length is checked against what is left
*before* slicing, so a forged length can never make us allocate or read past the end.
"""

from __future__ import annotations

import struct

from hotline.errors import DecodeError


def ssh_uint32(value: int) -> bytes:
    """Encode an unsigned 32-bit big-endian integer."""
    return struct.pack(">I", value)


def ssh_string(data: bytes) -> bytes:
    """Encode a length-prefixed SSH string."""
    return struct.pack(">I", len(data)) + data


class SSHReader:
    """Reads SSH wire values from a byte string, refusing anything that overruns it.

    Raises:
        DecodeError: on a truncated value or a length larger than the remaining input.
    """

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self._pos

    def raw(self, n: int) -> bytes:
        """Read exactly ``n`` bytes."""
        if n < 0 or n > self.remaining():
            raise DecodeError(f"SSH data truncated: need {n} bytes, {self.remaining()} left")
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    def uint32(self) -> int:
        """Read an unsigned 32-bit big-endian integer."""
        value: int = struct.unpack(">I", self.raw(4))[0]
        return value

    def string(self) -> bytes:
        """Read a length-prefixed string (length checked against what is left first)."""
        return self.raw(self.uint32())

    def expect_end(self) -> None:
        """Raise DecodeError if any bytes are left over."""
        if self.remaining():
            raise DecodeError(f"{self.remaining()} unexpected trailing bytes in SSH data")
