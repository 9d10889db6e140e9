"""What an initiation must pass before it may cost a Diffie-Hellman (DESIGN §2b).

Owns the responder's defence against handshake floods. mac1 is keyed by our *public*
key, so anyone with the two ``.pub`` lines can make initiations that pass it; nothing
such a stranger sends may spend the budget the real peer needs. Checks, cheapest first
(``HandshakeGuard.screen_initiation_untrusted``):

1. size, type, mac1 — one hash (``cookie.py``).
2. Exact repeats: the mac1 of every initiation that was let through to the DH is kept
   in a bounded set (``GuardLimits.recent``); the same initiation again is dropped before anything
   else, so replaying a captured initiation costs us one hash per copy. Only
   initiations that reached the DH enter the set, so junk cannot flush it faster than
   the DH budget allows (at 52/s, 4,096 entries last over a minute).
3. Under load, an initiation from an address the transport has not proven (UDP) must
   carry a valid mac2 for its source address; if it does not, it is answered with a
   cookie reply (49 bytes, smaller than the 101-byte initiation: no amplification)
   and costs no DH. TCP sources skip this step: the TCP handshake already proved the
   address, which is all a cookie proves, and a round trip is saved.
4. Budgets (token buckets, ``ratelimit.py``): an initiation from one of the peer's
   last authenticated source addresses (one per path, told by the link through
   ``on_authenticated_source``) spends the RESERVED budget first; any other, or when
   that is empty, spends its source's bucket (per IPv4 address or IPv6 /64, as
   kernel WireGuard; ``GuardLimits.sources`` of them, least recently used evicted) AND the shared
   global budget. A refusal drops the initiation.

"Under load" (WireGuard: the handshake queue is 1/8 full, then 1 s more) is here:
within the last ``under_load_after`` seconds, either a budget refused an initiation
or initiations passing steps 1-2 arrived faster than the shared budget refills (a
demand bucket of the same rate and burst ran dry). So a flood from one address turns
cookies on after its first 5 packets, one from many addresses no later than the
shared budget runs dry, and a flood that spoofs the peer's address cannot drain the
peer's buckets without turning them on.

Costs, as a consequence: a sender without a real address (spoofed sources) never
reaches the DH under load; a sender at one real address, answering cookies, gets at
most its source bucket (5/s); the peer keeps its reserved budget (2/s, burst 10) which
nobody else can spend without a cookie for the peer's exact address (or, over TCP,
its connection). What is shared is the global budget (50/s): many real addresses
farming cookies together can keep a *fresh* pair (no authenticated address yet)
waiting on it; an established pair is not affected.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from hotline.errors import HandshakeError, ReplayError
from hotline.proto.cookie import CookieChecker, check_mac1_untrusted, mac1_key, mac1_of
from hotline.proto.handshake import (
    INITIATION_MAX,
    INITIATION_MIN,
    TYPE_INITIATION,
    check_size_untrusted,
)
from hotline.proto.ratelimit import RecentSet, SourceBuckets, TokenBucket

Source: TypeAlias = tuple[str, int]
"""Where a packet came from, as the transport saw it: (IP address text, port)."""

Rng = Callable[[int], bytes]


@dataclass(frozen=True)
class GuardLimits:
    """The guard's budgets (initiations per second, burst) and table sizes."""

    per_source_rate: float = 5.0
    per_source_burst: float = 5.0
    sources: int = 4096
    shared_rate: float = 50.0
    shared_burst: float = 50.0
    reserved_rate: float = 2.0
    reserved_burst: float = 10.0
    under_load_after: float = 1.0
    recent: int = 4096


def source_of(addr: Sequence[object] | None) -> Source | None:
    """The ``Source`` of a socket address ((host, port) or IPv6's 4-tuple), or None."""
    if addr is None or len(addr) < 2:
        return None
    port = addr[1]
    return (str(addr[0]), port if isinstance(port, int) else 0)


@functools.lru_cache(maxsize=4096)
def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def rate_key(source: Source | None) -> bytes:
    """The bucket key of a source: its IPv4 address, or its IPv6 /64 prefix.

    An IPv4-mapped IPv6 address counts as the IPv4 address; a host that is not an IP
    address (never from a socket) keys by its text; an unknown source by b"".
    """
    if source is None:
        return b""
    ip = _ip(source[0])
    if ip is None:
        return source[0].encode()
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        return mapped.packed if mapped is not None else ip.packed[:8]
    return ip.packed


