"""What local clients ask of the daemon, and what they get back (one vocabulary).

The control socket (``proto/control.py``) decodes client bytes into these requests,
the endpoint (``proto/endpoint.py``) answers them with these outcomes, and only the
socket edge turns an outcome back into bytes. Nothing here is encoded or decoded.

Requests the endpoint answers: ``SendRequest`` (seal and store; reply ``Stored`` after
the commit), ``WaitRequest`` (reply ``Acknowledged`` once the peer — or with
``operator`` its operator — acknowledged, or ``Refused`` with
``NotAcknowledgedError`` at the deadline), ``StatusRequest`` (``StatusReport``),
``OperatorAckRequest`` (our operator acknowledges the peer's messages: ``Stored`` with
the ack envelopes' ids). ``InboxRequest`` and ``EventsRequest`` are served by the
control server from the store and the log, not by the endpoint.

A refusal names its error class (``errors.py``), which fixes the CLI's exit code.
"""

from __future__ import annotations

from dataclasses import dataclass

from hotline.errors import UserError
from hotline.proto.lanes import ROUTINE
from hotline.proto.status import LinkSnapshot

MAX_SEND_ID = 128  # bytes, DESIGN §4b


@dataclass(frozen=True)
class SendRequest:
    """Store these bodies as messages of ``type`` in ``lane`` and send them.

    ``send_ids``: one idempotency id per body (``send --id``), or empty. ``wait`` /
    ``wait_operator``: the client then waits for the peer's / its operator's ack (the
    control server turns that into a ``WaitRequest``; the endpoint ignores them).
    """

    type: str
    bodies: tuple[bytes, ...]
    lane: int = ROUTINE
    send_ids: tuple[str, ...] = ()
    wait: bool = False
    wait_operator: bool = False
    timeout: float | None = None


@dataclass(frozen=True)
class WaitRequest:
    """Answer once ``lane`` is acknowledged up to ``upto`` (``operator``: every message
    of ``lane`` from ``first`` to ``upto`` acknowledged by the peer's operator), or
    after ``timeout`` seconds."""

    lane: int
    upto: int
    timeout: float | None = None
    operator: bool = False
    first: int = 0


@dataclass(frozen=True)
class StatusRequest:
    """The link's state as a ``status --json`` object."""


@dataclass(frozen=True)
class OperatorAckRequest:
    """Our operator acknowledges the peer's messages ``ids`` ((lane, seq) pairs)."""

    ids: tuple[tuple[int, int], ...]
    comment: str = ""


@dataclass(frozen=True)
class DrillRequest:
    """Run a drill now (DESIGN §10)."""


@dataclass(frozen=True)
class InboxRequest:
    """Received messages after inbox cursor ``cursor`` (or after message ``since`` =
    (lane, seq) of the peer's latest epoch); keep streaming if ``follow``; with
    ``pending`` only those still owed our operator's acknowledgement."""

    cursor: int = 0
    since: tuple[int, int] | None = None
    follow: bool = False
    pending: bool = False


@dataclass(frozen=True)
class EventsRequest:
    """Stream the daemon's log events."""


Request = (SendRequest | WaitRequest | StatusRequest | OperatorAckRequest | DrillRequest
           | InboxRequest | EventsRequest)
EndpointRequest = SendRequest | WaitRequest | StatusRequest | OperatorAckRequest | DrillRequest


@dataclass(frozen=True)
class Stored:
    """The messages are durable in our outbox: (lane, seq) per body, in order."""

    ids: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Acknowledged:
    """``lane`` is acknowledged up to ``upto`` (by the peer, or by its operator)."""

    lane: int
    upto: int


@dataclass(frozen=True)
class StatusReport:
    """The answer to ``StatusRequest``."""

    status: LinkSnapshot


@dataclass(frozen=True)
class Refused:
    """The request failed; ``error`` fixes the exit code, ``message`` says why."""

    error: type[UserError]
    message: str


Outcome = Stored | Acknowledged | StatusReport | Refused
