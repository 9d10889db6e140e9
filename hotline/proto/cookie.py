"""WireGuard's two MACs on handshake packets, and the cookie reply (DESIGN §2, §2b).

Owns the last 32 bytes of every handshake packet and the type-4 cookie reply; the
decision *when* to ask for a cookie is ``guard.py``'s. Every handshake packet ends::

    … | mac1(16) | mac2(16)

* ``mac1`` = BLAKE2s-128(key = BLAKE2s(``"mac1----"`` ‖ receiver's X25519 public),
  every byte before mac1). It proves only that the sender knows the receiver's public
  key — public keys are public, so it filters random junk for one hash and is not
  authentication (it also tells anyone who guesses a key that this end holds it).
* ``mac2`` = BLAKE2s-128(key = cookie, every byte before mac2, so mac1 included), or
  16 zero bytes when the sender holds no fresh cookie. A responder makes the cookie
  as BLAKE2s-128(key = its secret, the sender's source address bytes): a valid mac2
  proves that the sender receives packets at the address it sends from, so a sender
  with forged source addresses cannot make one.

Cookie reply, sent by a responder under load instead of spending a Diffie-Hellman::

    04 | receiver_index(4 BE) | nonce(12) | ChaCha20-Poly1305(cookie)(16 + 16)    49 bytes

``receiver_index`` is the sender index of the initiation answered. Key =
BLAKE2s(``"cookie--"`` ‖ responder's X25519 public), associated data = the mac1 of the
packet answered, so only whoever sent that packet (and knows its mac1) accepts the
cookie, and nobody can plant a cookie without having seen our packet.

Nonce: WireGuard uses XChaCha20-Poly1305 with a random 24-byte nonce; ``cryptography``
has no XChaCha, so we use ChaCha20-Poly1305 with a random 96-bit nonce. The key is
fixed for the responder's lifetime, so what matters is a nonce collision among its
cookie replies: n replies collide with probability about n²/2⁹⁷, and replies are sent
only under load — 2³² of them (136 years at 1,000/s) give 2⁻³³. A collision would
expose the XOR of two cookies and let someone who saw both replies forge one more for
that nonce; the worst it buys is an initiator holding a wrong cookie for one retry,
less than an on-path attacker can do by dropping packets.

Secret rotation: a new 32-byte secret every ``SECRET_LIFETIME`` (120 s, as WireGuard),
made lazily from the injected rng. A secret mints cookies for 120 s and is accepted
for 240 s (WireGuard accepts the current one only), so any cookie stays good at least
120 s after it was made; the initiator uses one for ``COOKIE_FRESH_FOR`` seconds after
receipt, which leaves room for the reply's flight time.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from hotline.errors import AuthenticationError, DecodeError

MAC_LEN = 16
MACS_LEN = 2 * MAC_LEN
TYPE_COOKIE_REPLY = 4
COOKIE_LEN = 16
NONCE_LEN = 12
COOKIE_REPLY_LEN = 1 + 4 + NONCE_LEN + COOKIE_LEN + 16  # 49
SECRET_LIFETIME = 120.0
COOKIE_FRESH_FOR = 110.0
_NO_MAC2 = bytes(MAC_LEN)

Rng = Callable[[int], bytes]


def mac1_key(receiver_x25519_public: bytes) -> bytes:
    """BLAKE2s(``"mac1----"`` ‖ receiver's X25519 public key), 32 bytes."""
    return hashlib.blake2s(b"mac1----" + receiver_x25519_public).digest()


def cookie_key(responder_x25519_public: bytes) -> bytes:
    """BLAKE2s(``"cookie--"`` ‖ responder's X25519 public key): seals cookie replies."""
    return hashlib.blake2s(b"cookie--" + responder_x25519_public).digest()


def compute_mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s-128 of ``data`` (mac1 with a ``mac1_key``, mac2 with a cookie)."""
    return hashlib.blake2s(data, key=key, digest_size=MAC_LEN).digest()


def add_macs(body: bytes, receiver_mac1_key: bytes, cookie: bytes | None) -> bytes:
    """``body ‖ mac1 ‖ mac2``; mac2 is zeros when ``cookie`` is None."""
    with_mac1 = body + compute_mac(receiver_mac1_key, body)
    mac2 = _NO_MAC2 if cookie is None else compute_mac(cookie, with_mac1)
    return with_mac1 + mac2


def mac1_of(packet: bytes) -> bytes:
    """The mac1 field of a handshake packet (the caller checked its size)."""
    return packet[-MACS_LEN:-MAC_LEN]


def check_mac1_untrusted(our_mac1_key: bytes, packet: bytes) -> bytes:
    """Check mac1 of a handshake packet addressed to us; returns the body before it.

    Raises:
        AuthenticationError: mac1 does not match (junk, or meant for another key).
    """
    body = packet[:-MACS_LEN]
    if not hmac.compare_digest(compute_mac(our_mac1_key, body), mac1_of(packet)):
        raise AuthenticationError("handshake mac1 does not match")
    return body


class CookieChecker:
    """The responder's side: mints cookies, checks mac2, writes cookie replies.

    Args:
        our_x25519_public: our static public key (cookie replies are sealed with it).
        rng: source of secrets and nonces.
    """

    def __init__(self, our_x25519_public: bytes, rng: Rng) -> None:
        self._aead = ChaCha20Poly1305(cookie_key(our_x25519_public))
        self._rng = rng
        self._secrets: list[tuple[bytes, float]] = []  # (secret, made at), newest first

    def _minting_secret(self, now: float) -> bytes:
        if not self._secrets or now - self._secrets[0][1] >= SECRET_LIFETIME:
            self._secrets.insert(0, (self._rng(32), now))
            del self._secrets[2:]
        return self._secrets[0][0]

    def check_mac2(self, packet: bytes, source: bytes, now: float) -> bool:
        """True if ``packet``'s mac2 was made with a cookie we gave ``source`` lately.

        Args:
            packet: a handshake packet whose mac1 already checked.
            source: the sender's address bytes (``guard.source_bytes``).
        """
        covered, mac2 = packet[:-MAC_LEN], packet[-MAC_LEN:]
        for secret, made_at in self._secrets:
            if now - made_at < 2 * SECRET_LIFETIME:
                cookie = compute_mac(secret, source)
                if hmac.compare_digest(compute_mac(cookie, covered), mac2):
                    return True
        return False

    def make_reply(self, packet: bytes, sender_index: int, source: bytes, now: float) -> bytes:
        """The cookie reply to ``packet`` (an initiation from ``source``), 49 bytes."""
        cookie = compute_mac(self._minting_secret(now), source)
        nonce = self._rng(NONCE_LEN)
        sealed = self._aead.encrypt(nonce, cookie, mac1_of(packet))
        return struct.pack(">BI", TYPE_COOKIE_REPLY, sender_index) + nonce + sealed


class CookieJar:
    """The initiator's side: the cookie a responder gave us, and mac2 from it.

    Args:
        their_x25519_public: the responder's static public key.
    """

    def __init__(self, their_x25519_public: bytes) -> None:
        self._aead = ChaCha20Poly1305(cookie_key(their_x25519_public))
        self._cookie: bytes | None = None
        self._received_at = 0.0

    def cookie(self, now: float) -> bytes | None:
        """The cookie to make mac2 with, or None when we hold no fresh one."""
        if self._cookie is None or now - self._received_at >= COOKIE_FRESH_FOR:
            return None
        return self._cookie

    def consume_reply_untrusted(self, packet: bytes, our_mac1: bytes, now: float) -> None:
        """Store the cookie of a reply to our packet whose mac1 was ``our_mac1``.

        The caller matched the reply's receiver index to that packet.

        Raises:
            DecodeError: not a cookie reply. AuthenticationError: not sealed for that
                packet (forged, or an answer to another of our packets).
        """
        check_cookie_reply_untrusted(packet)
        nonce = packet[5:5 + NONCE_LEN]
        try:
            cookie = self._aead.decrypt(nonce, packet[5 + NONCE_LEN:], our_mac1)
        except InvalidTag:
            raise AuthenticationError("cookie reply does not authenticate") from None
        self._cookie, self._received_at = cookie, now


def check_cookie_reply_untrusted(packet: bytes) -> None:
    """Check the size and type of a cookie reply.

    Raises:
        DecodeError: not exactly ``COOKIE_REPLY_LEN`` bytes of type 4.
    """
    if len(packet) != COOKIE_REPLY_LEN or packet[0] != TYPE_COOKIE_REPLY:
        raise DecodeError(f"not a cookie reply ({len(packet)} bytes)")
