"""The link's Noise sessions: initiation, response, confirmation, rekey and expiry.

Theory of operation (DESIGN §2, after WireGuard's timers). A link holds at most:

* ``pending`` — our outstanding initiation (retried every ``REKEY_TIMEOUT`` seconds);
* ``current`` — the session we send with;
* ``unconfirmed`` — a session we answered as responder: we may not send with it until
  the initiator's first transport packet proves it holds the keys; it then becomes
  ``current``;
* ``previous`` — the session replaced by the latest handshake, still accepted for
  decryption until it is ``REJECT_AFTER`` seconds old, so nothing in flight is lost.

Packets name the receiver's session index, so lookup is a dict by our index. When two
initiations cross, the end with the lower static key keeps its own
(``keeps_own_initiation``) and drops the other's; the higher end answers.
The initiator of the current session rekeys after ``rekey_after`` seconds (or
``REKEY_AFTER_PACKETS``); the responder does so ``_RESPONDER_REKEY_GRACE`` seconds
later if the initiator has not, so a silent peer cannot keep old keys alive.

Under attack (DESIGN §2b): every initiation passes the ``HandshakeGuard`` before the
responder spends a DH on it; the guard may answer with a cookie reply instead. As
initiator we keep the peer's cookie (``CookieJar``) and put mac2 on our initiations
and responses; a cookie reply to our pending initiation makes us send a fresh one at
once — once per initiation, so a lost or stale cookie cannot make us loop. The last
accepted initiation timestamp starts at ``timestamp_floor_ns`` (the daemon persists
it) and each newly accepted one is reported in ``InitiationOutcome``.

Post-quantum (DESIGN §11): handshakes are keyed by a psk from ``psks`` (a ``PskRing``:
the ``psk_file`` secret and the stored ratchet secrets), and every session that becomes
current starts its ML-KEM ratchet step (``ratchet``, ``pq.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from hotline.errors import HandshakeError
from hotline.proto.cookie import CookieJar
from hotline.proto.guard import HandshakeGuard, Source
from hotline.proto.handshake import Initiation, Responder, Session, keeps_own_initiation
from hotline.proto.identity import Identity, PublicKey
from hotline.proto.packet import TransportOpener, TransportSealer, receiver_index_untrusted
from hotline.proto.pq import PskRing, Ratchet
from hotline.proto.records import RatchetRecord

REKEY_TIMEOUT = 5.0
# A crossing initiation proves the peer is live; ours may have been lost (e.g. sent
# before the peer was listening), so we send ours again once at once instead of waiting
# out REKEY_TIMEOUT. If ours was merely in flight, the peer refuses the copy as a replay.
REJECT_AFTER = 180.0
REKEY_AFTER_PACKETS = 2**60
_RESPONDER_REKEY_GRACE = 15.0


@dataclass
class ActiveSession:
    """A session with its transport sealer/opener and whether we may send with it."""

    session: Session
    sealer: TransportSealer = field(init=False)
    opener: TransportOpener = field(init=False)
    confirmed: bool = False

    def __post_init__(self) -> None:
        self.sealer = TransportSealer(self.session.send_key, self.session.their_index)
        self.opener = TransportOpener(self.session.recv_key)


@dataclass(frozen=True)
class InitiationOutcome:
    """What answering one initiation produced (any field may be None).

    ``response``: our response, for whoever sent the initiation (its source).
    ``own_initiation``: initiations crossed and ours wins: our own initiation again,
    for the peer (the path). ``cookie_reply``: we are under load and the initiation
    lacked a valid mac2; send this to its source only — nothing else happened.
    ``accepted_timestamp_ns``: the initiation authenticated and its timestamp is the
    new replay floor (persist it).
    """

    response: bytes | None = None
    own_initiation: bytes | None = None
    cookie_reply: bytes | None = None
    accepted_timestamp_ns: int | None = None


@dataclass(frozen=True)
class Opened:
    """A transport packet that authenticated: its plaintext, what it changed, and whether
    it came with the current session (acknowledgements count only then, DESIGN §4b)."""

    plaintext: bytes
    confirmed_now: bool
    current: bool


class SessionManager:
    """All Noise state of one link (see the module header)."""

    def __init__(
        self,
        our: Identity,
        their: PublicKey,
        rng: Callable[[int], bytes],
        rekey_after: float,
        *,
        timestamp_floor_ns: int | None = None,
        psk_secret: bytes | None = None,
        ratchet: RatchetRecord | None = None,
    ) -> None:
        self._our = our
        self._their = their
        self._rng = rng
        self._rekey_after = rekey_after
        self.psks = PskRing(psk_secret, ratchet)
        self.ratchet = Ratchet(self.psks, rng)
        self._responder = Responder(our, their, rng, timestamp_floor_ns, self.psks)
        self.guard = HandshakeGuard(our.public.x25519(), rng)
        self._cookies = CookieJar(their.x25519())
        self._cookie_retried = False
        self._by_index: dict[int, ActiveSession] = {}
        self.pending: tuple[Initiation, int, float] | None = None
        self._pending_packet = b""
        self._pending_resent = False
        self.current: ActiveSession | None = None
        self.unconfirmed: ActiveSession | None = None
        self.previous: ActiveSession | None = None
        self._last_timestamp_ns = 0
        self.handshakes_completed = 0

    # --- queries ------------------------------------------------------------------

    def can_send(self) -> bool:
        """True when a confirmed session is there to seal with."""
        return self.current is not None and self.current.confirmed

    @property
    def pq(self) -> bool:
        """The current session's keys depend on a secret X25519 cannot reveal."""
        return self.current is not None and self.current.session.pq

    def session_age(self, now: float) -> float | None:
        """Seconds since the current session was made, or None."""
        return None if self.current is None else now - self.current.session.created_at

    def wants_initiation(self, now: float) -> bool:
        """True when we should send a (new) initiation now."""
        if self.pending is not None:
            # The same sum as get_timer's deadline: (t + d) - t may round below d.
            return now >= self.pending[2] + REKEY_TIMEOUT
        if self.current is None:
            return self.unconfirmed is None or self._expired(self.unconfirmed, now, REKEY_TIMEOUT)
        return now >= self._rekey_deadline(self.current)

    def get_timer(self, can_initiate: bool) -> float | None:
        """The next instant ``expire``/``wants_initiation`` may change their answer.

        Args:
            can_initiate: whether a path could carry an initiation now. Without one, a
                due rekey or retry cannot happen, so only expiry deadlines count.
        """
        deadlines = [
            active.session.created_at + REJECT_AFTER
            for active in (self.current, self.previous, self.unconfirmed)
            if active is not None
        ]
        if can_initiate:
            if self.pending is not None:
                deadlines.append(self.pending[2] + REKEY_TIMEOUT)
            elif self.current is not None:
                deadlines.append(self._rekey_deadline(self.current))
            elif self.unconfirmed is not None:
                deadlines.append(self.unconfirmed.session.created_at + REKEY_TIMEOUT)
        return min(deadlines, default=None)

    # --- handshake ----------------------------------------------------------------

    def start_initiation(self, now: float, wall_ns: int) -> bytes:
        """Begin (or retry) a handshake as initiator; returns the initiation packet."""
        self._cookie_retried = False
        return self._initiate(now, wall_ns)

    def _initiate(self, now: float, wall_ns: int) -> bytes:
        index = self._new_index()
        # Strictly increasing even if the wall clock steps back (DESIGN §2).
        self._last_timestamp_ns = max(wall_ns, self._last_timestamp_ns + 1)
        initiation, packet = Initiation.start(
            self._our, self._their, index, self._last_timestamp_ns, now, self._rng,
            self._cookies.cookie(now), self.psks,
        )
        self.pending = (initiation, index, now)
        self._pending_packet, self._pending_resent = packet, False
        return packet

    def on_initiation_untrusted(self, packet: bytes, now: float, source: Source | None, *,
                                address_proven: bool) -> InitiationOutcome:
        """Screen and answer a peer's initiation.

        The guard screens it first (no DH yet): it may be dropped (raises) or answered
        with a cookie reply. Otherwise it normally gets our response; when initiations
        cross and ours wins, nothing, or — once per initiation of ours — our own
        initiation is sent again.

        The initiation is authenticated in full before the crossing rule is applied, so
        nothing unauthenticated ever changes our state or counts as hearing the peer.

        Args:
            source: where it came from (for cookies and per-source budgets).
            address_proven: the transport proved ``source`` (TCP); False for UDP.

        Raises:
            RemoteProtocolError: malformed, forged, a repeat or replay, or over budget.
        """
        cookie_reply = self.guard.screen_initiation_untrusted(packet, source, address_proven,
                                                              now)
        if cookie_reply is not None:
            return InitiationOutcome(cookie_reply=cookie_reply)
        index = self._new_index()
        session, response = self._responder.consume_initiation_untrusted(
            packet, index, now, self._cookies.cookie(now)
        )
        accepted = self._responder.last_timestamp_ns
        if self._ours_wins_crossing(now):
            own = None if self._pending_resent else self._pending_packet
            self._pending_resent = True
            return InitiationOutcome(own_initiation=own, accepted_timestamp_ns=accepted)
        self.pending = None
        if self.unconfirmed is not None:
            self._by_index.pop(self.unconfirmed.session.our_index, None)
        self.unconfirmed = ActiveSession(session)
        self._by_index[index] = self.unconfirmed
        return InitiationOutcome(response=response, accepted_timestamp_ns=accepted)

    def _ours_wins_crossing(self, now: float) -> bool:
        return (self.pending is not None
                and keeps_own_initiation(self._our.public, self._their)
                and now < self.pending[2] + REKEY_TIMEOUT)

    def on_cookie_reply_untrusted(self, packet: bytes, now: float, wall_ns: int) -> bytes | None:
        """Keep the cookie the peer sent for our pending initiation.

        Returns:
            A fresh initiation carrying the cookie, to send at once on the path the
            reply came from — or None if this initiation was already such a retry
            (the next one waits for ``REKEY_TIMEOUT`` as usual).

        Raises:
            RemoteProtocolError: not a cookie reply to our pending initiation.
        """
        if self.pending is None or receiver_index_untrusted(packet) != self.pending[1]:
            raise HandshakeError("cookie reply to no pending initiation of ours")
        self._cookies.consume_reply_untrusted(packet, self.pending[0].mac1, now)
        if self._cookie_retried:
            return None
        self._cookie_retried = True
        return self._initiate(now, wall_ns)

    def on_authenticated_source(self, path_id: int, source: Source) -> None:
        """A response or transport packet from ``source`` authenticated (see the guard)."""
        self.guard.on_authenticated_source(path_id, source)

    def on_response_untrusted(self, packet: bytes, now: float) -> None:
        """Complete our initiation with the peer's response; the new session becomes current.

        Raises:
            RemoteProtocolError: not a response to our pending initiation, or forged.
        """
        if self.pending is None or receiver_index_untrusted(packet) != self.pending[1]:
            raise HandshakeError("response to no pending initiation of ours")
        session = self.pending[0].consume_response_untrusted(packet, now)
        self.pending = None
        self._install(ActiveSession(session, confirmed=True), now)

    # --- transport ----------------------------------------------------------------

    def open_untrusted(self, packet: bytes, now: float) -> Opened:
        """Decrypt a transport packet with whichever of our sessions it names.

        Raises:
            RemoteProtocolError: unknown index, expired session, replay, or bad tag.
        """
        active = self._by_index.get(receiver_index_untrusted(packet))
        if active is None:
            raise HandshakeError("transport packet for an unknown session index")
        if self._expired(active, now, REJECT_AFTER):
            raise HandshakeError("transport packet for an expired session")
        plaintext = active.opener.open_untrusted(packet)
        confirmed_now = active is self.unconfirmed
        if confirmed_now:
            self.unconfirmed = None
            active.confirmed = True
            self._install(active, now)
        return Opened(plaintext, confirmed_now, active is self.current)

    def seal(self, payload: bytes) -> bytes:
        """Encrypt ``payload`` with the current session (caller checked ``can_send``)."""
        assert self.current is not None
        return self.current.sealer.seal(payload)

    def expire(self, now: float) -> None:
        """Forget sessions older than REJECT_AFTER (keys dropped with the objects)."""
        for name in ("previous", "current", "unconfirmed"):
            active: ActiveSession | None = getattr(self, name)
            if active is not None and self._expired(active, now, REJECT_AFTER):
                self._by_index.pop(active.session.our_index, None)
                setattr(self, name, None)

    # --- internals ----------------------------------------------------------------

    def _install(self, active: ActiveSession, now: float) -> None:
        if self.previous is not None:
            self._by_index.pop(self.previous.session.our_index, None)
        self.previous = self.current
        self.current = active
        self._by_index[active.session.our_index] = active
        self.handshakes_completed += 1
        session = active.session
        self.ratchet.on_session(session.our_index, session.is_initiator, session.psk,
                                session.handshake_hash, now)

    def _rekey_deadline(self, active: ActiveSession) -> float:
        created = active.session.created_at
        if active.sealer.counter >= REKEY_AFTER_PACKETS:
            return created
        grace = 0.0 if active.session.is_initiator else _RESPONDER_REKEY_GRACE
        return created + self._rekey_after + grace

    def _new_index(self) -> int:
        while True:
            (index,) = struct.unpack(">I", self._rng(4))
            if index not in self._by_index and (self.pending is None or index != self.pending[1]):
                return int(index)

    @staticmethod
    def _expired(active: ActiveSession, now: float, limit: float) -> bool:
        # the same sum as the deadline get_timer returns: no float gap between them
        return now >= active.session.created_at + limit
