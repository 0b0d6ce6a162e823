"""Fine-tuning methods as plugins, and the training spine every gradient loop shares.

Losses are checked against naive per-sample float64 loops; the equivalences (full-ft vs
fd-align with spurious_weight 0, WiSE at a = 0 / 1) bit for bit; the shared rules by running the
standard and the episodic loop side by side.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from fdalign_plugins import plugins
from fdalign_plugins.config import FinetuneConfig, build_config
from fdalign_plugins.datasets.folder import build_folder_dataset
from fdalign_plugins.errors import CheckpointError, ConfigError, PluginError, TrainingError
from fdalign_plugins.method_api import BatchOutputs, FinishContext, interpolate_weights, wise_finish
from fdalign_plugins.methods.fd_align import TextPrototypes
from fdalign_plugins.plugins import get_plugin_manager
from fdalign_plugins.spine import BestState, check_finite, config_diff, run_verdict
from fdalign_plugins.trainer import finetune

from test_trainer import _cfg, _fresh

BUILTIN_METHODS = ["fd-align", "full-ft", "lipsum-ft", "lp-ft", "wise-ft"]
TEMPLATES = ["a photo of a {}.", "a sketch of a {}.", "a dark photo of a {}."]


def _quiet(_s):
    pass


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _bits_equal(a, b):
    """Bit-for-bit equality (also tells -0.0 from 0.0 and compares NaN payloads)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        width = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
                 torch.float64: torch.int64}[a.dtype]
        return torch.equal(a.contiguous().view(width), b.contiguous().view(width))
    return torch.equal(a, b)


# ----------------------------------------------------------------------- losses vs naive loops


def _batch(seed=0, b=5, d=8, c=3, m=4):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, d, generator=g, dtype=torch.float64)
    feats0 = feats + 0.3 * torch.randn(b, d, generator=g, dtype=torch.float64)
    cls = torch.nn.functional.normalize(torch.randn(c, d, generator=g, dtype=torch.float64), dim=-1)
    spur = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, c, (b,), generator=g)
    protos = TextPrototypes(cls, spur, [], None)
    tau = 7.5
    logits = tau * torch.nn.functional.normalize(feats, dim=-1) @ cls.T
    return BatchOutputs(feats, feats0, logits, labels, protos, tau, step_seed=11)


def _cos(u, v):
    return sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))


def _naive_ce(out, i):
    row = out.logits[i].tolist()
    mx = max(row)
    return -(row[int(out.labels[i])] - mx - math.log(sum(math.exp(v - mx) for v in row)))


def _naive_softmax(scores):
    mx = max(scores)
    e = [math.exp(s - mx) for s in scores]
    return [v / sum(e) for v in e]


def _method(name, **params):
    spec = get_plugin_manager(load_external=False).get_method_spec(name)
    from fdalign_plugins.method_api import resolve_method

    return spec.factory(**resolve_method(spec, FinetuneConfig(), params))


@pytest.mark.parametrize("direction", ["overview", "reference"])
def test_fd_align_loss_against_a_per_sample_loop(direction):
    out = _batch()
    m = _method("fd-align")
    m.hparams.update(alpha=0.7, spurious_weight=2.5, kl_direction=direction)
    got = m.loss(out)
    total = 0.0
    for i in range(len(out.labels)):
        f, f0 = out.feats[i].tolist(), out.feats0[i].tolist()
        p = _naive_softmax([out.tau * _cos(f, s) for s in out.protos.spur_protos.tolist()])
        q = _naive_softmax([out.tau * _cos(f0, s) for s in out.protos.spur_protos.tolist()])
        a, b = (p, q) if direction == "overview" else (q, p)
        kl = sum(x * math.log(x / y) for x, y in zip(a, b))
        total += 0.7 * _naive_ce(out, i) + 2.5 * kl
    assert got["total"].item() == pytest.approx(total / len(out.labels), rel=1e-10)
    assert m.uses_frozen()


@pytest.mark.parametrize("name", ["full-ft", "wise-ft", "lp-ft"])
def test_cross_entropy_methods_against_a_per_sample_loop(name):
    out = _batch(seed=3)
    got = _method(name).loss(out)
    naive = sum(_naive_ce(out, i) for i in range(len(out.labels))) / len(out.labels)
    assert got["total"].item() == pytest.approx(naive, rel=1e-12)
    assert set(got) == {"class", "total"}
    assert not _method(name).uses_frozen()


