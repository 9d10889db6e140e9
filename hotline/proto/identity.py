"""Ed25519 identities: OpenSSH key formats, fingerprints and the X25519 twin key.

Owns the one long-term key of each end (DESIGN §1). Two classes:

* ``PublicKey`` — a frozen 32-byte Ed25519 public key. It reads and writes the
  ``ssh-ed25519 AAAA… comment`` line of a ``.pub`` file, computes the ``SHA256:…``
  fingerprint exactly as ``ssh-keygen -lf`` prints it (SHA-256 of the SSH wire blob,
  base64 without padding), verifies raw Ed25519 signatures, and converts itself to the
  X25519 public key the Noise handshake uses: Edwards ``y`` → Montgomery
  ``u = (1 + y) / (1 - y) mod 2^255 - 19``, as age and libsodium's
  ``crypto_sign_ed25519_pk_to_curve25519`` do.
* ``Identity`` — the private half (the 32-byte seed). It reads and writes the
  unencrypted ``openssh-key-v1`` PEM file that ``ssh-keygen -t ed25519 -N ''`` writes,
  byte for byte (70-column base64, padding 1, 2, 3…, cipher and KDF ``none``), signs,
  and derives the X25519 private key ``clamp(SHA-512(seed)[0:32])`` — the same scalar
  Ed25519 itself uses, which is why the two X25519 halves match.

Layout of ``openssh-key-v1`` (OpenSSH ``PROTOCOL.key``)::

    "openssh-key-v1\\0" | string cipher | string kdf | string kdfoptions | uint32 nkeys
    | string public_blob | string private_section
    private_section = uint32 check | uint32 check | string "ssh-ed25519" | string pk(32)
                      | string seed‖pk (64) | string comment | padding 1, 2, 3… to 8 bytes

Key files come from operators, not from the network, so every malformed input raises
``KeyFileError`` (the parser wraps the ``DecodeError`` of ``SSHReader``). Input size is
capped before decoding. The module is sans-IO; ``cryptography`` is imported lazily, on
the first sign/verify/generate, so that reading a config with a pinned ``.pub`` line
(done by fast client commands) does not pay for importing it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hotline.errors import (
    AuthenticationError,
    DecodeError,
    KeyFileError,
    LocalProtocolError,
)
from hotline.proto.sshwire import SSHReader, ssh_string, ssh_uint32

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

KEY_TYPE = "ssh-ed25519"
_KEY_TYPE_B = KEY_TYPE.encode()
RAW_LEN = 32
SIGNATURE_LEN = 64

# Curve25519 / edwards25519 constants (RFC 7748, RFC 8032).
_P = 2**255 - 19
_D = (-121665 * pow(121666, -1, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

# openssh-key-v1 (PROTOCOL.key).
_PEM_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_PEM_END = "-----END OPENSSH PRIVATE KEY-----"
_AUTH_MAGIC = b"openssh-key-v1\x00"
_PEM_WIDTH = 70  # ssh-keygen's base64 line width
_BLOCK = 8  # cipher "none" block size: the private section is padded to it
MAX_PRIVATE_FILE = 16 * 1024  # an ed25519 key file is ~400 bytes; refuse big inputs early
MAX_PUBLIC_LINE = 8 * 1024

_ENCRYPTED_MSG = (
    "passphrase-protected keys are not supported; remove the passphrase with "
    "ssh-keygen -p -N '' -f FILE (and keep the file mode 0600)"
)


def _ed25519_public(raw: bytes) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def _ed25519_private(seed: bytes) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed)


def _is_on_curve(y: int, sign: int) -> bool:
    """True if ``y`` (canonical) with x-sign ``sign`` decodes to a point (RFC 8032 §5.1.3)."""
    y2 = y * y % _P
    u, v = (y2 - 1) % _P, (_D * y2 + 1) % _P
    x2 = u * pow(v, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return False
    return not (x == 0 and sign == 1)


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key (32 bytes, RFC 8032 encoding). Immutable and hashable."""

    raw: bytes
    _verifier: list[Ed25519PublicKey] = field(
        default_factory=list, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != RAW_LEN:
            raise DecodeError(f"an Ed25519 public key is {RAW_LEN} bytes")

    @classmethod
    def from_raw(cls, raw: bytes) -> PublicKey:
        """Wrap 32 raw bytes (no point validation; ``verify`` simply fails on junk).

        Raises:
            DecodeError: if ``raw`` is not 32 bytes.
        """
        return cls(bytes(raw))

    @classmethod
    def from_openssh_line(cls, line: str) -> PublicKey:
        """Parse a ``ssh-ed25519 BASE64 [comment]`` line (as in a ``.pub`` file).

        Raises:
            KeyFileError: another key type, bad base64, a malformed blob, or a point that
                is not a usable Ed25519 key.
        """
        return parse_openssh_line(line)[0]

    def openssh_line(self, comment: str = "") -> str:
        """The ``.pub`` line: ``ssh-ed25519 AAAA… comment`` (no comment: no trailing space).

        Raises:
            LocalProtocolError: if ``comment`` contains a line break.
        """
        if "\n" in comment or "\r" in comment:
            raise LocalProtocolError("a key comment cannot contain a line break")
        b64 = base64.b64encode(self.ssh_blob()).decode()
        return f"{KEY_TYPE} {b64} {comment}" if comment else f"{KEY_TYPE} {b64}"

    def ssh_blob(self) -> bytes:
        """SSH wire encoding: ``string "ssh-ed25519" | string raw`` (RFC 8709 §4)."""
        return ssh_string(_KEY_TYPE_B) + ssh_string(self.raw)

    def fingerprint(self) -> str:
        """``SHA256:<base64 without padding>`` of the blob, as ``ssh-keygen -lf`` prints."""
        digest = hashlib.sha256(self.ssh_blob()).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def x25519(self) -> bytes:
        """The X25519 public key (Montgomery u, 32 bytes LE) of this Edwards point.

        ``u = (1 + y) / (1 - y) mod p`` with the sign bit of the encoding cleared (the
        sign of x does not change u). DESIGN §1.

        Raises:
            KeyFileError: for the identity point (y = 1), which has no Montgomery u.
        """
        y = (int.from_bytes(self.raw, "little") & ((1 << 255) - 1)) % _P
        if (1 - y) % _P == 0:
            raise KeyFileError("this Ed25519 public key (the identity point) has no X25519 form")
        u = (1 + y) * pow(1 - y, -1, _P) % _P
        return u.to_bytes(32, "little")

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check a raw 64-byte Ed25519 signature over ``data``.

        Raises:
            AuthenticationError: if the signature (or the key itself) is not valid.
        """
        from cryptography.exceptions import InvalidSignature

        if len(signature) != SIGNATURE_LEN:
            raise AuthenticationError("Ed25519 signature must be 64 bytes")
        try:
            if not self._verifier:
                self._verifier.append(_ed25519_public(self.raw))
            self._verifier[0].verify(signature, data)
        except (InvalidSignature, ValueError) as err:
            raise AuthenticationError("Ed25519 signature does not verify") from err

    def is_valid_point(self) -> bool:
        """True if ``raw`` is a canonical encoding of a curve point other than y = ±1."""
        value = int.from_bytes(self.raw, "little")
        y, sign = value & ((1 << 255) - 1), value >> 255
        return y < _P and y not in (1, _P - 1) and _is_on_curve(y, sign)

    def __repr__(self) -> str:
        return f"PublicKey({self.fingerprint()})"


def parse_openssh_line(line: str) -> tuple[PublicKey, str]:
    """Parse ``ssh-ed25519 BASE64 [comment]`` into the key and its comment ("" if none).

    Raises:
        KeyFileError: as ``PublicKey.from_openssh_line``.
    """
    if len(line) > MAX_PUBLIC_LINE:
        raise KeyFileError("public key line is too long")
    parts = line.strip().split(maxsplit=2)
    if len(parts) < 2:
        raise KeyFileError("not an OpenSSH public key line (want 'ssh-ed25519 AAAA… comment')")
    if parts[0] != KEY_TYPE:
        raise KeyFileError(f"unsupported key type {parts[0][:40]!r}: only ssh-ed25519 keys")
    try:
        blob = base64.b64decode(parts[1].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as err:
        raise KeyFileError("public key line has bad base64") from err
    key = _public_from_blob(blob)
    if not key.is_valid_point():
        raise KeyFileError("public key is not a valid Ed25519 point")
    return key, parts[2].strip() if len(parts) > 2 else ""


def _public_from_blob(blob: bytes) -> PublicKey:
    """Decode ``string "ssh-ed25519" | string raw(32)``; KeyFileError if anything is off."""
    try:
        reader = SSHReader(blob)
        if reader.string() != _KEY_TYPE_B:
            raise KeyFileError("public key blob is not ssh-ed25519")
        raw = reader.string()
        reader.expect_end()
        return PublicKey.from_raw(raw)
    except DecodeError as err:
        raise KeyFileError(f"malformed ssh-ed25519 public key blob: {err}") from err


def _clamp(scalar: bytes) -> bytes:
    """RFC 7748 §5 clamping of a 32-byte little-endian scalar."""
    b = bytearray(scalar)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


class Identity:
    """An Ed25519 private key (the 32-byte seed) with its public key.

    ``repr`` never shows the seed.
    """

    __slots__ = ("_signer", "public", "seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != RAW_LEN:
            raise LocalProtocolError(f"an Ed25519 seed is {RAW_LEN} bytes")
        self.seed: bytes = bytes(seed)
        self._signer = _ed25519_private(self.seed)
        self.public: PublicKey = PublicKey.from_raw(self._signer.public_key().public_bytes_raw())

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] | None = None) -> Identity:
        """A fresh identity: seed from ``rng(32)`` if given, else the OS CSPRNG."""
        if rng is not None:
            return cls(rng(RAW_LEN))
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity with this 32-byte seed (RFC 8032 private key)."""
        return cls(seed)

    @classmethod
    def from_openssh_private(cls, text: bytes) -> tuple[Identity, str]:
        """Parse an unencrypted ``openssh-key-v1`` PEM file. Returns (identity, comment).

        Raises:
            KeyFileError: not that format, not ed25519, passphrase-protected, corrupt
                (check integers differ, bad padding, public half does not match the seed).
        """
        return _parse_private(_unarmor(text))

    def to_openssh_private(self, comment: str, checkint: int) -> bytes:
        """The PEM file ``ssh-keygen -t ed25519 -N ''`` would write (same bytes, given
        the same random ``checkint``, a uint32)."""
        pk = self.public.raw
        section = (
            ssh_uint32(checkint) + ssh_uint32(checkint)
            + ssh_string(_KEY_TYPE_B) + ssh_string(pk) + ssh_string(self.seed + pk)
            + ssh_string(comment.encode())
        )
        section += bytes(range(1, 1 + (-len(section)) % _BLOCK))
        body = (
            _AUTH_MAGIC + ssh_string(b"none") + ssh_string(b"none") + ssh_string(b"")
            + ssh_uint32(1) + ssh_string(self.public.ssh_blob()) + ssh_string(section)
        )
        b64 = base64.b64encode(body).decode()
        lines = [b64[i : i + _PEM_WIDTH] for i in range(0, len(b64), _PEM_WIDTH)]
        return ("\n".join([_PEM_BEGIN, *lines, _PEM_END]) + "\n").encode()

    def sign(self, data: bytes) -> bytes:
        """A raw 64-byte Ed25519 signature (RFC 8032, deterministic) over ``data``."""
        return self._signer.sign(data)

    def x25519_private(self) -> bytes:
        """The X25519 private key: ``clamp(SHA-512(seed)[0:32])`` (DESIGN §1)."""
        return _clamp(hashlib.sha512(self.seed).digest()[:32])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Identity):
            return NotImplemented
        return hmac.compare_digest(self.seed, other.seed)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Identity({self.public.fingerprint()})"


