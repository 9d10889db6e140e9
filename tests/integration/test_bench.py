"""``hotline bench --quick``: a smoke run of every measurement; checks the report's shape,
never its figures (the machine is shared: timings are not asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

from hotline.bench import render

# Every figure the report must carry, by section (issues 10 and 12).
FIGURES = {
    "floor": ("sign_us", "verify_us", "envelope_codec_us", "seal_open_us", "handshake_ms",
              "handshake_fallback_ms", "kem_step_ms"),
    "ratios": ("verify_floor_msgs_per_s", "sign_verify_floor_msgs_per_s",
               "throughput_to_verify_floor", "idle_ack_floor_ms", "idle_ack_p50_to_floor",
               "idle_ack_spaced_floor_ms", "idle_ack_spaced_p50_to_floor",
               "send_to_python", "status_to_python"),
    "failover": ("ack_s", "udp_active_s"),
    "delayed_flash": ("trials", "backlog", "ack_ms_p50", "ack_ms_p99", "rtt_ms", "bound_ms",
                      "ack_ms_p99_to_bound", "routine_drain_msgs_per_s"),
    "wan": ("failover_s", "seconds", "goodput_fraction", "wire_fraction", "retransmitted",
            "retransmitted_fraction", "queue_dropped", "flash_behind", "flash_ack_ms",
            "flash_bound_ms", "flash_ratio_to_bound"),
}
PAIR_FIGURES = {
    "fsync": ("fsync_ms_p50", "fsync_ms_p99"),
    "fsync_idle": ("fsync_ms_p50", "fsync_ms_p99"),
    "throughput": ("messages", "seconds", "msgs_per_s"),
    "idle_ack": ("p50_ms", "p99_ms", "daemon_p50_ms"),
    "idle_ack_spaced": ("p50_ms", "p99_ms", "daemon_p50_ms"),
    "startup": ("python_ms", "send_ms", "status_ms"),
    "flash": ("trials", "backlog", "ack_ms_p50", "ack_ms_p99", "stored_ms_p99_est",
              "routine_drain_msgs_per_s"),
    "queued_flash": ("trials", "backlog", "ack_ms_p50", "ack_ms_max"),
}


def is_figure(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value) and value >= 0


def test_quick_bench_reports_every_figure() -> None:
    # 20 ms of delay instead of 100: the shape is the same, the run shorter
    result = subprocess.run([sys.executable, "-m", "hotline", "bench", "--quick", "--json",
                             "--delay", "20"], capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    for section, names in FIGURES.items():
        for name in names:
            assert is_figure(report[section][name]), (section, name)
    for section, names in PAIR_FIGURES.items():
        for name in names:
            assert is_figure(report["pair"][section][name]), (section, name)
    assert all(is_figure(ms) for ms in report["pair"]["flash"]["ack_ms"])
    assert report["pair"]["flash"]["trials"] == len(report["pair"]["flash"]["ack_ms"]) == 1
    assert report["delayed_flash"]["delay_ms"] == report["options"]["delay_ms"] == 20
    assert report["wan"]["messages"] == report["options"]["wan_backlog"]
    assert len(report["machine"]["load_avg"]) == 3
    text = render(report)
    for label in ("verify floor", "send --lines --wait", "idle durable send→ack",
                  "CLI start-up", "FLASH behind", "FLASH sent while the peer was down",
                  "added each way", "failover", "WAN profile", "goodput"):
        assert label in text


def test_bench_refuses_a_zero_rate() -> None:
    result = subprocess.run([sys.executable, "-m", "hotline", "bench", "--rate", "0"],
                            capture_output=True, timeout=60)
    assert result.returncode == 2
    assert b"--rate" in result.stderr
