"""The metrics listener and alert_command work under hotline@.service's whole sandbox.

systemd boots in its own namespaces (``BootedSystemd`` from test_sandbox.py) and runs
the shipped unit unchanged except for ExecStart, which starts a probe instead of the
daemon: it serves /metrics on 127.0.0.1:9411 (RestrictAddressFamilies=, the seccomp
filter @system-service minus @privileged @resources, MemoryDenyWriteExecute=) and runs
two alert commands (fork/exec under NoNewPrivileges=, ProtectSystem=strict, a process
group killed at its timeout), then reports READY=1. The test scrapes the port and reads
the journal and what the command wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_sandbox import SYS_PYTHON, BootedSystemd, _boot

PROBE = """\
import os, sys
sys.path[:0] = ["/opt/hotline/src", "/opt/hotline/site"]
import trio
from hotline.daemon.alerts import AlertRunner
from hotline.daemon.logs import Logger
from hotline.daemon.metrics import Metrics, MetricsSnapshot, PathMetrics, serve_metrics
from hotline.daemon.notify import Notifier
from hotline.proto.supervision import Alert

async def main():
    logger = Logger.from_env(sys.stderr)
    metrics = Metrics()
    metrics.publish(MetricsSnapshot(link_up=True, paths=(PathMetrics("tcp://x:1", True, 0.5),)))
    out = os.path.join(os.environ["RUNTIME_DIRECTORY"], "alert.json")
    recorder = AlertRunner(["/bin/sh", "-c", 'cat > "$0"', out], logger)
    hang = AlertRunner(["/bin/sh", "-c", "sleep 300 & wait"], logger, timeout=0.5)
    async with serve_metrics(("127.0.0.1", 9411), metrics):
        async with trio.open_nursery() as nursery:
            for runner in (recorder, hang):
                nursery.start_soon(runner.run)
                runner.fire(Alert("link_down", "probe", "critical", "probe alert"))
                runner.close()
        Notifier.from_env().ready("probe ran its alert commands")
        await trio.sleep_forever()

trio.run(main)
"""


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[BootedSystemd]:
    """systemd running hotline@probe: the shipped unit with the probe as ExecStart."""
    boot = _boot(tmp_path)
    try:
        boot.ok("systemctl is-system-running --wait || true")
        boot.ok("install -D -m 0644 systemd/hotline.sysusers /etc/sysusers.d/hotline.conf && "
                "systemd-sysusers hotline.conf && install -d -m 0700 /etc/hotline/keys && "
                "echo unused > /etc/hotline/keys/probe && chmod 0600 /etc/hotline/keys/probe")
        boot.ok(f"cat > /usr/local/bin/hotline-probe <<'EOF'\n#!{SYS_PYTHON} -I\n{PROBE}EOF\n"
                "chmod 0755 /usr/local/bin/hotline-probe")
        boot.ok("sed 's|^ExecStart=.*|ExecStart=/usr/local/bin/hotline-probe|' "
                "systemd/hotline@.service > /etc/systemd/system/hotline@.service && "
                "systemctl daemon-reload && systemctl start hotline@probe", timeout=120)
        yield boot
    finally:
        boot.close()


def test_metrics_and_alert_commands_under_the_unit(probe: BootedSystemd) -> None:
    unit = probe.ok("cat /etc/systemd/system/hotline@.service")
    shipped = (Path(__file__).resolve().parents[2] / "systemd" / "hotline@.service").read_text()
    assert [ln for ln in unit.splitlines() if not ln.startswith("ExecStart=")] == [
        ln for ln in shipped.splitlines() if not ln.startswith("ExecStart=")]
    assert probe.ok("systemctl is-active hotline@probe").strip() == "active"
    pid = probe.ok("systemctl show -p MainPID --value hotline@probe").strip()
    status = probe.ok(f"grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/{pid}/status")
    assert "Seccomp:\t2" in status, status
    assert "NoNewPrivs:\t1" in status, status

    scraped = probe.ok(f"{SYS_PYTHON} -I -c \"import urllib.request; print(urllib.request."
                       "urlopen('http://127.0.0.1:9411/metrics', timeout=30).read().decode())\"")
    assert "hotline_link_up 1.0" in scraped, scraped
    assert 'hotline_path_rtt_seconds{path="tcp://x:1"} 0.5' in scraped, scraped

    alert = json.loads(probe.ok("cat /run/hotline/probe/alert.json"))
    assert (alert["event"], alert["peer"], alert["text"]) == ("link_down", "probe", "probe alert")
    journal = probe.ok("journalctl -u hotline@probe -o json --no-pager")
    entries = [json.loads(line) for line in journal.splitlines()]
    alerts = [e for e in entries if e.get("HOTLINE_EVENT") == "alert"]
    assert [(e["HOTLINE_ALERT"], e["PRIORITY"]) for e in alerts] == [("link_down", "2")] * 2
    results = sorted(e["HOTLINE_RESULT"] for e in entries
                     if e.get("HOTLINE_EVENT") == "alert_command")
    assert results == ["ok", "timeout"], journal[-3000:]
    # The hung command's whole process group was killed: no sleep left in the unit.
    assert "sleep" not in probe.ok("systemd-cgls --no-pager -u hotline@probe.service")
