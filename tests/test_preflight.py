"""Settings typed and checked before any model is loaded; nothing lost; no silent fallback."""

import json
import os
import signal
import stat

import pytest

from fdalign_plugins.adapter_api import Adapter, HParam, check_hparams
from fdalign_plugins.cli.bench import _bench_config, build_parser
from fdalign_plugins.cli.bench import main as bench_main
from fdalign_plugins.cli.common import run_cli
from fdalign_plugins.cli.finetune import main as finetune_main
from fdalign_plugins.errors import ConfigError, DataError
from fdalign_plugins.runner import default_out


def _cfg(argv):
    return _bench_config(build_parser().parse_args(argv))


def test_flags_and_yaml_give_the_same_typed_config_and_run_folder(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("finetune: {epochs: 1, lr: 0.5, spurious_weight: 0, kl_direction: reference}\n"
                 "adapter_params: {tip: {beta_steps: 10, alpha_scale: 2}}\n")
    from_yaml = _cfg(["--config", str(y)])
    y2 = tmp_path / "c2.yaml"
    y2.write_text("adapter_params: {tip: {beta_steps: '10', alpha_scale: '2'}}\n")  # strings, as a flag gives them
    from_flags = _cfg(["--config", str(y2), "--epochs", "1", "--lr", "0.5", "--spurious-weight", "0", "--kl-direction",
                       "reference"])
    assert from_flags.finetune == {"epochs": 1, "lr": 0.5, "spurious_weight": 0.0, "kl_direction": "reference"}
    assert type(from_flags.finetune["epochs"]) is int and type(from_flags.finetune["spurious_weight"]) is float
    assert from_flags.adapter_params == {"tip": {"beta_steps": 10, "alpha_scale": 2.0}}
    assert from_flags == from_yaml and default_out(from_flags) == default_out(from_yaml)


def test_adapter_hparams_typed_by_declaration_or_by_default():
    class OldStyle(Adapter):  # a plugin written before declarations existed
        name = "old"
        defaults = {"k": 3, "w": 0.5, "flag": True, "mode": "a"}

        def fit(self, task):
            return self

        def predict(self, features):
            return features

    ad = OldStyle(k="4", w=1, flag="no", mode="b")
    assert ad.explicit == {"k": 4, "w": 1.0, "flag": False, "mode": "b"}
    assert type(ad.explicit["w"]) is float
    for bad, msg in [({"k": 2.5}, "hyper-parameter k must be an integer, got 2.5"),
                     ({"w": "x"}, "hyper-parameter w must be a number, got 'x'"),
                     ({"flag": "maybe"}, "hyper-parameter flag must be true or false"),
                     ({"mode": 3}, "hyper-parameter mode must be a string"),
                     ({"kk": 1}, "unknown hyper-parameter(s) kk; valid: flag, k, mode, w")]:
        with pytest.raises(ConfigError) as info:
            OldStyle(**bad)
        assert msg in str(info.value)
    declared = {"k": HParam(int, low=1, high=5), "mode": HParam(str, choices=("a", "b"))}
    assert check_hparams("x", {"k": 3, "mode": "a"}, declared, {"k": "5"}) == {"k": 5}
    with pytest.raises(ConfigError, match=r"hyper-parameter k must lie in \[1, 5\], got 6"):
        check_hparams("x", {"k": 3, "mode": "a"}, declared, {"k": 6})
    with pytest.raises(ConfigError, match="hyper-parameter mode must be one of a, b; got 'c'"):
        check_hparams("x", {"k": 3, "mode": "a"}, declared, {"mode": "c"})


def test_every_builtin_adapter_declares_its_hyper_parameters():
    from fdalign_plugins.plugins import list_adapters

    for spec in list_adapters():
        if spec.distribution != "fdalign-plugins":
            continue
        assert set(spec.hparam_types) == set(spec.defaults), spec.name
        for k, v in spec.defaults.items():  # each default passes its own declaration
            assert spec.check({k: v}) == {k: v}, (spec.name, k)


def test_flat_folder_gets_a_seeded_held_out_test_split(image_folder):
    from fdalign_plugins.datasets import load_dataset

    a = load_dataset("folder", str(image_folder))
    b = load_dataset("folder", str(image_folder))
    assert a.test.paths == b.test.paths and len(a.test) == 3 * 2  # round(0.2 * 8) = 2 per class
    assert not set(a.test.paths) & set(a.train.paths)
    assert sorted(a.test.paths + a.train.paths) == sorted(str(p.relative_to(image_folder))
                                                          for p in image_folder.rglob("*.png"))
    assert sorted(a.test.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    c = load_dataset("folder", str(image_folder), test_fraction=0.5, test_seed=3)
    assert len(c.test) == 12 and c.test.paths != a.test.paths[:12]


def test_bench_runs_on_a_flat_class_folder(image_folder, tiny_model_name, tmp_path, capsys):
    out = tmp_path / "run"
    rc = bench_main(["--dataset", "folder", "--data-root", str(image_folder), "--model", tiny_model_name,
                     "--pretrained", "none", "--adapter", "tip", "--shots", "1", "--views", "1", "--out", str(out),
                     "--quiet", "--config", str(_encoders_clip(tmp_path))])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["adapter"] for r in recs} == {"zero-shot", "tip"} and all(r["acc"]["test"] >= 0 for r in recs)


def _encoders_clip(tmp_path):
    p = tmp_path / "clip-only.yaml"
    p.write_text("encoders: [clip]\n")
    return p


def test_one_class_is_an_error_for_every_dataset(tmp_path):
    from fdalign_plugins.datasets import load_dataset
    from fdalign_plugins.datasets.base import ArraySplit, FewShotDataset
    from fdalign_plugins.plugins import _manager

    import numpy as np

    split = ArraySplit(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, np.int64), "one")
    one = FewShotDataset("one", ["cat"], ["{}"], split, split)
    from fdalign_plugins.adapter_api import DatasetSpec

    reg = _manager().registry().datasets
    reg["one-class"] = DatasetSpec("one-class", "test", lambda root, **kw: one, needs_root=False)
    try:
        with pytest.raises(DataError, match=r"has 1 class\(es\) \(cat\); few-shot classification needs at least 2"):
            load_dataset("one-class")
    finally:
        del reg["one-class"]