def test_lipsum_loss_against_a_per_sample_loop(tiny_bundle):
    from fdalign_plugins.method_api import MethodContext

    m = _method("lipsum-ft", lam=0.8, num_texts=5, text_length=3)
    m.setup(MethodContext(model=tiny_bundle.model, tokenizer=tiny_bundle.tokenizer, protos=None, tau=1.0, head=None,
                          support_features=None, val_features=None, seed=0, log=_quiet))
    tokens = m.random_tokens(11)
    sot, eot = tiny_bundle.tokenizer([""])[0, :2].tolist()
    assert tokens.shape == (5, tiny_bundle.tokenizer([""]).shape[1])
    assert (tokens[:, 0] == sot).all() and (tokens[:, 4] == eot).all() and (tokens[:, 5:] == 0).all()
    assert ((tokens[:, 1:4] >= 1) & (tokens[:, 1:4] < min(sot, eot))).all()
    assert torch.equal(m.random_tokens(11), tokens)  # a step's texts are fixed by its seed (resume draws the same)
    assert not torch.equal(m.random_tokens(12), tokens)  # and redrawn every step

    out = _batch(seed=5, d=32)
    got = m.loss(out)
    t = m.text_features(11).double().tolist()
    total = 0.0
    for i in range(len(out.labels)):
        f, f0 = out.feats[i].tolist(), out.feats0[i].tolist()
        gap = sum((out.tau * _cos(f, tm) - out.tau * _cos(f0, tm)) ** 2 for tm in t) / (2 * len(t))
        total += _naive_ce(out, i) + 0.8 * gap
    assert got["total"].item() == pytest.approx(total / len(out.labels), rel=1e-5)
    assert got["lipsum"].item() > 0 and m.uses_frozen()


def test_plus_wise_keeps_the_inner_loss():
    out = _batch(seed=7)
    assert torch.equal(_method("fd-align+wise").loss(out)["total"], _method("fd-align").loss(out)["total"])
    assert _method("fd-align+wise").needs_stock() and not _method("fd-align").needs_stock()


# ----------------------------------------------------------------------- equivalences, bit for bit


def test_full_ft_equals_fd_align_with_spurious_weight_zero_bit_for_bit(tiny_model_name, task):
    ds, split = task
    a = _fresh(tiny_model_name)
    ra = finetune(a, split.support, ds.classnames, _cfg(tiny_model_name, method="full-ft"), val=split.val,
                  progress=False, log=_quiet)
    b = _fresh(tiny_model_name)
    rb = finetune(b, split.support, ds.classnames, _cfg(tiny_model_name, spurious_weight=0.0), val=split.val, progress=False,
                  log=_quiet)
    assert [h["l_class"] for h in ra.history] == [h["l_class"] for h in rb.history]
    assert ra.best_epoch == rb.best_epoch
    for (k, va), vb in zip(a.model.visual.state_dict().items(), b.model.visual.state_dict().values()):
        assert _bits_equal(va, vb), k
    assert ra.metadata["method"] == "full-ft" and rb.metadata["method_params"]["spurious_weight"] == 0.0


def test_interpolation_endpoints_are_exact():
    g = torch.Generator().manual_seed(0)
    stock = {"w": torch.randn(7, 5, generator=g), "n": torch.tensor(3)}
    tuned = {"w": torch.randn(7, 5, generator=g), "n": torch.tensor(9)}
    assert _bits_equal(interpolate_weights(stock, tuned, 0.0)["w"], stock["w"])
    assert _bits_equal(interpolate_weights(stock, tuned, 1.0)["w"], tuned["w"])
    half = interpolate_weights(stock, tuned, 0.25)
    assert torch.allclose(half["w"], 0.75 * stock["w"] + 0.25 * tuned["w"], atol=1e-6)
    assert int(half["n"]) == 3 and int(interpolate_weights(stock, tuned, 0.75)["n"]) == 9


def test_wise_ft_at_a0_is_stock_and_at_a1_is_full_ft_bit_for_bit(tiny_model_name, task):
    ds, split = task
    stock = _state(_fresh(tiny_model_name).model.visual)
    full = _fresh(tiny_model_name)
    finetune(full, split.support, ds.classnames, _cfg(tiny_model_name, method="full-ft", select="last"),
             val=split.val, progress=False, log=_quiet)
    for a, want in ((0.0, stock), (1.0, _state(full.model.visual))):
        b = _fresh(tiny_model_name)
        res = finetune(b, split.support, ds.classnames,
                       _cfg(tiny_model_name, method="wise-ft", select="last", method_params={"wise_a": a}),
                       val=split.val, progress=False, log=_quiet)
        for k, v in b.model.visual.state_dict().items():
            assert _bits_equal(v, want[k]), (a, k)
        assert res.metadata["finish"]["wise_a"] == a and res.metadata["finish"]["chosen_on"] == "fixed"


