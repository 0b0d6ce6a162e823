"""benchmarks/bench_fit.py: hyper-parameter overrides are parsed, applied and marked in the table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_fit.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_fit", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overrides_pick_the_adapter_and_parse_json_values():
    bench = _module()
    items = ["tip-f.epochs=2", "tip.search=false", "clip-adapter.ratios=[0.2, 0.4]", "gda.name=x"]
    assert bench.overrides(items, "tip-f") == {"epochs": 2}
    assert bench.overrides(items, "tip") == {"search": False}
    assert bench.overrides(items, "clip-adapter") == {"ratios": [0.2, 0.4]}
    assert bench.overrides(items, "gda") == {"name": "x"}  # not JSON: kept as a string
    assert bench.overrides(items, "ape") == {}
    with pytest.raises(SystemExit, match=r"--set takes ADAPTER.KEY=VALUE \(e.g. tip-f.epochs=2\), got 'epochs=2'"):
        bench.overrides(["epochs=2"], "tip-f")


def test_quick_run_applies_an_override_and_marks_its_row(capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bench = _module()
    assert bench.main(["--quick", "--threads", "1", "--adapters", "tip,zero-shot", "--set", "tip.search=false",
                       "--passive-wait", "--timeout", "300"]) == 0
    out = capsys.readouterr().out
    assert "NOT the published schedule: tip.search=false" in out and "OMP_WAIT_POLICY=PASSIVE" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("tip", "zero-shot"))}
    assert rows["tip"].startswith("tip (search=False)")
    assert rows["zero-shot"].startswith("zero-shot ") and "(" not in rows["zero-shot"]
