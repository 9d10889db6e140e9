"""Envelope and receipt encoding, schema checks, SSHSIG signatures against stock ssh-keygen."""

from __future__ import annotations

import base64
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
from hotline.proto.lanes import FLASH, LANES, PRIORITY, ROUTINE

MAX = 65536
ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(1, 33)))
EPOCH = bytes(range(16))


def _fields(**over: object) -> list[object]:
    """A version-2 envelope's fields, in wire order, with ``over`` replacing some."""
    base: dict[str, object] = {
        "v": 2, "epoch": EPOCH, "sender": ALICE.public.raw, "recipient": BOB.public.raw,
        "lane": ROUTINE, "seq": 1, "ts": 1_700_000_000_000_000_000, "prev": ev.ZERO_HASH,
        "type": "text/plain", "body": b"hello",
    }
    base.update(over)
    return list(base.values())


def _v1_fields(**over: object) -> list[object]:
    """A version-1 envelope's fields (the first release: no lane), wire order."""
    base: dict[str, object] = {
        "v": 1, "epoch": EPOCH, "sender": ALICE.public.raw, "recipient": BOB.public.raw,
        "seq": 1, "ts": 1_700_000_000_000_000_000, "prev": ev.ZERO_HASH,
        "type": "text/plain", "body": b"hello",
    }
    base.update(over)
    return list(base.values())


def _pack(fields: list[object]) -> bytes:
    out: bytes = msgpack.packb(fields, use_bin_type=True)
    return out


def _packed(**over: object) -> bytes:
    return _pack(_fields(**over))


def _encode(**over: object) -> bytes:
    """``encode_envelope`` of the v2 fields (``v`` is not a parameter: it always writes 2)."""
    _v, epoch, sender, recipient, lane, seq, ts, prev, type_, body = _fields(**over)
    return ev.encode_envelope(epoch, sender, recipient, seq, ts, prev, type_, body, lane=lane)


# --- envelopes ------------------------------------------------------------------------


@pytest.mark.parametrize("lane", LANES)
def test_v2_round_trip_keeps_exact_bytes_and_lane(lane):
    raw = _encode(seq=7, lane=lane, body=b"\x00\xff" * 100, type="application/octet-stream")
    env = ev.decode_envelope_untrusted(raw, MAX)
    assert env.raw == raw
    assert (env.v, env.epoch, env.sender, env.recipient, env.lane) == (
        2, EPOCH, ALICE.public.raw, BOB.public.raw, lane)
    assert (env.seq, env.prev, env.type, env.body) == (
        7, ev.ZERO_HASH, "application/octet-stream", b"\x00\xff" * 100)
    assert raw == _packed(seq=7, lane=lane, body=b"\x00\xff" * 100,
                          type="application/octet-stream")


def test_encode_defaults_to_routine():
    raw = ev.encode_envelope(EPOCH, ALICE.public.raw, BOB.public.raw, 1, 0, ev.ZERO_HASH,
                             "text/plain", b"x")
    assert ev.decode_envelope_untrusted(raw, MAX).lane == ROUTINE


def test_v1_envelope_still_decodes_as_routine():
    """A first-release envelope (no lane) keeps its exact bytes and its signature."""
    raw = _pack(_v1_fields(seq=4, body=b"old"))
    env = ev.decode_envelope_untrusted(raw, MAX)
    assert (env.v, env.lane, env.seq, env.body, env.raw) == (1, ROUTINE, 4, b"old", raw)
    assert (env.epoch, env.sender, env.recipient, env.prev, env.type) == (
        EPOCH, ALICE.public.raw, BOB.public.raw, ev.ZERO_HASH, "text/plain")
    ev.verify_envelope(ALICE.public, raw, ev.sign_envelope(ALICE, raw))


def test_lane_is_signed():
    """The lane is inside the signed bytes: a relay cannot move a message to another lane."""
    raw = _encode(lane=FLASH)
    sig = ev.sign_envelope(ALICE, raw)
    for lane in LANES[1:]:
        with pytest.raises(AuthenticationError):
            ev.verify_envelope(ALICE.public, _encode(lane=lane), sig)