def test_wise_chooses_a_on_validation_ties_to_the_smaller_a():
    lin = torch.nn.Linear(2, 1, bias=False)
    stock = {"lin": {"weight": torch.zeros(1, 2)}}
    with torch.no_grad():
        lin.weight.fill_(1.0)
    # validation score rises with a up to 0.5, then stays flat: ties keep 0.5
    ctx = FinishContext({"lin": lin}, stock, val_accuracy=lambda: min(float(lin.weight[0, 0].detach()), 0.5) * 100, log=_quiet)
    info = wise_finish({"wise_a": None, "wise_grid": [1.0, 0.5, 0.0, 0.75]}, ctx)
    assert info["wise_a"] == 0.5 and info["chosen_on"] == "validation" and not info["kept_stock"]
    assert list(info["wise_val_acc"]) == ["0", "0.5", "0.75", "1"]
    assert torch.equal(lin.weight, torch.full((1, 2), 0.5))
    with pytest.raises(ConfigError, match="no validation|there is none"):
        wise_finish({"wise_a": None, "wise_grid": [0.0, 1.0]}, FinishContext({"lin": lin}, stock, None, _quiet))


# ----------------------------------------------------------------------- the shared spine


def test_best_state_keeps_the_earliest_of_ties_and_epoch_zero():
    lin = torch.nn.Linear(1, 1)
    best = BestState({"lin": lin}, "val")
    for epoch, score in enumerate([50.0, 50.0, 40.0, 60.0, 60.0]):
        with torch.no_grad():
            lin.weight.fill_(float(epoch))
        best.offer(epoch, score)
    assert (best.epoch, best.score, best.initial) == (3, 60.0, 50.0)
    best.restore()
    assert float(lin.weight) == 3.0
    last = BestState({"lin": lin}, "last")
    for epoch, score in enumerate([50.0, 70.0, 10.0]):
        last.offer(epoch, score)
    assert last.epoch == 2
    nan = BestState({"lin": lin}, "val")
    for epoch in range(3):
        nan.offer(epoch, float("nan"))  # no validation: the last epoch
    assert nan.epoch == 2


def test_config_diff_is_one_rule_for_flat_and_nested_configs():
    assert config_diff({"lr": 1, "device": "cpu", "workers": 0}, {"lr": 1, "device": "cuda", "workers": 4}) == []
    assert config_diff({"lr": 1}, {"lr": 2}) == ["lr: 1 vs 2"]
    nested_a = {"finetune": {"lr": 1, "device": "cpu", "amp": True}, "episodic": {"n_way": 5}}
    nested_b = {"finetune": {"lr": 2, "device": "cuda", "amp": False}, "episodic": {"n_way": 5}}
    assert config_diff(nested_a, nested_b) == ["finetune.lr: 1 vs 2"]


def test_one_loss_guard_one_error_type():
    check_finite(1.5, "epoch 1, step 1")
    with pytest.raises(TrainingError, match=r"^loss became nan at epoch 2, step 3 \(L_class=1\); lower the learning"):
        check_finite(float("nan"), "epoch 2, step 3", "L_class=1")
    from fdalign_plugins.adapter_api import train_on_views

    from test_plugins import tiny_task

    t = tiny_task()
    w = torch.nn.Parameter(t.classifier.clone())
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at epoch \d+, step 1; lower the learning rate$"):
        train_on_views([w], lambda f: f @ w * 1e30, t, epochs=3, lr=1e30, eps=1e-8, weight_decay=0.0)


@pytest.fixture()
def episodic_pool(tmp_path):
    from conftest import make_image_folder

    classes = ["red square", "green circle", "blue cross"]
    ds = build_folder_dataset(make_image_folder(tmp_path / "pool", per_class=6, classes=classes))
    return ds


