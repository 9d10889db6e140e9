"""What travels on the runner's one input channel besides transport events.

The supervisor opens ONE trio memory channel and the runner reads it, draining
everything that arrived in one loop turn. The store worker holds its send side; the
transports and the control server send through ``RunnerInbox`` (runner.py), which may
feed an item to an idle runner at once instead. Besides ``transport/events.py`` the
items are:

* ``ClientCall`` — a client's request (``proto/requests.py``) with the ``Reply`` slot
  the control server awaits and its connection (``conversation``);
* ``ConversationClosed`` — that connection ended;
* ``StoreDone`` / ``StoreFailed`` — a store job (``proto/records.py``) finished.

No module imports another's internals through this: the supervisor wires them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import trio

from hotline.proto.records import StoreJob, StoreResult
from hotline.proto.requests import EndpointRequest, Outcome
from hotline.transport.events import Sink


class Reply:
    """A one-shot answer slot that a control-socket task awaits."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self.outcome: Outcome | None = None

    def set(self, outcome: Outcome) -> None:
        """Answer (the first answer wins)."""
        if not self._event.is_set():
            self.outcome = outcome
            self._event.set()

    async def wait(self) -> Outcome:
        """Wait for the answer."""
        await self._event.wait()
        assert self.outcome is not None
        return self.outcome


@dataclass(frozen=True, slots=True)
class ClientCall:
    """A request for the endpoint; the runner answers ``reply``."""

    request: EndpointRequest
    reply: Reply
    conversation: object


@dataclass(frozen=True, slots=True)
class ConversationClosed:
    """A client connection ended."""

    conversation: object


@dataclass(frozen=True, slots=True)
class StoreDone:
    """A store job finished."""

    job: StoreJob
    result: StoreResult


@dataclass(frozen=True, slots=True)
class StoreFailed:
    """A store job raised; ``error`` is one line for the log and the client."""

    job: StoreJob
    error: str


CallSink: TypeAlias = Sink[ClientCall | ConversationClosed]  # the control server puts there
