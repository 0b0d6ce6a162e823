"""How many CPU threads a run uses, chosen from the cores actually free to this process.

``torch``'s default is one intra-op thread per core of the machine. On a machine other
processes are using, that oversubscribes the cores: OpenMP threads spin-wait for each
other at every parallel region while the scheduler runs someone else, and a main-job
run took 18 times its idle time that way. The policy here:

* the cores this process may run on: its CPU affinity mask (``os.sched_getaffinity``),
  capped by a cgroup CPU quota when there is one (containers);
* minus the cores other processes are keeping busy right now, measured from
  ``/proc/stat`` over a short window (the 1-minute load average lags by a minute);
* at least 1, and never more than the available cores;
* OpenMP threads sleep instead of spinning when they wait (``OMP_WAIT_POLICY=PASSIVE``)
  unless the user set a policy, so a count that turns out too high costs little.

``--threads N`` fixes the count. The numbers a run produces can depend on it (the order
of floating-point sums in parallel kernels), so every record stores the count used; see
docs/bench.md, "Reproducibility".
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

#: Seconds /proc/stat is sampled over to see how busy the other cores are.
SAMPLE_SECONDS = 0.25


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count of a run and why.

    Attributes:
        threads: intra-op threads torch will use.
        available: cores this process may use (affinity mask, cgroup quota).
        busy: cores other processes kept busy during the sample (``None``: not measured).
        source: ``"--threads"``, ``"OMP_NUM_THREADS"`` or ``"auto"``.
    """

    threads: int
    available: int
    busy: Optional[float]
    source: str

    def describe(self) -> str:
        """One line for the screen."""
        if self.source != "auto":
            return f"threads: {self.threads} (from {self.source}; {self.available} core(s) available)"
        busy = "not measured" if self.busy is None else f"{self.busy:.1f} busy with other processes"
        return (f"threads: {self.threads} of {self.available} available core(s) ({busy}); "
                "--threads N fixes the count")


def available_cores() -> int:
    """Cores this process may run on: the affinity mask, capped by a cgroup v2/v1 quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def _cgroup_quota() -> Optional[float]:
    """CPUs allowed by the cgroup (``cpu.max`` or ``cfs_quota/cfs_period``), ``None`` if unlimited."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def _cpu_times(cpus: List[int]) -> Optional[Tuple[int, int]]:
    """(busy, total) jiffies summed over ``cpus`` from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    want = {f"cpu{c}" for c in cpus}
    for line in lines:
        parts = line.split()
        if parts and parts[0] in want:
            vals = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
            idle = vals[3] + vals[4]
            total += sum(vals)
            busy += sum(vals) - idle
    return (busy, total) if total else None


def busy_cores(seconds: float = SAMPLE_SECONDS) -> Optional[float]:
    """Cores of this process's affinity mask that other processes kept busy over ``seconds``.

    This process sleeps while it samples, so everything measured is someone else's work.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    a = _cpu_times(cpus)
    if a is None:
        return None
    time.sleep(seconds)
    b = _cpu_times(cpus)
    if b is None or b[1] <= a[1]:
        return None
    return len(cpus) * (b[0] - a[0]) / (b[1] - a[1])


def choose_threads(requested: Optional[int] = None, sample_seconds: float = SAMPLE_SECONDS) -> ThreadChoice:
    """The thread count for this run (see the module docstring).

    An explicit ``OMP_NUM_THREADS`` in the environment counts as a request.

    Args:
        requested: an explicit count (``--threads``); ``None`` chooses one.
        sample_seconds: how long to watch the other processes' CPU use.
    """
    avail = available_cores()
    if requested is not None:
        return ThreadChoice(int(requested), avail, None, "--threads")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return ThreadChoice(int(env), avail, None, "OMP_NUM_THREADS")
    busy = busy_cores(sample_seconds)
    # a core counts as taken once others keep it more than half busy
    free = avail if busy is None else avail - math.floor(busy + 0.5)
    return ThreadChoice(max(1, min(avail, free)), avail, busy, "auto")


def prefer_passive_wait() -> None:
    """Make idle OpenMP threads sleep rather than spin, unless the user chose a policy.

    Only effective before the OpenMP runtime starts (before torch is imported), so the
    CLIs call it first thing.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def apply_threads(choice: ThreadChoice) -> None:
    """Set torch's intra-op thread count (and one inter-op thread: the runner is sequential)."""
    import torch

    torch.set_num_threads(choice.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran in this process
        pass
