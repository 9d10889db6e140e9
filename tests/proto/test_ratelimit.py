"""Token buckets, the LRU table of per-source buckets, the recent-item set."""

from __future__ import annotations

import pytest

from hotline.errors import LocalProtocolError
from hotline.proto.ratelimit import RecentSet, SourceBuckets, TokenBucket


def test_bucket_bursts_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=3)
    assert [bucket.try_take(5.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.try_take(5.125)  # half a token
    assert bucket.try_take(5.25)
    assert not bucket.try_take(5.25)
    assert [bucket.try_take(100.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_gains_nothing_when_the_clock_steps_back() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.try_take(10.0)
    assert not bucket.try_take(5.0)
    assert not bucket.try_take(10.5)  # half a second after the latest instant seen
    assert bucket.try_take(11.0)


def test_ready_does_not_spend() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.ready(0.0)
    assert bucket.ready(0.0)
    bucket.take()
    assert not bucket.ready(0.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0.5)])
def test_bucket_refuses_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(LocalProtocolError):
        TokenBucket(rate, burst)


def test_source_buckets_are_separate_and_bounded() -> None:
    table = SourceBuckets(rate=1.0, burst=1, capacity=2)
    assert table.bucket("a").try_take(0.0)
    assert not table.bucket("a").try_take(0.0)
    assert table.bucket("b").try_take(0.0)
    table.bucket("a")  # now the most recently used: "b" is evicted next
    assert table.bucket("c").try_take(0.0)
    assert len(table) == 2
    assert table.bucket("b").try_take(0.0)  # evicted, so it came back full
    assert not table.bucket("c").try_take(0.0)


def test_recent_set_forgets_the_oldest() -> None:
    recent = RecentSet(capacity=2)
    recent.add(b"x")
    recent.add(b"y")
    recent.add(b"x")  # refreshed: "y" is now the oldest
    recent.add(b"z")
    assert b"x" in recent
    assert b"z" in recent
    assert b"y" not in recent
    assert len(recent) == 2


def test_tables_refuse_zero_capacity() -> None:
    with pytest.raises(LocalProtocolError):
        SourceBuckets(1.0, 1, 0)
    with pytest.raises(LocalProtocolError):
        RecentSet(0)
