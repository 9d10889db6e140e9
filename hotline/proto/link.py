"""The Link: sessions, paths, failover and the four lanes' streams of one peer. Sans-IO.

Theory of operation. The endpoint feeds a ``Link`` with what happened — a packet on a
path (``receive_untrusted``), a path connecting or dropping, messages made durable
(``push``), the inbox committed (``on_inbox_committed``), time passing
(``handle_timer``) — and takes out what to do: ``packets_to_send``, ``next_events``
and ``get_timer``.

One Noise session is carried over every path (the WireGuard data plane), so a
handshake can finish on any path and failover needs no new handshake. Each path has
a ``PathHealth`` (heartbeat.py). The *primary* is the first path, in config order,
that is up; data and acks go there (or on every up path when ``redundant``). When the
primary goes down the next up path takes over at once and every unacked message is
resent on it; when the first path returns, traffic moves back.

Four precedence lanes (DESIGN §9), each an ``OutgoingStream`` and an
``IncomingStream``. Strict priority at the sender: every turn, lanes are served
highest first, each within its own window, so a FLASH never waits behind a routine
lane's window or retransmissions; packets carrying flash or immediate frames are
marked ``urgent`` for the transport (sent ahead of queued routine packets), and
FLASH goes on every up path.

Congestion control (RFC 9002, ``recovery.py``): every UDP path has a ``PathRecovery``.
DATA is handed to a UDP path only as far as its congestion window and pacer allow
(lanes still served highest first), each packet's messages are recorded, ACKs feed
its loss detection, and what it declares lost is resent at once. A path that becomes
primary starts afresh. TCP paths need none of it: the kernel's TCP does it.

Inside a transport packet the plaintext is a whole link frame, a bundle of small
frames, or a fragment (framing.py); frames are HELLO, DATA, ACK, RECEIPT, PING, PONG,
KEEPALIVE, KEM_OFFER and KEM_REPLY (frames.py; the KEM pair is each session's
post-quantum ratchet step, pq.py). After every handshake both ends send HELLO so the
other resends what we lack. Acknowledgements (ACK, HELLO, RECEIPT) count only when they
come with the CURRENT session (DESIGN §4b): a receiver that lost its store always has
a new session, so what its old store acknowledged cannot free what the new one never
got. A peer epoch once left is never re-entered. Bad input from the network raises
inside and becomes a ``Dropped`` event: the link never fails because of what a peer sent.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from hotline.errors import DecodeError, RemoteProtocolError, ReplayError
from hotline.proto.envelope import (
    decode_envelope_untrusted,
    decode_receipt_untrusted,
    encode_receipt,
    sign_receipt,
    verify_receipt,
)
from hotline.proto.events import (
    Acked,
    ChainWanted,
    Delivered,
    Dropped,
    Event,
    Forked,
    GapFound,
    HandshakeComplete,
    InitiationAccepted,
    NewEpoch,
    PathDown,
    PathUp,
    PeerLostOurs,
    PrimaryChanged,
    ReceiptReceived,
    ResetPath,
)
from hotline.proto.frames import (
    Ack,
    Data,
    Frame,
    Hello,
    Keepalive,
    KemOffer,
    KemReply,
    Ping,
    Pong,
    Position,
    Receipt,
    decode_frame_untrusted,
    encode_frame,
)
from hotline.proto.framing import TAG_BUNDLE, Reassembler, pack_tagged, unbundle_untrusted
from hotline.proto.guard import Source
from hotline.proto.heartbeat import PathHealth, make_pong
from hotline.proto.identity import Identity, PublicKey
from hotline.proto.incoming import IncomingStream
from hotline.proto.lanes import FLASH, IMMEDIATE, LANES
from hotline.proto.outgoing import (
    AckOutcome,
    Advanced,
    Fork,
    NeedChain,
    OutgoingStream,
    PeerLost,
)
from hotline.proto.packet import (
    PACKET_COOKIE_REPLY,
    PACKET_INITIATION,
    PACKET_RESPONSE,
    TCP_MAX_PACKET,
    TRANSPORT_HEADER_LEN,
    UDP_MAX_DATAGRAM,
    packet_type_untrusted,
)
from hotline.proto.pq import RatchetDerived
from hotline.proto.records import OutRecord, RatchetRecord, Resume
from hotline.proto.recovery import Outcome, PathRecovery, data_key, split_key
from hotline.proto.sessions import SessionManager

_AEAD_TAG = 16
# Data frames handed out per pump, so one turn cannot build an unbounded burst.
_MAX_DATA_PER_PUMP = 512
_URGENT_LANES = (FLASH, IMMEDIATE)
# A DATA frame's bytes on the wire beyond its envelope and signature: msgpack framing,
# the bundle item header, the transport header and AEAD tag (shared, counted per frame).
_DATA_OVERHEAD = 48
# The streams' own retransmission timer while the data path does RFC 9002 loss
# detection: a backstop only (queueing delay on a thin circuit must not fire it).
_BACKSTOP_RTO = 2.0


class Received(enum.Enum):
    """What a packet proved (``Link.receive_untrusted``), for the transport it came on.

    NOTHING: dropped, or accepted with nothing to say about its sender.
    ANSWERED: a handshake packet we answer (a valid initiation, or one that needs a
        cookie first); the reply queued this turn must go back where it came from
        (``PathTransport.on_answered``). It earns its sender no trust: a captured
        initiation can be replayed by anyone.
    AUTHENTICATED: proves the sender holds the session keys — a transport packet that
        opened, or the response that completed OUR initiation — so the transport may
        trust where it came from (``PathTransport.on_authenticated``: UDP roams, a TCP
        connection becomes the peer's).
    """

    NOTHING = "nothing"
    ANSWERED = "answered"
    AUTHENTICATED = "authenticated"


@dataclass(frozen=True)
class LinkSettings:
    """Tunables from the config (DESIGN §7) plus internal bounds."""

    heartbeat: float = 1.0
    dead_after: float = 3.0
    rekey_after: float = 120.0
    redundant: bool = False
    max_message: int = 65536
    receipt_every: float = 1.0
    reorder_limit: int = 4096
    max_in_flight: int = 1024
    psk_secret: bytes | None = field(default=None, repr=False)  # psk_file (DESIGN §11)


@dataclass(frozen=True)
class PathSpec:
    """One path of the peer: its URL (for logs) and scheme (for the MTU)."""

    url: str
    scheme: str

    @property
    def max_plaintext(self) -> int:
        """Largest transport plaintext this path carries in one packet."""
        size = UDP_MAX_DATAGRAM if self.scheme == "udp" else TCP_MAX_PACKET
        return size - TRANSPORT_HEADER_LEN - _AEAD_TAG


class Outbound(NamedTuple):
    """One packet to send: on which path, the bytes, whether it jumps the queue, and —
    for a handshake reply — the source it answers (it goes back there, not to the path's
    usual destination, and gives that source no trust)."""

    path_id: int
    packet: bytes
    urgent: bool
    reply_to: Source | None = None


class Link:
    """Sans-IO state of the link to one peer. See the module header."""

    def __init__(
        self,
        our: Identity,
        their: PublicKey,
        paths: Sequence[PathSpec],
        settings: LinkSettings,
        resume: Resume,
        rng: Callable[[int], bytes],
        now: float,
        wall_ns: int,
    ) -> None:
        self._our = our
        self._their = their
        self.settings = settings
        self.specs = tuple(paths)
        self.paths = [
            PathHealth(i, p.url, settings.heartbeat, settings.dead_after)
            for i, p in enumerate(self.specs)
        ]
        self.sessions = SessionManager(our, their, rng, settings.rekey_after,
                                       timestamp_floor_ns=resume.handshake_ts or None,
                                       psk_secret=settings.psk_secret, ratchet=resume.ratchet)
        self.outgoing = tuple(
            OutgoingStream(resume.epoch, lane, acked=Position(o.acked, o.acked_chain),
                           head=o.head, loaded=o.unacked,
                           max_in_flight=settings.max_in_flight)
            for lane, o in zip(LANES, resume.out, strict=True)
        )
        self.incoming = tuple(
            IncomingStream(our.public, their, lane, resume.peer_epoch,
                           Position(i.delivered, i.chain), reorder_limit=settings.reorder_limit)
            for lane, i in zip(LANES, resume.peer_lanes, strict=True)
        )
        self._peer_epoch = resume.peer_epoch
        self._seen_epochs = set(resume.peer_epochs_seen)
        self._reassembler = Reassembler(settings.max_message + 4096)
        self._frag_id = 0
        self._out: list[Outbound] = []
        # (path, urgent) -> [(encoded frame, data_key of a DATA or None)], this turn
        self._frames: dict[tuple[int, bool], list[tuple[bytes, int | None]]] = {}
        self._recovery = {i: PathRecovery(now=now) for i, p in enumerate(self.specs)
                          if p.scheme == "udp"}
        self._events: list[Event] = []
        self.primary: int | None = None
        self._wall_base_ns = wall_ns - int(now * 1e9)
        self._attempts = 0
        self._last_pump = now
        self._cc_budget: dict[int, float] = {}
        # Our HELLO is repeated every heartbeat until an ACK for our epoch shows that
        # the peer has it (a lost HELLO would otherwise stall a new epoch until rekey).
        self._hello_due_at: float | None = None

    # --- inputs -------------------------------------------------------------------

    @property
    def epoch(self) -> bytes:
        """Our outgoing epoch."""
        return self.outgoing[0].epoch

    def set_wall_clock(self, now: float, wall_ns: int) -> None:
        """Re-anchor wall-clock time (for PING/PONG and handshake timestamps)."""
        self._wall_base_ns = wall_ns - int(now * 1e9)

    def path_connected(self, path_id: int, now: float) -> None:
        """The transport can carry packets on this path now."""
        self.paths[path_id].on_connected(now)

    def path_disconnected(self, path_id: int, now: float) -> None:
        """The transport lost this path (TCP closed)."""
        if self.paths[path_id].on_disconnected():
            self._events.append(PathDown(path_id, self.specs[path_id].url, "connection closed"))
        self._choose_primary(now)

    def receive_untrusted(self, path_id: int, packet: bytes, now: float,
                          source: Source | None = None) -> Received:
        """Handle one packet from the network; returns what it proved (``Received``).

        Args:
            source: where it came from (``guard.source_of`` of the transport's address;
                for TCP the connection's peer address), for cookies and budgets.

        Never raises for bad input: it is counted and reported as a ``Dropped`` event.
        """
        try:
            return self._receive(path_id, packet, now, source)
        except RemoteProtocolError as err:
            self._events.append(Dropped(path_id, type(err).__name__, str(err)))
            return Received.NOTHING

    def push(self, records: Sequence[OutRecord]) -> None:
        """Messages now durable in the outbox: send them (each in its lane)."""
        for record in records:
            self.outgoing[record.lane].push(record)

    def on_read(self, lane: int, records: Sequence[OutRecord]) -> None:
        """The store's answer to a lane's ``read_wanted``."""
        self.outgoing[lane].on_read(records)

    def on_chain(self, epoch: bytes, lane: int, upto: int, stored: bytes | None) -> None:
        """Our stored chain hash at ``upto`` (answer to ``ChainWanted``)."""
        if epoch == self.epoch:
            self._ack_outcome(lane, self.outgoing[lane].on_chain(upto, stored))

    def on_inbox_committed(self, epoch: bytes, lane: int, upto: int) -> None:
        """The inbox is durable up to ``upto``: acknowledgements may now cover it."""
        self.incoming[lane].on_committed(epoch, upto)

    def on_ratchet_committed(self, record: RatchetRecord) -> None:
        """The store holds this post-quantum ratchet state (``RatchetDerived``): key the
        next handshakes with it, and send the KEM reply that waited for it."""
        self.sessions.ratchet.on_committed(record)

    def rollback_incoming(self) -> None:
        """A commit failed: forget what every lane accepted and did not commit."""
        for stream in self.incoming:
            stream.rollback()

    def new_epoch(self, epoch: bytes, now: float) -> None:
        """Abandon our epoch (our store went back in time) and start ``epoch`` empty."""
        settings = self.settings
        self.outgoing = tuple(
            OutgoingStream(epoch, lane, acked=Position(0, bytes(32)), head=0,
                           max_in_flight=settings.max_in_flight)
            for lane in LANES
        )
        self._announce(now)

    def handle_timer(self, now: float) -> None:
        """Run every deadline that is due: dead paths, retransmission, rekey, expiry."""
        changed = False
        for path in self.paths:
            if path.check_dead(now):
                changed = True
                self._events.append(
                    PathDown(path.path_id, path.url, f"no packet for {path.dead_after:g}s")
                )
                self._events.append(ResetPath(path.path_id))
        if changed:
            self._choose_primary(now)
        self.sessions.expire(now)
        for stream in self.outgoing:
            stream.handle_timer(now)
        for recovery in self._recovery.values():
            timer = recovery.get_timer()
            if timer is not None and timer <= now:
                self._resend(recovery.handle_timer(now))
        connected = [p.path_id for p in self.paths if p.connected]
        if self.sessions.wants_initiation(now) and connected:
            # One path per attempt (a copy on a second path would only be refused as
            # a replay); retries rotate through the connected paths, first one first.
            packet = self.sessions.start_initiation(now, self.wall_ns(now))
            path_id = connected[self._attempts % len(connected)]
            self._out.append(Outbound(path_id, packet, True))
            self._attempts += 1

    # --- outputs ------------------------------------------------------------------

    def packets_to_send(self, now: float) -> list[Outbound]:
        """Everything to transmit now."""
        self._pump(now)
        self._pack(now)
        out, self._out = self._out, []
        return out

    def next_events(self) -> list[Event]:
        """Events since the last call, oldest first."""
        events = self._events
        self._events = []
        return events

    def get_timer(self) -> float | None:
        """The next instant ``handle_timer`` must be called (None: nothing scheduled).

        Every deadline returned is one that ``handle_timer``/``packets_to_send`` act on
        and move forward, so a link whose peer is gone sleeps instead of spinning.
        """
        sending = self.sessions.can_send()
        deadlines = [p.get_timer(sending) for p in self.paths]
        deadlines.append(self.sessions.get_timer(any(p.connected for p in self.paths)))
        deadlines.extend(stream.get_timer() for stream in self.outgoing)
        deadlines.extend(r.get_timer() for r in self._recovery.values())
        if sending and self._data_paths():
            deadlines.append(self._hello_due_at)
            deadlines.append(self._paced_until())
            deadlines.append(self.sessions.ratchet.get_timer())
        return min((d for d in deadlines if d is not None), default=None)

    def wall_ns(self, now: float) -> int:
        """Wall-clock nanoseconds at monotonic instant ``now``."""
        return self._wall_base_ns + int(now * 1e9)

    @property
    def state(self) -> str:
        """``up`` (every path up), ``degraded`` (a path down), ``down`` (none, or no session)."""
        ups = [p.up for p in self.paths]
        if not any(ups) or not self.sessions.can_send():
            return "down"
        return "up" if all(ups) else "degraded"

    # --- receive internals --------------------------------------------------------

    def _receive(self, path_id: int, packet: bytes, now: float,
                 source: Source | None) -> Received:
        kind = packet_type_untrusted(packet)
        if kind == PACKET_INITIATION:
            return self._on_initiation(path_id, packet, now, source)
        if kind == PACKET_COOKIE_REPLY:
            retry = self.sessions.on_cookie_reply_untrusted(packet, now, self.wall_ns(now))
            if retry is not None:
                self._out.append(Outbound(path_id, retry, True))
            return Received.NOTHING
        if kind == PACKET_RESPONSE:
            self.sessions.on_response_untrusted(packet, now)
            self._heard(path_id, now)
            self._after_handshake(path_id, now, initiator=True)
        else:
            self._on_transport(path_id, packet, now)
        if source is not None:
            self.sessions.on_authenticated_source(path_id, source)
        return Received.AUTHENTICATED

    def _on_initiation(self, path_id: int, packet: bytes, now: float,
                       source: Source | None) -> Received:
        """Screen and answer an initiation. No ``_heard``: an initiation proves nothing
        about a path (it may be a replay); the replies go back where it came from."""
        udp = self.specs[path_id].scheme == "udp"
        outcome = self.sessions.on_initiation_untrusted(packet, now, source,
                                                        address_proven=not udp)
        if outcome.cookie_reply is not None:
            self._out.append(Outbound(path_id, outcome.cookie_reply, True, source))
            self._events.append(Dropped(path_id, "CookieRequired",
                                        "under load: answered with a cookie, no DH"))
            return Received.ANSWERED
        if outcome.accepted_timestamp_ns is not None:
            self._events.append(InitiationAccepted(outcome.accepted_timestamp_ns))
        replies = [p for p in (outcome.own_initiation, outcome.response) if p is not None]
        self._out.extend(Outbound(path_id, reply, True, source) for reply in replies)
        return Received.ANSWERED if replies else Received.NOTHING

    def _on_transport(self, path_id: int, packet: bytes, now: float) -> None:
        opened = self.sessions.open_untrusted(packet, now)
        self._heard(path_id, now)
        if opened.confirmed_now:
            self._after_handshake(path_id, now, initiator=False)
        plaintext = opened.plaintext
        if plaintext[:1] == bytes([TAG_BUNDLE]):
            frames = unbundle_untrusted(plaintext)
        else:
            whole = self._reassembler.add_untrusted(plaintext, now)
            frames = [] if whole is None else [whole]
        for frame_bytes in frames:
            frame = decode_frame_untrusted(frame_bytes, self.settings.max_message)
            try:
                self._on_frame(path_id, frame, now, opened.current)
            except RemoteProtocolError as err:  # one bad frame: drop it, keep the rest
                self._events.append(Dropped(path_id, type(err).__name__, str(err)))

    def _heard(self, path_id: int, now: float) -> None:
        path = self.paths[path_id]
        if not path.connected:
            path.on_connected(now)
        if path.on_authenticated_received(now):
            self._events.append(PathUp(path_id, path.url))
            self._choose_primary(now)

    def _after_handshake(self, path_id: int, now: float, *, initiator: bool) -> None:
        self._attempts = 0
        self._events.append(HandshakeComplete(path_id, initiator, self.sessions.pq))
        if initiator:
            self._send_frame(Keepalive(), [path_id], urgent=True)
        self._announce(now, fallback=path_id)

    def _announce(self, now: float, fallback: int | None = None) -> None:
        """Send our HELLO (repeated every heartbeat until the peer acks our epoch) and
        make every unacked message due."""
        self._send_frame(self._hello(), self._data_paths(fallback=fallback), urgent=True)
        self._hello_due_at = now + self.settings.heartbeat
        # A new session: what was in flight in the last one is gone (the peer may have
        # restarted); it must not fill a window the resends need (RFC 9002 §9.4).
        for path_id, recovery in self._recovery.items():
            recovery.reset(now, self.paths[path_id].rtt.srtt)
        for stream in self.outgoing:
            stream.on_path_change(now)

    def _on_frame(self, path_id: int, frame: Frame, now: float, current: bool) -> None:
        if isinstance(frame, Data):
            self._on_data(frame, now)
        elif isinstance(frame, Ping):
            self._send_frame(make_pong(frame, self.wall_ns(now)), [path_id], urgent=True)
        elif isinstance(frame, Pong):
            self.paths[path_id].on_pong(frame, now)
        elif isinstance(frame, Keepalive):
            pass
        elif isinstance(frame, KemOffer | KemReply):
            self._on_kem(frame, current)
        elif not current:
            raise ReplayError("acknowledgement from a previous session: ignored")
        elif isinstance(frame, Ack):
            self._on_ack(frame, now)
        elif isinstance(frame, Hello):
            self._on_hello(frame, now)
        else:
            self._on_receipt(frame)

    def _on_kem(self, frame: KemOffer | KemReply, current: bool) -> None:
        ratchet = self.sessions.ratchet
        record = (ratchet.on_offer_untrusted(frame, current) if isinstance(frame, KemOffer)
                  else ratchet.on_reply_untrusted(frame, current))
        if record is not None:
            self._events.append(RatchetDerived(record))

    def _on_data(self, frame: Data, now: float) -> None:
        env = decode_envelope_untrusted(frame.raw, self.settings.max_message)
        accepted = self.incoming[env.lane].on_data_untrusted(frame, env, now)
        if accepted:
            self._events.append(Delivered(tuple(accepted)))

    def _on_ack(self, ack: Ack, now: float) -> None:
        if ack.epoch == self.epoch:
            self._hello_due_at = None
        self._ack_outcome(ack.lane, self.outgoing[ack.lane].on_ack(ack, now))
        if ack.epoch == self.epoch:
            for recovery in self._recovery.values():
                self._resend(recovery.on_ack(ack.upto, ack.ranges, now, ack.lane))

    def _resend(self, outcome: Outcome) -> None:
        """Messages a path's loss detection declared lost go out again at once."""
        for key in outcome.resend:
            lane, seq = split_key(key)
            self.outgoing[lane].resend(seq)

    def _ack_outcome(self, lane: int, outcome: AckOutcome) -> None:
        epoch = self.epoch
        if isinstance(outcome, Advanced):
            self._events.append(Acked(epoch, lane, outcome.upto, outcome.chain))
        elif isinstance(outcome, Fork):
            self._events.append(Forked(epoch, lane, outcome))
        elif isinstance(outcome, NeedChain):
            self._events.append(ChainWanted(epoch, lane, outcome.upto))
        elif isinstance(outcome, PeerLost):
            self._events.append(PeerLostOurs(epoch, lane, outcome.first, outcome.last))

    def _on_hello(self, hello: Hello, now: float) -> None:
        self._learn_peer_epoch(hello)
        for incoming in self.incoming:
            incoming.request_ack()
        for lane, stream in enumerate(self.outgoing):
            if hello.seen_epoch == self.epoch:
                self._ack_outcome(lane, stream.on_hello(hello.delivered[lane], now))
            else:
                stream.on_path_change(now)

    def _learn_peer_epoch(self, hello: Hello) -> None:
        """A HELLO names the peer's epoch: continue it, join a new one, or refuse an old."""
        if hello.epoch == self._peer_epoch:
            for lane, stream in enumerate(self.incoming):
                gap = stream.rejoin(hello.base_seqs[lane])
                if gap is not None:
                    self._events.append(GapFound(gap))
            return
        if hello.epoch in self._seen_epochs:
            raise ReplayError("HELLO re-announces a peer epoch we already left")
        old = self._peer_epoch
        delivered = tuple(s.committed_upto for s in self.incoming)
        self._peer_epoch = hello.epoch
        self._seen_epochs.add(hello.epoch)
        for lane, stream in enumerate(self.incoming):
            stream.join(hello.epoch, hello.base_seqs[lane])
        self._events.append(NewEpoch(old, hello.epoch, hello.base_seqs, delivered))

    def _on_receipt(self, frame: Receipt) -> None:
        receipt = decode_receipt_untrusted(frame.raw)
        if receipt.sender != self._our.public.raw or receipt.recipient != self._their.raw:
            raise DecodeError("receipt names the wrong keys")
        if receipt.epoch != self.epoch:
            raise ReplayError("receipt for an epoch that is not our current one")
        verify_receipt(self._their, frame.raw, frame.sig)
        self._events.append(ReceiptReceived(self.epoch, receipt.lane, receipt.upto,
                                            receipt.chain, frame.raw, frame.sig))

    # --- send internals -----------------------------------------------------------

    def _pump(self, now: float) -> None:
        can_send = self.sessions.can_send()
        wall = self.wall_ns(now)
        for path in self.paths:
            ping = path.ping_due(now, wall) if can_send else None
            if ping is not None:
                self._send_frame(ping, [path.path_id], urgent=True)
        targets = self._data_paths() if can_send else []
        if not targets:
            return
        for kem in self.sessions.ratchet.frames_due(now):
            self._send_frame(kem, targets, urgent=False)
        if self._hello_due_at is not None and now >= self._hello_due_at:
            self._hello_due_at = now + self.settings.heartbeat
            self._send_frame(self._hello(), targets, urgent=True)
        budget = _MAX_DATA_PER_PUMP
        self._last_pump = now
        self._cc_budget = {p: r.sendable(now) for p, r in self._recovery.items()}
        for lane in LANES:  # strict precedence: highest lane first
            budget -= self._pump_lane(lane, now, targets, budget)

    def _pump_lane(self, lane: int, now: float, targets: list[int], budget: int) -> int:
        """Queue one lane's ack, receipt and DATA; returns how many DATA frames."""
        urgent = lane in _URGENT_LANES
        incoming = self.incoming[lane]
        ack = incoming.ack_due(now)
        if ack is not None:
            self._send_frame(ack, targets, urgent)
        receipt = incoming.receipt_due(now, self.settings.receipt_every)
        if receipt is not None and incoming.epoch is not None:
            self._send_frame(self._receipt(incoming.epoch, lane, *receipt), targets, urgent)
        paths = self._every_up_path(targets) if lane == FLASH else targets
        stream = self.outgoing[lane]
        cc = [p for p in paths if p in self._recovery]
        if not cc:
            frames = stream.numbered_frames_to_send(now, None if urgent else max(budget, 0))
            for seq, data in frames:
                self._send_frame(data, paths, urgent, data_key(lane, seq))
            return len(frames)
        free = [p for p in paths if p not in cc]  # no window to respect
        sent = 0
        while (urgent or sent < budget) and (size := stream.next_frame_size()) is not None:
            # A path whose window or pacer is full is skipped, never waited for while
            # another can take the message (a FLASH goes on every up path); an idle
            # path always takes one message (it may be larger than a window).
            room = [p for p in cc if self._cc_budget[p] >= size + _DATA_OVERHEAD
                    or (self._recovery[p].idle and sent == 0)]
            if not free and not room:
                break
            for p in room:
                self._cc_budget[p] -= size + _DATA_OVERHEAD
            [(seq, data)] = stream.numbered_frames_to_send(now, 1)
            self._send_frame(data, free + room, urgent, data_key(lane, seq))
            sent += 1
        return sent

    def _paced_until(self) -> float | None:
        """When a pacer lets due DATA go (None: nothing due is waiting for a pacer)."""
        if not any(stream.has_due() for stream in self.outgoing):
            return None
        times = [self._recovery[p].next_send_time(self._last_pump)
                 for p in self._data_paths() if p in self._recovery]
        return min((t for t in times if t is not None), default=None)

    def _send_frame(self, frame: Frame, path_ids: Sequence[int], urgent: bool,
                    key: int | None = None) -> None:
        """Queue a frame for these paths; ``_pack`` seals this turn's frames together.
        ``key``: the ``data_key`` of a DATA frame (for congestion control)."""
        if not self.sessions.can_send():
            return
        encoded = encode_frame(frame)
        for path_id in path_ids:
            self._frames.setdefault((path_id, urgent), []).append((encoded, key))

    def _pack(self, now: float) -> None:
        """Seal the queued frames, bundled per path into as few packets as fit; urgent
        frames travel in packets of their own, ahead of the rest. A packet carrying
        DATA on a congestion-controlled path is recorded there."""
        if not self._frames or not self.sessions.can_send():
            self._frames.clear()
            return
        for (path_id, urgent), frames in sorted(self._frames.items(), key=lambda kv: not kv[0][1]):
            packed, self._frag_id = pack_tagged(frames, self.specs[path_id].max_plaintext,
                                                self._frag_id)
            recovery = self._recovery.get(path_id)
            for plaintexts, keys in packed:
                packets = [self.sessions.seal(plaintext) for plaintext in plaintexts]
                self._out.extend(Outbound(path_id, packet, urgent) for packet in packets)
                data = [k for k in keys if k is not None]
                if recovery is not None and data:  # a fragmented message: one record
                    recovery.on_packet_sent(sum(map(len, packets)), data, now)
        self._frames.clear()

    def _data_paths(self, fallback: int | None = None) -> list[int]:
        if self.settings.redundant:
            ups = [p.path_id for p in self.paths if p.up]
            if ups:
                return ups
        if self.primary is not None:
            return [self.primary]
        if fallback is not None:
            return [fallback]
        return [p.path_id for p in self.paths if p.connected]

    def _every_up_path(self, targets: list[int]) -> list[int]:
        ups = [p.path_id for p in self.paths if p.up]
        return ups or targets

    def _choose_primary(self, now: float) -> None:
        new = next((p.path_id for p in self.paths if p.up), None)
        if new == self.primary:
            return
        old, self.primary = self.primary, new
        self._events.append(
            PrimaryChanged(
                None if old is None else self.specs[old].url,
                None if new is None else self.specs[new].url,
            )
        )
        if new is not None:
            recovery = self._recovery.get(new)
            if recovery is not None:  # a new primary starts from scratch (RFC 9002)
                recovery.reset(now, self.paths[new].rtt.srtt)
            for stream in self.outgoing:
                stream.rto_floor = _BACKSTOP_RTO if recovery is not None else 0.0
                stream.on_path_change(now)

    def _hello(self) -> Hello:
        peer = self._peer_epoch
        return Hello(
            self.epoch,
            tuple(stream.base_seq() for stream in self.outgoing),
            peer,
            tuple(stream.position() if peer is not None else Position(0, bytes(32))
                  for stream in self.incoming),
        )

    def _receipt(self, epoch: bytes, lane: int, upto: int, chain: bytes) -> Receipt:
        raw = encode_receipt(self._their.raw, self._our.public.raw, epoch, lane, upto, chain)
        return Receipt(raw, sign_receipt(self._our, raw))

