"""Noise handshake patterns (spec §7, §9) and protocol-name parsing.

Owns the table of all 59 base patterns in the spec's own notation (§7.4 one-way, §7.5
fundamental, §7.6 deferred) and the rule that applies psk modifiers (§9.2: ``psk0``
starts the first message, ``pskN`` ends message N). ``noise.py`` walks the tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from hotline.errors import LocalProtocolError

# Spec notation: pre-messages, "...", then messages; "->" initiator to responder.
_PATTERNS = {
    # §7.4 one-way
    "N": "<- s; ...; -> e, es",
    "K": "-> s; <- s; ...; -> e, es, ss",
    "X": "<- s; ...; -> e, es, s, ss",
    # §7.5 interactive, fundamental
    "NN": "-> e; <- e, ee",
    "NK": "<- s; ...; -> e, es; <- e, ee",
    "NX": "-> e; <- e, ee, s, es",
    "XN": "-> e; <- e, ee; -> s, se",
    "XK": "<- s; ...; -> e, es; <- e, ee; -> s, se",
    "XX": "-> e; <- e, ee, s, es; -> s, se",
    "KN": "-> s; ...; -> e; <- e, ee, se",
    "KK": "-> s; <- s; ...; -> e, es, ss; <- e, ee, se",
    "KX": "-> s; ...; -> e; <- e, ee, se, s, es",
    "IN": "-> e, s; <- e, ee, se",
    "IK": "<- s; ...; -> e, es, s, ss; <- e, ee, se",
    "IX": "-> e, s; <- e, ee, se, s, es",
    # §7.6 interactive, deferred
    "NK1": "<- s; ...; -> e; <- e, ee, es",
    "NX1": "-> e; <- e, ee, s; -> es",
    "X1N": "-> e; <- e, ee; -> s; <- se",
    "X1K": "<- s; ...; -> e, es; <- e, ee; -> s; <- se",
    "XK1": "<- s; ...; -> e; <- e, ee, es; -> s, se",
    "X1K1": "<- s; ...; -> e; <- e, ee, es; -> s; <- se",
    "X1X": "-> e; <- e, ee, s, es; -> s; <- se",
    "XX1": "-> e; <- e, ee, s; -> es, s, se",
    "X1X1": "-> e; <- e, ee, s; -> es, s; <- se",
    "K1N": "-> s; ...; -> e; <- e, ee; -> se",
    "K1K": "-> s; <- s; ...; -> e, es; <- e, ee; -> se",
    "KK1": "-> s; <- s; ...; -> e; <- e, ee, se, es",
    "K1K1": "-> s; <- s; ...; -> e; <- e, ee, es; -> se",
    "K1X": "-> s; ...; -> e; <- e, ee, s, es; -> se",
    "KX1": "-> s; ...; -> e; <- e, ee, se, s; -> es",
    "K1X1": "-> s; ...; -> e; <- e, ee, s; -> se, es",
    "I1N": "-> e, s; <- e, ee; -> se",
    "I1K": "<- s; ...; -> e, es, s; <- e, ee; -> se",
    "IK1": "<- s; ...; -> e, s; <- e, ee, se, es",
    "I1K1": "<- s; ...; -> e, s; <- e, ee, es; -> se",
    "I1X": "-> e, s; <- e, ee, s, es; -> se",
    "IX1": "-> e, s; <- e, ee, se, s; -> es",
    "I1X1": "-> e, s; <- e, ee, s; -> se, es",
}

_NAME = re.compile(r"Noise_([A-Z0-9]+)((?:psk[0-9]+)?(?:\+psk[0-9]+)*)_25519_ChaChaPoly_"
                   r"(BLAKE2s|BLAKE2b|SHA256|SHA512)")
_DH_TOKENS = frozenset({"ee", "es", "se", "ss"})


@dataclass(frozen=True)
class Pattern:
    """A parsed handshake pattern: pre-message tokens per side, then the messages."""

    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]  # message i: initiator -> responder iff i even
    psk: bool

    @property
    def one_way(self) -> bool:
        """True for N, K, X (and their psk forms): a single message."""
        return len(self.messages) == 1


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(","))


def parse_pattern(base: str, psk_modifiers: Sequence[int] = ()) -> Pattern:
    """Build a Pattern from a base name (``"KK"``) and psk positions (``[0, 2]``).

    Raises:
        LocalProtocolError: unknown pattern or a psk position past the last message.
    """
    if base not in _PATTERNS:
        raise LocalProtocolError(f"unknown handshake pattern {base!r}")
    parts = [p.strip() for p in _PATTERNS[base].split(";")]
    pre, msgs = (parts[: parts.index("...")], parts[parts.index("...") + 1:]) \
        if "..." in parts else ([], parts)
    pre_i = next((_tokens(p[2:]) for p in pre if p.startswith("->")), ())
    pre_r = next((_tokens(p[2:]) for p in pre if p.startswith("<-")), ())
    messages = [list(_tokens(m[2:])) for m in msgs]
    for n in psk_modifiers:
        if n > len(messages):
            raise LocalProtocolError(f"psk{n} past the last message of {base}")
        if n == 0:
            messages[0].insert(0, "psk")
        else:
            messages[n - 1].append("psk")
    return Pattern(pre_i, pre_r, tuple(tuple(m) for m in messages), bool(psk_modifiers))


def parse_protocol_name(name: str) -> tuple[Pattern, str]:
    """Split ``Noise_KKpsk2_25519_ChaChaPoly_BLAKE2s`` into (Pattern, hash name).

    Raises:
        LocalProtocolError: a name or primitive this module does not implement.
    """
    match = _NAME.fullmatch(name)
    if match is None:
        raise LocalProtocolError(f"unsupported Noise protocol name {name!r}")
    base, modifiers, hash_name = match.groups()
    psks = [int(m[3:]) for m in modifiers.split("+") if m]
    return parse_pattern(base, psks), hash_name
