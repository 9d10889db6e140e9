"""The Noise Protocol Framework, revision 34, generic over handshake patterns.

Owns: ``CipherState``, ``SymmetricState`` and ``HandshakeState`` exactly as the spec's
§5 objects, for DH ``25519``, cipher ``ChaChaPoly`` and hash ``BLAKE2s``, ``BLAKE2b``,
``SHA256`` or ``SHA512`` (primitives from ``cryptography`` and ``hashlib``; HMAC and HKDF
written out as spec §4.3 defines them).

How it works: the protocol name is parsed into a base pattern, psk modifiers and
primitives (``noise_patterns.py``). The base pattern is written in the spec's own
notation (§7.4 one-way, §7.5 fundamental, §7.6 deferred); psk modifiers are applied
with the §9.2 rule (``psk0`` starts the first message, ``pskN`` ends message N). Each
message is then a list of tokens that ``write_message``/``read_message`` walk.

Pre-shared keys may be given at construction or, for a pattern whose first psk token
comes after the first message (``KKpsk2``), later with ``set_psks``: hotline's responder
chooses its psk from what the initiator's first message names, and its initiator tries
each candidate psk on a ``copy()`` of the state when reading the response (DESIGN §11).
A psk token reached with no psk set raises ``LocalProtocolError``.

Untrusted input: ``read_message`` works on a snapshot of the state and only commits it
once the whole message, payload tag included, has verified, so a failed read leaves the
handshake exactly as it was (the peer, or an attacker, may retry; the spec allows this).
It raises only ``RemoteProtocolError`` subclasses: ``LimitError`` over 65535 bytes,
``DecodeError`` for a short message, ``AuthenticationError`` for a bad tag or a
low-order public key. Received public keys are checked for low order on arrival (one
X25519 with a fixed scalar: a clamped scalar is a multiple of 8, so the result is zero
exactly for small-order points), so no later DH can fail. ``CipherState`` likewise never
advances its nonce on a failed decrypt. Misuse by the caller (wrong turn, missing key,
unknown pattern) raises ``LocalProtocolError``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from hotline.errors import (
    AuthenticationError,
    DecodeError,
    LimitError,
    LocalProtocolError,
)
from hotline.proto.noise_patterns import parse_protocol_name

DHLEN = 32
KEYLEN = 32
TAGLEN = 16
PSKLEN = 32
MAX_MESSAGE = 65535  # spec §3: every Noise message is at most 65535 bytes
MAX_NONCE = 2**64 - 1  # spec §5.1: reserved, never used as a nonce

Rng = Callable[[int], bytes]

# --- primitives (spec §4) -------------------------------------------------------------

_HASHES = {"BLAKE2s": ("blake2s", 32), "BLAKE2b": ("blake2b", 64),
           "SHA256": ("sha256", 32), "SHA512": ("sha512", 64)}


@dataclass(frozen=True)
class _Hash:
    """HASH, HMAC-HASH and HKDF for one hash function (spec §4.3)."""

    name: str
    hashlen: int

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(self.name, data).digest()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.name).digest()

    def hkdf(self, chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
        """HKDF(chaining_key, input_key_material, num_outputs), spec §4.3."""
        temp_key = self.hmac(chaining_key, ikm)
        out = [self.hmac(temp_key, b"\x01")]
        for i in range(2, outputs + 1):
            out.append(self.hmac(temp_key, out[-1] + bytes([i])))
        return out


def x25519_public(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key (clamped as RFC 7748 says)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # all-zero output: a small-order public key
        raise AuthenticationError("X25519 with a low-order public key") from exc


_CHECK_SCALAR = bytes([9] * 32)


def _is_low_order(public: bytes) -> bool:
    try:
        _dh(_CHECK_SCALAR, public)
    except AuthenticationError:
        return True
    return False


def _nonce(n: int) -> bytes:
    return b"\x00" * 4 + n.to_bytes(8, "little")


# --- CipherState (spec §5.1) ----------------------------------------------------------


class CipherState:
    """A key ``k`` (or none) and a nonce ``n``; AEAD with ChaCha20-Poly1305."""

    def __init__(self, key: bytes | None = None, nonce: int = 0) -> None:
        if key is not None and len(key) != KEYLEN:
            raise LocalProtocolError("a cipher key is 32 bytes")
        self._key = key
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self.n = nonce

    @property
    def key(self) -> bytes | None:
        """The raw key, or None before one is set."""
        return self._key

    def has_key(self) -> bool:
        """True once a key is set."""
        return self._key is not None

    def set_nonce(self, nonce: int) -> None:
        """SetNonce: used by transports with explicit counters."""
        if not 0 <= nonce <= MAX_NONCE:
            raise LocalProtocolError("nonce out of range")
        self.n = nonce

    def copy(self) -> CipherState:
        """An independent copy (for snapshots)."""
        return CipherState(self._key, self.n)

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """EncryptWithAd: plaintext unchanged without a key, else AEAD and n += 1.

        Raises:
            LocalProtocolError: the nonce space is exhausted (n reached 2^64-1).
        """
        if self._aead is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("nonce exhausted: rekey or start a new session")
        out = self._aead.encrypt(_nonce(self.n), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """DecryptWithAd: n advances only when the tag verifies.

        Raises:
            DecodeError: shorter than a tag. AuthenticationError: bad tag.
            LimitError: the nonce space is exhausted.
        """
        if self._aead is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise LimitError("nonce exhausted")
        if len(ciphertext) < TAGLEN:
            raise DecodeError("ciphertext shorter than its tag")
        try:
            out = self._aead.decrypt(_nonce(self.n), ciphertext, ad)
        except InvalidTag as exc:
            raise AuthenticationError("AEAD tag mismatch") from exc
        self.n += 1
        return out

    def rekey(self) -> None:
        """Rekey(): k = first 32 bytes of ENCRYPT(k, maxnonce, empty, zeros) (spec §4.2)."""
        if self._aead is None:
            raise LocalProtocolError("rekey without a key")
        key = self._aead.encrypt(_nonce(MAX_NONCE), b"\x00" * KEYLEN, b"")[:KEYLEN]
        self._key, self._aead = key, ChaCha20Poly1305(key)


# --- SymmetricState (spec §5.2) -------------------------------------------------------


class SymmetricState:
    """Chaining key ``ck``, handshake hash ``h`` and a CipherState."""

    def __init__(self, protocol_name: bytes, hash_name: str) -> None:
        if hash_name not in _HASHES:
            raise LocalProtocolError(f"unsupported hash {hash_name!r}")
        self.hash = _Hash(*_HASHES[hash_name])
        if len(protocol_name) <= self.hash.hashlen:
            self.h = protocol_name.ljust(self.hash.hashlen, b"\x00")
        else:
            self.h = self.hash.digest(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def copy(self) -> SymmetricState:
        """An independent copy (for snapshots)."""
        other = SymmetricState.__new__(SymmetricState)
        other.hash, other.h, other.ck = self.hash, self.h, self.ck
        other.cipher = self.cipher.copy()
        return other

    def _truncate(self, key: bytes) -> bytes:
        return key[:KEYLEN]  # spec §5.2: 64-byte hashes truncate temp_k to 32 bytes

    def mix_key(self, ikm: bytes) -> None:
        """MixKey."""
        self.ck, temp_k = self.hash.hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(self._truncate(temp_k))

    def mix_hash(self, data: bytes) -> None:
        """MixHash."""
        self.h = self.hash.digest(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        """MixKeyAndHash (psk tokens)."""
        self.ck, temp_h, temp_k = self.hash.hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(self._truncate(temp_k))

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """EncryptAndHash."""
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """DecryptAndHash (raises AuthenticationError/DecodeError; h unchanged then)."""
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Split(): the two transport CipherStates (initiator sends with the first)."""
        k1, k2 = self.hash.hkdf(self.ck, b"", 2)
        return CipherState(self._truncate(k1)), CipherState(self._truncate(k2))


