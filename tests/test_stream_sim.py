"""Property test: the reliable stream over a hostile simulated network, with crashes.

Hundreds of seeded scenarios (tests/sim.py) each run two endpoints with real SQLite
stores through loss, duplication, reordering, corruption, path switches, at least one
crash-and-reopen of each side at a random step, and sometimes a deleted store, and then
check: every message a sender durably committed (in its current epoch) is delivered
exactly once and in order; signatures and the hash chain verify; nothing acknowledged
is ever lost; a sender whose store was deleted comes back with a new epoch that the
receiver reports (``NewEpoch``) and keeps apart from the old one.

Failures print the ``Scenario`` (its ``seed`` replays it exactly:
``Sim(Scenario(seed=..., ...), dir).run()``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.sim import Faults, Scenario, Sim

SCENARIOS = 500
SOAK_SCENARIOS = 10 * SCENARIOS
_SHM = Path("/dev/shm")
TMP_BASE = str(_SHM) if _SHM.is_dir() else None  # tmpfs: fsync costs nothing


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    total = draw(st.integers(5, 30))
    to_a = draw(st.integers(0, total))
    faults = Faults(
        loss=draw(st.sampled_from([0.0, 0.05, 0.2, 0.4])),
        dup=draw(st.sampled_from([0.0, 0.1, 0.3])),
        corrupt=draw(st.sampled_from([0.0, 0.05, 0.2])),
        delay=draw(st.sampled_from([(0.001, 0.01), (0.01, 0.2), (0.05, 1.5)])),
    )
    if faults.loss == faults.dup == faults.corrupt == 0.0:
        faults = Faults(loss=0.1, delay=faults.delay)
    return Scenario(
        seed=draw(st.integers(0, 2**32 - 1)),
        sends=(total - to_a, to_a),
        faults=faults,
        crashes=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        wipes=draw(st.sampled_from([(0, 0), (0, 0), (1, 0), (0, 1)])),
        path_switches=draw(st.integers(0, 3)),
        duration=draw(st.sampled_from([2.0, 10.0, 30.0])),
        reorder_limit=draw(st.sampled_from([4096, 4096, 8])),
        max_in_flight=draw(st.sampled_from([1024, 1024, 4])),
    )


def run_scenario(scenario: Scenario) -> Sim:
    with tempfile.TemporaryDirectory(dir=TMP_BASE) as tmp:
        sim = Sim(scenario, Path(tmp))
        try:
            sim.run()
            sim.check()
        finally:
            sim.close()
    return sim


@settings(
    max_examples=SCENARIOS, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_stream_survives_faults_and_crashes(scenario: Scenario) -> None:
    check_with_crashes(scenario)


def check_with_crashes(scenario: Scenario) -> None:
    """Run ``scenario``: its checks hold, and each side crashed and reopened at least once."""
    note(f"replay: {scenario!r}")
    sim = run_scenario(scenario)
    assert sim.crashes["a"] >= 1
    assert sim.crashes["b"] >= 1


def test_wiped_sender_starts_a_new_epoch_the_receiver_reports() -> None:
    sc = Scenario(seed=7, sends=(12, 3), faults=Faults(loss=0.2), wipes=(1, 0))
    sim = run_scenario(sc)
    a, b = sim.ends["a"], sim.ends["b"]
    assert len(a.ledger.wiped_epochs) == 1
    old = a.ledger.wiped_epochs[0]
    switches = [e for e in b.ledger.new_epochs if e.old == old]
    assert len(switches) == 1
    assert switches[0].epoch == a.out.epoch != old
    assert switches[0].base_seq == 1


def test_clean_network_delivers_everything() -> None:
    sim = run_scenario(Scenario(seed=1, sends=(30, 30), crashes=(0, 0), path_switches=0))
    for end in sim.ends.values():
        assert end.dropped == 0
        assert end.out.backlog == 0


@pytest.mark.slow
@settings(
    max_examples=SOAK_SCENARIOS, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_soak_stream_survives_faults_and_crashes(scenario: Scenario) -> None:
    """The same property over ten times as many scenarios (``--run-slow``)."""
    check_with_crashes(scenario)
