"""The signed envelope and signed receipts (DESIGN §4 and §9, a **contract**).

An envelope is one message in one direction, as a msgpack array. Version 2 (what we
write) names the precedence lane (``lanes.py``: 0 = flash … 3 = routine)::

    [v=2, epoch(16B bin), from(32B bin), to(32B bin), lane(int 0..3), seq(int >= 1),
     ts(int ns), prev(32B bin), type(str, <= 64 chars, a media type), body(bin)]

Version 1, written by the first release and still read (stores keep their exact
signed bytes), has no lane and is routine::

    [v=1, epoch, from, to, seq, ts, prev, type, body]

``prev`` is ``chain_hash`` (SHA-256) of the previous envelope's exact bytes in that
direction, epoch and lane (32 zero bytes for seq 1), so each lane of a transcript is a
hash chain. The bytes are signed, sent and stored exactly as encoded: nothing is ever
re-encoded, and ``Envelope.raw`` keeps the exact bytes a decoded envelope came from.

A receipt states that the recipient (the signer) durably stored the sender's stream up
to ``upto``, whose envelope has chain hash ``chain``. Version 2 names the epoch and lane
it covers; version 1 (first release, routine lane, epoch implied) is still read::

    v2: [2, sender(32B), recipient(32B), epoch(16B), lane, upto(int >= 1), chain(32B)]
    v1: [sender(32B), recipient(32B), upto(int >= 1), chain(32B)]

Signatures are Ed25519 over the OpenSSH **SSHSIG** "signed data" (OpenSSH PROTOCOL.sshsig)::

    "SSHSIG" | string namespace | string reserved("") | string "sha512" | string SHA512(msg)

with namespace ``hotline`` for envelopes and ``hotline-receipt`` for receipts, so stock
``ssh-keygen -Y verify -n hotline`` checks an exported message. ``armor_signature``
writes the ``-----BEGIN SSH SIGNATURE-----`` file byte for byte as ``ssh-keygen -Y sign``
does (Ed25519 is deterministic, so the files are identical).

Decoding network bytes (``*_untrusted``): size check first, then msgpack with explicit
limits on every length and count, ``strict_map_key``, ``use_list=False``, ext types
refused, then an exact schema check (exact Python types: a bool is not an int). Only
``DecodeError`` / ``LimitError`` escape.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from hotline.errors import DecodeError, LimitError, LocalProtocolError, RemoteProtocolError
from hotline.proto.lanes import LANES, ROUTINE
from hotline.proto.sshwire import SSHReader, ssh_string, ssh_uint32

if TYPE_CHECKING:
    from hotline.proto.identity import Identity, PublicKey

VERSION = 2  # what we write; version 1 is still read
RECEIPT_VERSION = 2
EPOCH_LEN = 16
KEY_LEN = 32
HASH_LEN = 32
SIG_LEN = 64
MAX_TYPE_LEN = 64
MAX_SEQ = 2**63 - 1  # SQLite INTEGER is signed 64-bit
MAX_TS = 2**63 - 1
ENVELOPE_OVERHEAD = 512  # every field but the body fits well within this
MAX_RECEIPT = 256
ZERO_HASH = bytes(HASH_LEN)
DEFAULT_TYPE = "text/plain"

NAMESPACE_ENVELOPE = "hotline"
NAMESPACE_RECEIPT = "hotline-receipt"
SSHSIG_MAGIC = b"SSHSIG"
SSHSIG_VERSION = 1
SSHSIG_HASH = "sha512"
ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"
ARMOR_WIDTH = 70  # ssh-keygen's base64 line width
MAX_ARMOR = 4096

_ED25519 = b"ssh-ed25519"
# RFC 6838 restricted names: type "/" subtype, optional "; name=value" parameters.
_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*"
_MEDIA_TYPE = re.compile(rf"{_NAME}/{_NAME}(?:; ?{_NAME}={_NAME})*", re.ASCII)


@dataclass(frozen=True)
class Envelope:
    """A decoded envelope. ``raw`` is the exact bytes it was decoded from (the signed bytes)."""

    v: int
    epoch: bytes
    sender: bytes
    recipient: bytes
    lane: int
    seq: int
    ts: int
    prev: bytes
    type: str
    body: bytes
    raw: bytes = field(repr=False, compare=False)


@dataclass(frozen=True)
class Receipt:
    """A decoded receipt: ``recipient`` stored ``sender``'s stream up to ``upto``.

    ``epoch`` is None for a version-1 receipt (its epoch is implied by where it is stored).
    """

    sender: bytes
    recipient: bytes
    epoch: bytes | None
    lane: int
    upto: int
    chain: bytes
    raw: bytes = field(repr=False, compare=False)


# --- hashing and encoding -------------------------------------------------------------


def is_media_type(value: object) -> bool:
    """True for what the envelope's ``type`` accepts: ``type/subtype[; k=v]``, <= 64 ASCII."""
    return type(value) is str and len(value) <= MAX_TYPE_LEN and bool(_MEDIA_TYPE.fullmatch(value))


