"""The store keeps the post-quantum ratchet (DESIGN §11): one row, replaced by each
commit that carries a ``RatchetRecord``, resumed at start-up, counted by ``check``."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotline.errors import StoreError
from hotline.proto.identity import Identity
from hotline.proto.records import RatchetRecord, StoreBatch
from hotline.store import Store, peek_ratchet

OURS, THEIRS = Identity.from_seed(bytes(32)), Identity.from_seed(bytes([1]) * 32)
R1, R2, R3 = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32


def _open(path: Path) -> Store:
    return Store.open(path, OURS.public.raw, THEIRS.public.raw)


def test_ratchet_is_replaced_by_each_commit_and_resumed(tmp_path: Path) -> None:
    assert peek_ratchet(tmp_path) is None  # no store
    store = _open(tmp_path)
    assert store.resume(16).ratchet is None
    assert peek_ratchet(tmp_path) == 0
    store.apply(StoreBatch(ratchet=RatchetRecord(R1, None)))
    assert peek_ratchet(tmp_path) == 1
    store.apply(StoreBatch(ratchet=RatchetRecord(R2, R1)))
    store.apply(StoreBatch(handshake_ts=5))  # a batch without one keeps it
    store.close()
    store = _open(tmp_path)
    assert store.resume(16).ratchet == RatchetRecord(R2, R1)
    assert peek_ratchet(tmp_path) == 2
    store.apply(StoreBatch(ratchet=RatchetRecord(R3, None)))
    assert store.ratchet() == RatchetRecord(R3, None)
    store.close()


def test_a_ratchet_secret_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    store = _open(tmp_path)
    with pytest.raises(StoreError, match="CHECK constraint"):
        store.apply(StoreBatch(ratchet=RatchetRecord(R1[:31], None)))
    assert store.ratchet() is None  # nothing of the batch was stored
    store.close()