# --- HandshakeState (spec §5.3) -------------------------------------------------------


@dataclass
class _Keys:
    """The four DH keys plus the psk queue: the part of the state a read may change."""

    s: bytes | None  # private
    e: bytes | None  # private
    rs: bytes | None  # public
    re: bytes | None  # public


class HandshakeState:
    """One side of a Noise handshake.

    Args:
        protocol_name: e.g. ``"Noise_KK_25519_ChaChaPoly_BLAKE2s"``.
        initiator: our role.
        prologue: bytes both sides must agree on (mixed into h).
        s, e: our static / ephemeral 32-byte X25519 private keys (``e`` only to pin
            test vectors; normally generated from ``rng`` when the pattern needs it).
        rs, re: the peer's public keys known in advance (pre-messages).
        psks: 32-byte pre-shared keys, consumed in token order; None: given later
            with ``set_psks`` (before the first psk token is processed).
        rng: randomness source for ephemeral keys.

    Raises:
        LocalProtocolError: unsupported name, a key the pattern needs is missing, a key
            it learns from the wire is supplied, or a wrong psk count or length.
    """

    def __init__(self, protocol_name: str, initiator: bool, prologue: bytes, *,
                 s: bytes | None = None, e: bytes | None = None,
                 rs: bytes | None = None, re: bytes | None = None,
                 psks: Sequence[bytes] | None = (), rng: Rng) -> None:
        self.pattern, hash_name = parse_protocol_name(protocol_name)
        self.initiator = initiator
        self._rng = rng
        self._keys = _Keys(s, e, rs, re)
        self._symmetric = SymmetricState(protocol_name.encode("ascii"), hash_name)
        self._psks: list[bytes] | None = None
        self._index = 0  # next message to write or read
        self._check_keys()
        if psks is not None:
            self.set_psks(psks)
        self._symmetric.mix_hash(prologue)
        self._mix_pre_messages()

    # -- construction helpers

    def _check_keys(self) -> None:
        for key in (self._keys.s, self._keys.e, self._keys.rs, self._keys.re):
            if key is not None and len(key) != DHLEN:
                raise LocalProtocolError("X25519 keys are 32 bytes")
        for key in (self._keys.rs, self._keys.re):
            if key is not None and _is_low_order(key):
                raise LocalProtocolError("remote public key is of low order")
        ours, theirs = self._pre_tokens()
        if "s" in ours or self._sends_token("s", mine=True):
            self._require(self._keys.s, "our static key s")
        for token, key in (("s", self._keys.rs), ("e", self._keys.re)):
            if token in theirs:
                self._require(key, f"the peer's pre-message key r{token}")
            elif key is not None:
                raise LocalProtocolError(f"r{token} is not a pre-message of this pattern")

    def set_psks(self, psks: Sequence[bytes]) -> None:
        """Set (or replace) the psks of the messages not written or read yet, in order.

        Raises:
            LocalProtocolError: a wrong psk count or length for those messages.
        """
        needed = sum(m.count("psk") for m in self.pattern.messages[self._index:])
        if len(psks) != needed or any(len(p) != PSKLEN for p in psks):
            raise LocalProtocolError(f"pattern needs {needed} psks of 32 bytes")
        self._psks = list(psks)

    @staticmethod
    def _require(key: bytes | None, what: str) -> None:
        if key is None:
            raise LocalProtocolError(f"pattern needs {what}")

    def _pre_tokens(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        p = self.pattern
        return (p.initiator_pre, p.responder_pre) if self.initiator \
            else (p.responder_pre, p.initiator_pre)

    def _sends_token(self, token: str, *, mine: bool) -> bool:
        return any(token in m for i, m in enumerate(self.pattern.messages)
                   if (i % 2 == 0) == (self.initiator == mine))

    def _mix_pre_messages(self) -> None:
        # Spec §5.3: the initiator's pre-message keys are hashed first, then the responder's.
        ours, theirs = self._pre_tokens()
        k = self._keys
        mine = {"s": _public_or_none(k.s), "e": _public_or_none(k.e)}
        peer = {"s": k.rs, "e": k.re}
        order = [(ours, mine), (theirs, peer)] if self.initiator else [(theirs, peer), (ours, mine)]
        for tokens, keys in order:
            for token in tokens:
                public = keys[token]
                self._require(public, f"pre-message key {token}")
                assert public is not None
                self._symmetric.mix_hash(public)
                if token == "e" and self.pattern.psk:
                    self._symmetric.mix_key(public)

    # -- public state

    @property
    def complete(self) -> bool:
        """True once every handshake message has been written or read."""
        return self._index >= len(self.pattern.messages)

    @property
    def handshake_hash(self) -> bytes:
        """h: after completion, a unique id for the session (channel binding)."""
        return self._symmetric.h

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key (pinned or learnt), if known yet."""
        return self._keys.rs

    @property
    def remote_ephemeral(self) -> bytes | None:
        """The peer's ephemeral public key, if received yet."""
        return self._keys.re

    def is_my_turn(self) -> bool:
        """True when the next handshake message is ours to write."""
        return not self.complete and (self._index % 2 == 0) == self.initiator

    # -- writing

    def write_message(self, payload: bytes = b"") -> bytes:
        """WriteMessage: the next handshake message carrying ``payload``.

        Raises:
            LocalProtocolError: not our turn, handshake complete, or over 65535 bytes.
        """
        if not self.is_my_turn():
            raise LocalProtocolError("not our turn to write a handshake message")
        self._check_psks_for(self.pattern.messages[self._index])
        out = bytearray()
        for token in self.pattern.messages[self._index]:
            out += self._write_token(token)
        out += self._symmetric.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE:
            raise LocalProtocolError("handshake message over 65535 bytes")
        self._index += 1
        return bytes(out)

    def _write_token(self, token: str) -> bytes:
        sym, k = self._symmetric, self._keys
        if token == "e":
            if k.e is None:
                k.e = self._rng(DHLEN)
            public = x25519_public(k.e)
            sym.mix_hash(public)
            if self.pattern.psk:
                sym.mix_key(public)
            return public
        if token == "s":
            assert k.s is not None
            return sym.encrypt_and_hash(x25519_public(k.s))
        if token == "psk":
            sym.mix_key_and_hash(self._next_psk())
            return b""
        sym.mix_key(self._dh_token(token))
        return b""

    def _dh_token(self, token: str) -> bytes:
        # Spec §5.3: "es" is DH(e, rs) for the initiator, DH(s, re) for the responder.
        k = self._keys
        ours, theirs = token[0], token[1]
        if not self.initiator:
            ours, theirs = theirs, ours
        private = k.e if ours == "e" else k.s
        public = k.re if theirs == "e" else k.rs
        if private is None or public is None:
            raise LocalProtocolError(f"token {token} without its keys")
        return _dh(private, public)

    # -- reading

    def read_message(
        self, message: bytes, check: Callable[[bytes], object] | None = None
    ) -> bytes:
        """ReadMessage on untrusted bytes; returns the payload.

        On any error the handshake state is left exactly as before the call — also when
        ``check(payload)`` (the caller's validation of the decrypted payload) raises.

        Raises:
            LimitError: over 65535 bytes. DecodeError: too short for the pattern.
            AuthenticationError: a tag does not verify or a public key is of low order.
            LocalProtocolError: it is our turn to write, or the handshake is complete.
        """
        if self.complete or self.is_my_turn():
            raise LocalProtocolError("not expecting a handshake message now")
        if len(message) > MAX_MESSAGE:
            raise LimitError("handshake message over 65535 bytes")
        tokens = self.pattern.messages[self._index]
        self._check_psks_for(tokens)
        if len(message) < self._min_length(tokens):
            raise DecodeError("handshake message too short")
        saved = (self._symmetric.copy(), _Keys(**vars(self._keys)), self._psks_copy())
        try:
            payload = self._read_tokens(tokens, memoryview(message))
            if check is not None:
                check(payload)
        except BaseException:
            self._symmetric, self._keys, self._psks = saved
            raise
        self._index += 1
        return payload

    def _min_length(self, tokens: Sequence[str]) -> int:
        keyed, length = self._symmetric.cipher.has_key(), 0
        for token in tokens:
            if token == "e":
                length += DHLEN
                keyed = keyed or self.pattern.psk
            elif token == "s":
                length += DHLEN + (TAGLEN if keyed else 0)
            else:
                keyed = True
        return length + (TAGLEN if keyed else 0)

    def _read_tokens(self, tokens: Sequence[str], rest: memoryview) -> bytes:
        sym, k = self._symmetric, self._keys
        for token in tokens:
            if token == "e":
                k.re, rest = _take_public(rest[:DHLEN]), rest[DHLEN:]
                sym.mix_hash(k.re)
                if self.pattern.psk:
                    sym.mix_key(k.re)
            elif token == "s":
                n = DHLEN + (TAGLEN if sym.cipher.has_key() else 0)
                k.rs, rest = _take_public(sym.decrypt_and_hash(bytes(rest[:n]))), rest[n:]
            elif token == "psk":
                sym.mix_key_and_hash(self._next_psk())
            else:
                sym.mix_key(self._dh_token(token))
        return sym.decrypt_and_hash(bytes(rest))

    def _check_psks_for(self, tokens: Sequence[str]) -> None:
        """Before a message is touched: its psk tokens have psks (a write is not undone)."""
        if tokens.count("psk") > len(self._psks or ()):
            raise LocalProtocolError("a psk token with no psk set (set_psks)")

    def _next_psk(self) -> bytes:
        assert self._psks
        return self._psks.pop(0)

    def _psks_copy(self) -> list[bytes] | None:
        return None if self._psks is None else list(self._psks)

    # -- finishing

    def copy(self) -> HandshakeState:
        """An independent copy: e.g. to try reading one message with several psks."""
        other = HandshakeState.__new__(HandshakeState)
        other.pattern, other.initiator, other._rng = self.pattern, self.initiator, self._rng
        other._keys = _Keys(**vars(self._keys))
        other._symmetric = self._symmetric.copy()
        other._psks = self._psks_copy()
        other._index = self._index
        return other

    def split(self) -> tuple[CipherState, CipherState]:
        """Split(): (c1, c2); the initiator sends with c1, the responder with c2.

        Raises:
            LocalProtocolError: the handshake is not complete.
        """
        if not self.complete:
            raise LocalProtocolError("split before the handshake is complete")
        return self._symmetric.split()


def _public_or_none(private: bytes | None) -> bytes | None:
    return None if private is None else x25519_public(private)


def _take_public(data: bytes | memoryview) -> bytes:
    public = bytes(data)
    if len(public) != DHLEN:
        raise DecodeError("truncated public key")
    if _is_low_order(public):
        raise AuthenticationError("low-order public key")
    return public