def test_chain_hash_is_sha256():
    import hashlib

    raw = _encode()
    assert ev.chain_hash(raw) == hashlib.sha256(raw).digest()


_FIELD_VIOLATIONS = [
    ("v", 0), ("v", 3), ("v", True), ("v", "2"),
    ("epoch", bytes(15)), ("epoch", bytes(17)), ("epoch", "x" * 16), ("epoch", None),
    ("sender", bytes(31)), ("sender", bytes(33)), ("sender", 5),
    ("recipient", bytes(31)), ("recipient", [1, 2]),
    ("seq", 0), ("seq", -1), ("seq", True), ("seq", 1.0), ("seq", b"1"), ("seq", 2**63),
    ("ts", -1), ("ts", 1.5), ("ts", None), ("ts", False),
    ("prev", bytes(31)), ("prev", bytes(33)), ("prev", "0" * 32),
    ("type", ""), ("type", "text"), ("type", "text/plain\n"), ("type", "a/" + "b" * 63),
    ("type", b"text/plain"), ("type", 1), ("type", "text/ plain"), ("type", "tëxt/plain"),
    ("body", "hello"), ("body", None), ("body", 1), ("body", [b"x"]),
]
_LANE_VIOLATIONS = [
    ("lane", -1), ("lane", 4), ("lane", 2**63), ("lane", True), ("lane", False),
    ("lane", None), ("lane", "3"), ("lane", 3.0), ("lane", b"\x03"),
]


@pytest.mark.parametrize(("field", "value"), _FIELD_VIOLATIONS + _LANE_VIOLATIONS)
def test_every_field_schema_violation_refused(field, value):
    raw = _packed(**{field: value})
    with pytest.raises(RemoteProtocolError) as info:
        ev.decode_envelope_untrusted(raw, MAX)
    assert isinstance(info.value, DecodeError | LimitError)
    if field != "v":  # encode_envelope always writes v = 2
        with pytest.raises(LocalProtocolError):
            _encode(**{field: value})


@pytest.mark.parametrize(("field", "value"), [*_FIELD_VIOLATIONS, ("v", 2)])
def test_every_v1_field_schema_violation_refused(field, value):
    """The nine-item (lane-less) form is version 1 only: each bad field, and a version-2
    tag without its lane, is refused."""
    with pytest.raises(DecodeError):
        ev.decode_envelope_untrusted(_pack(_v1_fields(**{field: value})), MAX)


@pytest.mark.parametrize("lane", LANES)
def test_v1_with_a_lane_refused(lane):
    """Version 1 has no lane field: a ten-item array tagged 1 is neither schema, whatever
    the lane (even routine, which is what a v1 envelope means)."""
    with pytest.raises(DecodeError):
        ev.decode_envelope_untrusted(_packed(v=1, lane=lane), MAX)


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"\x91\x01", _pack(_fields()[:8]), _pack(_v1_fields()[:8]),
        _pack([*_fields(), 1]), _pack([*_v1_fields(), 1, 2]),
        msgpack.packb({"v": 2}), b"\xc1", _packed() + b"\x00", _packed()[:-1],
        _pack(_fields(body=msgpack.ExtType(1, b"x"))),
        _pack(_fields(body=msgpack.ExtType(1, b""))),
        _pack(_fields(epoch={b"a": 1})),
        msgpack.packb(_fields(), use_bin_type=False),  # bytes as str: wrong types
        msgpack.packb(_v1_fields(), use_bin_type=False),
    ],
    ids=lambda r: r[:8].hex(),
)
def test_malformed_msgpack_refused(raw):
    with pytest.raises(DecodeError):
        ev.decode_envelope_untrusted(raw, MAX)


