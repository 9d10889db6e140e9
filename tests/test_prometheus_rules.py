"""contrib/prometheus: the alerting rules load in Prometheus and fire as intended."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hotline.daemon.metrics import Metrics

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "prometheus"
RULES = CONTRIB / "hotline.rules.yml"
RULE_TESTS = CONTRIB / "hotline.rules.test.yml"


@pytest.fixture
def promtool() -> str:
    """Path of Prometheus's promtool; skips where it is missing (CI installs it)."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI: .ci/run should have installed prometheus")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def test_promtool_check_rules(promtool: str) -> None:
    proc = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_rule_unit_tests(promtool: str) -> None:
    """Each rule fires on the history written for it and not on a near miss."""
    proc = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=CONTRIB,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_name_only_metrics_the_daemon_exports() -> None:
    families = list(Metrics().collect())
    exported = {f.name for f in families if f.type != "counter"}
    exported |= {f"{f.name}_total" for f in families if f.type == "counter"}
    used = set(re.findall(r"\bhotline_[a-z_]+\b", RULES.read_text()))
    assert len(used) >= 6, used
    assert used <= exported, sorted(used - exported)
