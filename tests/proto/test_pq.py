"""The post-quantum ratchet (hotline.proto.pq, DESIGN §11): derivation, the per-session
ML-KEM exchange by hand, and two endpoints (NodePair) under loss, reordering, crashes,
a restart, a wiped store and ``psk_file``."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from hotline.errors import DecodeError, HandshakeError, ReplayError
from hotline.proto.endpoint import EndpointSettings
from hotline.proto.frames import KEM_CIPHERTEXT_LEN, KEM_PUBLIC_LEN, KemOffer, KemReply
from hotline.proto.link import LinkSettings
from hotline.proto.pq import (
    KEM_RETRY_FIRST,
    KEM_RETRY_MAX,
    PskRing,
    Ratchet,
    next_ratchet,
    psk_id,
    psk_of,
)
from hotline.proto.records import RatchetRecord, StoreBatch
from hotline.testing.endpoints import Node, NodePair, seeded_rng

REKEY = 5.0
# Only a packet carrying a KEM frame is this large in these tests.
KEM_PACKET = KEM_CIPHERTEXT_LEN
R1, R2 = bytes([1]) * 32, bytes([2]) * 32
H = bytes([7]) * 32


# --- derivation -----------------------------------------------------------------------


def test_every_input_changes_the_derived_secrets() -> None:
    ss = bytes([9]) * 32
    base = next_ratchet(None, ss, H)
    assert base == next_ratchet(bytes(32), ss, H)  # "no ratchet yet" is the zero secret
    others = {next_ratchet(R1, ss, H), next_ratchet(None, bytes(32), H),
              next_ratchet(None, ss, bytes(32))}
    assert base not in others
    assert len(others) == 3
    psks = {psk_of(None, None), psk_of(R1, None), psk_of(None, R1), psk_of(R1, R2)}
    assert len(psks) == 4
    assert len({psk_id(p) for p in psks}) == 4
    assert all(len(psk_id(p)) == 8 for p in psks)


def test_ring_names_newest_first_and_marks_pq() -> None:
    ring = PskRing(None, None)
    assert [c.ratchet for c in ring.choices] == [None]
    assert not ring.choices[0].pq
    assert ring.offered_ids() == ring.choices[0].id + bytes(16)
    ring.install(RatchetRecord(R2, R1))
    assert [c.ratchet for c in ring.choices] == [R2, R1, None]
    assert [c.pq for c in ring.choices] == [True, True, False]
    assert ring.offered_ids() == b"".join(c.id for c in ring.choices)
    assert PskRing(R1, None).choices[0].pq  # a psk_file alone protects the first session


def test_choose_takes_our_newest_named_one() -> None:
    ring = PskRing(None, RatchetRecord(R2, R1))
    named = PskRing(None, RatchetRecord(R1, None)).offered_ids()
    assert ring.choose_untrusted(named).ratchet == R1
    with pytest.raises(HandshakeError, match="psk_file"):
        ring.choose_untrusted(PskRing(R1, None).offered_ids())


def test_a_batch_keeps_the_latest_ratchet_record_through_a_failed_commit() -> None:
    older, newer = RatchetRecord(R1, None), RatchetRecord(R2, R1)
    merged = StoreBatch()
    merged.merge_unsent(StoreBatch(ratchet=older))  # the failed commit
    merged.merge_unsent(StoreBatch())  # gathered meanwhile, no ratchet
    assert merged.ratchet is older
    merged.merge_unsent(StoreBatch(ratchet=newer))
    assert merged.ratchet is newer
    assert StoreBatch(ratchet=older)


# --- one exchange by hand -------------------------------------------------------------


def _ends(ratchet: bytes | None = None) -> tuple[Ratchet, Ratchet]:
    record = None if ratchet is None else RatchetRecord(ratchet, None)
    offering = Ratchet(PskRing(None, record), seeded_rng(1))
    answering = Ratchet(PskRing(None, record), seeded_rng(2))
    choice = offering.ring.choices[0]
    offering.on_session(11, True, choice, H, 0.0)
    answering.on_session(22, False, choice, H, 0.0)
    return offering, answering


def test_one_exchange_by_hand_with_copies_and_retries() -> None:
    offering, answering = _ends(R1)
    (offer,) = offering.frames_due(0.0)
    assert isinstance(offer, KemOffer)
    assert len(offer.public_key) == KEM_PUBLIC_LEN
    # retried with doubling backoff until answered
    due, retries = offering.get_timer(), []
    while due is not None and due < 60.0:
        assert offering.frames_due(due) == [offer]
        retries.append(due)
        due = offering.get_timer()
    assert retries[:3] == [KEM_RETRY_FIRST, 3 * KEM_RETRY_FIRST, 7 * KEM_RETRY_FIRST]
    assert max(b - a for a, b in itertools.pairwise(retries)) == KEM_RETRY_MAX

    derived = answering.on_offer_untrusted(offer, current=True)
    assert derived is not None
    assert derived.previous == R1
    assert answering.frames_due(0.0) == []  # commit, then send
    assert answering.on_offer_untrusted(offer, current=True) is None  # a copy: no new KEM
    assert answering.frames_due(0.0) == []
    assert answering.ring.choices[0].ratchet == R1  # not durable yet
    answering.on_committed(derived)
    assert answering.ring.choices[0].ratchet == derived.current
    (reply,) = answering.frames_due(0.0)
    assert isinstance(reply, KemReply)
    assert answering.frames_due(0.0) == []
    assert answering.on_offer_untrusted(offer, current=True) is None  # a late copy
    assert answering.frames_due(0.0) == [reply]  # the same ciphertext again

    mine = offering.on_reply_untrusted(reply, current=True)
    assert mine == derived
    assert offering.on_reply_untrusted(reply, current=True) is None  # a copy
    assert offering.frames_due(1e9) == []  # no more offers
    assert offering.get_timer() is None
    assert offering.ring.choices[0].ratchet == R1
    assert mine is not None
    offering.on_committed(mine)
    assert [c.ratchet for c in offering.ring.choices] == [derived.current, R1, None]


def test_kem_frames_out_of_turn_or_out_of_session_are_refused() -> None:
    offering, answering = _ends()
    (offer,) = offering.frames_due(0.0)
    with pytest.raises(ReplayError):
        answering.on_offer_untrusted(offer, current=False)
    with pytest.raises(HandshakeError):
        offering.on_offer_untrusted(offer, current=True)  # we are the offering end
    with pytest.raises(HandshakeError):
        answering.on_reply_untrusted(KemReply(bytes(KEM_CIPHERTEXT_LEN)), current=True)
    with pytest.raises(DecodeError):
        answering.on_offer_untrusted(KemOffer(b"\xff" * KEM_PUBLIC_LEN), current=True)
    assert answering.on_offer_untrusted(offer, current=True) is not None
    other = Ratchet(PskRing(None, None), seeded_rng(3))
    other.on_session(1, True, other.ring.choices[0], H, 0.0)
    (second,) = other.frames_due(0.0)
    with pytest.raises(ReplayError, match="second KEM offer"):
        answering.on_offer_untrusted(second, current=True)


def test_a_new_session_abandons_the_exchange_and_its_reply() -> None:
    offering, answering = _ends()
    (offer,) = offering.frames_due(0.0)
    derived = answering.on_offer_untrusted(offer, current=True)
    assert derived is not None
    answering.on_session(33, False, answering.ring.choices[0], bytes(32), 1.0)  # rekeyed
    answering.on_committed(derived)
    assert answering.ring.choices[0].ratchet == derived.current  # still durable, still used
    assert answering.frames_due(1.0) == []  # but no reply in another session


# --- two endpoints --------------------------------------------------------------------


def _pair(root: Path, psk: bytes | None = None) -> NodePair:
    return NodePair(root, link=LinkSettings(rekey_after=REKEY, psk_secret=psk))


def _pq(pair: NodePair) -> tuple[bool, bool]:
    return tuple(n.endpoint.status(pair.now).pq for n in pair.nodes)  # type: ignore[return-value]


def _handshakes(node: Node) -> list[str]:
    """``yes``/``no`` of each handshake this node logged, oldest first."""
    return [str(n.fields["pq"]) for n in node.notices if n.kind == "handshake"]


def _in_step(pair: NodePair) -> bool:
    a, b = pair.a.store.ratchet(), pair.b.store.ratchet()
    return a is not None and a == b


def test_pq_from_the_first_rekey_and_the_ratchet_moves_every_session(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    pair.run(2.0)
    assert _pq(pair) == (False, False)
    assert _in_step(pair)
    first = pair.a.store.ratchet()
    assert first is not None
    assert first.previous is None  # derived in a classical session
    pair.run(REKEY + 1.0)
    assert _pq(pair) == (True, True)
    second = pair.a.store.ratchet()
    assert second is not None
    assert second.previous == first.current  # the session keyed by `first` stepped it
    assert _in_step(pair)
    for node in pair.nodes:
        assert _handshakes(node)[0] == "no"
        assert set(_handshakes(node)[1:]) == {"yes"}
    pair.close()


def _dropping(pair: NodePair, which: set[int]) -> list[tuple[str, int, bytes]]:
    """Drop the KEM-sized packets whose rank (0, 1, …) is in ``which``; returns them."""
    seen: list[tuple[str, int, bytes]] = []

    def drop(src: str, path_id: int, packet: bytes) -> bool:
        if len(packet) < KEM_PACKET:
            return False
        seen.append((src, path_id, packet))
        return len(seen) - 1 in which

    pair.drop = drop
    return seen


def test_lost_offers_are_sent_again(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    seen = _dropping(pair, {0, 1})
    pair.run(REKEY + 1.0)
    assert len({src for src, _, _ in seen[:3]}) == 1  # offer, offer, offer: one end
    assert _in_step(pair)
    assert _pq(pair) == (True, True)
    pair.close()


def test_a_lost_reply_is_answered_again_with_the_same_secret(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    seen = _dropping(pair, {1})  # the first reply
    pair.run(REKEY + 1.0)
    offerer = seen[0][0]
    assert [src == offerer for src, _, _ in seen[:4]] == [True, False, True, False]
    assert _in_step(pair)  # one encapsulation only, else the ends would differ
    assert _pq(pair) == (True, True)
    pair.close()


def test_reordered_and_duplicated_kem_packets(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    held: list[tuple[str, int, bytes]] = []

    def drop(src: str, path_id: int, packet: bytes) -> bool:
        if len(packet) >= KEM_PACKET and len(held) < 2:
            held.append((src, path_id, packet))  # the offer and its first retry...
            return True
        return False

    pair.drop = drop
    pair.run(3.5)  # the second retry passes and is answered
    assert _in_step(pair)
    for src, path_id, packet in held * 2:  # ...arrive late, twice
        (pair.b if src == "a" else pair.a).receive(path_id, packet)
    pair.run(REKEY)
    assert _in_step(pair)
    assert _pq(pair) == (True, True)
    pair.close()


def test_a_crash_between_the_two_commits_keeps_the_next_session_pq(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    pair.run(REKEY + 1.0)  # one step done and a pq session running
    assert _pq(pair) == (True, True)
    big: list[str] = []
    crashed: list[tuple[Node, int]] = []

    def drop(src: str, path_id: int, packet: bytes) -> bool:
        if len(packet) < KEM_PACKET or crashed:
            return False
        big.append(src)
        if len(big) < 2:
            return False  # the next session's offer passes
        offerer = pair.b if src == "a" else pair.a  # the reply: its answerer committed
        offerer.receive(path_id, packet)  # the offering end derives the same secret...
        offerer.crash(pair.now)  # ...and crashes before its own commit
        crashed.append((offerer, len(_handshakes(offerer))))
        assert pair.a.store.ratchet() != pair.b.store.ratchet()  # one step apart
        return True

    pair.drop = drop
    pair.run(REKEY)
    pair.run(REKEY + 1.0)  # (its first initiation again may be refused as a replay)
    ((node, before),) = crashed
    assert _handshakes(node)[before] == "yes"  # keyed by the secret both still held
    assert _in_step(pair)
    assert _pq(pair) == (True, True)
    pair.close()


def test_a_restart_keeps_pq(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    pair.run(REKEY + 1.0)
    before = len(_handshakes(pair.b))
    pair.b.crash(pair.now)
    pair.run(1.0)
    assert _pq(pair) == (True, True)
    assert _handshakes(pair.b)[before:] == ["yes"]  # the restarted end's first session
    pair.close()


def test_a_wiped_store_recovers_classically_then_ratchets_again(tmp_path: Path) -> None:
    pair = _pair(tmp_path)
    pair.run(REKEY + 1.0)
    before = len(_handshakes(pair.b))
    pair.b.wipe(pair.now)
    assert pair.b.store.ratchet() is None
    pair.run(1.0)
    assert _pq(pair) == (False, False)
    pair.run(REKEY + 1.0)
    assert _pq(pair) == (True, True)
    assert _handshakes(pair.b)[before:before + 2] == ["no", "yes"]
    assert _in_step(pair)
    pair.close()


def test_psk_file_protects_the_first_session(tmp_path: Path) -> None:
    pair = _pair(tmp_path, psk=os.urandom(32))
    pair.run(1.0)
    assert _pq(pair) == (True, True)
    assert _handshakes(pair.a) == ["yes"]
    pair.close()


def test_different_psk_files_never_make_a_session_and_say_why(tmp_path: Path) -> None:
    pair = _pair(tmp_path, psk=os.urandom(32))
    pair.b.settings = EndpointSettings(link=LinkSettings(rekey_after=REKEY,
                                                         psk_secret=os.urandom(32)))
    pair.b.crash(pair.now)
    pair.run(12.0)
    assert [n.endpoint.link.state for n in pair.nodes] == ["down", "down"]
    reasons = " ".join(str(n.fields.get("reason")) for node in pair.nodes
                       for n in node.notices if n.kind == "auth")
    assert "psk_file" in reasons
    pair.close()
