"""End-to-end benchmark runs on a very small world with the tiny test model."""

import json
import warnings

import pytest
import torch

from fdalign_plugins.cli.bench import main as bench_main
from fdalign_plugins.config import build_config
from fdalign_plugins.errors import FDAlignError
from fdalign_plugins.features import FeatureCache
from fdalign_plugins.results import ResultsFile, read_results, record_key
from fdalign_plugins.runner import BenchConfig, Runner

SMALL = {
    "dataset_options": {"num_classes": 4, "train_per_class": 6, "val_per_class": 3, "test_per_class": 5,
                        "ood_per_class": 4, "image_size": 32},
    "finetune": {"epochs": 1, "batch_size": 8, "templates": ["a photo of a {}.", "a sketch of a {}.",
                                                             "a dark photo of a {}."], "spc_keep": 2, "spc_k": 2},
    "adapter_params": {"tip-f": {"epochs": 2}},
    "views": 2,
    "seeds": [1],  # the seeds tests below ask for more
    "threads": 1,  # runs compared record for record must not pick their thread count from the load
}


@pytest.fixture()
def small_config(tmp_path, tiny_model_name):
    import yaml

    p = tmp_path / "bench.yaml"
    p.write_text(yaml.safe_dump({**SMALL, "model": tiny_model_name, "pretrained": "none"}))
    return p


def _cfg(tiny_model_name, **kw):
    d = {**SMALL, "model": tiny_model_name, "pretrained": "none", "adapters": ["tip", "tip-f"], "shots": [1, 2]}
    d.update(kw)
    return build_config(BenchConfig, d)


def _strip(rec):
    return {k: v for k, v in rec.items() if k not in ("timings", "time")}


