"""The thread policy: explicit counts win; otherwise the cores free to this process."""

import os

import pytest

from fdalign_plugins import threads


def test_explicit_counts_win(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(2).threads == 2 and threads.choose_threads(2).source == "--threads"
    c = threads.choose_threads(None)
    assert (c.threads, c.source) == (3, "OMP_NUM_THREADS") and "from OMP_NUM_THREADS" in c.describe()


@pytest.mark.parametrize("avail,busy,want", [(2, 0.1, 2), (2, 0.6, 1), (2, 1.9, 1), (2, 2.0, 1), (8, 2.4, 6),
                                             (4, None, 4)])
def test_auto_leaves_the_busy_cores_to_others(monkeypatch, avail, busy, want):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: avail)
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=0: busy)
    c = threads.choose_threads(None)
    assert (c.threads, c.available, c.source) == (want, avail, "auto")
    assert f"of {avail} available core(s)" in c.describe()


def test_available_cores_is_the_affinity_mask():
    assert 1 <= threads.available_cores() <= len(os.sched_getaffinity(0))


def test_busy_cores_sees_a_spinning_process():
    """A process spinning on one core shows up as (about) one busy core."""
    import subprocess
    import sys

    cpu = sorted(os.sched_getaffinity(0))[0]
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    try:
        import time

        time.sleep(0.3)
        busy = threads.busy_cores(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy is not None and busy >= 0.8  # others on this shared machine can only add to it


def test_bad_thread_count_is_a_config_error(tiny_model_name):
    from fdalign_plugins.config import build_config
    from fdalign_plugins.errors import ConfigError
    from fdalign_plugins.runner import BenchConfig

    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        build_config(BenchConfig, {"threads": 0}).validate()
