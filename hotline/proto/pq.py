"""Post-quantum hybrid: an ML-KEM-768 ratchet that keys Noise_KKpsk2 (DESIGN §11). Sans-IO.

Theory of operation (Rosenpass-style, inside our own sessions). Every handshake is
``Noise_KKpsk2``: its transport keys depend on the X25519 DHs *and* on a 32-byte psk.
The psk comes from two secrets that X25519 cannot reveal::

    psk = HMAC-BLAKE2s(key = file secret or 32 zeros,
                       "hotline/1 psk" ‖ ratchet secret or 32 zeros)

* the optional out-of-band ``psk_file`` secret (as WireGuard's PSK): protects from the
  very first packet;
* the **ratchet secret**, which each established session advances with one ML-KEM-768
  exchange: the session's initiator sends a fresh encapsulation key (``KemOffer``,
  1184 bytes, a normal link frame), the other end encapsulates and answers with the
  ciphertext (``KemReply``, 1088 bytes), and both compute::

    next = HMAC-BLAKE2s(key = the ratchet secret this session used, or 32 zeros,
                        "hotline/1 ratchet" ‖ ML-KEM shared secret ‖ session handshake hash)

  HMAC keyed by the old secret with the new one in the message is secure if EITHER is
  (it is HKDF-Extract with the old secret as salt), and the handshake hash binds the
  step to this session. The KEM's decapsulation key lives only in memory for one
  exchange and is dropped after it.

Which psk a handshake uses. Each end keeps the last two ratchet secrets it stored
(``PskRing``: current and previous) plus the *base* psk (file secret and zero ratchet).
The initiator names its candidates newest first — ``psk_id`` of each, 8 bytes, inside
the encrypted first message, so only the responder sees them — and the responder takes
the newest of its own that the initiator named (the base psk is always named, so two
ends with the same ``psk_file`` always agree on one). The initiator, reading the
response, tries its candidates in turn (``handshake.py``). A session keyed by a ratchet
secret, or by a ``psk_file``, is ``pq``.

Why the two ends always share a secret. After the exchange of a session keyed by ``R``,
an end that completed it stores ``{next, R}``; an end that did not (the reply was lost,
it crashed before its commit) still holds ``R``, because ``R`` came out of both ends'
rings at the handshake. So the next handshake finds ``R`` at least. Only a lost or
restored store, a failed *first* exchange (``R`` was the base psk), or two failed
exchanges in overlapping sessions fall back to the base psk: that session is classical
(``pq: false``) and its own exchange ratchets again.

Durability: a derived secret is handed to the store (``RatchetRecord``) and used for
handshakes only after the store committed it; the answering end sends its ``KemReply``
only after that commit too ("commit, then send"). Loss and reordering: the offering
end re-sends its offer until the reply arrives (backoff ``KEM_RETRY_FIRST`` doubling to
``KEM_RETRY_MAX``); the answering end answers each copy of the one offer of the session
with the same ciphertext and never encapsulates twice. KEM frames count only in the
current session; an exchange that a rekey overtakes is abandoned.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hotline.errors import ConfigError, DecodeError, HandshakeError, ReplayError
from hotline.proto.frames import KemOffer, KemReply
from hotline.proto.records import RatchetRecord

SECRET_LEN = 32
PSK_ID_LEN = 8
PSK_SLOTS = 3  # current ratchet, previous ratchet, base
MLKEM_SEED_LEN = 64
KEM_RETRY_FIRST = 1.0
KEM_RETRY_MAX = 16.0
_ZEROS = bytes(SECRET_LEN)
_PSK_LABEL = b"hotline/1 psk"
_PSK_ID_LABEL = b"hotline/1 psk id"
_RATCHET_LABEL = b"hotline/1 ratchet"
_MINIMUM = "hotline needs cryptography >= 48 with OpenSSL >= 3.5 for ML-KEM-768"

Rng = Callable[[int], bytes]

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey


# --- availability ---------------------------------------------------------------------


def mlkem_unavailable() -> str | None:
    """Why ML-KEM-768 cannot run here (one line), or None when it can."""
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        from cryptography.hazmat.primitives.asymmetric import mlkem
    except ImportError:
        import cryptography

        return f"cryptography {cryptography.__version__} has no ML-KEM ({_MINIMUM})"
    try:
        mlkem.MLKEM768PrivateKey.generate()
    except UnsupportedAlgorithm:
        return f"{_backend_name()} lacks ML-KEM-768 ({_MINIMUM})"
    return None


def require_mlkem() -> None:
    """Raise unless ML-KEM-768 is available (the daemon and ``check`` call this).

    Raises:
        ConfigError: one line naming the installed versions and what is needed (exit 78).
    """
    reason = mlkem_unavailable()
    if reason is not None:
        raise ConfigError(f"post-quantum key exchange unavailable: {reason}")


def backend_description() -> str:
    """``cryptography X with OpenSSL Y``: what runs ML-KEM here."""
    return _backend_name()


def _backend_name() -> str:
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    return f"cryptography {cryptography.__version__} with {backend.openssl_version_text()}"


# --- key derivation -------------------------------------------------------------------


def _hmac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.blake2s).digest()


def psk_of(file_secret: bytes | None, ratchet: bytes | None) -> bytes:
    """The Noise psk for a ``psk_file`` secret and a ratchet secret (either may be None)."""
    return _hmac(file_secret or _ZEROS, _PSK_LABEL, ratchet or _ZEROS)


def psk_id(psk: bytes) -> bytes:
    """The 8-byte name of a psk in the initiation (a one-way function of it)."""
    return hashlib.blake2s(_PSK_ID_LABEL + psk).digest()[:PSK_ID_LEN]


def next_ratchet(ratchet: bytes | None, kem_secret: bytes, handshake_hash: bytes) -> bytes:
    """The ratchet secret after one ML-KEM exchange in the session keyed by ``ratchet``."""
    return _hmac(ratchet or _ZEROS, _RATCHET_LABEL, kem_secret, handshake_hash)


# --- which psk a handshake uses -------------------------------------------------------


@dataclass(frozen=True)
class PskChoice:
    """One candidate psk: the psk, its id, the ratchet secret it came from (None: the
    base psk) and whether a session keyed by it is post-quantum."""

    psk: bytes
    id: bytes
    ratchet: bytes | None
    pq: bool


class PskRing:
    """The psks this end can key a handshake with: newest ratchet first, base last.

    Args:
        file_secret: the ``psk_file`` secret (32 bytes) or None.
        stored: the ratchet secrets the store holds (``Resume.ratchet``), or None.
    """

    def __init__(self, file_secret: bytes | None, stored: RatchetRecord | None) -> None:
        self._file = file_secret
        base = psk_of(file_secret, None)
        self._base = PskChoice(base, psk_id(base), None, file_secret is not None)
        self.choices: tuple[PskChoice, ...] = (self._base,)
        if stored is not None:
            self.install(stored)

    def install(self, record: RatchetRecord) -> None:
        """Key handshakes with these (now durable) ratchet secrets from now on."""
        ratchets = [r for r in (record.current, record.previous) if r is not None]
        self.choices = (*(self._choice(r) for r in ratchets), self._base)

    def _choice(self, ratchet: bytes) -> PskChoice:
        psk = psk_of(self._file, ratchet)
        return PskChoice(psk, psk_id(psk), ratchet, True)

    def offered_ids(self) -> bytes:
        """The ids for our initiation: ``PSK_SLOTS`` slots, newest first, zero-filled."""
        ids = b"".join(c.id for c in self.choices)
        return ids.ljust(PSK_SLOTS * PSK_ID_LEN, b"\x00")

    def choose_untrusted(self, offered: bytes) -> PskChoice:
        """As responder: our newest psk among those the initiator named.

        Raises:
            HandshakeError: none in common — the two ends' ``psk_file`` differ.
        """
        named = {offered[i:i + PSK_ID_LEN] for i in range(0, len(offered), PSK_ID_LEN)}
        for choice in self.choices:
            if choice.id in named:
                return choice
        raise HandshakeError("the peer keys its handshake with a psk we do not hold: "
                             "is psk_file the same file at both ends?")


# --- the exchange inside a session ----------------------------------------------------


@dataclass(frozen=True)
class RatchetDerived:
    """Event: a new ratchet secret to commit; ``Link.on_ratchet_committed`` after it."""

    record: RatchetRecord


@dataclass
class _Exchange:
    """The KEM exchange of the current session (one per session)."""

    our_index: int
    ratchet: bytes | None  # the ratchet secret the session was keyed with
    handshake_hash: bytes
    offering: bool
    decaps_key: MLKEM768PrivateKey | None = None  # while our offer is unanswered
    offer: KemOffer | None = None
    offer_due: float | None = None
    backoff: float = KEM_RETRY_FIRST
    answered: bytes | None = None  # the encapsulation key we answered
    reply: KemReply | None = None  # our answer, once its secret is durable
    reply_due: bool = False


@dataclass
class _Pending:
    record: RatchetRecord
    our_index: int
    reply: KemReply | None = None


class Ratchet:
    """The ML-KEM ratchet of one link: the psk ring and the current session's exchange.

    The Link calls ``on_session`` when a session becomes current, feeds it KEM frames
    (``on_offer_untrusted``/``on_reply_untrusted``), sends ``frames_due`` and tells it
    ``on_committed`` once the store holds a record it derived.

    Args:
        ring: the link's psks (``install``ed with each committed record).
        rng: the source of each offer's ML-KEM key seed.
    """

    def __init__(self, ring: PskRing, rng: Rng) -> None:
        self.ring = ring
        self._rng = rng
        self._exchange: _Exchange | None = None
        self._pending: list[_Pending] = []

    def on_session(self, our_index: int, initiator: bool, choice: PskChoice,
                   handshake_hash: bytes, now: float) -> None:
        """A session became current: abandon the old exchange; the initiator offers."""
        from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

        exchange = _Exchange(our_index, choice.ratchet, handshake_hash, initiator)
        if initiator:
            exchange.decaps_key = MLKEM768PrivateKey.from_seed_bytes(self._rng(MLKEM_SEED_LEN))
            exchange.offer = KemOffer(exchange.decaps_key.public_key().public_bytes_raw())
            exchange.offer_due = now
        self._exchange = exchange

    def on_offer_untrusted(self, offer: KemOffer, current: bool) -> RatchetRecord | None:
        """The peer's offer: encapsulate once, derive, return the record to commit.

        Raises:
            RemoteProtocolError: not in the current session, not the responder's turn,
                a second offer in one session, or a malformed key.
        """
        exchange = self._current(current)
        if exchange.offering:
            raise HandshakeError("KEM offer from the responder of the session")
        if exchange.answered is not None:
            if offer.public_key != exchange.answered:
                raise ReplayError("a second KEM offer in one session")
            exchange.reply_due = exchange.reply is not None  # a copy: answer it again
            return None
        from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey

        try:
            secret, ciphertext = MLKEM768PublicKey.from_public_bytes(
                offer.public_key).encapsulate()
        except ValueError as err:
            raise DecodeError(f"bad ML-KEM-768 encapsulation key: {err}") from None
        exchange.answered = offer.public_key
        return self._derive(exchange, secret, KemReply(ciphertext))

    def on_reply_untrusted(self, reply: KemReply, current: bool) -> RatchetRecord | None:
        """The peer's reply to our offer: decapsulate, derive, return the record to commit.

        Raises:
            RemoteProtocolError: not in the current session, or no offer of ours waits.
        """
        exchange = self._current(current)
        if not exchange.offering:
            raise HandshakeError("KEM reply from the initiator of the session")
        if exchange.decaps_key is None:
            return None  # a copy of a reply we already took
        try:
            secret = exchange.decaps_key.decapsulate(reply.ciphertext)
        except ValueError as err:
            raise DecodeError(f"bad ML-KEM-768 ciphertext: {err}") from None
        exchange.decaps_key, exchange.offer_due = None, None
        return self._derive(exchange, secret, None)

    def on_committed(self, record: RatchetRecord) -> None:
        """The store holds ``record`` (and every one derived before it): use it."""
        while self._pending:
            pending = self._pending.pop(0)
            exchange = self._exchange
            if pending.reply is not None and exchange is not None \
                    and exchange.our_index == pending.our_index:
                exchange.reply, exchange.reply_due = pending.reply, True
            if pending.record is record:
                break
        self.ring.install(record)

    def frames_due(self, now: float) -> list[KemOffer | KemReply]:
        """KEM frames to send now (an offer, first or again; a reply, first or again)."""
        exchange = self._exchange
        if exchange is None:
            return []
        out: list[KemOffer | KemReply] = []
        if exchange.offer is not None and exchange.offer_due is not None \
                and now >= exchange.offer_due:
            out.append(exchange.offer)
            exchange.offer_due = now + exchange.backoff
            exchange.backoff = min(exchange.backoff * 2, KEM_RETRY_MAX)
        if exchange.reply is not None and exchange.reply_due:
            out.append(exchange.reply)
            exchange.reply_due = False
        return out

    def get_timer(self) -> float | None:
        """When our offer is due again (None: nothing scheduled). A reply is due only after
        an input (a commit, a copy of the offer), so it needs no timer."""
        exchange = self._exchange
        if exchange is None:
            return None
        return exchange.offer_due

    def _current(self, current: bool) -> _Exchange:
        if not current or self._exchange is None:
            raise ReplayError("KEM frame outside the current session: ignored")
        return self._exchange

    def _derive(self, exchange: _Exchange, kem_secret: bytes,
                reply: KemReply | None) -> RatchetRecord:
        derived = next_ratchet(exchange.ratchet, kem_secret, exchange.handshake_hash)
        record = RatchetRecord(derived, exchange.ratchet)
        self._pending.append(_Pending(record, exchange.our_index, reply))
        return record
