"""Our Noise against an independent implementation (the ``noiseprotocol`` package).

A full Noise_KK_25519_ChaChaPoly_BLAKE2s handshake with prologue ``b"hotline/1"``,
then transport messages both ways, with our side in each role.
"""

from __future__ import annotations

import os

import pytest
from noise.connection import Keypair, NoiseConnection

from hotline.proto.noise import HandshakeState, x25519_public

PROTOCOL = "Noise_KK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"hotline/1"


def _theirs(initiator: bool, s: bytes, rs: bytes) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL.encode())
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, s)
    conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, rs)
    conn.set_prologue(PROLOGUE)
    conn.start_handshake()
    return conn


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiator", "ours-responder"])
def test_kk_handshake_and_transport_interop(we_initiate: bool) -> None:
    our_s, their_s = os.urandom(32), os.urandom(32)
    ours = HandshakeState(PROTOCOL, we_initiate, PROLOGUE, s=our_s,
                          rs=x25519_public(their_s), rng=os.urandom)
    theirs = _theirs(not we_initiate, their_s, x25519_public(our_s))

    payloads = [b"first", b""]
    for i, payload in enumerate(payloads):
        if (i % 2 == 0) == we_initiate:
            assert theirs.read_message(ours.write_message(payload)) == payload
        else:
            assert ours.read_message(theirs.write_message(payload)) == payload
    assert ours.complete
    assert theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()

    c1, c2 = ours.split()
    send, recv = (c1, c2) if we_initiate else (c2, c1)
    for n in range(5):
        msg = b"ours %d" % n
        assert theirs.decrypt(send.encrypt_with_ad(b"", msg)) == msg
        reply = b"theirs %d" % n * n
        assert recv.decrypt_with_ad(b"", theirs.encrypt(reply)) == reply
