"""SIGKILL at an arbitrary moment, then the same command again: the same results."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from fdalign_plugins.checkpoint import read_encoder
from fdalign_plugins.results import read_results, record_key

TESTS = Path(__file__).parent

LAUNCHER = """
import sys
sys.path.insert(0, {tests!r})
import conftest
conftest._register()
from fdalign_plugins.cli.{cli} import main
sys.exit(main(sys.argv[1:]))
"""


def _launcher(tmp_path, cli):
    p = tmp_path / f"launch_{cli}.py"
    p.write_text(LAUNCHER.format(tests=str(TESTS), cli=cli))
    return p


def _run(script, args, env_cache):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FDALIGN_CACHE": env_cache, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script)] + args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _kill_when(proc, cond, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("condition never met")


def test_sigkill_mid_finetuning_resumes_to_identical_weights(tiny_model_name, image_folder, tmp_path):
    script = _launcher(tmp_path, "finetune")
    common = ["--model", tiny_model_name, "--pretrained", "none", "--data", str(image_folder), "--shots", "4",
              "--epochs", "12", "--batch-size", "4", "--spc", "false", "--templates", "a photo of a {}.", "--quiet"]
    cache = str(tmp_path / "cache")
    ref = _run(script, common + ["--out", str(tmp_path / "ref")], cache)
    assert ref.wait() == 0, ref.stderr.read().decode()

    state = tmp_path / "cut" / "train_state.pt"
    p = _run(script, common + ["--out", str(tmp_path / "cut")], cache)
    killed = _kill_when(p, lambda: state.exists() and torch.load(state, weights_only=True)["epoch"] >= 3)
    assert killed, "the run finished before it could be killed"
    assert not (tmp_path / "cut" / "encoder.safetensors").exists()
    p = _run(script, common + ["--out", str(tmp_path / "cut"), "--resume"], cache)
    out, err = p.communicate()
    assert p.returncode == 0, err.decode()
    assert "resuming from" in err.decode()
    a, ma = read_encoder(tmp_path / "ref")
    b, mb = read_encoder(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert ma["best_epoch"] == mb["best_epoch"] and [h["l_class"] for h in ma["history"]] == [h["l_class"] for h in mb["history"]]


def test_sigkill_mid_benchmark_resumes_to_identical_records(tiny_model_name, tmp_path):
    script = _launcher(tmp_path, "bench")
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": tiny_model_name, "pretrained": "none", "adapters": ["tip", "ape"], "shots": [1, 2], "seeds": [1], "views": 2,
        "dataset_options": {"num_classes": 4, "train_per_class": 6, "val_per_class": 3, "test_per_class": 5,
                            "ood_per_class": 4, "image_size": 32},
        "finetune": {"epochs": 2, "batch_size": 8, "templates": ["a photo of a {}.", "a sketch of a {}."],
                     "spc": False},
    }))
    cache = str(tmp_path / "cache")
    ref = _run(script, ["--config", str(cfg), "--out", str(tmp_path / "ref"), "--quiet"], cache)
    assert ref.wait() == 0, ref.stderr.read().decode()

    res = tmp_path / "cut" / "results.jsonl"
    p = _run(script, ["--config", str(cfg), "--out", str(tmp_path / "cut"), "--quiet"], cache)
    killed = _kill_when(p, lambda: res.exists() and res.read_bytes().count(b"\n") >= 2)
    assert killed, "the run finished before it could be killed"
    n_before = len(read_results(res))
    assert 2 <= n_before < 12
    p = _run(script, ["--config", str(cfg), "--out", str(tmp_path / "cut")], cache)
    out, err = p.communicate()
    assert p.returncode == 0, err.decode()
    assert f"{n_before} already done" in err.decode()
    strip = lambda r: (r["acc"], r["hparams"])  # noqa: E731
    ref_recs = {record_key(r): strip(r) for r in read_results(tmp_path / "ref")}
    cut_recs = {record_key(r): strip(r) for r in read_results(tmp_path / "cut")}
    assert ref_recs == cut_recs
    lines = res.read_text().splitlines()
    assert len(lines) == len(ref_recs) == 12 and all(json.loads(x) for x in lines)
