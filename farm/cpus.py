"""How many CPUs this process may use, and the worker defaults that follow from it.

A pod's CPU limit is not what ``os.cpu_count()`` says (that is the node's): the usable count is
the smallest of the CPUs the process may run on (``sched_getaffinity``: taskset, cpusets) and
the cgroup v2 quota (``cpu.max``, rounded up). The rule the worker follows, documented in
docs/benchmark.md:

- render slots (Celery concurrency) = usable CPUs: one chunk per core, since a chunk's cairo
  drawing is single-threaded;
- encoders in flight per slot (manim's ``--max-inflight-encoders``) = usable CPUs // slots, at
  least 1: libx264 finishing one animation overlaps drawing the next only when a slot has a core
  to spare (measured: with 2 slots on 2 cores, 4 encoders made chunks slower);
- a plan, which every job waits for, takes more when its node is quiet: usable CPUs // (the
  render jails running on the node, itself included), never fewer than a slot's (measured:
  HelloKodisc's plan 0.3 s faster with 2 encoders than with 1 on an idle 2-core node).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["inflight_encoders", "render_slots", "usable_cpus"]

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process can use: affinity, capped by the cgroup quota; at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


def render_slots(cpus: int | None = None) -> int:
    """Default worker concurrency: one render slot per usable CPU."""
    return max(1, usable_cpus() if cpus is None else cpus)


def inflight_encoders(slots: int, cpus: int | None = None) -> int:
    """manim encoders in flight per render slot: the CPUs a slot has to itself, at least 1."""
    return max(1, (usable_cpus() if cpus is None else cpus) // max(1, slots))