def test_size_limits():
    ok = _packed(body=bytes(MAX))
    assert ev.decode_envelope_untrusted(ok, MAX).body == bytes(MAX)
    assert ev.decode_envelope_untrusted(_pack(_v1_fields(body=bytes(MAX))), MAX).body == bytes(
        MAX)
    with pytest.raises(LimitError):
        ev.decode_envelope_untrusted(_packed(body=bytes(MAX + 1)), MAX)
    with pytest.raises(LimitError):
        ev.decode_envelope_untrusted(_pack(_v1_fields(body=bytes(MAX + 1))), MAX)
    with pytest.raises(LimitError):
        ev.decode_envelope_untrusted(b"\x00" * (MAX + 513), MAX)
    with pytest.raises(LocalProtocolError):
        ev.encode_envelope(EPOCH, ALICE.public.raw, BOB.public.raw, 1, 0, ev.ZERO_HASH,
                           "text/plain", bytes(11), max_message=10)


def test_media_types_accepted():
    for t in ["text/plain", "application/json", "text/plain; charset=utf-8", "a/" + "b" * 62,
              "application/vnd.hotline.ack"]:
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
    blob = base64.b64decode("".join(text.splitlines()[1:-1]))
    assert blob[:10] == b"SSHSIG\x00\x00\x00\x01"  # PROTOCOL.sshsig: SIG_VERSION 0x01


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
    raw = _encode(sender=identity.public.raw, lane=FLASH, body="héllo wörld".encode())
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
    raw = _encode(sender=identity.public.raw, lane=PRIORITY, body=bytes(range(256)) * 3)
    msg = tmp_path / "msg"
    msg.write_bytes(raw)
    for namespace in ("hotline", "hotline-receipt"):
        subprocess.run([ssh_keygen, "-Y", "sign", "-f", str(key), "-n", namespace, str(msg)],
                       check=True, capture_output=True)
        ours = ev.armor_signature(
            identity.public, namespace, identity.sign(ev.sshsig_signed_data(namespace, raw)))
        theirs = (tmp_path / "msg.sig").read_text()
        assert theirs == ours
        assert ev.dearmor_signature_untrusted(theirs) == (
            identity.public.raw, namespace, identity.sign(ev.sshsig_signed_data(namespace, raw)))
        (tmp_path / "msg.sig").unlink()


# --- receipts -------------------------------------------------------------------------

CHAIN = ev.chain_hash(b"x")


def _receipt_fields(**over: object) -> list[object]:
    """A version-2 receipt's fields, in wire order."""
    base: dict[str, object] = {
        "v": 2, "sender": ALICE.public.raw, "recipient": BOB.public.raw, "epoch": EPOCH,
        "lane": FLASH, "upto": 42, "chain": CHAIN,
    }
    base.update(over)
    return list(base.values())


def _encode_receipt(**over: object) -> bytes:
    _v, sender, recipient, epoch, lane, upto, chain = _receipt_fields(**over)
    return ev.encode_receipt(sender, recipient, epoch, lane, upto, chain)  # type: ignore[arg-type]


@pytest.mark.parametrize("lane", LANES)
def test_receipt_v2_round_trip_and_signature(lane):
    raw = _encode_receipt(lane=lane)
    assert raw == _pack(_receipt_fields(lane=lane))
    rc = ev.decode_receipt_untrusted(raw)
    assert (rc.sender, rc.recipient, rc.epoch, rc.lane, rc.upto, rc.chain, rc.raw) == (
        ALICE.public.raw, BOB.public.raw, EPOCH, lane, 42, CHAIN, raw)
    sig = ev.sign_receipt(BOB, raw)
    ev.verify_receipt(BOB.public, raw, sig)
    with pytest.raises(AuthenticationError):
        ev.verify_receipt(ALICE.public, raw, sig)
    with pytest.raises(AuthenticationError):
        ev.verify_envelope(BOB.public, raw, sig)


def test_receipt_epoch_and_lane_are_signed():
    raw = _encode_receipt()
    sig = ev.sign_receipt(BOB, raw)
    for other in (_encode_receipt(lane=ROUTINE), _encode_receipt(epoch=bytes(16))):
        with pytest.raises(AuthenticationError):
            ev.verify_receipt(BOB.public, other, sig)