def _unarmor(text: bytes) -> bytes:
    """PEM armor → binary, checking the markers; KeyFileError on anything else."""
    if len(text) > MAX_PRIVATE_FILE:
        raise KeyFileError("private key file is too large for an ed25519 key")
    try:
        lines = text.decode("ascii").strip().splitlines()
    except UnicodeDecodeError as err:
        raise KeyFileError("not an OpenSSH private key (not ASCII text)") from err
    if not lines or lines[0].strip() != _PEM_BEGIN:
        other_pem = b"PRIVATE KEY-----" in text[:100]
        hint = " (to convert a PEM key: ssh-keygen -p -N '' -f FILE)" if other_pem else ""
        raise KeyFileError(f"not an OpenSSH private key (want '{_PEM_BEGIN}'){hint}")
    if len(lines) < 2 or lines[-1].strip() != _PEM_END:
        raise KeyFileError(f"OpenSSH private key is truncated (no '{_PEM_END}' line)")
    try:
        return binascii.a2b_base64("".join(s.strip() for s in lines[1:-1]), strict_mode=True)
    except binascii.Error as err:
        raise KeyFileError(f"OpenSSH private key has bad base64: {err}") from err


def _parse_private(blob: bytes) -> tuple[Identity, str]:
    try:
        return _parse_private_blob(SSHReader(blob))
    except DecodeError as err:
        raise KeyFileError(f"malformed OpenSSH private key: {err}") from err


