"""Envelope and receipt encoding, schema checks, SSHSIG signatures against stock ssh-keygen."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.errors import (
    AuthenticationError,
    DecodeError,
    LimitError,
    LocalProtocolError,
    RemoteProtocolError,
)
from hotline.proto import envelope as ev
from hotline.proto.identity import Identity

MAX = 65536
ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(1, 33)))
EPOCH = bytes(range(16))


def _fields(**over: object) -> list[object]:
    base: dict[str, object] = {
        "v": 1, "epoch": EPOCH, "sender": ALICE.public.raw, "recipient": BOB.public.raw,
        "seq": 1, "ts": 1_700_000_000_000_000_000, "prev": ev.ZERO_HASH,
        "type": "text/plain", "body": b"hello",
    }
    base.update(over)
    return list(base.values())


def _packed(**over: object) -> bytes:
    out: bytes = msgpack.packb(_fields(**over), use_bin_type=True)
    return out


def _encode(**over: object) -> bytes:
    return ev.encode_envelope(*_fields(**over)[1:])  # type: ignore[arg-type]


# --- envelopes ------------------------------------------------------------------------


def test_round_trip_keeps_exact_bytes():
    raw = _encode(seq=7, body=b"\x00\xff" * 100, type="application/octet-stream")
    env = ev.decode_envelope_untrusted(raw, MAX)
    assert env.raw == raw
    assert (env.v, env.epoch, env.sender, env.recipient) == (
        1, EPOCH, ALICE.public.raw, BOB.public.raw)
    assert (env.seq, env.prev, env.type, env.body) == (
        7, ev.ZERO_HASH, "application/octet-stream", b"\x00\xff" * 100)
    assert raw == _packed(seq=7, body=b"\x00\xff" * 100, type="application/octet-stream")


def test_chain_hash_is_sha256():
    import hashlib

    raw = _encode()
    assert ev.chain_hash(raw) == hashlib.sha256(raw).digest()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("v", 2), ("v", 0), ("v", True), ("v", "1"),
        ("epoch", bytes(15)), ("epoch", bytes(17)), ("epoch", "x" * 16), ("epoch", None),
        ("sender", bytes(31)), ("sender", bytes(33)), ("sender", 5),
        ("recipient", bytes(31)), ("recipient", [1, 2]),
        ("seq", 0), ("seq", -1), ("seq", True), ("seq", 1.0), ("seq", b"1"), ("seq", 2**63),
        ("ts", -1), ("ts", 1.5), ("ts", None), ("ts", False),
        ("prev", bytes(31)), ("prev", bytes(33)), ("prev", "0" * 32),
        ("type", ""), ("type", "text"), ("type", "text/plain\n"), ("type", "a/" + "b" * 63),
        ("type", b"text/plain"), ("type", 1), ("type", "text/ plain"), ("type", "tëxt/plain"),
        ("body", "hello"), ("body", None), ("body", 1), ("body", [b"x"]),
    ],
)
def test_every_field_schema_violation_refused(field, value):
    raw = _packed(**{field: value})
    with pytest.raises(RemoteProtocolError) as info:
        ev.decode_envelope_untrusted(raw, MAX)
    assert isinstance(info.value, DecodeError | LimitError)
    if field != "v":  # encode_envelope always writes v = 1
        with pytest.raises(LocalProtocolError):
            _encode(**{field: value})


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"\x91\x01", msgpack.packb(_fields()[:8], use_bin_type=True),
        msgpack.packb([*_fields(), 1], use_bin_type=True),
        msgpack.packb({"v": 1}), b"\xc1", _packed() + b"\x00", _packed()[:-1],
        msgpack.packb(_fields(body=msgpack.ExtType(1, b"x")), use_bin_type=True),
        msgpack.packb(_fields(body=msgpack.ExtType(1, b"")), use_bin_type=True),
        msgpack.packb(_fields(epoch={b"a": 1}), use_bin_type=True),
        msgpack.packb(_fields(), use_bin_type=False),  # bytes as str: wrong types
    ],
    ids=lambda r: r[:8].hex(),
)
def test_malformed_msgpack_refused(raw):
    with pytest.raises(DecodeError):
        ev.decode_envelope_untrusted(raw, MAX)


def test_size_limits():
    ok = _packed(body=bytes(MAX))
    assert ev.decode_envelope_untrusted(ok, MAX).body == bytes(MAX)
    with pytest.raises(LimitError):
        ev.decode_envelope_untrusted(_packed(body=bytes(MAX + 1)), MAX)
    with pytest.raises(LimitError):
        ev.decode_envelope_untrusted(b"\x00" * (MAX + 513), MAX)
    with pytest.raises(LocalProtocolError):
        ev.encode_envelope(*_fields(body=bytes(11))[1:], max_message=10)  # type: ignore[arg-type]


def test_media_types_accepted():
    for t in ["text/plain", "application/json", "text/plain; charset=utf-8", "a/" + "b" * 62]:
        assert ev.decode_envelope_untrusted(_encode(type=t), MAX).type == t


# --- signatures -----------------------------------------------------------------------


def test_sign_and_verify_envelope():
    raw = _encode()
    sig = ev.sign_envelope(ALICE, raw)
    assert len(sig) == 64
    ev.verify_envelope(ALICE.public, raw, sig)
    with pytest.raises(AuthenticationError):
        ev.verify_envelope(BOB.public, raw, sig)
    with pytest.raises(AuthenticationError):
        ev.verify_envelope(ALICE.public, raw[:-1] + b"X", sig)
    with pytest.raises(AuthenticationError):
        ev.verify_envelope(ALICE.public, raw, sig[:-1])
    # The namespaces are separate domains: an envelope signature is not a receipt signature.
    with pytest.raises(AuthenticationError):
        ev.verify_receipt(ALICE.public, raw, sig)


def test_sshsig_signed_data_layout():
    data = ev.sshsig_signed_data("hotline", b"m")
    assert data.startswith(b"SSHSIG\x00\x00\x00\x07hotline\x00\x00\x00\x00\x00\x00\x00\x06sha512")
    assert len(data) == 6 + 11 + 4 + 10 + 4 + 64


def test_armor_round_trip():
    sig = ev.sign_envelope(ALICE, b"m")
    text = ev.armor_signature(ALICE.public, "hotline", sig)
    assert text.startswith(ev.ARMOR_BEGIN + "\n")
    assert text.endswith(ev.ARMOR_END + "\n")
    assert all(len(line) <= 70 for line in text.splitlines())
    assert ev.dearmor_signature_untrusted(text) == (ALICE.public.raw, "hotline", sig)


@pytest.mark.parametrize(
    "text",
    ["", "x", ev.ARMOR_BEGIN + "\n!!\n" + ev.ARMOR_END, ev.ARMOR_BEGIN + "\nAAAA\n" + ev.ARMOR_END],
)
def test_dearmor_refuses_garbage(text):
    with pytest.raises(DecodeError):
        ev.dearmor_signature_untrusted(text)


@pytest.fixture
def ssh_key(ssh_keygen: str, tmp_path: Path) -> tuple[str, Path, Identity]:
    key = tmp_path / "id"
    subprocess.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f", str(key)],
                   check=True)
    identity, comment = Identity.from_openssh_private(key.read_bytes())
    assert comment == "alice"
    return ssh_keygen, key, identity


def test_ssh_keygen_verifies_our_signature(ssh_key, tmp_path):
    ssh_keygen, _key, identity = ssh_key
    raw = _encode(sender=identity.public.raw, body="héllo wörld".encode())
    sig = ev.sign_envelope(identity, raw)
    (tmp_path / "msg").write_bytes(raw)
    (tmp_path / "msg.sig").write_text(ev.armor_signature(identity.public, "hotline", sig))
    (tmp_path / "allowed").write_text(f"alice {identity.public.openssh_line()}\n")
    cmd = [ssh_keygen, "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I", "alice",
           "-n", "hotline", "-s", str(tmp_path / "msg.sig")]
    ok = subprocess.run(cmd, input=raw, capture_output=True, check=False)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(cmd, input=raw + b"x", capture_output=True, check=False)
    assert bad.returncode != 0
    wrong_ns = [*cmd[:7], "hotline-receipt", *cmd[8:]]
    assert subprocess.run(wrong_ns, input=raw, capture_output=True, check=False).returncode != 0


def test_ssh_keygen_sign_equals_our_armor(ssh_key, tmp_path):
    ssh_keygen, key, identity = ssh_key
    raw = _encode(sender=identity.public.raw, body=bytes(range(256)) * 3)
    msg = tmp_path / "msg"
    msg.write_bytes(raw)
    for namespace in ("hotline", "hotline-receipt"):
        subprocess.run([ssh_keygen, "-Y", "sign", "-f", str(key), "-n", namespace, str(msg)],
                       check=True, capture_output=True)
        ours = ev.armor_signature(
            identity.public, namespace, identity.sign(ev.sshsig_signed_data(namespace, raw)))
        assert (tmp_path / "msg.sig").read_text() == ours
        (tmp_path / "msg.sig").unlink()


# --- receipts -------------------------------------------------------------------------


def test_receipt_round_trip_and_signature():
    chain = ev.chain_hash(b"x")
    raw = ev.encode_receipt(ALICE.public.raw, BOB.public.raw, 42, chain)
    rc = ev.decode_receipt_untrusted(raw)
    assert (rc.sender, rc.recipient, rc.upto, rc.chain, rc.raw) == (
        ALICE.public.raw, BOB.public.raw, 42, chain, raw)
    sig = ev.sign_receipt(BOB, raw)
    ev.verify_receipt(BOB.public, raw, sig)
    with pytest.raises(AuthenticationError):
        ev.verify_receipt(ALICE.public, raw, sig)
    with pytest.raises(AuthenticationError):
        ev.verify_envelope(BOB.public, raw, sig)


@pytest.mark.parametrize(
    "fields",
    [
        [bytes(31), bytes(32), 1, bytes(32)], [bytes(32), bytes(33), 1, bytes(32)],
        [bytes(32), bytes(32), 0, bytes(32)], [bytes(32), bytes(32), True, bytes(32)],
        [bytes(32), bytes(32), 1, bytes(31)], [bytes(32), bytes(32), 1, "x" * 32],
        [bytes(32), bytes(32), 1], [bytes(32), bytes(32), 1, bytes(32), 0],
        [bytes(32), bytes(32), -5, bytes(32)], [bytes(32), bytes(32), 1.0, bytes(32)],
    ],
)
def test_receipt_schema_violations_refused(fields):
    with pytest.raises(DecodeError):
        ev.decode_receipt_untrusted(msgpack.packb(fields, use_bin_type=True))
    if len(fields) == 4:
        with pytest.raises(LocalProtocolError):
            ev.encode_receipt(*fields)


def test_receipt_size_limit():
    with pytest.raises(LimitError):
        ev.decode_receipt_untrusted(bytes(ev.MAX_RECEIPT + 1))


# --- fuzz -----------------------------------------------------------------------------

_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.binary(max_size=40) | st.text(max_size=70)
)
_msgpack_values = _scalars | st.lists(_scalars, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_decoders_raise_only_protocol_errors(data):
    for decode in (lambda b: ev.decode_envelope_untrusted(b, 100), ev.decode_receipt_untrusted):
        with contextlib.suppress(DecodeError, LimitError):
            decode(data)
    with contextlib.suppress(DecodeError, LimitError):
        ev.dearmor_signature_untrusted(data.decode("latin-1"))


@settings(max_examples=200, deadline=None)
@given(st.lists(_msgpack_values, min_size=0, max_size=10))
def test_fuzz_structured_arrays(items):
    raw = msgpack.packb(items, use_bin_type=True)
    for decode in (lambda b: ev.decode_envelope_untrusted(b, MAX), ev.decode_receipt_untrusted):
        with contextlib.suppress(DecodeError, LimitError):
            decode(raw)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 9), st.binary(min_size=1, max_size=3))
def test_fuzz_mutated_envelope(index, junk):
    raw = bytearray(_encode())
    pos = index * len(raw) // 10
    mutated = bytes(raw[:pos]) + junk + bytes(raw[pos + 1 :])
    if mutated == raw:
        return
    try:
        env = ev.decode_envelope_untrusted(mutated, MAX)
    except (DecodeError, LimitError):
        return
    assert env.raw == mutated
    with pytest.raises(AuthenticationError):
        ev.verify_envelope(ALICE.public, mutated, ev.sign_envelope(ALICE, bytes(raw)))