def chain_hash(raw: bytes) -> bytes:
    """SHA-256 of an envelope's exact bytes: the next envelope's ``prev``."""
    return hashlib.sha256(raw).digest()


def encode_envelope(
    epoch: bytes, sender: bytes, recipient: bytes, seq: int, ts: int, prev: bytes,
    type: str, body: bytes, *, lane: int = ROUTINE, max_message: int | None = None,
) -> bytes:
    """Encode an envelope (v = 2) to its msgpack bytes, the bytes that get signed.

    Raises:
        LocalProtocolError: if a field breaks the schema (or ``body`` exceeds
            ``max_message`` when given).
    """
    fields = (VERSION, epoch, sender, recipient, lane, seq, ts, prev, type, body)
    try:
        _check_envelope_fields(fields, max_message)
    except RemoteProtocolError as err:
        raise LocalProtocolError(f"cannot encode envelope: {err}") from err
    packed: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return packed


def encode_receipt(sender: bytes, recipient: bytes, epoch: bytes, lane: int, upto: int,
                   chain: bytes) -> bytes:
    """Encode a (version 2) receipt to its msgpack bytes.

    Raises:
        LocalProtocolError: if a field breaks the schema.
    """
    fields = (RECEIPT_VERSION, sender, recipient, epoch, lane, upto, chain)
    try:
        _check_receipt_fields(fields)
    except RemoteProtocolError as err:
        raise LocalProtocolError(f"cannot encode receipt: {err}") from err
    packed: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return packed


# --- decoding untrusted bytes ---------------------------------------------------------


def decode_envelope_untrusted(raw: bytes, max_message: int) -> Envelope:
    """Decode and schema-check envelope bytes from the network (signature NOT checked).

    Raises:
        LimitError: ``raw`` or the body is over its limit.
        DecodeError: not msgpack, or not the envelope schema.
    """
    if len(raw) > max_message + ENVELOPE_OVERHEAD:
        raise LimitError(f"envelope of {len(raw)} bytes is over the limit")
    fields = _unpack_array_untrusted(raw, (9, 10), max_bin=max_message + ENVELOPE_OVERHEAD)
    if (fields[0], len(fields)) not in ((1, 9), (VERSION, 10)):
        raise DecodeError("envelope version and length do not match (v1: 9, v2: 10 items)")
    if len(fields) == 9:  # version 1: no lane, routine
        fields = (*fields[:4], ROUTINE, *fields[4:])
    _check_envelope_fields(fields, max_message)
    v, epoch, sender, recipient, lane, seq, ts, prev, type_, body = fields
    return Envelope(v, epoch, sender, recipient, lane, seq, ts, prev, type_, body,
                    raw=bytes(raw))


def decode_receipt_untrusted(raw: bytes) -> Receipt:
    """Decode and schema-check receipt bytes from the network (signature NOT checked).

    Raises:
        LimitError: ``raw`` is over ``MAX_RECEIPT``.
        DecodeError: not msgpack, or not the receipt schema.
    """
    if len(raw) > MAX_RECEIPT:
        raise LimitError(f"receipt of {len(raw)} bytes is over the limit")
    fields = _unpack_array_untrusted(raw, (4, 7), max_bin=KEY_LEN)
    if len(fields) == 4:  # version 1: routine lane, epoch implied
        fields = (1, fields[0], fields[1], None, ROUTINE, fields[2], fields[3])
    elif fields[0] != RECEIPT_VERSION:
        raise DecodeError("a receipt of 7 items is version 2")
    _check_receipt_fields(fields)
    _v, sender, recipient, epoch, lane, upto, chain = fields
    return Receipt(sender, recipient, epoch, lane, upto, chain, raw=bytes(raw))


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext type {code} is not allowed")