def _episodic(bundle, ds, cfg, out=None, stop=None):
    from fdalign_plugins.protocols import EpisodicConfig, episodic_finetune

    ecfg = EpisodicConfig(n_way=3, query=2, episodes=5, repeats=1, train_shot=2, train_query=2, train_episodes=2,
                          val_episodes=4)
    return episodic_finetune(bundle, ds.train, ds.classnames, cfg, ecfg, val=ds.train, out_dir=out, log=_quiet,
                             stop_after_epoch=stop)


def test_episodic_and_standard_paths_share_the_selection_rule(tiny_model_name, task, episodic_pool):
    """With lr = 0 no epoch can beat the untrained state: both paths keep epoch 0
    (the episodic loop used to keep epoch 1: epoch 0 was no candidate there)."""
    ds, split = task
    cfg = _cfg(tiny_model_name, lr=0.0, epochs=2)
    res = finetune(_fresh(tiny_model_name), split.support, ds.classnames, cfg, val=split.val, progress=False,
                   log=_quiet)
    meta = _episodic(_fresh(tiny_model_name), episodic_pool, cfg)
    assert res.best_epoch == meta["best_epoch"] == 0
    assert res.verdict == meta["finetune_verdict"] == "rejected"
    assert meta["val_acc_epoch0"] == meta["best_val_acc"]


def test_episodic_and_standard_paths_share_the_resume_rule(tiny_model_name, task, episodic_pool, tmp_path):
    """An execution-only change (workers) resumes in both paths and gives the
    uninterrupted result; a change of lr is refused by both (the episodic loop used to
    compare strictly, the standard one leniently)."""
    ds, split = task
    cfg = _cfg(tiny_model_name, epochs=2, spc=False)
    moved = _cfg(tiny_model_name, epochs=2, spc=False, workers=1)
    other = _cfg(tiny_model_name, epochs=2, spc=False, lr=0.5)

    def standard(out, c, stop=None, resume=True):
        b = _fresh(tiny_model_name)
        return b, finetune(b, split.support, ds.classnames, c, val=split.val, out_dir=out, resume=resume,
                           progress=False, log=_quiet, stop_after_epoch=stop)

    def episodic(out, c, stop=None):
        b = _fresh(tiny_model_name)
        return b, _episodic(b, episodic_pool, c, out, stop)

    for name, run in (("standard", standard), ("episodic", episodic)):
        whole, _ = run(tmp_path / f"{name}-whole", cfg)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / name, cfg, stop=1)
        with pytest.raises(CheckpointError, match=r"another config \(.*lr: 0\.01 vs 0\.5"):
            run(tmp_path / name, other)
        resumed, _ = run(tmp_path / name, moved)
        for (k, v1), v2 in zip(whole.model.visual.state_dict().items(), resumed.model.visual.state_dict().values()):
            assert torch.equal(v1, v2), (name, k)


# ----------------------------------------------------------------------- verdicts


def test_run_verdict_rules():
    h = [{"l_class": 0.5, "val_acc": 70.0}, {"l_class": 0.4, "val_acc": 72.0}]
    assert run_verdict(h, 2, 65.0, 10)["status"] == "ok"
    assert run_verdict(h, 0, 75.0, 10)["status"] == "rejected"
    high = [{"l_class": 1.5, "val_acc": 70.0}, {"l_class": 2.5, "val_acc": 70.0}]
    v = run_verdict(high, 1, 65.0, 10)  # log 10 = 2.303
    assert v["status"] == "collapsed" and "rose to 2.500 (epoch 1: 1.500), above log C = 2.303" in v["reason"]
    v = run_verdict(high, 0, 75.0, 10)
    assert v["status"] == "collapsed" and v["reason"].endswith("validation kept the untrained state")
    # noise around log C is no collapse; a model that starts above log C (random init) is judged by validation alone
    assert run_verdict([{"l_class": 2.29, "val_acc": 70.0}, {"l_class": 2.33, "val_acc": 70.0}], 1, 65.0,
                            10)["status"] == "ok"
    assert run_verdict([{"l_class": 2.5, "val_acc": 70.0}] * 2, 1, 65.0, 10)["status"] == "ok"
    assert run_verdict([{"l_class": float("nan"), "val_acc": 70.0}], 1, 65.0, 10)["status"] == "collapsed"
    fell = [{"l_class": 0.5, "val_acc": 50.0}, {"l_class": 0.5, "val_acc": 54.9}]
    assert run_verdict(fell, 0, 65.0, 10)["status"] == "collapsed"  # more than 10 points below epoch 0
    assert run_verdict([{"l_class": 0.5, "val_acc": 55.0}], 0, 65.0, 10)["status"] == "rejected"