def _parse_private_blob(reader: SSHReader) -> tuple[Identity, str]:
    """The outer container: magic, cipher/kdf, one public blob, the private section."""
    if reader.raw(len(_AUTH_MAGIC)) != _AUTH_MAGIC:
        raise KeyFileError("not an OpenSSH private key (bad magic)")
    cipher, kdf, kdfoptions = reader.string(), reader.string(), reader.string()
    if cipher != b"none" or kdf != b"none":
        raise KeyFileError(_ENCRYPTED_MSG)
    if kdfoptions:
        raise KeyFileError("malformed OpenSSH private key: KDF options without a KDF")
    if reader.uint32() != 1:
        raise KeyFileError("OpenSSH private key file must hold exactly one key")
    public = _public_from_blob(reader.string())
    section = reader.string()
    reader.expect_end()
    if len(section) % _BLOCK:
        raise KeyFileError("malformed OpenSSH private key: private section not padded")
    identity, comment = _parse_private_section(SSHReader(section))
    if identity.public != public:
        raise KeyFileError("OpenSSH private key: public and private halves do not match")
    return identity, comment


def _parse_private_section(reader: SSHReader) -> tuple[Identity, str]:
    """checkint twice, the ed25519 key (pk, seed‖pk), comment, padding 1, 2, 3…"""
    if reader.uint32() != reader.uint32():
        raise KeyFileError("OpenSSH private key is corrupt (check integers differ)")
    key_type = reader.string()
    if key_type != _KEY_TYPE_B:
        raise KeyFileError(
            f"unsupported key type {key_type[:40].decode('ascii', 'replace')!r}: "
            "only ssh-ed25519 keys")
    pk, sk = reader.string(), reader.string()
    if len(pk) != RAW_LEN or len(sk) != 2 * RAW_LEN or sk[RAW_LEN:] != pk:
        raise KeyFileError("malformed ssh-ed25519 private key")
    comment = reader.string().decode("utf-8", "replace")
    padding = reader.raw(reader.remaining())
    if padding != bytes(range(1, len(padding) + 1)):
        raise KeyFileError("malformed OpenSSH private key: bad padding")
    identity = Identity(sk[:RAW_LEN])
    if identity.public.raw != pk:
        raise KeyFileError("OpenSSH private key: the public key does not match the seed")
    return identity, comment
