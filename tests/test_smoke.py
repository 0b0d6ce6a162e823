"""The real-model smoke config and the GPU check script are ready to run."""

import os
import re
import subprocess
import sys
from pathlib import Path

from fdalign_plugins.cli.bench import _bench_config, build_parser
from fdalign_plugins.preflight import check_model_source

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_smoke_config_is_a_valid_vitb32_run_without_downloads():
    cfg = _bench_config(build_parser().parse_args(["--config", str(REPO / "benchmarks" / "smoke_vitb32.yaml")]))
    assert (cfg.model, cfg.pretrained) == ("ViT-B-32", "none")
    check_model_source(cfg.model, cfg.pretrained)  # resolves with no weights to fetch
    assert "smoke_vitb32.yaml" in (REPO / "docs" / "bench.md").read_text()


def test_gpu_check_script_parses_and_its_cpu_dry_run_prints_every_figure(tmp_path):
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    code = re.search(r"<<'PY'\n(.*?)\nPY\n", SCRIPT.read_text(), re.S).group(1)
    compile(code, str(SCRIPT), "exec")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for mark in ("[1] dry run on cpu", "[2] extraction via FeatureCache", "img/s", "bare autocast forward",
                 "[3] training step", "ratio", "[4] finetune() 2 epochs", "reloads bit-identically", "gpu_check: done"):
        assert mark in p.stdout, (mark, p.stdout)