def test_rejection_is_on_screen_and_in_the_checkpoint(tiny_model_name, task, tmp_path):
    ds, split = task
    lines = []
    res = finetune(_fresh(tiny_model_name), split.support, ds.classnames, _cfg(tiny_model_name, lr=0.0),
                   val=split.val, out_dir=tmp_path / "r", progress=False, log=lines.append)
    assert res.verdict == "rejected"
    assert any(line.startswith("VALIDATION REJECTED FINE-TUNING: no epoch beat") for line in lines)
    meta = json.loads((tmp_path / "r" / "encoder.json").read_text())
    assert meta["finetune_verdict"] == "rejected" and meta["best_epoch"] == 0 and meta["method"] == "fd-align"
    assert meta["method_params"] == {"alpha": 1.0, "spurious_weight": 1.0, "kl_direction": "overview"}


def test_table_marks_rejected_and_collapsed_cells():
    from fdalign_plugins.report import LEGEND, render_markdown, render_text, summarise

    def rec(enc, seed, acc, sel=None):
        r = {"dataset": "w", "adapter": "zero-shot", "encoder": enc, "shots": 4, "seed": seed, "acc": {"test": acc}}
        return {**r, "finetune_verdict": sel} if sel else r

    records = [rec("clip", s, 60.0) for s in (1, 2)] + [rec("fdalign", 1, 60.0, "rejected"),
                                                         rec("fdalign", 2, 61.0, "ok"),
                                                         rec("wise-ft", 1, 65.0, "collapsed"),
                                                         rec("wise-ft", 2, 66.0, "collapsed")]
    text = render_text(summarise(records))
    assert "60.50 ± 0.71 †1" in text and "65.50 ± 0.71 ‡2" in text
    assert "Δ FD-Align" in text and "+0.50 †1" in text and "Δ wise-ft" in text and "+5.50 ‡2" in text
    assert LEGEND in text and LEGEND in render_markdown(summarise(records))
    clean = render_text(summarise([r for r in records if r["encoder"] == "clip"]))
    assert "†" not in clean and LEGEND not in clean


# ----------------------------------------------------------------------- registry, config, CLI


def test_builtin_methods_come_from_our_entry_points():
    pm = get_plugin_manager(load_external=False)
    specs = {s.name: s for s in pm.list_methods()}
    assert sorted(specs) == BUILTIN_METHODS
    assert all(s.distribution == plugins.OWN_DISTRIBUTION for s in specs.values())
    assert specs["fd-align"].reads == ("alpha", "spurious_weight", "kl_direction")
    assert dict(specs["lipsum-ft"].defaults) == {"lam": 1.0, "num_texts": 80, "text_length": 8}
    assert 0.0 in specs["wise-ft"].defaults["wise_grid"] and 1.0 in specs["wise-ft"].defaults["wise_grid"]
    composed = pm.get_method_spec("lp-ft+wise")
    assert composed.name == "lp-ft+wise" and {"probe_epochs", "wise_a"} <= set(composed.defaults)
    listing = pm.format_listing()
    assert "Fine-tuning methods" in listing and "lipsum-ft  Lipsum-FT" in listing