def test_receipt_v1_still_decodes_as_routine_without_epoch():
    raw = _pack([ALICE.public.raw, BOB.public.raw, 7, CHAIN])
    rc = ev.decode_receipt_untrusted(raw)
    assert (rc.sender, rc.recipient, rc.epoch, rc.lane, rc.upto, rc.chain, rc.raw) == (
        ALICE.public.raw, BOB.public.raw, None, ROUTINE, 7, CHAIN, raw)
    ev.verify_receipt(BOB.public, raw, ev.sign_receipt(BOB, raw))


_RECEIPT_VIOLATIONS = [
    ("v", 0), ("v", 3), ("v", True), ("v", "2"), ("v", None),
    ("sender", bytes(31)), ("sender", bytes(33)), ("sender", "x" * 32),
    ("recipient", bytes(31)), ("recipient", None),
    ("epoch", bytes(15)), ("epoch", bytes(17)), ("epoch", None), ("epoch", "x" * 16),
    ("lane", -1), ("lane", 4), ("lane", True), ("lane", None), ("lane", 1.0),
    ("upto", 0), ("upto", -5), ("upto", True), ("upto", 1.0), ("upto", 2**63),
    ("chain", bytes(31)), ("chain", bytes(33)), ("chain", "x" * 32),
]


@pytest.mark.parametrize(("field", "value"), _RECEIPT_VIOLATIONS)
def test_receipt_v2_schema_violations_refused(field, value):
    with pytest.raises(DecodeError):
        ev.decode_receipt_untrusted(_pack(_receipt_fields(**{field: value})))
    if field != "v":  # encode_receipt always writes v = 2
        with pytest.raises(LocalProtocolError):
            _encode_receipt(**{field: value})


@pytest.mark.parametrize("epoch", [EPOCH, None, "x" * 16, 7, b"short"],
                         ids=["epoch", "none", "str", "int", "short"])
def test_receipt_v1_tag_in_the_v2_form_refused(epoch):
    """Version 1 is the four-item form only: a seven-item receipt tagged 1 is neither
    schema (its epoch would go unchecked, its lane would be a non-routine v1)."""
    with pytest.raises(DecodeError):
        ev.decode_receipt_untrusted(_pack(_receipt_fields(v=1, epoch=epoch)))


@pytest.mark.parametrize(
    "fields",
    [
        [bytes(31), bytes(32), 1, bytes(32)], [bytes(32), bytes(33), 1, bytes(32)],
        [bytes(32), bytes(32), 0, bytes(32)], [bytes(32), bytes(32), True, bytes(32)],
        [bytes(32), bytes(32), 1, bytes(31)], [bytes(32), bytes(32), 1, "x" * 32],
        [bytes(32), bytes(32), -5, bytes(32)], [bytes(32), bytes(32), 1.0, bytes(32)],
        [bytes(32), bytes(32), 1], [bytes(32), bytes(32), 1, bytes(32), 0],
        [2, bytes(32), bytes(32), EPOCH, 0, 1], [*_receipt_fields(), 0], [],
    ],
)
def test_receipt_v1_schema_violations_and_wrong_lengths_refused(fields):
    with pytest.raises(DecodeError):
        ev.decode_receipt_untrusted(_pack(fields))


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
@given(st.lists(_msgpack_values, min_size=0, max_size=11))
def test_fuzz_structured_arrays(items):
    raw = msgpack.packb(items, use_bin_type=True)
    with contextlib.suppress(DecodeError, LimitError):
        env = ev.decode_envelope_untrusted(raw, MAX)
        assert (len(items), env.v) in ((9, 1), (10, 2))
        assert env.v == 2 or env.lane == ROUTINE
    with contextlib.suppress(DecodeError, LimitError):
        rc = ev.decode_receipt_untrusted(raw)
        assert (len(items), rc.epoch is None) in ((4, True), (7, False))
        assert rc.epoch is None or len(rc.epoch) == ev.EPOCH_LEN


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 9), st.binary(min_size=1, max_size=3), st.sampled_from(LANES))
def test_fuzz_mutated_envelope(index, junk, lane):
    raw = bytearray(_encode(lane=lane))
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
