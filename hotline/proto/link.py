"""The one sans-IO object per peer: sessions, paths, failover and both message streams.

Theory of operation. The daemon feeds a ``Link`` with what happened — a packet on a
path (``receive_untrusted``), a path connecting or dropping, messages made durable
(``queue_messages``), the inbox committed (``on_inbox_committed``), time passing
(``handle_timer``) — and takes out what to do: ``packets_to_send`` (path id, bytes),
``next_events`` (for the store, the logs and the control socket) and ``get_timer``.

One Noise session is carried over every path (the WireGuard data plane), so a
handshake can finish on any path and failover needs no new handshake. Each path has
a ``PathHealth`` (heartbeat.py). The *primary* is the first path, in config order,
that is up; data and acks go there (or on every up path when ``redundant``). When the
primary goes down the next up path takes over at once and every unacked message is
resent on it (``OutgoingStream.on_path_change``); when the first path returns, traffic
moves back.

Inside a transport packet the plaintext is a whole link frame or a fragment of one
(framing.py); frames are HELLO, DATA, ACK, RECEIPT, PING, PONG and KEEPALIVE
(frames.py). After every handshake both ends send HELLO so the other resends what we
lack. Bad input from the network raises inside and is turned into a ``Dropped`` event:
the link never fails because of what a peer sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hotline.errors import DecodeError, RemoteProtocolError
from hotline.proto.envelope import (
    decode_receipt_untrusted,
    encode_receipt,
    sign_receipt,
    verify_receipt,
)
from hotline.proto.events import (
    Acked,
    Delivered,
    Dropped,
    Event,
    HandshakeComplete,
    InitiationAccepted,
    PathDown,
    PathUp,
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
    Ping,
    Pong,
    Receipt,
    decode_frame_untrusted,
    encode_frame,
)
from hotline.proto.framing import TAG_BUNDLE, Reassembler, pack_frames, unbundle_untrusted
from hotline.proto.guard import Source
from hotline.proto.heartbeat import PathHealth, make_pong
from hotline.proto.identity import Identity, PublicKey
from hotline.proto.incoming import IncomingStream
from hotline.proto.outgoing import OutgoingStream
from hotline.proto.packet import (
    PACKET_COOKIE_REPLY,
    PACKET_INITIATION,
    PACKET_RESPONSE,
    TCP_MAX_PACKET,
    TRANSPORT_HEADER_LEN,
    UDP_MAX_DATAGRAM,
    packet_type_untrusted,
)
from hotline.proto.sessions import SessionManager

_AEAD_TAG = 16
# Data frames handed out per pump, so one turn cannot build an unbounded burst.
_MAX_DATA_PER_PUMP = 512


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


@dataclass(frozen=True)
class StreamState:
    """What the store knows at start-up, to resume both streams."""

    out_epoch: bytes
    out_acked: int
    out_unacked: Sequence[tuple[int, bytes, bytes]]
    in_state: tuple[bytes, int, bytes] | None


class Link:
    """Sans-IO state of the link to one peer. See the module header."""

    def __init__(
        self,
        our: Identity,
        their: PublicKey,
        paths: Sequence[PathSpec],
        settings: LinkSettings,
        streams: StreamState,
        rng: Callable[[int], bytes],
        now: float,
        wall_ns: int,
        *,
        timestamp_floor_ns: int | None = None,
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
                                       timestamp_floor_ns=timestamp_floor_ns)
        self.outgoing = OutgoingStream(
            streams.out_epoch, streams.out_acked, streams.out_unacked,
            max_in_flight=settings.max_in_flight,
        )
        self.incoming = IncomingStream(
            our.public, their, streams.in_state,
            reorder_limit=settings.reorder_limit, max_message=settings.max_message,
        )
        self._reassembler = Reassembler(settings.max_message + 4096)
        self._frag_id = 0
        self._out: list[tuple[int, bytes]] = []
        self._replies: list[tuple[int, Source, bytes]] = []  # to one source, not the path
        self._frames: dict[int, list[bytes]] = {}  # encoded frames per path, this turn
        self._events: list[Event] = []
        self._delivered: list[Delivered] = []
        self.primary: int | None = None
        self._wall_base_ns = wall_ns - int(now * 1e9)
        self.dropped = 0
        self._attempts = 0
        # Our HELLO is repeated every heartbeat until an ACK for our epoch shows that
        # the peer has it (a lost HELLO would otherwise stall a new epoch until rekey).
        self._hello_due_at: float | None = None

    # --- inputs -------------------------------------------------------------------

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
                          source: Source | None = None) -> bool:
        """Handle one packet from the network.

        Args:
            source: where it came from (``guard.source_of`` of the transport's address;
                for TCP the connection's peer address), for cookies and budgets.

        Returns:
            True if it proved the peer live at ``source`` now — a response to our
            initiation or a transport packet that decrypted — so the daemon may roam
            the UDP path there. Never for an initiation: it may be a replay.

        Never raises for bad input: it is counted and reported as a ``Dropped`` event.
        """
        try:
            return self._receive(path_id, packet, now, source)
        except RemoteProtocolError as err:
            self.dropped += 1
            self._events.append(Dropped(path_id, type(err).__name__, str(err)))
            return False

    def queue_messages(self, records: Sequence[tuple[int, bytes, bytes]], now: float) -> None:
        """Messages now durable in the outbox (seq, envelope bytes, signature): send them."""
        for seq, raw, sig in records:
            self.outgoing.push(seq, raw, sig)

    def on_inbox_committed(self, epoch: bytes, upto: int, now: float) -> None:
        """The inbox is durable up to ``upto``: acknowledgements may now cover it."""
        self.incoming.on_committed(epoch, upto, now)

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
        self.outgoing.handle_timer(now)
        connected = [p.path_id for p in self.paths if p.connected]
        if self.sessions.wants_initiation(now) and connected:
            # One path per attempt (a copy on a second path would only be refused as
            # a replay); retries rotate through the connected paths, first one first.
            packet = self.sessions.start_initiation(now, self.wall_ns(now))
            self._out.append((connected[self._attempts % len(connected)], packet))
            self._attempts += 1

    # --- outputs ------------------------------------------------------------------

    def packets_to_send(self, now: float) -> list[tuple[int, bytes]]:
        """Everything to transmit now, as (path id, packet)."""
        self._pump(now)
        self._pack()
        out, self._out = self._out, []
        return out

    def replies_to_send(self) -> list[tuple[int, Source, bytes]]:
        """Handshake replies to send to one address, not the path's: (path id, source,
        packet). Cookie replies, and on UDP our response to an initiation, go back to
        where the initiation came from without roaming the path to it."""
        out, self._replies = self._replies, []
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
        deadlines.append(self.outgoing.get_timer())
        if sending and self._data_paths():
            deadlines.append(self._hello_due_at)
        return min((d for d in deadlines if d is not None), default=None)

    def wall_ns(self, now: float) -> int:
        """Wall-clock nanoseconds at monotonic instant ``now``."""
        return self._wall_base_ns + int(now * 1e9)

    @property
    def state(self) -> str:
        """``up`` (primary up), ``degraded`` (a path down or no primary yet), ``down``."""
        ups = [p.up for p in self.paths]
        if not any(ups) or not self.sessions.can_send():
            return "down"
        return "up" if all(ups) else "degraded"

    # --- receive internals --------------------------------------------------------

    def _receive(self, path_id: int, packet: bytes, now: float, source: Source | None) -> bool:
        kind = packet_type_untrusted(packet)
        if kind == PACKET_INITIATION:
            self._on_initiation(path_id, packet, now, source)
            return False
        if kind == PACKET_COOKIE_REPLY:
            retry = self.sessions.on_cookie_reply_untrusted(packet, now, self.wall_ns(now))
            if retry is not None:
                self._out.append((path_id, retry))
            return False
        if kind == PACKET_RESPONSE:
            self.sessions.on_response_untrusted(packet, now)
            self._heard(path_id, now)
            self._after_handshake(path_id, now, initiator=True)
        else:
            self._on_transport(path_id, packet, now)
        if source is not None:
            self.sessions.on_authenticated_source(path_id, source)
        return True

    def _on_initiation(self, path_id: int, packet: bytes, now: float,
                       source: Source | None) -> None:
        udp = self.specs[path_id].scheme == "udp"
        outcome = self.sessions.on_initiation_untrusted(packet, now, source,
                                                        address_proven=not udp)
        if outcome.cookie_reply is not None:
            assert source is not None  # the guard answers only a known source
            self._replies.append((path_id, source, outcome.cookie_reply))
            self.dropped += 1
            self._events.append(Dropped(path_id, "CookieRequired",
                                        "under load: answered with a cookie, no DH"))
            return
        if outcome.accepted_timestamp_ns is not None:
            self._events.append(InitiationAccepted(outcome.accepted_timestamp_ns))
        self._heard(path_id, now)
        if outcome.own_initiation is not None:
            self._out.append((path_id, outcome.own_initiation))
        if outcome.response is not None:
            if udp and source is not None:
                self._replies.append((path_id, source, outcome.response))
            else:
                self._out.append((path_id, outcome.response))

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
            self._on_frame(path_id, frame, now)

    def _heard(self, path_id: int, now: float) -> None:
        path = self.paths[path_id]
        if not path.connected:
            path.on_connected(now)
        if path.on_authenticated_received(now):
            self._events.append(PathUp(path_id, path.url))
            self._choose_primary(now)

    def _after_handshake(self, path_id: int, now: float, *, initiator: bool) -> None:
        self._attempts = 0
        self._events.append(HandshakeComplete(path_id, initiator))
        if initiator:
            self._send_frame(Keepalive(), [path_id])
        self._send_frame(self._hello(), self._data_paths(fallback=path_id))
        self._hello_due_at = now + self.settings.heartbeat
        self.outgoing.on_path_change(now)

    def _on_frame(self, path_id: int, frame: Frame, now: float) -> None:
        if isinstance(frame, Data):
            accepted = self.incoming.on_data_untrusted(frame, now)
            if accepted:
                self._events.append(Delivered(tuple(accepted)))
        elif isinstance(frame, Ack):
            if frame.epoch == self.outgoing.epoch:
                self._hello_due_at = None
            upto = self.outgoing.on_ack(frame, now)
            if upto is not None:
                self._events.append(Acked(upto))
        elif isinstance(frame, Ping):
            self._send_frame(make_pong(frame, self.wall_ns(now)), [path_id])
        elif isinstance(frame, Pong):
            self.paths[path_id].on_pong(frame, now)
        elif isinstance(frame, Hello):
            self._on_hello(frame, now)
        elif isinstance(frame, Receipt):
            self._on_receipt(frame)

    def _on_hello(self, hello: Hello, now: float) -> None:
        new_epoch = self.incoming.on_hello(hello)
        self.incoming.request_ack()
        if new_epoch is not None:
            self._events.append(new_epoch)
        upto = self.outgoing.on_hello(hello, now)
        if upto is not None:
            self._events.append(Acked(upto))

    def _on_receipt(self, frame: Receipt) -> None:
        receipt = decode_receipt_untrusted(frame.raw)
        if receipt.sender != self._our.public.raw or receipt.recipient != self._their.raw:
            raise DecodeError("receipt names the wrong keys")
        verify_receipt(self._their, frame.raw, frame.sig)
        self._events.append(
            ReceiptReceived(self.outgoing.epoch, receipt.upto, receipt.chain, frame.raw, frame.sig)
        )

    # --- send internals -----------------------------------------------------------

    def _pump(self, now: float) -> None:
        wall = self.wall_ns(now)
        for path in self.paths:
            ping = path.ping_due(now, wall) if self.sessions.can_send() else None
            if ping is not None:
                self._send_frame(ping, [path.path_id])
        if not self.sessions.can_send():
            return
        targets = self._data_paths()
        if not targets:
            return
        if self._hello_due_at is not None and now >= self._hello_due_at:
            self._hello_due_at = now + self.settings.heartbeat
            self._send_frame(self._hello(), targets)
        ack = self.incoming.ack_due(now)
        if ack is not None:
            self._send_frame(ack, targets)
        receipt = self.incoming.receipt_due(now, self.settings.receipt_every)
        if receipt is not None:
            self._send_frame(self._receipt(*receipt), targets)
        for data in self.outgoing.frames_to_send(now, _MAX_DATA_PER_PUMP):
            self._send_frame(data, targets)

    def _send_frame(self, frame: Frame, path_ids: Sequence[int]) -> None:
        """Queue a frame for these paths; ``_pack`` seals this turn's frames together."""
        if not self.sessions.can_send():
            return
        encoded = encode_frame(frame)
        for path_id in path_ids:
            self._frames.setdefault(path_id, []).append(encoded)

    def _pack(self) -> None:
        """Seal the queued frames, bundled per path into as few packets as fit."""
        if not self._frames or not self.sessions.can_send():
            self._frames.clear()
            return
        for path_id, frames in self._frames.items():
            plaintexts, self._frag_id = pack_frames(
                frames, self.specs[path_id].max_plaintext, self._frag_id
            )
            self._out.extend((path_id, self.sessions.seal(p)) for p in plaintexts)
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
            self.outgoing.on_path_change(now)

    def _hello(self) -> Hello:
        seen = self.incoming.position()
        return Hello(
            self.outgoing.epoch,
            self.outgoing.base_seq(),
            None if seen is None else seen[0],
            0 if seen is None else seen[1],
        )

    def _receipt(self, upto: int, chain: bytes) -> Receipt:
        raw = encode_receipt(self._their.raw, self._our.public.raw, upto, chain)
        return Receipt(raw, sign_receipt(self._our, raw))