def _unpack_array_untrusted(raw: bytes, lengths: tuple[int, ...], *,
                            max_bin: int) -> tuple[Any, ...]:
    """msgpack-decode one flat array of one of ``lengths`` items, with tight limits."""
    try:
        obj = msgpack.unpackb(
            raw, use_list=False, raw=False, strict_map_key=True, ext_hook=_refuse_ext,
            max_bin_len=max_bin, max_str_len=MAX_TYPE_LEN, max_array_len=max(lengths),
            max_map_len=0, max_ext_len=0,
        )
    except RemoteProtocolError:
        raise
    except (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as err:
        raise DecodeError(f"bad msgpack: {err}") from err
    if type(obj) is not tuple or len(obj) not in lengths:
        raise DecodeError(f"want a msgpack array of {' or '.join(map(str, lengths))} items")
    return obj


# --- schema ---------------------------------------------------------------------------


def _check_bin(value: object, name: str, length: int) -> None:
    if type(value) is not bytes or len(value) != length:
        raise DecodeError(f"{name} must be {length} bytes")


def _check_int(value: object, name: str, lo: int, hi: int) -> None:
    if type(value) is not int or not lo <= value <= hi:
        raise DecodeError(f"{name} must be an integer in [{lo}, {hi}]")


def _check_envelope_fields(fields: tuple[Any, ...], max_message: int | None) -> None:
    v, epoch, sender, recipient, lane, seq, ts, prev, type_, body = fields
    if type(v) is not int or v not in (1, VERSION) or (v == 1 and lane != ROUTINE):
        raise DecodeError(f"unsupported envelope version {v!r}")
    _check_bin(epoch, "epoch", EPOCH_LEN)
    _check_bin(sender, "from", KEY_LEN)
    _check_bin(recipient, "to", KEY_LEN)
    _check_lane(lane)
    _check_int(seq, "seq", 1, MAX_SEQ)
    _check_int(ts, "ts", 0, MAX_TS)
    _check_bin(prev, "prev", HASH_LEN)
    if not is_media_type(type_):
        raise DecodeError("type must be a media type such as text/plain (<= 64 chars)")
    if type(body) is not bytes:
        raise DecodeError("body must be bytes")
    if max_message is not None and len(body) > max_message:
        raise LimitError(f"body of {len(body)} bytes is over max_message {max_message}")


def _check_lane(lane: object) -> None:
    if type(lane) is not int or lane not in LANES:
        raise DecodeError("lane must be an integer in [0, 3]")


def _check_receipt_fields(fields: tuple[Any, ...]) -> None:
    v, sender, recipient, epoch, lane, upto, chain = fields
    if type(v) is not int or v not in (1, RECEIPT_VERSION):
        raise DecodeError(f"unsupported receipt version {v!r}")
    if v == RECEIPT_VERSION:
        _check_bin(epoch, "receipt epoch", EPOCH_LEN)
    _check_lane(lane)
    _check_bin(sender, "receipt sender", KEY_LEN)
    _check_bin(recipient, "receipt recipient", KEY_LEN)
    _check_int(upto, "receipt upto", 1, MAX_SEQ)
    _check_bin(chain, "receipt chain", HASH_LEN)


# --- SSHSIG signatures ----------------------------------------------------------------


def sshsig_signed_data(namespace: str, data: bytes) -> bytes:
    """The bytes an SSHSIG signature covers (PROTOCOL.sshsig, hash sha512)."""
    return (
        SSHSIG_MAGIC + ssh_string(namespace.encode()) + ssh_string(b"")
        + ssh_string(SSHSIG_HASH.encode()) + ssh_string(hashlib.sha512(data).digest())
    )


def sign_envelope(identity: Identity, raw: bytes) -> bytes:
    """The raw 64-byte Ed25519 SSHSIG signature (namespace ``hotline``) of envelope bytes."""
    return identity.sign(sshsig_signed_data(NAMESPACE_ENVELOPE, raw))


def verify_envelope(public: PublicKey, raw: bytes, sig: bytes) -> None:
    """Check an envelope signature by ``public``.

    Raises:
        AuthenticationError: the signature does not verify.
    """
    public.verify(sig, sshsig_signed_data(NAMESPACE_ENVELOPE, raw))


def sign_receipt(identity: Identity, raw: bytes) -> bytes:
    """The raw 64-byte signature (namespace ``hotline-receipt``) of receipt bytes."""
    return identity.sign(sshsig_signed_data(NAMESPACE_RECEIPT, raw))


def verify_receipt(public: PublicKey, raw: bytes, sig: bytes) -> None:
    """Check a receipt signature by ``public``.

    Raises:
        AuthenticationError: the signature does not verify.
    """
    public.verify(sig, sshsig_signed_data(NAMESPACE_RECEIPT, raw))


def armor_signature(public: PublicKey, namespace: str, sig: bytes) -> str:
    """The armored SSHSIG file (``msg.sig``) exactly as ``ssh-keygen -Y sign`` writes it."""
    if len(sig) != SIG_LEN:
        raise LocalProtocolError("an Ed25519 signature is 64 bytes")
    blob = (
        SSHSIG_MAGIC + ssh_uint32(SSHSIG_VERSION) + ssh_string(public.ssh_blob())
        + ssh_string(namespace.encode()) + ssh_string(b"")
        + ssh_string(SSHSIG_HASH.encode()) + ssh_string(ssh_string(_ED25519) + ssh_string(sig))
    )
    b64 = base64.b64encode(blob).decode()
    lines = [b64[i : i + ARMOR_WIDTH] for i in range(0, len(b64), ARMOR_WIDTH)]
    return "\n".join([ARMOR_BEGIN, *lines, ARMOR_END]) + "\n"


def dearmor_signature_untrusted(text: str) -> tuple[bytes, str, bytes]:
    """Parse an armored Ed25519 SSHSIG file. Returns (public key raw, namespace, sig).

    Raises:
        LimitError: the text is too long.
        DecodeError: not an armored ssh-ed25519 SSHSIG with hash sha512.
    """
    if len(text) > MAX_ARMOR:
        raise LimitError("armored signature is too long")
    lines = text.strip().splitlines()
    if len(lines) < 3 or lines[0] != ARMOR_BEGIN or lines[-1] != ARMOR_END:
        raise DecodeError("not an armored SSH signature")
    try:
        blob = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError) as err:
        raise DecodeError("armored SSH signature has bad base64") from err
    return _parse_sshsig_blob(SSHReader(blob))


def _parse_sshsig_blob(reader: SSHReader) -> tuple[bytes, str, bytes]:
    if reader.raw(len(SSHSIG_MAGIC)) != SSHSIG_MAGIC or reader.uint32() != SSHSIG_VERSION:
        raise DecodeError("not an SSHSIG version 1 blob")
    key = SSHReader(reader.string())
    if key.string() != _ED25519:
        raise DecodeError("SSHSIG key is not ssh-ed25519")
    public = key.string()
    key.expect_end()
    namespace = reader.string()
    if reader.string() != b"" or reader.string() != SSHSIG_HASH.encode():
        raise DecodeError("SSHSIG reserved field or hash algorithm not supported")
    sig_blob = SSHReader(reader.string())
    reader.expect_end()
    if sig_blob.string() != _ED25519:
        raise DecodeError("SSHSIG signature is not ssh-ed25519")
    sig = sig_blob.string()
    sig_blob.expect_end()
    if len(public) != KEY_LEN or len(sig) != SIG_LEN:
        raise DecodeError("SSHSIG ed25519 key or signature has a bad length")
    try:
        return public, namespace.decode("ascii"), sig
    except UnicodeDecodeError as err:
        raise DecodeError("SSHSIG namespace is not ASCII") from err