def test_cli_end_to_end_table_and_jsonl(small_config, tmp_path, capsys):
    out = tmp_path / "run"
    rc = bench_main(["--config", str(small_config), "--adapter", "tip,tip-f", "--shots", "1,2", "--out", str(out),
                     "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    text = captured.out
    for title in ("world — in-distribution test", "world — OOD: decorrelated", "world — OOD: sketch"):
        assert title in text
    for row in ("CLIP (zero-shot)", "FD-Align", "Tip ", "Tip + FD-Align", "Tip-F ", "Tip-F + FD-Align", "Δ FD-Align"):
        assert row in text
    assert "1-shot" in text and "2-shot" in text
    lines = (out / "results.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert len(recs) == 3 * 2 * 2  # (zero-shot, tip, tip-f) x (clip, fdalign) x shots
    assert len({record_key(r) for r in recs}) == len(recs)
    for r in recs:
        assert set(r["acc"]) == {"test", "decorrelated", "sketch"}
        assert all(0.0 <= v <= 100.0 for v in r["acc"].values())
        assert r["config"]["adapters"] == ["tip", "tip-f"] and "torch" in r["versions"]
    tip = [r for r in recs if r["adapter"] == "tip"][0]
    assert {"alpha", "beta"} <= set(tip["hparams"])
    assert {r["adapter"]: r["selection"] for r in recs} == {"zero-shot": "fixed", "tip": "val", "tip-f": "val"}
    assert "selection: Zero-shot fixed · Tip val · Tip-F val" in text
    assert (out / "table.md").read_text().count("| Tip + FD-Align |") == 3
    assert (out / "table.csv").read_text().startswith("dataset,eval_set,method")
    assert (out / "plot.png").stat().st_size > 1000

    # --report rebuilds the identical table from the JSONL alone
    md = (out / "table.md").read_bytes()
    (out / "table.md").unlink()
    rc = bench_main(["--report", str(out / "results.jsonl")])
    rep = capsys.readouterr()
    assert rc == 0 and rep.out == text
    assert (out / "table.md").read_bytes() == md


def test_second_run_recomputes_nothing_and_cache_is_keyed(tiny_model_name, tmp_path):
    cfg = _cfg(tiny_model_name)
    s1 = Runner(cfg, tmp_path / "r", log=lambda s: None).run()
    assert s1.written == 12 and s1.finetuned == 2 and s1.cache.computed > 0
    s2 = Runner(cfg, tmp_path / "r", log=lambda s: None).run()
    assert (s2.written, s2.finetuned, s2.cache.computed, s2.cache.hits) == (0, 0, 0, 0)
    assert s2.skipped == 12
    # without the results file everything is recomputed from the caches: encoders reused, features read back
    (tmp_path / "r" / "results.jsonl").unlink()
    s3 = Runner(cfg, tmp_path / "r", log=lambda s: None).run()
    assert s3.written == 12 and s3.finetuned == 0 and s3.cache.computed == 0 and s3.cache.hits == s1.cache.computed + s1.cache.hits


def test_feature_cache_never_reuses_another_encoders_features(tiny_model_name, tmp_path):
    from fdalign_plugins.datasets.base import ArraySplit
    from fdalign_plugins.models import load_clip, state_fingerprint

    import numpy as np
    split = ArraySplit(np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8), np.arange(5) % 2, "x")
    b = load_clip(tiny_model_name, "none")
    cache = FeatureCache(tmp_path / "c")
    fa = cache.features(b.model.visual, state_fingerprint(b.model.visual), split, b.eval_transform)
    with torch.no_grad():
        b.model.visual.proj.add_(0.1)
    fp2 = state_fingerprint(b.model.visual)
    fb = cache.features(b.model.visual, fp2, split, b.eval_transform)
    assert cache.stats.computed == 2 and not torch.allclose(fa, fb)
    # corrupt the entry on disk: detected, warned, recomputed to the same values
    key = FeatureCache.key(fp2, split, repr(b.eval_transform), None, None)
    path = cache._path(key)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    fresh = FeatureCache(tmp_path / "c")
    with pytest.warns(UserWarning, match="corrupt.*recomputing"):
        fc = fresh.features(b.model.visual, fp2, split, b.eval_transform)
    assert fresh.stats.corrupt == 1 and fresh.stats.computed == 1 and torch.allclose(fb, fc)


def test_interrupted_run_resumes_to_the_same_records(tiny_model_name, tmp_path):
    cfg = _cfg(tiny_model_name)
    Runner(cfg, tmp_path / "full", log=lambda s: None).run()
    with pytest.raises(KeyboardInterrupt):
        Runner(cfg, tmp_path / "cut", log=lambda s: None, stop_after_records=1).run()
    assert len(read_results(tmp_path / "cut")) == 1
    s = Runner(cfg, tmp_path / "cut", log=lambda s: None).run()
    assert s.written == 11 and s.skipped == 1
    full = {record_key(r): _strip(r) for r in read_results(tmp_path / "full")}
    cut = {record_key(r): _strip(r) for r in read_results(tmp_path / "cut")}
    assert full.keys() == cut.keys()
    for k in full:
        assert full[k]["acc"] == cut[k]["acc"] and full[k]["hparams"] == cut[k]["hparams"], k
    lines = (tmp_path / "cut" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 12  # nothing duplicated


def test_torn_last_line_is_cut(tmp_path):
    p = tmp_path / "results.jsonl"
    rec = {"dataset": "d", "adapter": "a", "encoder": "clip", "shots": 1, "seed": 1, "acc": {"test": 50.0}}
    p.write_text(json.dumps(rec) + "\n" + '{"dataset": "d", "adap')
    rf = ResultsFile(p)
    assert len(rf.records) == 1 and p.read_text() == json.dumps(rec) + "\n"
    rf.append({**rec, "shots": 2})
    rf.append({**rec, "shots": 2})  # same key: not written twice
    assert len(p.read_text().splitlines()) == 2


@pytest.mark.parametrize("argv,msg", [
    (["--adapter", "nope"], "unknown adapter 'nope'"),
    (["--shots", "0"], "shots must be positive"),
    (["--shots", "abc"], "shots must be an integer"),
    (["--dataset", "folder"], "needs a data root"),
    (["--dataset", "folder", "--data-root", "/no/such/dir"], "dataset folder not found: /no/such/dir"),
    (["--config", "/no/such.yaml"], "config file not found"),
    (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
    (["--ood", "mars"], "unknown OOD set(s) mars"),
])
def test_bad_arguments_one_line(argv, msg, tmp_path, capsys, small_config):
    base = ["--config", str(small_config)] if "--config" not in argv and "folder" not in argv else []
    rc = bench_main(base + argv + ["--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0
    assert msg in err
    assert "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if "error" in line]) == 1


def test_dataset_option_mismatch(small_config, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run folder is relative: never in the working tree
    rc = bench_main(["--config", str(small_config), "--dataset", "folder", "--data-root", str(tmp_path)])
    assert rc == 2
    assert "dataset 'folder' does not take the option 'image_size'" in capsys.readouterr().err


def test_unreadable_config(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("adapters: [tip\n")
    assert bench_main(["--config", str(p)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    p.write_text("adaptors: [tip]\n")
    assert bench_main(["--config", str(p)]) == 2
    assert "unknown bench config key(s) 'adaptors'; valid keys:" in capsys.readouterr().err
    p.write_text("finetune: {learning_rate: 1}\n")
    assert bench_main(["--config", str(p)]) == 2
    assert "unknown finetune key(s) 'learning_rate'" in capsys.readouterr().err


def test_shards_merged_by_report_equal_unsharded_run(tiny_model_name, tmp_path, capsys):
    from fdalign_plugins.runner import work_items

    cfg = _cfg(tiny_model_name)
    items = work_items(cfg, ["clip", "fdalign"])
    parts = [work_items(cfg, ["clip", "fdalign"], (i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(items) and sum(len(p) for p in parts) == len(items)
    Runner(cfg, tmp_path / "whole", log=lambda s: None).run()
    for i in range(3):
        Runner(cfg, tmp_path / "sharded", log=lambda s: None, shard=f"{i}/3").run()
    files = sorted((tmp_path / "sharded").glob("results-shard*of3.jsonl"))
    assert len(files) == 3
    whole = {record_key(r): _strip(r)["acc"] for r in read_results(tmp_path / "whole")}
    merged = {record_key(r): _strip(r)["acc"] for r in read_results(files)}
    assert whole == merged
    assert bench_main(["--report", str(tmp_path / "whole")]) == 0
    t1 = capsys.readouterr().out
    assert bench_main(["--report"] + [str(f) for f in files] + ["--out", str(tmp_path / "merged")]) == 0
    t2 = capsys.readouterr().out
    assert t1 == t2 and "Tip-F + FD-Align" in t1


@pytest.mark.parametrize("shard", ["3/3", "a/b", "1", "-1/2"])
def test_bad_shard(shard, tmp_path, capsys, small_config):
    rc = bench_main(["--config", str(small_config), f"--shard={shard}", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "--shard" in capsys.readouterr().err


@pytest.mark.parametrize("exc", [RuntimeError("plugin bug"), FDAlignError("plugin bug")], ids=["bug", "fdalign-error"])
def test_failing_plugin_fails_its_record_not_the_sweep(tiny_model_name, tmp_path, monkeypatch, capsys, exc):
    import fdalign_plugins.plugins as plugins
    from fdalign_plugins.report import FAILED_NOTE, write_reports

    real = plugins.create_adapter

    def flaky(name, **hp):
        ad = real(name, **hp)
        if name == "tip":
            def boom(task):
                raise exc  # an FDAlignError raised by a plugin is its failure too, not the sweep's
            ad.fit = boom
        return ad

    monkeypatch.setattr(plugins, "create_adapter", flaky)
    cfg = _cfg(tiny_model_name, shots=[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once on screen, not again as a warning
        s = Runner(cfg, tmp_path / "r", log=lambda s: None).run()
    err = capsys.readouterr().err
    assert err.count("FAILED tip") == 2 and "plugin bug" in err  # even with a silent log
    assert s.failed == 2 and s.written == 4
    recs = read_results(tmp_path / "r")
    bad = [r for r in recs if r.get("error")]
    name = type(exc).__name__
    assert len(bad) == 2 and all(r["adapter"] == "tip" and f"{name}: plugin bug" in r["error"] for r in bad)
    text = write_reports(recs, tmp_path / "r")["text"]
    rows = {line.split("  ")[0]: line for line in text.splitlines()}
    assert rows["Tip"].split()[-1] == "FAILED" and rows["Tip + FD-Align"].split()[-1] == "FAILED"
    assert FAILED_NOTE in text and "FAILED" in (tmp_path / "r" / "table.md").read_text()
    monkeypatch.setattr(plugins, "create_adapter", real)
    s2 = Runner(cfg, tmp_path / "r", log=lambda s: None).run()  # the failed records are retried
    assert s2.written == 2 and s2.failed == 0
    assert not any(r.get("error") for r in read_results(tmp_path / "r"))


def test_reference_protocol_selects_on_test_and_says_so(small_config, tmp_path, capsys):
    out = tmp_path / "ref"
    rc = bench_main(["--config", str(small_config), "--adapter", "tip", "--shots", "1", "--protocol", "reference",
                     "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0
    assert text.startswith("!! REFERENCE PROTOCOL") and "selected on the TEST set" in text
    recs = read_results(out)
    assert all(r["protocol"] == "reference" and r["val_from"] == "test" for r in recs)
    assert {r["adapter"]: r["selection"] for r in recs} == {"zero-shot": "fixed", "tip": "test"}
    assert "selection: Zero-shot fixed · Tip TEST  !! chosen on the TEST set" in text
    tip = [r for r in recs if r["adapter"] == "tip" and r["encoder"] == "clip"][0]
    assert tip["val_acc"] == tip["acc"]["test"]  # "validation" is the test set here
    fd = [r for r in recs if r["encoder"] == "fdalign"][0]
    assert fd["finetune"]["kl_direction"] == "reference" and fd["finetune"]["head"] == "linear"
    assert "REFERENCE PROTOCOL" in (out / "table.md").read_text()
    # the standard protocol never does
    rc = bench_main(["--config", str(small_config), "--adapter", "tip", "--shots", "1", "--out", str(tmp_path / "std"),
                     "--quiet"])
    assert rc == 0 and "REFERENCE" not in capsys.readouterr().out
    assert all(r["val_from"] == "val" for r in read_results(tmp_path / "std"))


def test_label_subset_restricts_predictions():
    from fdalign_plugins.ops import top1_accuracy

    logits = torch.tensor([[0.0, 5.0, 1.0, 0.5], [3.0, 0.0, 0.0, 2.0]])
    labels = [2, 3]
    assert top1_accuracy(logits, labels) == 0.0
    assert top1_accuracy(logits, labels, [2, 3]) == 100.0  # class 1 and 0 are outside the 200-class subset


def test_skip_corrupt_goes_on_without_unreadable_images(tiny_model_name, tmp_path):
    from conftest import make_image_folder

    root = tmp_path / "data"
    for s, n in (("train", 6), ("val", 3), ("test", 4)):
        make_image_folder(root / s, per_class=n, seed=len(s))
    (root / "train" / "red_square" / "000.png").write_bytes(b"broken")
    (root / "test" / "blue_cross" / "001.png").write_bytes(b"broken")
    base = dict(dataset="folder", data_root=str(root), dataset_options={}, adapters=["tip"], shots=[5])
    with pytest.raises(Exception, match="unreadable image"):
        Runner(_cfg(tiny_model_name, **base), tmp_path / "a", log=lambda s: None).run()
    with pytest.warns(UserWarning, match="unreadable"):
        s = Runner(_cfg(tiny_model_name, skip_corrupt=True, **base), tmp_path / "b", log=lambda s: None).run()
    assert s.written == 4


def test_vectorised_eval_transform_equals_the_pil_path(tiny_model_name):
    import numpy as np

    from fdalign_plugins.datasets.base import ArraySplit
    from fdalign_plugins.features import vectorised_eval
    from fdalign_plugins.models import load_clip

    b = load_clip(tiny_model_name, "none")
    imgs = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    split = ArraySplit(imgs, np.arange(7) % 3, "v")
    ref = torch.stack([b.eval_transform(split.load(i)) for i in range(7)])
    assert torch.equal(vectorised_eval(split, b.eval_transform, 0, 7), ref)
    sub = split.subset([5, 1, 1, 3])
    assert torch.equal(vectorised_eval(sub, b.eval_transform, 1, 4), ref[[1, 1, 3]])
    # not applicable: other sizes, random transforms
    small = ArraySplit(imgs[:, :16, :16].copy(), np.arange(7) % 3, "s")
    assert vectorised_eval(small, b.eval_transform, 0, 7) is None
    assert vectorised_eval(split, b.train_transform(), 0, 7) is None


def _run_cli(small_config, out, *extra):
    return bench_main(["--config", str(small_config), "--adapter", "tip", "--shots", "1,2", "--seeds", "1,2",
                       "--threads", "1", "--out", str(out), "--quiet", *extra])


def test_same_command_writes_byte_identical_records(small_config, tmp_path, capsys):
    """Same command, same thread count: the same results.jsonl and prediction files, byte for byte."""
    assert _run_cli(small_config, tmp_path / "a") == 0
    text_a = capsys.readouterr().out
    assert _run_cli(small_config, tmp_path / "b") == 0
    text_b = capsys.readouterr().out
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "results.jsonl").read_bytes() == (b / "results.jsonl").read_bytes()
    files = sorted(p.name for p in (a / "predictions").iterdir())
    assert len(files) == 2 * 2 * 2 * 2  # (zero-shot, tip) x encoders x shots x seeds
    assert files == sorted(p.name for p in (b / "predictions").iterdir())
    for f in files:
        assert (a / "predictions" / f).read_bytes() == (b / "predictions" / f).read_bytes()
    assert text_a == text_b
    recs = read_results(a)
    for r in recs:
        assert r["platform"]["threads"] == 1 and r["platform"]["cpu_capability"] and r["platform"]["device"] == "cpu"
        assert set(r["identity"]) == {"support", "val", "test", "ood", "encoder"}
        assert r["identity"]["encoder"] == r["encoder_fingerprint"]
        assert "time" not in r and "timings" not in r
    # what varies between runs is kept apart, one line per record
    assert len((a / "timings.jsonl").read_text().splitlines()) == len(recs)
    by = {record_key(r): r["identity"] for r in recs}
    # the same seed gives both encoders the same support/val/test; another seed another support set
    assert by[("world", "tip", "clip", 1, 1)]["support"] == by[("world", "tip", "fdalign", 1, 1)]["support"]
    assert by[("world", "tip", "clip", 1, 1)]["support"] != by[("world", "tip", "clip", 1, 2)]["support"]
    assert by[("world", "tip", "clip", 1, 1)]["test"] == by[("world", "tip", "clip", 2, 2)]["test"]


def test_report_from_saved_predictions_equals_the_live_table(small_config, tmp_path, capsys):
    from fdalign_plugins import predictions as preds_io
    from fdalign_plugins.stats import paired_interval

    out = tmp_path / "run"
    assert _run_cli(small_config, out) == 0
    live = capsys.readouterr().out
    files = {n: (out / n).read_bytes() for n in ("table.md", "table.csv", "table.json")}
    for n in files:
        (out / n).unlink()
    assert bench_main(["--report", str(out)]) == 0
    assert capsys.readouterr().out == live
    for n, data in files.items():
        assert (out / n).read_bytes() == data, n
    # the numbers are the predictions' own: recompute one Δ cell by hand
    recs = {record_key(r): r for r in read_results(out)}
    pr = {k: preds_io.read(out / r["predictions"]["file"], r["predictions"]["sha256"]) for k, r in recs.items()}
    for k, r in recs.items():
        assert r["acc"] == {ev: preds_io.accuracy(p) for ev, p in pr[k].items()}
    base = [pr[("world", "tip", "clip", 2, s)]["sketch"] for s in (1, 2)]
    meth = [pr[("world", "tip", "fdalign", 2, s)]["sketch"] for s in (1, 2)]
    iv = paired_interval(torch.tensor([list(p["pred"] == p["label"]) for p in base]).numpy(),
                         torch.tensor([list(p["pred"] == p["label"]) for p in meth]).numpy())
    doc = json.loads(files["table.json"])
    sketch = [t for t in doc["tables"] if t["eval_set"] == "sketch"][0]
    cell = [r for r in sketch["rows"] if r["label"] == "Tip + FD-Align"][0]["cells"]["2"]
    assert cell["delta"]["lo"] == round(iv.lo, 6) and cell["delta"]["hi"] == round(iv.hi, 6)
    assert cell["delta"]["mean"] == round(iv.delta, 6) and cell["n_seeds"] == 2
    assert cell["ece"] == round((preds_io.expected_calibration_error(meth[0])
                                 + preds_io.expected_calibration_error(meth[1])) / 2, 6)
    head = ("dataset,eval_set,method,adapter,encoder,shots,mean,std,n_seeds,n_failed,selection,rejected,collapsed,ece,"
            "delta,delta_lo,delta_hi")
    assert files["table.csv"].decode().startswith(head)
    assert f"[{iv.lo:+.2f}, {iv.hi:+.2f}]" in live and "±" in live


def test_records_with_different_test_splits_are_not_paired(small_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run_cli(small_config, out) == 0
    live = capsys.readouterr().out
    lines = (out / "results.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    for r in recs:  # as if seed 2's FD-Align records had been measured on another test set
        if r["encoder"] == "fdalign" and r["seed"] == 2:
            r["identity"]["test"] = "0" * 16
    (out / "results.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))
    assert bench_main(["--report", str(out)]) == 0
    cap = capsys.readouterr()
    assert "Tip + FD-Align 1-shot (test) seed 2: not paired, the records' test-split hashes differ" in cap.err
    assert "not paired" in cap.out and "not paired" not in live
    doc = json.loads((out / "table.json").read_text())
    test = [t for t in doc["tables"] if t["eval_set"] == "test"][0]
    sketch = [t for t in doc["tables"] if t["eval_set"] == "sketch"][0]
    cell = [r for r in test["rows"] if r["label"] == "Tip + FD-Align"][0]["cells"]["1"]
    assert cell["delta"]["n_seeds"] == 1 and cell["n_seeds"] == 2  # the cell keeps both seeds, Δ pairs one
    assert [r for r in sketch["rows"] if r["label"] == "Tip + FD-Align"][0]["cells"]["1"]["delta"]["n_seeds"] == 2


def test_damaged_predictions_are_refused_with_a_note(small_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run_cli(small_config, out) == 0
    capsys.readouterr()
    victim = sorted((out / "predictions").iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[20] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert bench_main(["--report", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"predictions file {victim} does not match the checksum in its record" in err
