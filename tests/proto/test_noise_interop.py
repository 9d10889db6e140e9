"""Our Noise against an independent implementation (the ``noiseprotocol`` package).

Full Noise_KK and Noise_KKpsk2 (hotline's pattern, DESIGN §11) handshakes with prologue
``b"hotline/1"``, then transport messages both ways, with our side in each role. For
KKpsk2 our side gets its psk only after the first message, as hotline does.
"""

from __future__ import annotations

import os

import pytest
from noise.connection import Keypair, NoiseConnection

from hotline.errors import AuthenticationError
from hotline.proto.noise import HandshakeState, x25519_public

PROTOCOL = "Noise_KK_25519_ChaChaPoly_BLAKE2s"
PSK_PROTOCOL = "Noise_KKpsk2_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"hotline/1"


def _theirs(initiator: bool, s: bytes, rs: bytes, protocol: str = PROTOCOL,
            psk: bytes | None = None) -> NoiseConnection:
    conn = NoiseConnection.from_name(protocol.encode())
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, s)
    conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, rs)
    conn.set_prologue(PROLOGUE)
    if psk is not None:
        conn.set_psks(psk=psk)
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


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiator", "ours-responder"])
def test_kkpsk2_handshake_with_a_late_psk_and_transport_interop(we_initiate: bool) -> None:
    our_s, their_s, psk = os.urandom(32), os.urandom(32), os.urandom(32)
    ours = HandshakeState(PSK_PROTOCOL, we_initiate, PROLOGUE, s=our_s,
                          rs=x25519_public(their_s), psks=None, rng=os.urandom)
    theirs = _theirs(not we_initiate, their_s, x25519_public(our_s), PSK_PROTOCOL, psk)
    if we_initiate:
        assert theirs.read_message(ours.write_message(b"ids")) == b"ids"
        ours.set_psks([psk])
        assert ours.read_message(theirs.write_message(b"")) == b""
    else:
        assert ours.read_message(theirs.write_message(b"ids")) == b"ids"
        ours.set_psks([psk])
        assert theirs.read_message(ours.write_message(b"")) == b""
    assert ours.handshake_hash == theirs.get_handshake_hash()
    c1, c2 = ours.split()
    send, recv = (c1, c2) if we_initiate else (c2, c1)
    assert theirs.decrypt(send.encrypt_with_ad(b"", b"ours")) == b"ours"
    assert recv.decrypt_with_ad(b"", theirs.encrypt(b"theirs")) == b"theirs"


def test_kkpsk2_initiator_tries_psks_on_copies() -> None:
    """hotline's initiator reads the response once per candidate psk, each on a copy:
    a wrong psk fails its copy only, and the right one then completes the handshake."""
    our_s, their_s, psk = os.urandom(32), os.urandom(32), os.urandom(32)
    ours = HandshakeState(PSK_PROTOCOL, True, PROLOGUE, s=our_s, rs=x25519_public(their_s),
                          psks=None, rng=os.urandom)
    theirs = _theirs(False, their_s, x25519_public(our_s), PSK_PROTOCOL, psk)
    theirs.read_message(ours.write_message(b""))
    response = theirs.write_message(b"ok")
    wrong = ours.copy()
    wrong.set_psks([os.urandom(32)])
    with pytest.raises(AuthenticationError):
        wrong.read_message(response)
    right = ours.copy()
    right.set_psks([psk])
    assert right.read_message(response) == b"ok"
    assert right.handshake_hash == theirs.get_handshake_hash()
    assert not ours.complete  # the original is untouched by its copies