def test_sigterm_is_handled_like_ctrl_c(capsys):
    def job():
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not reached")

    assert run_cli(job, "prog") == 143
    err = capsys.readouterr().err
    assert err == "prog: terminated (SIGTERM); finished work is saved, re-run the same command to resume\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back afterwards


def test_finetune_interrupt_message_names_resume_and_resume_continues(tiny_model_name, image_folder, tmp_path,
                                                                      capsys, monkeypatch):
    from fdalign_plugins import trainer

    out = tmp_path / "ft"
    argv = ["--model", tiny_model_name, "--pretrained", "none", "--data", str(image_folder), "--shots", "2",
            "--epochs", "2", "--batch-size", "6", "--spc", "false", "--out", str(out), "--quiet"]
    real = trainer.finetune
    monkeypatch.setattr(trainer, "finetune", lambda *a, **k: real(*a, **{**k, "stop_after_epoch": 1}))
    assert finetune_main(argv) == 130
    err = capsys.readouterr().err
    assert "re-run the same command with --resume to continue" in err
    monkeypatch.setattr(trainer, "finetune", real)
    assert finetune_main(argv) == 2  # the same command refuses to overwrite the saved epoch
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert finetune_main(argv + ["--resume"]) == 0
    assert f"2 epoch(s) x 1 step(s), state saved after each epoch in {out}" in capsys.readouterr().err  # the header
    meta = json.loads((out / "encoder.json").read_text())
    assert len(meta["history"]) == 2  # epoch 1 from the saved state, epoch 2 trained now


def test_report_without_paths_reads_the_default_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = default_out(_cfg(["--shots", "2"]))
    folder.mkdir(parents=True)
    rec = {"dataset": "world", "adapter": "zero-shot", "encoder": "clip", "shots": 2, "seed": 1,
           "acc": {"test": 42.5}}
    (folder / "results.jsonl").write_text(json.dumps(rec) + "\n")
    assert bench_main(["--shots", "2", "--report"]) == 0
    assert "42.50" in capsys.readouterr().out and (folder / "table.md").is_file()


def test_read_results_reports_a_dropped_trailing_line(tmp_path):
    from fdalign_plugins.results import read_results

    p = tmp_path / "results.jsonl"
    rec = {"dataset": "d", "adapter": "a", "encoder": "clip", "shots": 1, "seed": 1, "acc": {"test": 1.0}}
    p.write_text(json.dumps(rec) + "\n{garbage")
    with pytest.warns(UserWarning, match=r"the last line \(8 bytes after record 1\) is incomplete .* it was ignored"):
        assert read_results(p) == [rec]


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, mask, mode):
    from fdalign_plugins.checkpoint import atomic_write_bytes

    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "table.md", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "table.md").stat().st_mode) == mode


def test_finetune_help_explains_every_flag():
    import re

    from fdalign_plugins.cli.finetune import build_parser as ft_parser

    text = ft_parser().format_help()
    assert "--aug-scale LO,HI" in text and "two values" in text
    assert "the world weights for fdalign-world-tiny" in " ".join(text.split())
    for action in ft_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and not action.help.startswith("default:"), action.dest
            assert re.search(r"[a-z]{3,}", action.help.split("(default")[0]), action.dest


def test_rejected_command_leaves_no_empty_run_folder(tmp_path, capsys, tiny_model_name):
    out = tmp_path / "deep" / "run"
    assert bench_main(["--ood", "nope", "--model", tiny_model_name, "--pretrained", "none", "--out", str(out)]) == 2
    assert not (tmp_path / "deep").exists()
    capsys.readouterr()


def test_dataset_options_from_the_command_line(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("dataset_options: {image_dir: images, name: mine}\n")
    cfg = _cfg(["--config", str(y), "--dataset", "splitjson", "--data-root", str(tmp_path),
                "--dataset-option", "split_file=split_zhou_OxfordPets.json", "--dataset-option", "name=pets"])
    assert cfg.dataset_options == {"image_dir": "images", "split_file": "split_zhou_OxfordPets.json", "name": "pets"}
    with pytest.raises(ConfigError, match="--dataset-option needs KEY=VALUE, got 'oops'"):
        _cfg(["--dataset-option", "oops"])
