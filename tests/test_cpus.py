"""The worker's CPU rule: slots and encoders from the CPUs the process may use."""

from __future__ import annotations

import os
from pathlib import Path

from farm import cpus


def test_cgroup_quota_caps_the_affinity(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    affinity = len(os.sched_getaffinity(0))
    cpu_max.write_text("max 100000\n")
    assert cpus.usable_cpus(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # half a CPU: rounds up to one
    assert cpus.usable_cpus(cpu_max) == 1
    cpu_max.write_text(f"{(affinity + 3) * 100000} 100000\n")
    assert cpus.usable_cpus(cpu_max) == affinity  # a quota above the affinity changes nothing
    assert cpus.usable_cpus(tmp_path / "missing") == affinity


def test_slots_and_encoders_follow_the_cpus() -> None:
    assert cpus.render_slots(4) == 4
    assert cpus.inflight_encoders(slots=4, cpus=4) == 1
    assert cpus.inflight_encoders(slots=1, cpus=4) == 4
    assert cpus.inflight_encoders(slots=2, cpus=5) == 2
    assert cpus.inflight_encoders(slots=8, cpus=2) == 1
