"""Property test: two real endpoints over a hostile simulated network, with accidents.

Hundreds of seeded scenarios (hotline/testing/sim.py) each run the product's Endpoint
at both ends — Noise, the Link, four lanes, real SQLite stores — through loss,
duplication, reordering, corruption, path switches, at least one crash of each side at
a random step, and sometimes a wiped store, a store restored from an older copy, a full
disk or a hostile peer; then ``Sim.check``: verify passes at both ends, every message a
client was told was stored arrived (unless its receiver's own store was lost after
acknowledging it), nothing was delivered twice, no direction is left with a backlog.

Failures print the ``Scenario`` (its ``seed`` replays it exactly:
``Sim(Scenario(seed=..., ...), dir).run()``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from hotline.testing.sim import Faults, Scenario, Sim

SCENARIOS = 500
SOAK_SCENARIOS = 10 * SCENARIOS
_SHM = Path("/dev/shm")
TMP_BASE = str(_SHM) if _SHM.is_dir() else None  # tmpfs: fsync costs nothing


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    total = draw(st.integers(3, 15))
    to_a = draw(st.integers(0, total))
    faults = Faults(
        loss=draw(st.sampled_from([0.0, 0.05, 0.2, 0.4])),
        dup=draw(st.sampled_from([0.0, 0.1, 0.3])),
        corrupt=draw(st.sampled_from([0.0, 0.05, 0.2])),
        delay=draw(st.sampled_from([(0.001, 0.01), (0.01, 0.2), (0.05, 1.5)])),
    )
    if faults.loss == faults.dup == faults.corrupt == 0.0:
        faults = Faults(loss=0.1, delay=faults.delay)
    accident = draw(st.sampled_from(["none", "none", "wipe", "restore", "disk", "hostile"]))
    side = draw(st.sampled_from([(1, 0), (0, 1)]))
    return Scenario(
        seed=draw(st.integers(0, 2**32 - 1)),
        sends=(total - to_a, to_a),
        faults=faults,
        crashes=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        wipes=side if accident == "wipe" else (0, 0),
        restores=side if accident == "restore" else (0, 0),
        disk_full=side if accident == "disk" else (0, 0),
        hostile=side if accident == "hostile" else (0, 0),
        path_switches=draw(st.integers(0, 2)),
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
def test_stream_survives_faults_and_accidents(scenario: Scenario) -> None:
    check_with_crashes(scenario)


def check_with_crashes(scenario: Scenario) -> None:
    """Run ``scenario``: its checks hold, and each side crashed and reopened at least once."""
    note(f"replay: {scenario!r}")
    sim = run_scenario(scenario)
    assert sim.crashes["a"] >= 1
    assert sim.crashes["b"] >= 1


def test_clean_network_delivers_everything() -> None:
    sim = run_scenario(Scenario(seed=1, sends=(30, 30), crashes=(0, 0), path_switches=0))
    for node in sim.nodes.values():
        # crossing initiations: a resent copy of one is refused as a replay, nothing else
        assert set(node.endpoint.narrator.dropped) <= {"ReplayError"}


@pytest.mark.parametrize("seed", range(5))
def test_restored_sender_loses_nothing(seed: int) -> None:
    run_scenario(Scenario(seed=seed, sends=(15, 5), faults=Faults(loss=0.1), restores=(1, 0)))


@pytest.mark.parametrize("seed", range(3))
def test_restored_sender_with_a_full_disk_loses_nothing(seed: int) -> None:
    run_scenario(Scenario(seed=seed, sends=(15, 5), faults=Faults(loss=0.1), restores=(1, 0),
                          disk_full=(2, 0)))


@pytest.mark.parametrize("seed", range(5))
def test_restored_receiver_does_not_stall(seed: int) -> None:
    run_scenario(Scenario(seed=seed, sends=(15, 5), faults=Faults(loss=0.1), restores=(0, 1)))


@pytest.mark.parametrize("seed", range(5))
def test_wiped_receiver_and_late_acks_of_its_old_session(seed: int) -> None:
    run_scenario(Scenario(seed=seed, sends=(15, 5), faults=Faults(delay=(0.3, 1.5)),
                          wipes=(0, 1)))


@pytest.mark.parametrize("seed", range(3))
def test_full_disk_refuses_and_recovers(seed: int) -> None:
    run_scenario(Scenario(seed=seed, sends=(15, 15), disk_full=(2, 2)))


@pytest.mark.parametrize("seed", range(3))
def test_hostile_peer_frames_never_break_the_victim(seed: int) -> None:
    sim = run_scenario(Scenario(seed=seed, sends=(10, 10), hostile=(3, 0)))
    assert sim.hostile_frames > 0


@pytest.mark.slow
@settings(
    max_examples=SOAK_SCENARIOS, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_soak_stream_survives_faults_and_accidents(scenario: Scenario) -> None:
    """The same property over ten times as many scenarios (``--run-slow``)."""
    check_with_crashes(scenario)
