"""noise.py behaviour the vectors do not cover: failures, misuse, limits, fuzz."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.errors import (
    AuthenticationError,
    DecodeError,
    LimitError,
    LocalProtocolError,
    RemoteProtocolError,
)
from hotline.proto import noise_patterns
from hotline.proto.noise import MAX_NONCE, CipherState, HandshakeState, x25519_public

KK = "Noise_KK_25519_ChaChaPoly_BLAKE2s"
S_I, S_R = bytes(range(1, 33)), bytes(range(33, 65))


def _kk() -> tuple[HandshakeState, HandshakeState]:
    init = HandshakeState(KK, True, b"p", s=S_I, rs=x25519_public(S_R), rng=os.urandom)
    resp = HandshakeState(KK, False, b"p", s=S_R, rs=x25519_public(S_I), rng=os.urandom)
    return init, resp


def test_pattern_table_alternates_from_the_initiator() -> None:
    for name, text in noise_patterns._PATTERNS.items():
        parts = [p.strip() for p in text.split(";")]
        messages = parts[parts.index("...") + 1:] if "..." in parts else parts
        for i, message in enumerate(messages):
            assert message.startswith("->" if i % 2 == 0 else "<-"), name


def test_failed_read_leaves_state_unchanged() -> None:
    init, resp = _kk()
    msg = init.write_message(b"hello")
    before = resp.handshake_hash
    for bad in (msg[:-1] + bytes([msg[-1] ^ 1]), msg[:40], bytes(32) + msg[32:]):
        with pytest.raises(RemoteProtocolError):
            resp.read_message(bad)
        assert resp.handshake_hash == before
        assert resp.remote_ephemeral is None
    assert resp.read_message(msg) == b"hello"
    assert init.read_message(resp.write_message(b"")) == b""
    assert init.handshake_hash == resp.handshake_hash


def test_short_and_oversize_messages() -> None:
    _, resp = _kk()
    with pytest.raises(DecodeError):
        resp.read_message(bytes(32 + 15))  # e + less than a tag
    with pytest.raises(LimitError):
        resp.read_message(bytes(65536))


def test_low_order_ephemeral_rejected() -> None:
    init = HandshakeState("Noise_NN_25519_ChaChaPoly_SHA256", True, b"", rng=os.urandom)
    resp = HandshakeState("Noise_NN_25519_ChaChaPoly_SHA256", False, b"", rng=os.urandom)
    with pytest.raises(AuthenticationError):
        resp.read_message(bytes(32))  # the point u = 0
    resp.read_message(init.write_message(b""))


def test_misuse_raises_local_errors() -> None:
    init, resp = _kk()
    with pytest.raises(LocalProtocolError):
        resp.write_message(b"")  # not its turn
    with pytest.raises(LocalProtocolError):
        init.read_message(b"x" * 48)
    with pytest.raises(LocalProtocolError):
        init.split()
    with pytest.raises(LocalProtocolError):
        HandshakeState("Noise_ZZ_25519_ChaChaPoly_BLAKE2s", True, b"", rng=os.urandom)
    with pytest.raises(LocalProtocolError):
        HandshakeState("Noise_KK_448_ChaChaPoly_BLAKE2s", True, b"", rng=os.urandom)
    with pytest.raises(LocalProtocolError):  # KK needs rs
        HandshakeState(KK, True, b"", s=S_I, rng=os.urandom)
    with pytest.raises(LocalProtocolError):  # XX learns rs from the wire
        HandshakeState("Noise_XX_25519_ChaChaPoly_BLAKE2s", True, b"", s=S_I,
                       rs=x25519_public(S_R), rng=os.urandom)
    with pytest.raises(LocalProtocolError):  # psk count
        HandshakeState("Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s", True, b"", rng=os.urandom)
    with pytest.raises(LocalProtocolError):  # psk past the last message
        HandshakeState("Noise_NNpsk3_25519_ChaChaPoly_BLAKE2s", True, b"",
                       psks=[bytes(32)], rng=os.urandom)
    with pytest.raises(LocalProtocolError):
        init.write_message(bytes(65536))


def test_multiple_psk_modifiers() -> None:
    name = "Noise_XXpsk0+psk3_25519_ChaChaPoly_BLAKE2b"
    psks = [os.urandom(32), os.urandom(32)]
    init = HandshakeState(name, True, b"", s=S_I, psks=psks, rng=os.urandom)
    resp = HandshakeState(name, False, b"", s=S_R, psks=psks, rng=os.urandom)
    assert init.pattern.messages[0][0] == "psk"
    assert init.pattern.messages[2][-1] == "psk"
    for i in range(3):
        a, b = (init, resp) if i % 2 == 0 else (resp, init)
        assert b.read_message(a.write_message(b"m%d" % i)) == b"m%d" % i
    assert resp.remote_static == x25519_public(S_I)
    wrong = HandshakeState(name, False, b"", s=S_R, psks=[psks[0], bytes(32)], rng=os.urandom)
    init2 = HandshakeState(name, True, b"", s=S_I, psks=psks, rng=os.urandom)
    wrong.read_message(init2.write_message(b""))
    init2.read_message(wrong.write_message(b""))
    with pytest.raises(AuthenticationError):
        wrong.read_message(init2.write_message(b""))


def test_failed_decrypt_does_not_advance_nonce() -> None:
    key = os.urandom(32)
    sender, receiver = CipherState(key), CipherState(key)
    first = sender.encrypt_with_ad(b"ad", b"one")
    with pytest.raises(AuthenticationError):
        receiver.decrypt_with_ad(b"other ad", first)
    with pytest.raises(DecodeError):
        receiver.decrypt_with_ad(b"ad", first[:15])
    assert receiver.n == 0
    assert receiver.decrypt_with_ad(b"ad", first) == b"one"
    assert receiver.n == 1


def test_nonce_layout_and_max_nonce() -> None:
    key = os.urandom(32)
    cs = CipherState(key)
    cs.set_nonce(0x0102030405060708)
    expected = ChaCha20Poly1305(key).encrypt(
        b"\x00" * 4 + bytes.fromhex("0807060504030201"), b"x", b"")
    assert cs.encrypt_with_ad(b"", b"x") == expected
    cs.set_nonce(MAX_NONCE)
    with pytest.raises(LocalProtocolError):
        cs.encrypt_with_ad(b"", b"x")
    with pytest.raises(LimitError):
        cs.decrypt_with_ad(b"", bytes(16))
    with pytest.raises(LocalProtocolError):
        cs.set_nonce(MAX_NONCE + 1)


def test_rekey_follows_spec() -> None:
    key = os.urandom(32)
    a, b = CipherState(key), CipherState(key)
    a.rekey()
    b.rekey()
    expected = ChaCha20Poly1305(key).encrypt(b"\x00" * 4 + b"\xff" * 8, bytes(32), b"")[:32]
    assert a.key == expected
    assert b.decrypt_with_ad(b"", a.encrypt_with_ad(b"", b"after")) == b"after"
    with pytest.raises(LocalProtocolError):
        CipherState().rekey()


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["KK", "IK", "XX", "NKpsk2", "I1X1"]), data=st.binary(max_size=200))
def test_fuzz_first_message(name: str, data: bytes) -> None:
    protocol = f"Noise_{name}_25519_ChaChaPoly_BLAKE2s"
    pattern = noise_patterns.parse_protocol_name(protocol)[0]
    kwargs: dict[str, object] = {}
    if "s" in pattern.responder_pre or any("s" in m for m in pattern.messages[1::2]):
        kwargs["s"] = S_R
    if "s" in pattern.initiator_pre:
        kwargs["rs"] = x25519_public(S_I)
    if pattern.psk:
        kwargs["psks"] = [bytes(32)]
    resp = HandshakeState(protocol, False, b"", rng=os.urandom, **kwargs)  # type: ignore[arg-type]
    before = resp.handshake_hash
    try:
        resp.read_message(data)
    except RemoteProtocolError:
        assert resp.handshake_hash == before
    else:  # only a first message without any key (XX, I1X1: "e" or "e, s") can pass
        assert not {"ee", "es", "se", "ss", "psk"} & set(pattern.messages[0])


def test_late_psk_misuse_raises_local_errors() -> None:
    kkpsk2 = "Noise_KKpsk2_25519_ChaChaPoly_BLAKE2s"
    init = HandshakeState(kkpsk2, True, b"", s=S_I, rs=x25519_public(S_R), psks=None,
                          rng=os.urandom)
    resp = HandshakeState(kkpsk2, False, b"", s=S_R, rs=x25519_public(S_I), psks=None,
                          rng=os.urandom)
    resp.read_message(init.write_message(b""))  # message 1 needs no psk
    with pytest.raises(LocalProtocolError, match="no psk"):
        resp.write_message(b"")
    with pytest.raises(LocalProtocolError, match="psks of 32 bytes"):
        resp.set_psks([bytes(32), bytes(32)])
    with pytest.raises(LocalProtocolError, match="psks of 32 bytes"):
        resp.set_psks([bytes(31)])
    resp.set_psks([bytes(32)])
    response = resp.write_message(b"")
    with pytest.raises(LocalProtocolError, match="no psk"):
        init.read_message(response)
    assert not init.complete  # the failed read changed nothing
    init.set_psks([bytes(32)])
    init.read_message(response)
    assert init.handshake_hash == resp.handshake_hash
