"""proto/identity.py: OpenSSH formats, fingerprints, X25519 derivation, parser robustness."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from hotline.errors import AuthenticationError, DecodeError, KeyFileError, LocalProtocolError
from hotline.proto.identity import Identity, PublicKey, parse_openssh_line
from hotline.proto.sshwire import SSHReader, ssh_string, ssh_uint32

# A key written by `ssh-keygen -t ed25519 -N '' -C me@host` (OpenSSH 9.2).
SSH_KEYGEN_PRIVATE = b"""\
-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDj2Y1Xjo4rIhWbY2fRfHlmPuNYzPcIej+YK0lv3dWXyAAAAJDliGW05Yhl
tAAAAAtzc2gtZWQyNTUxOQAAACDj2Y1Xjo4rIhWbY2fRfHlmPuNYzPcIej+YK0lv3dWXyA
AAAEDMnyDV5Fnr0hPlxYwpkuf9xQAMZiS9ZtNosbXEJAthxuPZjVeOjisiFZtjZ9F8eWY+
41jM9wh6P5grSW/d1ZfIAAAAB21lQGhvc3QBAgMEBQY=
-----END OPENSSH PRIVATE KEY-----
"""
SSH_KEYGEN_PUB = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPZjVeOjisiFZtjZ9F8eWY+41jM9wh6P5grSW/d1ZfI me@host"
)
SSH_KEYGEN_FP = "SHA256:aSIWlZ3JdBKGDsW9EeOeyNkwpFNHqadKxHypERq94iI"
SSH_KEYGEN_CHECKINT = 0xE58865B4

seeds = st.binary(min_size=32, max_size=32)


def _ident(n: int = 1) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


def _pem_body(text: bytes) -> bytes:
    return base64.b64decode(b"".join(text.strip().splitlines()[1:-1]))


def _armor(body: bytes) -> bytes:
    b64 = base64.b64encode(body).decode()
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    return ("\n".join(["-----BEGIN OPENSSH PRIVATE KEY-----", *lines,
                       "-----END OPENSSH PRIVATE KEY-----"]) + "\n").encode()


def _container(section: bytes, cipher: bytes = b"none", kdf: bytes = b"none",
               kdfopts: bytes = b"", nkeys: int = 1, pub: bytes | None = None) -> bytes:
    pub = _ident().public.ssh_blob() if pub is None else pub
    return (b"openssh-key-v1\x00" + ssh_string(cipher) + ssh_string(kdf) + ssh_string(kdfopts)
            + ssh_uint32(nkeys) + ssh_string(pub) + ssh_string(section))


def _section(ident: Identity, c1: int = 7, c2: int = 7, pk: bytes | None = None,
             sk: bytes | None = None, comment: bytes = b"c", pad: bytes | None = None,
             ktype: bytes = b"ssh-ed25519") -> bytes:
    pk = ident.public.raw if pk is None else pk
    sk = ident.seed + ident.public.raw if sk is None else sk
    s = (ssh_uint32(c1) + ssh_uint32(c2) + ssh_string(ktype) + ssh_string(pk) + ssh_string(sk)
         + ssh_string(comment))
    return s + (bytes(range(1, 1 + (-len(s)) % 8)) if pad is None else pad)


# --- ssh-keygen compatibility ---------------------------------------------------------


def test_ssh_keygen_key_loads_and_gives_back_its_pub_line() -> None:
    ident, comment = Identity.from_openssh_private(SSH_KEYGEN_PRIVATE)
    assert comment == "me@host"
    assert ident.public.openssh_line(comment) == SSH_KEYGEN_PUB
    assert ident.public.fingerprint() == SSH_KEYGEN_FP
    assert PublicKey.from_openssh_line(SSH_KEYGEN_PUB) == ident.public


def test_to_openssh_private_is_byte_identical_to_ssh_keygen() -> None:
    ident, comment = Identity.from_openssh_private(SSH_KEYGEN_PRIVATE)
    assert ident.to_openssh_private(comment, SSH_KEYGEN_CHECKINT) == SSH_KEYGEN_PRIVATE


@given(seed=seeds, comment=st.text(max_size=80).filter(lambda c: "\n" not in c and "\r" not in c),
       checkint=st.integers(0, 2**32 - 1))
@settings(max_examples=50)
def test_private_round_trip(seed: bytes, comment: str, checkint: int) -> None:
    ident = Identity.from_seed(seed)
    text = ident.to_openssh_private(comment, checkint)
    assert all(len(line) <= 70 for line in text.splitlines())
    back, back_comment = Identity.from_openssh_private(text)
    assert back == ident
    assert back.public == ident.public
    assert back_comment == comment


@given(seed=seeds)
@settings(max_examples=50)
def test_public_line_round_trip(seed: bytes) -> None:
    pub = Identity.from_seed(seed).public
    assert PublicKey.from_openssh_line(pub.openssh_line("a b  c")) == pub
    assert parse_openssh_line(pub.openssh_line("a b  c")) == (pub, "a b  c")
    assert parse_openssh_line(pub.openssh_line()) == (pub, "")
    assert pub.openssh_line() == pub.openssh_line().strip()


def test_fingerprint_is_sha256_of_blob_unpadded() -> None:
    pub = _ident().public
    digest = base64.b64encode(hashlib.sha256(pub.ssh_blob()).digest()).decode()
    assert pub.fingerprint() == "SHA256:" + digest.rstrip("=")
    assert pub.ssh_blob() == b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + pub.raw


# --- X25519 derivation (DESIGN §1) ---------------------------------------------------


@given(seed=seeds)
@settings(max_examples=200)
def test_x25519_public_of_converted_private_equals_converted_public(seed: bytes) -> None:
    ident = Identity.from_seed(seed)
    derived = X25519PrivateKey.from_private_bytes(ident.x25519_private()).public_key()
    assert derived.public_bytes_raw() == ident.public.x25519()


def test_x25519_matches_libsodium_vector() -> None:
    # libsodium test/default/ed25519_convert.c
    seed = bytes.fromhex("421151a459faeade3d247115f94aedae42318124095afabe4d1451a559faedee")
    ident = Identity.from_seed(seed)
    assert ident.public.x25519().hex() == (
        "f1814f0e8ff1043d8a44d25babff3cedcae6c22c3edaa48f857ae70de2baae50")
    assert ident.x25519_private().hex() == (
        "8052030376d47112be7f73ed7a019293dd12ad910b654455798b4667d73de166")


def test_x25519_ignores_sign_bit_and_rejects_identity_point() -> None:
    raw = _ident().public.raw
    flipped = PublicKey.from_raw(raw[:31] + bytes([raw[31] ^ 0x80]))
    assert flipped.x25519() == _ident().public.x25519()
    identity_point = PublicKey.from_raw((1).to_bytes(32, "little"))
    with pytest.raises(KeyFileError):
        identity_point.x25519()
    assert not identity_point.is_valid_point()


def test_x25519_private_is_clamped() -> None:
    k = _ident(9).x25519_private()
    assert k[0] & 7 == 0
    assert k[31] & 0x80 == 0
    assert k[31] & 0x40


# --- sign / verify ----------------------------------------------------------------------


def test_sign_verify() -> None:
    ident = _ident()
    sig = ident.sign(b"hello")
    assert len(sig) == 64
    ident.public.verify(sig, b"hello")
    with pytest.raises(AuthenticationError):
        ident.public.verify(sig, b"hellO")
    with pytest.raises(AuthenticationError):
        _ident(2).public.verify(sig, b"hello")
    with pytest.raises(AuthenticationError):
        ident.public.verify(sig[:63], b"hello")
    with pytest.raises(AuthenticationError):
        PublicKey.from_raw(b"\xff" * 32).verify(sig, b"hello")


def test_generate_and_repr_hide_the_seed() -> None:
    a, b = Identity.generate(), Identity.generate()
    assert a != b
    assert a.seed.hex() not in repr(a)
    assert "SHA256:" in repr(a)
    assert Identity.generate(lambda n: b"\x05" * n) == _ident(5)


def test_from_raw_and_seed_lengths() -> None:
    with pytest.raises(DecodeError):
        PublicKey.from_raw(b"x" * 31)
    with pytest.raises(LocalProtocolError):
        Identity.from_seed(b"x" * 33)
    with pytest.raises(LocalProtocolError):
        _ident().public.openssh_line("two\nlines")


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    "",
    "ssh-ed25519",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 me",
    "ecdsa-sha2-nistp256 AAAAE2VjZHNh me",
    "ssh-ed25519 AAAA!!!! me",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPZjVeOjisiFZtjZ9F8eWY+41jM9wh6P5grSW/d1Zf me",
    # an ssh-rsa blob under an ssh-ed25519 label
    "ssh-ed25519 " + base64.b64encode(ssh_string(b"ssh-rsa") + ssh_string(b"x" * 32)).decode(),
    # 31-byte key, trailing byte
    "ssh-ed25519 " + base64.b64encode(ssh_string(b"ssh-ed25519") + ssh_string(b"x" * 31)).decode(),
    "ssh-ed25519 " + base64.b64encode(_ident().public.ssh_blob() + b"\0").decode(),
    # the identity point and a non-canonical y
    "ssh-ed25519 " + base64.b64encode(PublicKey.from_raw((1).to_bytes(32, "little")).ssh_blob())
    .decode(),
    "ssh-ed25519 " + base64.b64encode(PublicKey.from_raw(b"\xff" * 31 + b"\x7f").ssh_blob())
    .decode(),
    "ssh-ed25519 A" + "A" * 9000,
])
def test_bad_public_lines_raise_key_file_error(line: str) -> None:
    with pytest.raises(KeyFileError):
        PublicKey.from_openssh_line(line)


def _raises(text: bytes, match: str | None = None) -> None:
    with pytest.raises(KeyFileError, match=match):
        Identity.from_openssh_private(text)


def test_encrypted_key_refused_with_advice() -> None:
    body = _container(b"\0" * 16, cipher=b"aes256-ctr", kdf=b"bcrypt", kdfopts=b"salt")
    _raises(_armor(body), "passphrase-protected keys are not supported.*ssh-keygen -p")


def test_check_integers_must_match() -> None:
    _raises(_armor(_container(_section(_ident(), c1=1, c2=2))), "check integers")


def test_public_in_private_section_must_match_seed() -> None:
    ident, other = _ident(1), _ident(2)
    bad = _section(ident, pk=other.public.raw, sk=ident.seed + other.public.raw)
    _raises(_armor(_container(bad, pub=other.public.ssh_blob())), "does not match the seed")


def test_outer_public_blob_must_match() -> None:
    _raises(_armor(_container(_section(_ident(1)), pub=_ident(2).public.ssh_blob())),
            "do not match")


@pytest.mark.parametrize("text", [
    b"",
    b"garbage",
    b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNz\n",
    b"-----BEGIN OPENSSH PRIVATE KEY-----\n!!!!\n-----END OPENSSH PRIVATE KEY-----\n",
    b"\xff\xfe",
    _armor(b"openssh-key-v2\x00"),
    _armor(_container(_section(_ident()), nkeys=2)),
    _armor(_container(_section(_ident()), kdfopts=b"x")),
    _armor(_container(_section(_ident(), ktype=b"ssh-rsa"))),
    _armor(_container(_section(_ident(), pad=b"\1\2\3\4\5\6\7\x09"))),
    _armor(_container(_section(_ident(), pad=b"\1\2\3"))),
    _armor(_container(_section(_ident(), sk=b"\0" * 64))),
    _armor(_container(_section(_ident())) + b"\0"),
    SSH_KEYGEN_PRIVATE * 100,
])
def test_malformed_private_keys_raise_key_file_error(text: bytes) -> None:
    _raises(text)


@given(data=st.binary(max_size=600))
def test_random_bytes_only_raise_key_file_error(data: bytes) -> None:
    with pytest.raises(KeyFileError):
        Identity.from_openssh_private(data)
    with pytest.raises(KeyFileError):
        Identity.from_openssh_private(_armor(data))


@given(pos=st.integers(0, 10_000), value=st.integers(0, 255), cut=st.integers(0, 400))
@settings(max_examples=300)
def test_mutated_private_key_only_raises_key_file_error(pos: int, value: int, cut: int) -> None:
    body = bytearray(_pem_body(SSH_KEYGEN_PRIVATE))
    body[pos % len(body)] = value
    for text in (_armor(bytes(body)), _armor(bytes(body[:cut])),
                 SSH_KEYGEN_PRIVATE[:cut] + SSH_KEYGEN_PRIVATE[cut + 1 :]):
        try:
            ident, _ = Identity.from_openssh_private(text)
        except KeyFileError:
            continue
        # Only bytes that do not matter (comment, check values kept equal) may change.
        assert ident.public.fingerprint() == SSH_KEYGEN_FP


@given(line=st.text(max_size=200))
def test_random_public_lines_only_raise_key_file_error(line: str) -> None:
    with contextlib.suppress(KeyFileError):
        PublicKey.from_openssh_line(line)


@given(pos=st.integers(0, 200), value=st.integers(0, 255))
def test_mutated_public_blob_only_raises_key_file_error(pos: int, value: int) -> None:
    blob = bytearray(_ident().public.ssh_blob())
    blob[pos % len(blob)] = value
    try:
        key = PublicKey.from_openssh_line("ssh-ed25519 " + base64.b64encode(blob).decode())
    except KeyFileError:
        return
    assert key.is_valid_point()


def test_reader_used_on_section_is_exact() -> None:
    # Sanity of the test helpers: our builder produces what ssh-keygen's file contains.
    body = _pem_body(SSH_KEYGEN_PRIVATE)
    r = SSHReader(body)
    r.raw(15)
    for _ in range(3):
        r.string()
    assert r.uint32() == 1
    r.string()
    section = r.string()
    ident, _ = Identity.from_openssh_private(SSH_KEYGEN_PRIVATE)
    assert section == _section(ident, SSH_KEYGEN_CHECKINT, SSH_KEYGEN_CHECKINT, comment=b"me@host")