def test_unknown_method_and_hyper_parameter_fail_before_any_model_is_loaded(monkeypatch, capsys):
    from fdalign_plugins.cli import finetune as cli

    with pytest.raises(PluginError, match=r"^unknown method 'fd-algn'; valid: fd-align, full-ft, lipsum-ft, lp-ft, "
                                          r"wise-ft \(and any of them followed by \+wise\)$"):
        build_config(FinetuneConfig, {"method": "fd-algn"})
    with pytest.raises(ConfigError, match=r"method 'wise-ft' has no hyper-parameter\(s\) wise_alpha; valid: wise_a, "
                                          r"wise_grid"):
        build_config(FinetuneConfig, {"method": "wise-ft", "method_params": {"wise_alpha": 0.5}})
    with pytest.raises(ConfigError, match="spurious_weight is a top-level fine-tuning key"):
        build_config(FinetuneConfig, {"method": "fd-align", "method_params": {"spurious_weight": 2}})
    with pytest.raises(ConfigError, match="wise_grid must be a list of numbers in \\[0, 1\\] holding 0 and 1"):
        build_config(FinetuneConfig, {"method": "wise-ft", "method_params": {"wise_grid": [0.5, 1.0]}})
    with pytest.raises(ConfigError, match="already has WiSE's hyper-parameters"):
        build_config(FinetuneConfig, {"method": "wise-ft+wise"})

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the method was checked")

    monkeypatch.setattr("fdalign_plugins.models.load_clip", boom)
    assert cli.main(["--method", "lipsum-ft", "--method-params", "lam=2,nope=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fdalign-finetune: error: method 'lipsum-ft' has no hyper-parameter(s) nope; valid: lam")
    assert cli.main(["--method", "wise"]) == 2
    assert "unknown method 'wise'; valid: fd-align" in capsys.readouterr().err
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "wise-ft" in out and "[fdalign-plugins]" in out and "wise_a=None" in out


def test_method_params_flag_parsing():
    cfg = build_config(FinetuneConfig, {"method": "wise-ft", "method_params": "wise_a=0.3,wise_grid=[0, 0.5, 1]"})
    assert cfg.method_params == {"wise_a": 0.3, "wise_grid": [0, 0.5, 1]}
    assert cfg.method_hparams() == {"wise_a": 0.3, "wise_grid": [0, 0.5, 1]}
    with pytest.raises(ConfigError, match="method_params must look like key=value"):
        build_config(FinetuneConfig, {"method_params": "justaword"})


def test_lp_ft_probes_the_head_then_fine_tunes_it(tiny_model_name, task):
    ds, split = task
    lines = []
    b = _fresh(tiny_model_name)
    res = finetune(b, split.support, ds.classnames, _cfg(tiny_model_name, method="lp-ft", lr=0.0,
                                                         method_params={"probe_epochs": 30, "probe_lr": 0.05}),
                   val=split.val, progress=False, log=lines.append)
    assert res.head is not None  # lp-ft trains a head even with head: fixed
    probe = [line for line in lines if line.startswith("linear probe: best epoch")]
    assert probe
    # lr = 0 in the fine-tuning stage: the head is exactly the probe's, and it differs from the zero-shot head
    # whenever the probe kept an epoch after 0
    zero_shot = b.logit_scale * res.protos.class_protos
    kept = int(probe[0].split("best epoch ")[1].split("/")[0])
    assert torch.equal(res.head.weight, zero_shot) == (kept == 0)


def test_episodic_refuses_a_method_with_a_head(tiny_model_name, episodic_pool):
    with pytest.raises(ConfigError, match="no fixed class set for a linear head"):
        _episodic(_fresh(tiny_model_name), episodic_pool, _cfg(tiny_model_name, method="lp-ft"))


# ----------------------------------------------------------------------- third-party methods


HALF_CE = '''
import torch.nn.functional as F

from fdalign_plugins import hookimpl
from fdalign_plugins.method_api import Method


class HalfCE(Method):
    name = "half-ce"
    summary = "scaled cross-entropy (test plugin)"
    defaults = {"scale": 0.5}

    def loss(self, out):
        l_class = F.cross_entropy(out.logits, out.labels)
        return {"class": l_class, "total": self.hparams["scale"] * l_class}


@hookimpl
def fdalign_register_methods(register):
    register(HalfCE.spec())
'''


def test_third_party_method_is_listed_composed_and_trained(site, tiny_model_name, task, tmp_path):
    site.add("fdalign-halfce", {"fdalign.methods": {"half-ce": "tp_halfce"}}, {"tp_halfce": HALF_CE}, "0.3")
    assert "half-ce    scaled cross-entropy (test plugin)  [fdalign-halfce]" in plugins.format_listing()
    assert plugins.get_method_spec("half-ce").distribution == "fdalign-halfce"
    assert plugins.get_method_spec("half-ce+wise").distribution == "fdalign-halfce"
    ds, split = task
    res = finetune(_fresh(tiny_model_name), split.support, ds.classnames,
                   _cfg(tiny_model_name, method="half-ce+wise", method_params={"scale": 0.25, "wise_a": 0.5}),
                   val=split.val, out_dir=tmp_path / "hc", progress=False, log=_quiet)
    meta = json.loads((tmp_path / "hc" / "encoder.json").read_text())
    assert meta["method"] == "half-ce+wise" and meta["method_distribution"] == "fdalign-halfce"
    assert meta["method_params"]["scale"] == 0.25 and meta["finish"]["wise_a"] == 0.5
    assert res.history[0]["loss"] == pytest.approx(0.25 * res.history[0]["l_class"], rel=1e-6)


def test_bench_runs_several_methods_with_their_own_rows(tiny_model_name, tmp_path):
    from fdalign_plugins.report import render_text, summarise
    from fdalign_plugins.results import read_results
    from fdalign_plugins.runner import BenchConfig, Runner

    from test_bench import SMALL

    cfg = build_config(BenchConfig, {**SMALL, "model": tiny_model_name, "pretrained": "none", "adapters": ["tip"],
                                     "shots": [1], "methods": ["fd-align", "wise-ft"],
                                     "method_params": {"wise-ft": {"wise_a": 0.5}}})
    Runner(cfg, tmp_path / "run", log=_quiet).run()
    recs = read_results(tmp_path / "run")
    assert {(r["adapter"], r["encoder"]) for r in recs} == {(a, e) for a in ("zero-shot", "tip")
                                                           for e in ("clip", "fdalign", "wise-ft")}
    wise = [r for r in recs if r["encoder"] == "wise-ft"][0]
    assert wise["method"] == "wise-ft" and wise["method_params"]["wise_a"] == 0.5
    assert wise["finetune_verdict"] in ("ok", "rejected", "collapsed") and "finetune" in wise
    text = render_text(summarise(recs))
    for row in ("CLIP (zero-shot)", "FD-Align", "wise-ft", "Tip + FD-Align", "Tip + wise-ft", "Δ FD-Align",
                "Δ wise-ft"):
        assert row in text
    with pytest.raises(ConfigError, match="method_params names method\\(s\\) not in methods: lp-ft"):
        build_config(BenchConfig, {"methods": ["fd-align"], "method_params": {"lp-ft": {}}})
    with pytest.raises(ConfigError, match="has no hyper-parameter"):
        build_config(BenchConfig, {"methods": ["wise-ft"], "method_params": {"wise-ft": {"a": 1}}})
    with pytest.raises(PluginError, match="unknown method 'nope'"):
        build_config(BenchConfig, {"methods": ["nope"]})


def test_the_documented_method_plugin_runs(site, tiny_model_name, task):
    """docs/plugins.md §8's example, taken from the page, installed as a fake distribution."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    source = page.split('```python\n"""feat-anchor')[1].split("```")[0]
    site.add("fdalign-anchor", {"fdalign.methods": {"feat-anchor": "fdalign_anchor"}},
             {"fdalign_anchor": '"""feat-anchor' + source})
    assert "[fdalign-anchor]" in plugins.format_listing()
    ds, split = task
    lines = []
    res = finetune(_fresh(tiny_model_name), split.support, ds.classnames,
                   _cfg(tiny_model_name, method="feat-anchor", method_params={"mu": 0.5}), val=split.val,
                   progress=False, log=lines.append)
    assert any("L_anchor" in line for line in lines)
    h = res.history[-1]
    assert h["loss"] == pytest.approx(h["l_class"] + 0.5 * h["l_anchor"], rel=1e-5) and h["l_anchor"] > 0


def test_a_user_checkpoint_brings_its_verdict_into_the_records_and_table(tiny_model_name, task, tmp_path):
    from fdalign_plugins.report import render_text, summarise
    from fdalign_plugins.results import read_results
    from fdalign_plugins.runner import BenchConfig, Runner

    from test_bench import SMALL

    ds, split = task
    finetune(_fresh(tiny_model_name), split.support, ds.classnames, _cfg(tiny_model_name, lr=0.0), val=split.val,
             out_dir=tmp_path / "ckpt", progress=False, log=_quiet)  # rejected: no epoch beats epoch 0
    cfg = build_config(BenchConfig, {**SMALL, "model": tiny_model_name, "pretrained": "none", "adapters": ["zero-shot"],
                                     "shots": [1], "encoder": str(tmp_path / "ckpt"), "cache_dir": str(tmp_path / "s")})
    runner = Runner(cfg, tmp_path / "run", log=_quiet)
    runner.run()
    fd = [r for r in read_results(tmp_path / "run") if r["encoder"] == "fdalign"][0]
    assert fd["finetune_verdict"] == "rejected" and fd["method"] == "fd-align" and fd["best_epoch"] == 0
    assert any(line.startswith("--encoder ") and ": rejected (" in line for line in runner.summary.flagged)
    assert "†" in render_text(summarise(read_results(tmp_path / "run")))
