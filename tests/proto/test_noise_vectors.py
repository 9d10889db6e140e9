"""Noise rev 34 test vectors (cacophony): every 25519/ChaChaPoly vector, all four hashes.

The vector file lives in the repository, ``tests/vectors/cacophony.txt`` (source,
licence and format in that directory's README); its SHA-256 is checked, and a missing
or altered file fails the suite rather than skipping it. Each vector runs both sides
of the handshake with the fixed ephemerals and checks every ciphertext byte for byte,
every payload, the handshake hash, then the transport messages.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from hotline.proto.noise import CipherState, HandshakeState

VECTOR_FILE = Path(__file__).resolve().parents[1] / "vectors" / "cacophony.txt"
VECTOR_SHA256 = "3bde7c09a6f349ee11c825c50fcc02649f8f02a47c857a459206b357f9386cae"
NAME = re.compile(r"Noise_[A-Za-z0-9]+_25519_ChaChaPoly_(BLAKE2s|BLAKE2b|SHA256|SHA512)")
EXPECTED_COUNT = 236


def _load() -> list[dict[str, Any]]:
    """The usable vectors; none if the file is missing (then the tests below fail)."""
    if not VECTOR_FILE.is_file():
        return []
    data = json.loads(VECTOR_FILE.read_bytes())
    return [v for v in data["vectors"] if NAME.fullmatch(v["protocol_name"])]


VECTORS = _load()


def test_vector_file_is_the_published_one() -> None:
    assert VECTOR_FILE.is_file(), f"{VECTOR_FILE} is missing: the Noise vectors cannot run"
    assert hashlib.sha256(VECTOR_FILE.read_bytes()).hexdigest() == VECTOR_SHA256


def test_every_usable_vector_is_collected() -> None:
    assert len(VECTORS) == EXPECTED_COUNT


def _key(vector: dict[str, Any], field: str) -> bytes | None:
    return bytes.fromhex(vector[field]) if field in vector else None


def _side(vector: dict[str, Any], prefix: str, initiator: bool,
          late_psks: bool = False) -> HandshakeState:
    def no_rng(n: int) -> bytes:
        raise AssertionError("vectors fix every ephemeral")

    psks = [bytes.fromhex(p) for p in vector.get(f"{prefix}_psks", [])]
    return HandshakeState(
        vector["protocol_name"], initiator, bytes.fromhex(vector[f"{prefix}_prologue"]),
        s=_key(vector, f"{prefix}_static"), e=_key(vector, f"{prefix}_ephemeral"),
        rs=_key(vector, f"{prefix}_remote_static"), psks=None if late_psks else psks,
        rng=no_rng,
    )


def _run_handshake(vector: dict[str, Any], init: HandshakeState, resp: HandshakeState) -> int:
    n = len(init.pattern.messages)
    for i, msg in enumerate(vector["messages"][:n]):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        payload = bytes.fromhex(msg["payload"])
        ciphertext = writer.write_message(payload)
        assert ciphertext.hex() == msg["ciphertext"], f"handshake message {i}"
        assert reader.read_message(ciphertext) == payload
    assert init.complete
    assert resp.complete
    expected = bytes.fromhex(vector["handshake_hash"])
    assert init.handshake_hash == expected
    assert resp.handshake_hash == expected
    return n


def _run_transport(vector: dict[str, Any], start: int, pairs: tuple[CipherState, ...],
                   one_way: bool) -> None:
    i_send, i_recv, r_send, r_recv = pairs
    for i, msg in enumerate(vector["messages"][start:], start):
        sender, receiver = (i_send, r_recv) if one_way or i % 2 == 0 else (r_send, i_recv)
        payload = bytes.fromhex(msg["payload"])
        ciphertext = sender.encrypt_with_ad(b"", payload)
        assert ciphertext.hex() == msg["ciphertext"], f"transport message {i}"
        assert receiver.decrypt_with_ad(b"", ciphertext) == payload


@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    init = _side(vector, "init", initiator=True)
    resp = _side(vector, "resp", initiator=False)
    start = _run_handshake(vector, init, resp)
    c1_i, c2_i = init.split()
    c1_r, c2_r = resp.split()
    _run_transport(vector, start, (c1_i, c2_i, c2_r, c1_r), init.pattern.one_way)


LATE_PSK = [v for v in VECTORS if v.get("init_psks") and "psk0" not in v["protocol_name"]]


@pytest.mark.parametrize("vector", LATE_PSK, ids=[v["protocol_name"] for v in LATE_PSK])
def test_vector_with_psks_given_late(vector: dict[str, Any]) -> None:
    """hotline's KKpsk2 sets its psk only once the first message is through
    (``psks=None``, then ``set_psks``): every vector whose first psk token comes after
    the first message, KKpsk2 among them, still comes out byte for byte."""
    init, resp = _side(vector, "init", True, late_psks=True), _side(vector, "resp", False,
                                                                     late_psks=True)
    first = next(i for i, m in enumerate(init.pattern.messages) if "psk" in m)
    for i, msg in enumerate(vector["messages"][:len(init.pattern.messages)]):
        if i == first:
            init.set_psks([bytes.fromhex(p) for p in vector["init_psks"]])
            resp.set_psks([bytes.fromhex(p) for p in vector["resp_psks"]])
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        ciphertext = writer.write_message(bytes.fromhex(msg["payload"]))
        assert ciphertext.hex() == msg["ciphertext"], f"handshake message {i}"
        reader.read_message(ciphertext)
    assert init.handshake_hash == resp.handshake_hash == bytes.fromhex(vector["handshake_hash"])


def test_kkpsk2_is_among_the_vectors() -> None:
    assert "Noise_KKpsk2_25519_ChaChaPoly_BLAKE2s" in {v["protocol_name"] for v in LATE_PSK}
