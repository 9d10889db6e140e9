"""``hotline ack``: our operator acknowledges received messages (DESIGN §9).

For each id (``Z17``, ``O4``, ``P9``, ``1234``: messages of the peer's latest epoch)
the daemon stores and sends an envelope of type ``application/vnd.hotline.ack`` back to
the peer, in that message's lane, naming it by its SHA-256: signed, numbered, chained
and exportable (``hotline export --direction out ID``), a non-repudiable statement
that an operator here saw it. The ids are printed once stored, one line per message:
``Z1 acknowledged: Z4`` (Z4 is our ack's id in our own stream). A message already
acknowledged is not acknowledged twice (its first ack's id is printed). An unknown id,
or an id that is itself an ack or a drill's answer, refuses the whole command (exit 2):
nothing is stored.
"""

from __future__ import annotations

import argparse

from hotline.commands._client import load, open_client
from hotline.errors import UsageError
from hotline.proto.bodies import MAX_COMMENT
from hotline.proto.lanes import message_id
from hotline.proto.requests import OperatorAckRequest

TIMEOUT = 30.0


def run(args: argparse.Namespace) -> int:
    """Acknowledge ``args.ids`` with ``args.comment``; print each ack's id."""
    if len(args.comment.encode()) > MAX_COMMENT:
        raise UsageError(f"hotline ack: --comment is over {MAX_COMMENT} bytes")
    ids = tuple(dict.fromkeys(args.ids))
    config = load(args)
    with open_client(config, timeout=TIMEOUT) as client:
        reply = client.request(OperatorAckRequest(ids, args.comment))
    for (lane, seq), (ack_lane, ack_seq) in zip(ids, reply["ids"], strict=True):
        print(f"{message_id(lane, seq)} acknowledged: {message_id(ack_lane, ack_seq)}")
    return 0
