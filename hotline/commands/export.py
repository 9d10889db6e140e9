"""``hotline export SEQ DIR``: one stored message as files stock OpenSSH can verify.

Writes into DIR (created 0700 if missing):

* ``msg`` — the exact envelope bytes as signed, sent and stored (msgpack, DESIGN §4);
* ``msg.sig`` — the armored SSHSIG signature, byte for byte what ``ssh-keygen -Y sign
  -n hotline`` would have written for that key and message;
* ``allowed_signers`` — one line ``NAME namespaces="hotline" ssh-ed25519 AAAA…`` for
  the signer, so the printed command works as is:
  ``ssh-keygen -Y verify -f DIR/allowed_signers -I NAME -n hotline -s DIR/msg.sig < DIR/msg``.

``--direction in`` (default) exports a message received from the peer (latest peer
epoch), signed by the pinned peer key and named by ``peer.name``; ``out`` exports one
we sent, signed by our key and named by its comment (``self`` if it has none usable).
The signature is checked before anything is written.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from hotline.errors import CheckFailedError, RemoteProtocolError, UsageError, UserError
from hotline.proto import envelope as ev
from hotline.proto.identity import PublicKey
from hotline.store import Store

_PRINCIPAL = re.compile(r"[A-Za-z0-9._@+-]{1,64}")


@dataclass(frozen=True)
class Signer:
    """Who signed the exported message: the principal name and key for allowed_signers."""

    name: str
    public: PublicKey


def run(args: argparse.Namespace) -> int:
    """Entry point of ``hotline export -c FILE SEQ DIR [--direction in|out]``."""
    from hotline.config import find_config, load_config
    from hotline.keyfile import load_identity_with_comment

    config = load_config(find_config(args.config, args.link))
    identity, comment = load_identity_with_comment(config.key_path)
    outgoing = args.direction == "out"
    signer = (Signer(comment if _PRINCIPAL.fullmatch(comment) else "self", identity.public)
              if outgoing else Signer(config.peer_name, config.peer_key))
    store = Store.open(config.state_dir, identity.public.raw, config.peer_key.raw,
                       create=False)
    try:
        directory = Path(args.dir)
        export_message(store, args.seq, outgoing, directory, signer)
    finally:
        store.close()
    print(f"wrote {directory / 'msg'}, msg.sig and allowed_signers "
          f"({'sent' if outgoing else 'received'} seq {args.seq}, signed by {signer.name})")
    print("verify with: " + verify_command(directory, signer.name))
    return 0


def verify_command(directory: Path, name: str) -> str:
    """The stock OpenSSH command that checks an export in ``directory``."""
    q = shlex.quote
    return (f"ssh-keygen -Y verify -f {q(str(directory / 'allowed_signers'))} -I {q(name)} "
            f"-n {ev.NAMESPACE_ENVELOPE} -s {q(str(directory / 'msg.sig'))} "
            f"< {q(str(directory / 'msg'))}")


def export_message(
    store: Store, seq: int, outgoing: bool, directory: Path, signer: Signer,
) -> None:
    """Write ``msg``, ``msg.sig`` and ``allowed_signers`` for one stored message.

    Raises:
        UsageError: no such message in the store.
        CheckFailedError: its stored signature does not verify (nothing is written).
        UserError: DIR cannot be written.
    """
    record = store.get_outgoing(seq) if outgoing else store.get_incoming(seq)
    if record is None:
        what = "sent message" if outgoing else "received message (latest peer epoch)"
        raise UsageError(f"no {what} with seq {seq} in {store.path}")
    try:
        ev.verify_envelope(signer.public, record.raw, record.sig)
    except RemoteProtocolError as err:
        raise CheckFailedError(
            f"seq {seq}: the stored signature does not verify; not exporting it") from err
    armored = ev.armor_signature(signer.public, ev.NAMESPACE_ENVELOPE, record.sig)
    allowed = (f'{signer.name} namespaces="{ev.NAMESPACE_ENVELOPE}" '
               f"{signer.public.openssh_line()}\n")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (directory / "msg").write_bytes(record.raw)
        (directory / "msg.sig").write_text(armored)
        (directory / "allowed_signers").write_text(allowed)
    except OSError as err:
        raise UserError(f"cannot write to {directory}: {err.strerror}") from err
