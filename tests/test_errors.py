"""The bad-input catalogue of docs/errors.md, checked entry by entry.

Each ``E..`` row of the catalogue quotes the message an input gets; each case below
produces that input and returns the message actually printed or raised. A doc row
without a case, or a case whose message no longer contains the quoted text, fails.
"""

import errno
import json
import pickle
import re
from pathlib import Path

import pytest
import torch

from fdalign_plugins.checkpoint import load_encoder_into, save_encoder
from fdalign_plugins.cli.bench import main as bench_main
from fdalign_plugins.cli.finetune import main as finetune_main
from fdalign_plugins.errors import FDAlignError
from fdalign_plugins.results import ResultsFile

DOC = Path(__file__).parent.parent / "docs" / "errors.md"
CASES = {}


def case(eid):
    def deco(fn):
        CASES[eid] = fn
        return fn
    return deco


def catalogue():
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*(E\d\d)\s*\|(.*)\|\s*`(.+)`\s*\|\s*$", line)
        if m:
            rows[m.group(1)] = m.group(3)
    return rows


def _cli(main, argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    return err


def _raises(fn, exc=FDAlignError):
    with pytest.raises(exc) as info:
        fn()
    return str(info.value)


@case("E01")
def _missing_folder(env):
    return _cli(finetune_main, env.base + ["--data", str(env.tmp / "nope")], env.capsys)


@case("E02")
def _empty_class(env):
    (env.images / "empty_class").mkdir()
    return _cli(finetune_main, env.base + ["--data", str(env.images)], env.capsys)


@case("E03")
def _corrupt_image(env):
    for f in (env.images / "green_circle").glob("*.png"):  # whichever images the support set draws
        f.write_bytes(b"\x89PNG broken")
    msg = _cli(finetune_main, env.base + ["--data", str(env.images)], env.capsys)
    assert not (env.out).exists()  # failed before any training
    return msg


@case("E04")
def _too_many_shots(env):
    # 8 images per class, 2 held out as the test split: 6 shots take the whole pool
    return _cli(finetune_main, env.base + ["--data", str(env.images), "--shots", "6"], env.capsys)


@case("E05")
def _short_class_warns(env):
    from fdalign_plugins.datasets.sampling import sample_per_class

    with pytest.warns(UserWarning) as w:
        sample_per_class([0, 0, 1, 1, 1], 3, 0, 2)
    return str(w[0].message)


@case("E06")
def _zero_shots(env):
    return _cli(bench_main, ["--shots", "0"], env.capsys)


@case("E07")
def _negative_epochs(env):
    return _cli(finetune_main, env.base + ["--epochs", "-3"], env.capsys)


@case("E08")
def _non_numeric(env):
    return _cli(bench_main, ["--shots", "1,two"], env.capsys)


@case("E09")
def _unknown_adapter(env):
    return _cli(bench_main, ["--adapter", "tip-x"], env.capsys)


@case("E10")
def _unknown_dataset(env):
    return _cli(bench_main, ["--dataset", "imagenet-22k"], env.capsys)


@case("E11")
def _unknown_model(env):
    return _cli(finetune_main, ["--model", "ViT-Q-99"], env.capsys)


@case("E12")
def _unknown_tag(env):
    return _cli(finetune_main, ["--model", "ViT-B-32", "--pretrained", "openaii"], env.capsys)


@case("E13")
def _offline(env):
    _no_model_load(env)  # said before the data or any model is loaded
    msg = _cli(finetune_main, ["--model", "ViT-B-32", "--pretrained", "openai"], env.capsys)
    return msg + _cli(bench_main, ["--model", "ViT-B-32", "--pretrained", "openai", "--out", str(env.out)], env.capsys)


@case("E14")
def _missing_weights_file(env):
    return _cli(finetune_main, ["--model", "ViT-B-32", "--pretrained", str(env.tmp / "vitb32.bin")], env.capsys)


@case("E15")
def _wrong_arch(env):
    from fdalign_plugins.models import load_clip

    small = load_clip(env.model, "none")
    save_encoder(small.model.visual, env.tmp / "ck", {"model": env.model})
    wide = load_clip("fdalign-test-tiny-wide", "none")
    return _raises(lambda: load_encoder_into(wide.model, env.tmp / "ck"))


@case("E16")
def _truncated(env):
    from fdalign_plugins.models import load_clip

    b = load_clip(env.model, "none")
    p = save_encoder(b.model.visual, env.tmp / "ck", {"model": env.model})
    p.write_bytes(p.read_bytes()[:1000])
    return _raises(lambda: load_encoder_into(b.model, p))


@case("E17")
def _pickle_checkpoint(env):
    from fdalign_plugins.models import load_clip

    class Evil:
        def __reduce__(self):
            return (Path.touch, (env.tmp / "pwned",))

    p = env.tmp / "encoder.safetensors"
    p.write_bytes(pickle.dumps(Evil()))
    b = load_clip(env.model, "none")
    msg = _raises(lambda: load_encoder_into(b.model, p))
    assert not (env.tmp / "pwned").exists()
    return msg


@case("E18")
def _pickle_as_pretrained(env):
    class Evil:
        def __reduce__(self):
            return (Path.touch, (env.tmp / "pwned",))

    p = env.tmp / "weights.bin"
    p.write_bytes(pickle.dumps(Evil()))
    msg = _cli(finetune_main, ["--model", env.model, "--pretrained", str(p)], env.capsys)
    assert not (env.tmp / "pwned").exists()
    return msg


@case("E19")
def _disk_full_results(env, monkeypatch=None):
    p = env.tmp / "results.jsonl"
    rec = {"dataset": "d", "adapter": "a", "encoder": "clip", "shots": 1, "seed": 1, "acc": {"test": 1.0}}
    rf = ResultsFile(p)
    rf.append(rec)
    before = p.read_bytes()
    import builtins
    real_open = builtins.open

    class Full:
        def __init__(self, *a, **k):
            self.fh = real_open(*a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[:7])  # a partial line reaches the disk, then the disk is full
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    env.monkeypatch.setattr(builtins, "open", Full)
    msg = _raises(lambda: rf.append({**rec, "shots": 2}))
    env.monkeypatch.setattr(builtins, "open", real_open)
    assert ResultsFile(p).records == [rec] and p.read_bytes() == before  # torn tail cut, nothing lost
    return msg


@case("E20")
def _disk_full_checkpoint(env):
    import os

    from fdalign_plugins import checkpoint
    from fdalign_plugins.models import load_clip

    b = load_clip(env.model, "none")
    p = save_encoder(b.model.visual, env.tmp / "ck", {"model": env.model})
    before = p.read_bytes()
    real = os.fdopen

    def full(fd, *a, **k):
        fh = real(fd, *a, **k)

        def write(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        fh.write = write
        return fh

    env.monkeypatch.setattr(checkpoint.os, "fdopen", full)
    msg = _raises(lambda: save_encoder(b.model.visual, env.tmp / "ck", {"model": env.model}))
    env.monkeypatch.setattr(checkpoint.os, "fdopen", real)
    assert p.read_bytes() == before and not list((env.tmp / "ck").glob("*.tmp"))
    return msg


@case("E21")
def _nan_loss(env):
    return _cli(finetune_main, env.base + ["--data", str(env.images), "--lr", "1e30", "--momentum", "0"], env.capsys)


@case("E22")
def _unknown_yaml_key(env):
    p = env.tmp / "c.yaml"
    p.write_text("shot: 4\n")
    return _cli(bench_main, ["--config", str(p)], env.capsys)


@case("E23")
def _bad_yaml(env):
    p = env.tmp / "c.yaml"
    p.write_text("shots: [1, 2\n")
    return _cli(bench_main, ["--config", str(p)], env.capsys)


@case("E24")
def _unknown_ood(env):
    return _cli(bench_main, ["--ood", "imagenet-sketch", "--model", env.model, "--pretrained", "none",
                             "--out", str(env.out)], env.capsys)


@case("E25")
def _bad_shard(env):
    return _cli(bench_main, ["--shard", "4/4"], env.capsys)


@case("E26")
def _resume_other_config(env):
    from fdalign_plugins.checkpoint import atomic_torch_save

    env.out.mkdir(parents=True)
    atomic_torch_save({"config": {"lr": 123.0}, "epoch": 1}, env.out / "train_state.pt")
    return _cli(finetune_main, env.base + ["--data", str(env.images), "--resume"], env.capsys)


@case("E27")
def _no_data_root(env):
    return _cli(bench_main, ["--dataset", "folder"], env.capsys)


@case("E28")
def _no_cuda(env):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    return _cli(finetune_main, env.base + ["--data", str(env.images), "--device", "cuda"], env.capsys)


@case("E29")
def _damaged_results(env):
    from fdalign_plugins.results import read_results

    p = env.tmp / "results.jsonl"
    p.write_text('{"dataset": "d"}\nnot json\n{"dataset": "e"}\n')
    return _raises(lambda: read_results(p))


@case("E30")
def _existing_checkpoint(env):
    env.out.mkdir(parents=True)
    (env.out / "encoder.safetensors").write_bytes(b"x")
    return _cli(finetune_main, env.base + ["--data", str(env.images)], env.capsys)


def _no_model_load(env):
    """Make any model load fail the test: the error must come before it."""
    import fdalign_plugins.cli.finetune  # noqa: F401
    from fdalign_plugins import models
    from fdalign_plugins.bench import standard

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")
    env.monkeypatch.setattr(standard, "load_clip", boom)
    env.monkeypatch.setattr(models, "load_clip", boom)


def _yaml(env, text):
    p = env.tmp / "c.yaml"
    p.write_text(text)
    return str(p)


@case("E31")
def _misspelt_adapter_params(env):
    _no_model_load(env)
    msg = _cli(bench_main, ["--config", _yaml(env, "adapter_params: {tipp: {beta: 2}}\n"), "--out", str(env.out)],
               env.capsys)
    assert not env.out.exists()  # rejected before the run folder was made
    return msg


@case("E32")
def _unknown_hparam(env):
    _no_model_load(env)
    msg = _cli(bench_main, ["--adapter", "tip", "--config", _yaml(env, "adapter_params: {tip: {bta: 2}}\n"),
                            "--out", str(env.out)], env.capsys)
    assert not env.out.exists()
    return msg


@case("E33")
def _hparam_type(env):
    _no_model_load(env)
    return _cli(bench_main, ["--config", _yaml(env, "adapter_params: {tip: {beta_steps: many}}\n")], env.capsys)


@case("E34")
def _hparam_range(env):
    _no_model_load(env)
    return _cli(bench_main, ["--config", _yaml(env, "adapter_params: {tip-f: {lr: -1}}\n")], env.capsys)


@case("E35")
def _missing_encoder(env):
    _no_model_load(env)
    return _cli(bench_main, ["--encoder", str(env.tmp / "missing.safetensors"), "--out", str(env.out)], env.capsys)


@case("E36")
def _data_root_without_dataset(env):
    _no_model_load(env)
    return _cli(bench_main, ["--data-root", str(env.images), "--out", str(env.out)], env.capsys)


@case("E37")
def _real_model_without_pretrained(env):
    _no_model_load(env)
    msg = _cli(finetune_main, ["--model", "ViT-B-32", "--out", str(env.out)], env.capsys)
    return msg + _cli(bench_main, ["--model", "ViT-B-32", "--out", str(env.out)], env.capsys)


@case("E38")
def _empty_report(env):
    (env.tmp / "results.jsonl").write_text("")
    return _cli(bench_main, ["--report", str(env.tmp / "results.jsonl")], env.capsys)


@case("E39")
def _out_is_a_file(env):
    _no_model_load(env)
    (env.tmp / "afile").write_text("x")
    return _cli(finetune_main, env.base[:-3] + ["--out", str(env.tmp / "afile"), "--data", str(env.images)], env.capsys)


@case("E40")
def _out_not_writable(env):
    _no_model_load(env)
    (env.tmp / "afile").write_text("x")
    msg = _cli(finetune_main, env.base[:-3] + ["--out", str(env.tmp / "afile" / "run"), "--data", str(env.images)],
               env.capsys)
    return msg + _cli(bench_main, ["--out", "/proc/fdalign-run"], env.capsys)


@case("E41")
def _one_class(env):
    import shutil

    for d in ("green_circle", "blue_cross"):
        shutil.rmtree(env.images / d)
    msg = _cli(finetune_main, env.base + ["--data", str(env.images)], env.capsys)
    assert not env.out.exists()
    return msg + _cli(bench_main, ["--dataset", "folder", "--data-root", str(env.images), "--model", env.model,
                                   "--pretrained", "none", "--out", str(env.out), "--quiet"], env.capsys)


@case("E42")
def _single_image_class(env):
    for f in sorted((env.images / "blue_cross").glob("*.png"))[1:]:
        f.unlink()
    return _cli(finetune_main, env.base + ["--data", str(env.images)], env.capsys)


@case("E43")
def _rerun_after_interrupt(env):
    from fdalign_plugins.checkpoint import atomic_torch_save

    env.out.mkdir(parents=True)
    atomic_torch_save({"config": {}, "epoch": 1}, env.out / "train_state.pt")
    before = (env.out / "train_state.pt").read_bytes()
    msg = _cli(finetune_main, env.base + ["--data", str(env.images)], env.capsys)
    assert (env.out / "train_state.pt").read_bytes() == before  # the saved epochs are not overwritten
    return msg


@case("E44")
def _garbled_last_line(env):
    p = env.tmp / "results.jsonl"
    rec = {"dataset": "d", "adapter": "a", "encoder": "clip", "shots": 1, "seed": 1, "acc": {"test": 1.0}}
    p.write_text(json.dumps(rec) + "\n" + '{"dataset": "d", "adap\n')
    with pytest.warns(UserWarning) as w:
        assert ResultsFile(p).records == [rec]
    assert p.read_text() == json.dumps(rec) + "\n"
    return str(w[0].message)


@case("E45")
def _cache_dir_not_writable(env):
    _no_model_load(env)
    (env.tmp / "afile").write_text("x")
    return _cli(bench_main, ["--cache-dir", str(env.tmp / "afile" / "cache"), "--out", str(env.out)], env.capsys)


@case("E46")
def _dataset_option_without_value(env):
    return _cli(bench_main, ["--dataset", "splitjson", "--data-root", str(env.tmp), "--dataset-option",
                             "split_zhou.json"], env.capsys)


@case("E47")
def _negative_prune(env):
    return _cli(bench_main, ["--cache-dir", str(env.tmp / "store"), "--prune", "-1"], env.capsys)
@case("E48")
def _protocol_refused(env):
    _no_model_load(env)
    return _cli(bench_main, ["--adapter", "lp++", "--protocol", "reference", "--out", str(env.out)], env.capsys)


def _gda_task(classes=3, holed=None):
    from fdalign_plugins.adapter_api import FewShotTask, normalise

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(2)
    if holed is not None:
        labels = labels[labels != holed]
    support = torch.randn(2, len(labels), 8, generator=g)
    val = normalise(torch.randn(6, 8, generator=g))
    return FewShotTask(support, labels, normalise(torch.randn(8, classes, generator=g), dim=0), val,
                       torch.arange(6) % classes, "x", 2, 1)


@case("E49")
def _class_without_support(env):
    from fdalign_plugins.plugins import create_adapter

    return _raises(lambda: create_adapter("gda").fit(_gda_task(holed=2)))


@case("E50")
def _wrong_width(env):
    from fdalign_plugins.plugins import create_adapter

    adapter = create_adapter("gda").fit(_gda_task())
    return _raises(lambda: adapter.predict(torch.zeros(2, 5)))


@case("E51")
def _unknown_method(env):
    _no_model_load(env)
    return _cli(finetune_main, env.base + ["--method", "wise"], env.capsys)


@case("E52")
def _unknown_method_param(env):
    _no_model_load(env)
    return _cli(finetune_main, env.base + ["--method", "wise-ft", "--method-params", "alpha=0.5"], env.capsys)


@case("E53")
def _duplicate_plugin_name(env):
    from fdalign_plugins import plugins
    from test_plugins import DUPLICATE_TIP, FakeSite

    env.monkeypatch.delenv(plugins.NO_EXTERNAL_ENV, raising=False)
    site = FakeSite(env.tmp / "site", env.monkeypatch)
    site.add("copycat", {"fdalign.adapters": {"tip2": "tp_copycat"}}, {"tp_copycat": DUPLICATE_TIP})
    plugins.reset_plugin_manager()
    try:
        assert bench_main(["--list"]) == 0  # --list keeps working
        return env.capsys.readouterr().out
    finally:
        site.cleanup()
        plugins.reset_plugin_manager()


@case("E54")
def _plugin_raises_in_fit(env):
    import fdalign_plugins.plugins as plugins

    real = plugins.create_adapter

    def raising(name, **hp):
        ad = real(name, **hp)
        if name == "tip":
            def fit(task):
                raise FDAlignError("the plugin's own error")
            ad.fit = fit
        return ad

    env.monkeypatch.setattr(plugins, "create_adapter", raising)
    cfg = _yaml(env, "dataset_options: {num_classes: 3, train_per_class: 3, val_per_class: 2, test_per_class: 2, "
                     "ood_per_class: 2, image_size: 32}\nencoders: [clip]\nviews: 1\n")
    rc = bench_main(["--config", cfg, "--model", env.model, "--pretrained", "none", "--adapter", "tip", "--shots",
                     "1", "--out", str(env.out), "--quiet"])
    captured = env.capsys.readouterr()
    assert rc == 1 and "Traceback" not in captured.err and "FAILED" in captured.out  # the cell is marked
    return captured.err


class Env:
    pass


@pytest.fixture()
def env(tmp_path, capsys, monkeypatch, tiny_model_name, image_folder):
    e = Env()
    e.tmp, e.capsys, e.monkeypatch, e.model, e.images = tmp_path, capsys, monkeypatch, tiny_model_name, image_folder
    e.out = tmp_path / "out"
    e.base = ["--model", tiny_model_name, "--pretrained", "none", "--shots", "4", "--epochs", "2", "--out", str(e.out),
              "--quiet"]
    monkeypatch.chdir(tmp_path)
    return e


def test_catalogue_has_at_least_20_entries_and_a_case_each():
    rows = catalogue()
    assert len(rows) >= 20
    assert sorted(rows) == sorted(CASES), "docs/errors.md and tests/test_errors.py list different entries"


@pytest.mark.parametrize("eid", sorted(CASES))
def test_catalogue_entry(eid, env):
    expected = catalogue()[eid]
    got = CASES[eid](env)
    assert expected in got, f"{eid}: docs/errors.md quotes {expected!r}, the program says {got!r}"
