"""Every error hotline raises, named after whose fault it is.

There are three families, so that callers can tell at a glance what to do:

* ``LocalProtocolError`` — *we* misused an API (a bug in our own code or a caller
  passing nonsense). Never caused by network input.
* ``RemoteProtocolError`` — the *peer* (or whoever is on the wire) sent bytes we
  refuse. The daemon counts and logs these and drops the packet; it never dies of
  them. Subclasses say why: malformed, over a limit, failed authentication, replayed.
* ``UserError`` — an *operator* mistake (config, key files, arguments, an unreachable
  daemon). The CLI prints ``str(err)`` as one line and exits with ``err.exit_code``
  (sysexits-style, DESIGN §6), never with a traceback.

``StoreError`` is for a durable store that is corrupt or from an unknown schema.

``user_error_class(name)`` maps a class name back to its class, so the control socket
carries an error's *kind* and the client raises the same class (its exit code is the
class's, never a literal copied around).
"""

from __future__ import annotations


class HotlineError(Exception):
    """Base class of every error hotline raises on purpose."""

    exit_code: int = 1


# --- our own misuse -------------------------------------------------------------------


class LocalProtocolError(HotlineError):
    """We called a protocol object in a way its state does not allow (a bug here)."""


# --- the peer's fault -----------------------------------------------------------------


class RemoteProtocolError(HotlineError):
    """Bytes from the network that we refuse. Drop the packet, count it, carry on."""


class DecodeError(RemoteProtocolError):
    """Malformed input: wrong length, wrong type tag, bad msgpack, bad schema."""


class LimitError(RemoteProtocolError):
    """A length or count read from the wire is over its limit (checked before allocating)."""


class AuthenticationError(RemoteProtocolError):
    """A MAC, AEAD tag, handshake or signature did not verify."""


class ReplayError(RemoteProtocolError):
    """A packet counter or handshake timestamp we have already seen (or is too old)."""


class HandshakeError(RemoteProtocolError):
    """A handshake message that is well-formed but not acceptable (version, state, peer)."""


# --- the operator's fault -------------------------------------------------------------


class UserError(HotlineError):
    """An operator mistake; the CLI prints it as one line and exits with ``exit_code``."""

    exit_code = 2


class UsageError(UserError):
    """Bad command-line arguments."""

    exit_code = 2


class ConfigError(UserError):
    """The configuration file is missing, unparsable, or has a bad or unknown key."""

    exit_code = 78


class KeyFileError(ConfigError):
    """A key file is missing, unreadable, or not an Ed25519 key in OpenSSH format."""

    exit_code = 78


class KeyPermissionError(UserError):
    """A private key file that group or others can read (refused, as ssh does)."""

    exit_code = 77


class AccessDeniedError(UserError):
    """The OS denies us a file or socket we need (control socket, state directory)."""

    exit_code = 77


class DaemonUnreachableError(UserError):
    """The control socket is missing or refuses connections: the daemon is not running."""

    exit_code = 3


class NotAcknowledgedError(UserError):
    """``send --wait`` timed out before the peer acknowledged the message."""

    exit_code = 75


class BacklogFullError(UserError):
    """``send`` refused: too many messages await the peer's acknowledgement."""

    exit_code = 75


class StoreFailedError(UserError):
    """The daemon could not store the message (disk full, I/O error): nothing was kept."""

    exit_code = 74


class CheckFailedError(UserError):
    """``verify`` or ``check`` found a problem (a bad signature, a broken chain link)."""

    exit_code = 1


# --- the durable store ----------------------------------------------------------------


class StoreError(HotlineError):
    """The store is corrupt, from an unknown schema version, or not ours."""

    exit_code = 1


def user_error_class(name: str) -> type[UserError]:
    """The ``UserError`` subclass called ``name`` (``UserError`` itself if unknown)."""
    found = globals().get(name)
    if isinstance(found, type) and issubclass(found, UserError):
        return found
    return UserError