def source_bytes(source: Source) -> bytes:
    """What a cookie is bound to: the address bytes and the 2-byte port (as WireGuard)."""
    ip = _ip(source[0])
    host = source[0].encode() if ip is None else ip.packed
    return host + struct.pack(">H", source[1] & 0xFFFF)


class HandshakeGuard:
    """The responder's screen in front of the DH. See the module header.

    Args:
        our_x25519_public: our static public key (mac1 and cookie-reply keys).
        rng: source of cookie secrets and nonces.
        limits: budgets and table sizes.
    """

    def __init__(self, our_x25519_public: bytes, rng: Rng,
                 limits: GuardLimits | None = None) -> None:
        self.limits = limits = limits or GuardLimits()
        self._mac1_key = mac1_key(our_x25519_public)
        self._cookies = CookieChecker(our_x25519_public, rng)
        self._recent = RecentSet(limits.recent)
        self._per_source = SourceBuckets(limits.per_source_rate, limits.per_source_burst,
                                         limits.sources)
        self._shared = TokenBucket(limits.shared_rate, limits.shared_burst)
        self._demand = TokenBucket(limits.shared_rate, limits.shared_burst)
        self._reserved_budget = TokenBucket(limits.reserved_rate, limits.reserved_burst)
        self._reserved: dict[int, Source] = {}
        self._load_until = float("-inf")

    def under_load(self, now: float) -> bool:
        """True while initiations must carry a valid mac2 (unless over TCP)."""
        return now < self._load_until

    def on_authenticated_source(self, path_id: int, source: Source) -> None:
        """Call when a packet from ``source`` on ``path_id`` proved the peer is live there.

        (A response to our initiation, or a transport packet that decrypted.) That
        address gets the reserved budget, until another one authenticates on the path.
        """
        self._reserved[path_id] = source

    def screen_initiation_untrusted(self, packet: bytes, source: Source | None,
                                    address_proven: bool, now: float) -> bytes | None:
        """Decide whether an initiation may go on to the Diffie-Hellman.

        Args:
            source: where it came from (None if the transport could not tell).
            address_proven: the transport proved ``source`` (TCP): no cookie needed.
            now: monotonic seconds.

        Returns:
            None: go on (the Noise work may be spent on it). Or a cookie reply to send
            to ``source`` (and only there) instead: the initiation is not processed.

        Raises:
            LimitError / DecodeError: size or type. AuthenticationError: mac1.
            ReplayError: an exact repeat of an initiation already let through.
            HandshakeError: over budget, or under load from an unknown address.
        """
        check_size_untrusted(packet, TYPE_INITIATION, INITIATION_MIN, INITIATION_MAX)
        check_mac1_untrusted(self._mac1_key, packet)
        mac1 = mac1_of(packet)
        if mac1 in self._recent:
            raise ReplayError("repeat of an initiation already screened")
        if not self._demand.try_take(now):
            self._load_until = now + self.limits.under_load_after
        if not address_proven and self.under_load(now):
            reply = self._cookie_reply_or_none(packet, source, now)
            if reply is not None:
                return reply
        if not self._admit(source, now):
            self._load_until = now + self.limits.under_load_after
            raise HandshakeError("rate limited")
        self._recent.add(mac1)
        return None

    def _cookie_reply_or_none(self, packet: bytes, source: Source | None,
                              now: float) -> bytes | None:
        """None if mac2 is valid for ``source``; else the cookie reply to send."""
        if source is None:
            raise HandshakeError("under load: initiation from an unknown address")
        where = source_bytes(source)
        if self._cookies.check_mac2(packet, where, now):
            return None
        (sender_index,) = struct.unpack_from(">I", packet, 1)
        return self._cookies.make_reply(packet, sender_index, where, now)

    def _admit(self, source: Source | None, now: float) -> bool:
        """Spend the budget one initiation needs; False if it is not there."""
        if (source is not None and source in self._reserved.values()
                and self._reserved_budget.try_take(now)):
            return True
        bucket = self._per_source.bucket(rate_key(source))
        if bucket.ready(now) and self._shared.ready(now):
            bucket.take()
            self._shared.take()
            return True
        return False
