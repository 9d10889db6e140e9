"""X25519 is broken: a recorded session after the first ratchet step stays secret.

The attacker of DESIGN §11 records every packet between two endpoints today, and later
holds both static X25519 private keys and every ephemeral X25519 private key the two
ends ever drew (a recording rng hands them over). It can then redo every
Diffie-Hellman, so the first session — keyed without ``psk_file`` and before any
ratchet step — is open to it, KEM offer and reply included. What it cannot get is the
ML-KEM shared secret. The second session's transport keys, derived with a zero or a
wrong ML-KEM secret, open none of that session's recorded packets; derived with the
true one (decapsulated here with the ML-KEM key from the recorded seed, which the
attacker does not have) they open every one, the message sent in it included.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey

from hotline.errors import AuthenticationError
from hotline.proto.frames import KemOffer, KemReply, decode_frame_untrusted
from hotline.proto.framing import TAG_BUNDLE, Reassembler, unbundle_untrusted
from hotline.proto.handshake import PROLOGUE, PROTOCOL_NAME
from hotline.proto.identity import Identity
from hotline.proto.link import LinkSettings
from hotline.proto.noise import HandshakeState, x25519_public
from hotline.proto.packet import TransportOpener
from hotline.proto.pq import MLKEM_SEED_LEN, next_ratchet, psk_of
from hotline.proto.requests import SendRequest
from hotline.testing.endpoints import NodePair

REKEY = 5.0
SECRET = b"meet at the bridge at dawn"


class RecordingRng:
    """Hands out its inner rng's bytes and keeps a copy of each draw."""

    def __init__(self, inner: Callable[[int], bytes]) -> None:
        self.inner = inner
        self.drawn: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = self.inner(n)
        self.drawn.append(out)
        return out


@dataclass
class Recorded:
    """One handshake as seen on the wire, with who answered it."""

    initiation: bytes
    response: bytes
    initiator: Identity
    responder: Identity

    @property
    def indexes(self) -> tuple[int, int]:
        """(the responder's index, the initiator's index): transport packets name them."""
        responder, initiator = struct.unpack(">II", self.response[1:9])
        return responder, initiator


def _handshakes(wire: list[tuple[str, bytes]], ids: dict[str, Identity]) -> list[Recorded]:
    initiations = {p[1:5]: p for _, p in wire if p[0] == 1}
    out = []
    for src, packet in wire:
        if packet[0] == 2 and packet[5:9] in initiations:
            other = "b" if src == "a" else "a"
            out.append(Recorded(initiations[packet[5:9]], packet, ids[other], ids[src]))
    return out


def _transport(wire: list[tuple[str, bytes]], index: int) -> list[bytes]:
    return [p for _, p in wire if p[0] == 3 and struct.unpack(">I", p[1:5])[0] == index]


def _keys(hs: Recorded, ephemerals: dict[bytes, bytes], psk: bytes) -> tuple[
        bytes, bytes, bytes]:
    """What the attacker computes: the responder's side replayed with its static and
    ephemeral private keys and a guessed psk. Returns (key to responder, key to
    initiator, handshake hash)."""
    state = HandshakeState(PROTOCOL_NAME, False, PROLOGUE, s=hs.responder.x25519_private(),
                           e=ephemerals[hs.response[9:41]], rs=hs.initiator.public.x25519(),
                           psks=[psk], rng=os.urandom)
    state.read_message(hs.initiation[5:-32])
    state.write_message(b"\x92\x01\xce" + hs.response[1:5])  # [1, responder index]
    to_responder, to_initiator = state.split()
    assert to_responder.key is not None
    assert to_initiator.key is not None
    return to_responder.key, to_initiator.key, state.handshake_hash


def _open_all(hs: Recorded, wire: list[tuple[str, bytes]], keys: tuple[bytes, bytes, bytes]
              ) -> list[bytes]:
    """Every transport packet of the session, opened (AuthenticationError if one fails)."""
    to_responder, to_initiator, _ = keys
    responder_index, initiator_index = hs.indexes
    out = []
    for key, index in ((to_responder, responder_index), (to_initiator, initiator_index)):
        opener = TransportOpener(key)
        out.extend(opener.open_untrusted(p) for p in _transport(wire, index))
    return out


def _frames(plaintexts: list[bytes]) -> list[object]:
    reassembler, frames = Reassembler(1 << 20), []
    for plaintext in plaintexts:
        if plaintext[:1] == bytes([TAG_BUNDLE]):
            frames.extend(unbundle_untrusted(plaintext))
        else:
            whole = reassembler.add_untrusted(plaintext, 0.0)
            frames.extend([] if whole is None else [whole])
    return [decode_frame_untrusted(f, 65536) for f in frames]


def test_x25519_broken_cannot_read_the_session_after_the_ratchet(tmp_path: Path) -> None:
    pair = NodePair(tmp_path, link=LinkSettings(rekey_after=REKEY))
    recorders = []
    for node in pair.nodes:
        node.rng = recorder = RecordingRng(node.rng)
        recorders.append(recorder)
        node.crash(pair.now)  # reopen with the recording rng (nothing was sent yet)
    wire: list[tuple[str, bytes]] = []

    def record(src: str, _path: int, packet: bytes) -> bool:
        wire.append((src, packet))
        return False

    pair.drop = record
    pair.run(REKEY + 1.0)
    assert [n.endpoint.status(pair.now).pq for n in pair.nodes] == [True, True]
    pair.a.call(SendRequest("text/plain", (SECRET,)))
    pair.run(1.0)
    pair.close()

    # --- the attacker: every X25519 private key, every packet -------------------------
    drawn = [d for r in recorders for d in r.drawn]
    ephemerals = {x25519_public(d): d for d in drawn if len(d) == 32}
    ids = {"a": pair.a.identity, "b": pair.b.identity}
    sessions = [hs for hs in _handshakes(wire, ids)
                if any(_transport(wire, i) for i in hs.indexes)]
    first, second = sessions[0], sessions[1]

    base = _keys(first, ephemerals, psk_of(None, None))
    opened = _frames(_open_all(first, wire, base))  # the classical session is open to it
    (offer,) = {f for f in opened if isinstance(f, KemOffer)}
    (reply,) = {f for f in opened if isinstance(f, KemReply)}

    for guess in (bytes(32), os.urandom(32)):
        wrong = _keys(second, ephemerals, psk_of(None, next_ratchet(None, guess, base[2])))
        with pytest.raises(AuthenticationError):
            _open_all(second, wire, wrong)
        for key, index in zip(wrong[:2], second.indexes, strict=True):
            for packet in _transport(wire, index):
                with pytest.raises(AuthenticationError):
                    TransportOpener(key).open_untrusted(packet)

    # --- what it lacks: the ML-KEM secret (here from the offering end's recorded seed) --
    (seed,) = [d for d in drawn if len(d) == MLKEM_SEED_LEN and MLKEM768PrivateKey
               .from_seed_bytes(d).public_key().public_bytes_raw() == offer.public_key]
    kem_secret = MLKEM768PrivateKey.from_seed_bytes(seed).decapsulate(reply.ciphertext)
    right = _keys(second, ephemerals, psk_of(None, next_ratchet(None, kem_secret, base[2])))
    plaintexts = _open_all(second, wire, right)
    assert len(plaintexts) > 3
    assert any(SECRET in p for p in plaintexts)
