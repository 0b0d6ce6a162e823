"""GDA, LP++, CLAP, CLIP-Adapter and the linear probe against naive float64 versions.

The naive versions use explicit loops or hand-derived gradients in numpy (never the
adapters' code); the linear probe is checked against scikit-learn itself. Plus the
selection policy carried by every record, and bad input.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from fdalign_adapters.clap import CLAPAdapter
from fdalign_adapters.clip_adapter import CLIPAdapter, init_mlp
from fdalign_adapters.gda import ISOTROPIC, GDAAdapter
from fdalign_adapters.linear_probe import LinearProbeAdapter
from fdalign_adapters.lp_pp import LPPlusPlusAdapter
from fdalign_plugins.adapter_api import check_selection, normalise, selection_used
from fdalign_plugins.errors import ConfigError, DataError

from test_adapters import make_task, test_features

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.one_thread)


def rel_close(got, expected, rtol=1e-6):
    """Relative agreement to ``rtol`` of the largest entry (logits can cross 0)."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(np.abs(expected).max(), 1e-12)
    assert np.abs(got - expected).max() <= rtol * scale, np.abs(got - expected).max() / scale


def n_normalise(rows):
    return [[x / math.sqrt(sum(v * v for v in r)) for x in r] for r in rows]


def n_accuracy(logits, labels):
    return sum(1 for row, y in zip(logits, labels) if max(range(len(row)), key=lambda c: (row[c], -c)) == y)


def first_best(values, score):
    best, chosen = -1, None
    for v in values:
        s = score(v)
        if s > best:
            best, chosen = s, v
    return chosen


# ----------------------------------------------------------------------- GDA


def n_gda(task):
    """Means, shrinkage precision, W_g and b with loops (numpy pinv)."""
    views, num, dim = task.support.shape
    samples, labels = [], []
    for v in range(views):
        samples += n_normalise(task.support[v].tolist())
        labels += task.support_labels.tolist()
    classes = task.num_classes
    means = []
    for c in range(classes):
        rows = [s for s, y in zip(samples, labels) if y == c]
        means.append([sum(r[d] for r in rows) / len(rows) for d in range(dim)])
    centred = [[s[d] - means[y][d] for d in range(dim)] for s, y in zip(samples, labels)]
    m = len(centred)
    mu = [sum(r[d] for r in centred) / m for d in range(dim)]
    cov = np.array([[sum((r[i] - mu[i]) * (r[j] - mu[j]) for r in centred) / (m - 1) for j in range(dim)] for i in range(dim)])
    precision = dim * np.linalg.pinv((m - 1) * cov + np.trace(cov) * np.eye(dim))
    means = np.array(means)
    weights = precision @ means.T
    bias = np.array([math.log(1.0 / classes) - 0.5 * means[c] @ precision @ means[c] for c in range(classes)])
    return weights, bias


def n_gda_logits(features, W, weights, bias, alpha):
    return [[100.0 * sum(f[d] * W[d][c] for d in range(len(f))) + alpha * (sum(f[d] * weights[d, c] for d in range(len(f))) + bias[c])
             for c in range(len(W[0]))] for f in features]


def test_gda_equals_naive_at_fixed_alpha():
    task = make_task(seed=21)
    weights, bias = n_gda(task)
    adapter = GDAAdapter(search=False, alpha=0.7).fit(task)
    expected = n_gda_logits(test_features().tolist(), task.classifier.tolist(), weights, bias, 0.7)
    rel_close(adapter.predict(test_features()), expected)
    assert adapter.chosen_hparams()["covariance"] == "shrinkage"


def test_gda_chooses_alpha_like_the_naive_search():
    for seed in (22, 23, 24):
        task = make_task(seed=seed, classes=5, shots=4, views=3, num_val=40)
        weights, bias = n_gda(task)
        val, W, vl = task.val_features.tolist(), task.classifier.tolist(), task.val_labels.tolist()
        expected = first_best([1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0],
                              lambda a: n_accuracy(n_gda_logits(val, W, weights, bias, a), vl))
        adapter = GDAAdapter().fit(task)
        assert adapter.chosen_hparams()["alpha"] == expected
        assert adapter.val_accuracy == pytest.approx(100.0 * n_accuracy(n_gda_logits(val, W, weights, bias, expected), vl) / 40)


def test_gda_one_shot_uses_the_views_and_one_view_falls_back_to_isotropic():
    task = make_task(seed=25, shots=1, views=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shrinkage estimate needs no fallback with several views
        adapter = GDAAdapter().fit(task)
    assert adapter.chosen_hparams()["covariance"] == "shrinkage"
    assert torch.isfinite(adapter.predict(test_features())).all()
    single = dataclasses.replace(task, support=task.support[:1])
    with pytest.warns(UserWarning, match="no within-class spread"):
        adapter = GDAAdapter(search=False, alpha=1.0).fit(single)
    assert adapter.chosen_hparams()["covariance"] == ISOTROPIC
    # isotropic: W_g = μᵀ, b = log(1/C) − ½‖μ‖² with μ the single normalised feature per class
    means = normalise(single.support[0])
    expected = 100 * test_features() @ single.classifier + test_features() @ means.T + (math.log(1 / 4) - 0.5 * (means**2).sum(1))
    rel_close(adapter.predict(test_features()), expected)


# ----------------------------------------------------------------------- LP++


def n_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def n_lp_pp(task, epochs, every=10, momentum=0.9, scale=250.0):
    """LP++ with hand-derived gradients in numpy float64; returns the kept state and epoch."""
    views = task.support.numpy()
    feats = views.mean(axis=0)
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)  # [N, D] cache keys
    y = task.support_labels.numpy()
    T = task.classifier.numpy()
    n, classes = len(y), T.shape[1]
    onehot = np.eye(classes)[y]
    W = np.stack([feats[y == c].sum(axis=0) for c in range(classes)])  # class sums
    b = np.zeros(classes)
    ft = feats @ T
    alpha = scale * np.mean([ft[y == c].mean(axis=0) for c in range(classes)]) * np.ones(classes)
    lr_w = 4 * n / np.linalg.eigvalsh(feats.T @ feats).max()
    lr_a = n / (4 * (ft**2).sum(axis=0).max())
    val, vl = task.val_features.numpy(), task.val_labels.numpy()

    def val_correct(W, b, a):
        return int(((val @ W.T + b + a * (val @ T)).argmax(1) == vl).sum())

    best = (val_correct(W, b, alpha), 0, W.copy(), b.copy(), alpha.copy())
    bw, bb = np.zeros_like(W), np.zeros_like(b)
    for epoch in range(1, epochs + 1):
        g = (n_softmax(feats @ W.T + b + alpha * ft) - onehot) / n  # dL/dlogits
        gw, gb, ga = g.T @ feats, g.sum(0), (g * ft).sum(0)
        bw, bb = momentum * bw + gw if epoch > 1 else gw, momentum * bb + gb if epoch > 1 else gb
        W, b = W - lr_w * bw, b - lr_w * bb
        if epoch % every == 0:
            alpha = alpha - lr_a * ga
        c = val_correct(W, b, alpha)
        if c > best[0]:
            best = (c, epoch, W.copy(), b.copy(), alpha.copy())
    return best


def test_lp_pp_equals_naive_with_hand_derived_gradients():
    task = make_task(seed=31, classes=4, shots=3, num_val=40)
    correct, epoch, W, b, alpha = n_lp_pp(task, epochs=60)
    adapter = LPPlusPlusAdapter(epochs=60).fit(task)
    assert adapter.train_result.best_epoch == epoch and adapter.train_result.best_val_correct == correct
    f = test_features().numpy()
    rel_close(adapter.predict(test_features()), f @ W.T + b + alpha * (f @ task.classifier.numpy()))
    assert adapter.chosen_hparams()["best_epoch"] == epoch > 0


def test_lp_pp_zero_epochs_is_its_initialisation():
    task = make_task(seed=32)
    _, epoch, W, b, alpha = n_lp_pp(task, epochs=0)
    adapter = LPPlusPlusAdapter(epochs=0).fit(task)
    f = test_features().numpy()
    rel_close(adapter.predict(test_features()), f @ W.T + b + alpha * (f @ task.classifier.numpy()))
    assert epoch == 0 and not adapter.selects_on_validation()


# ----------------------------------------------------------------------- CLAP


def n_clap(task, epochs, lr, batch, warmup=1, warmup_lr=1e-5, momentum=0.9):
    """CLAP with hand-derived gradients: same batches (the task's seeded permutation)."""
    views = task.support.numpy()
    V, n, _ = views.shape
    views = views / np.linalg.norm(views, axis=2, keepdims=True)
    y = task.support_labels.numpy()
    T = task.classifier.numpy().T.copy()  # [C, D]
    classes = T.shape[0]
    samples, ys = views.reshape(V * n, -1), np.tile(y, V)
    probs = n_softmax(100 * samples @ T.T)
    lam = np.array([probs[ys == c, c].mean() for c in range(classes)])
    P, buf = T.copy(), None
    iters = math.ceil(n / min(batch, n))
    total = (epochs - warmup) * iters
    step = 0
    g = torch.Generator().manual_seed(task.seed)
    for epoch in range(1, epochs + 1):
        x_all = views[(epoch - 1) % V]
        order = torch.randperm(n, generator=g).numpy()
        for s in range(0, n, min(batch, n)):
            idx = order[s : s + min(batch, n)]
            x, yy = x_all[idx], y[idx]
            norms = np.linalg.norm(P, axis=1, keepdims=True)
            Ph = P / norms
            G = (n_softmax(100 * x @ Ph.T) - np.eye(classes)[yy]) / len(idx)  # [B, C]
            dPh = 100 * G.T @ x  # [C, D]
            grad = (dPh - (dPh * Ph).sum(1, keepdims=True) * Ph) / norms + 2 * lam[:, None] * (P - T) / classes
            buf = grad if buf is None else momentum * buf + grad
            if epoch <= warmup:
                rate = warmup_lr
            else:
                rate = lr * (1 + math.cos(math.pi * step / total)) / 2
                step += 1
            P = P - rate * buf
    return P, lam


def test_clap_equals_naive_with_hand_derived_gradients():
    task = make_task(seed=41, classes=4, shots=5, views=3)
    P, lam = n_clap(task, epochs=6, lr=0.1, batch=8)
    adapter = CLAPAdapter(epochs=6, batch_size=8).fit(task)
    rel_close(adapter.penalty_weights, lam, 1e-12)
    rel_close(adapter.prototypes, P)
    f = test_features().numpy()
    Ph = P / np.linalg.norm(P, axis=1, keepdims=True)
    rel_close(adapter.predict(test_features()), 100 * f @ Ph.T)


def test_clap_never_looks_at_validation_and_records_fixed():
    task = make_task(seed=42)
    a = CLAPAdapter(epochs=4).fit(task)
    shuffled = dataclasses.replace(task, val_labels=task.val_labels.flip(0))  # another "validation" set
    b = CLAPAdapter(epochs=4).fit(shuffled)
    assert torch.equal(a.prototypes, b.prototypes)  # the validation set changes nothing
    assert [h.val_correct for h in a.train_result.history] == [None] * 5 and a.train_result.best_epoch == 4
    assert selection_used(a, "standard") == selection_used(a, "reference") == "fixed"


# ----------------------------------------------------------------------- CLIP-Adapter


def n_clip_adapter(features, W, w1, w2, ratio):
    out = []
    for f in features:
        hidden = [max(0.0, sum(w1[h][d] * f[d] for d in range(len(f)))) for h in range(len(w1))]
        adapted = [max(0.0, sum(w2[d][h] * hidden[h] for h in range(len(hidden)))) for d in range(len(f))]
        mixed = n_normalise([[ratio * a + (1 - ratio) * x for a, x in zip(adapted, f)]])[0]
        out.append([100.0 * sum(mixed[d] * W[d][c] for d in range(len(f))) for c in range(len(W[0]))])
    return out


def test_clip_adapter_formula_and_ratio_choice_equal_naive():
    task = make_task(seed=51, num_val=40)
    w1, w2 = (w.detach().tolist() for w in init_mlp(12, 4, task.seed, F64))
    val, W, vl = task.val_features.tolist(), task.classifier.tolist(), task.val_labels.tolist()
    ratios = [0.2, 0.4, 0.6, 0.8]
    expected = first_best(ratios, lambda r: n_accuracy(n_clip_adapter(val, W, w1, w2, r), vl))
    adapter = CLIPAdapter(epochs=0).fit(task)  # untrained adapters: the choice is the naive search's
    assert adapter.chosen_hparams()["ratio"] == expected
    assert adapter.chosen_hparams()["val_correct_per_ratio"] == [n_accuracy(n_clip_adapter(val, W, w1, w2, r), vl) for r in ratios]
    rel_close(adapter.predict(test_features()), n_clip_adapter(test_features().tolist(), W, w1, w2, expected))


def test_clip_adapter_trained_weights_follow_the_formula():
    task = make_task(seed=52, num_val=40)
    adapter = CLIPAdapter(epochs=5, lr=0.05, batch_size=4).fit(task)
    hp = adapter.chosen_hparams()
    assert hp["val_correct_per_ratio"][[0.2, 0.4, 0.6, 0.8].index(hp["ratio"])] == max(hp["val_correct_per_ratio"])
    w1, w2 = (w.tolist() for w in adapter.weights)
    rel_close(adapter.predict(test_features()), n_clip_adapter(test_features().tolist(), task.classifier.tolist(), w1, w2, hp["ratio"]))


# ----------------------------------------------------------------------- linear probe


def probe_task(seed=61):
    """More samples than dimensions so the regularised optimum is well inside the data."""
    return make_task(seed=seed, classes=3, shots=8, views=2, dim=6, num_val=30, spread=1.3)


def sk_fit(task, c):
    from sklearn.linear_model import LogisticRegression

    feats = normalise(task.support.mean(0)).numpy()
    return LogisticRegression(C=c, solver="lbfgs", tol=1e-12, max_iter=20000).fit(feats, task.support_labels.numpy())


def log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_linear_probe_equals_scikit_learn_at_fixed_c():
    task = probe_task()
    for c in (0.5, 20.0):
        adapter = LinearProbeAdapter(search=False, C=c, tol=1e-12, max_iter=5000).fit(task)
        clf = sk_fit(task, c)
        f = test_features(dim=6).numpy()
        # logits are defined up to a constant per row (softmax): compare log-probabilities
        rel_close(log_softmax(adapter.predict(test_features(dim=6))), clf.predict_log_proba(f))


def test_linear_probe_chooses_c_like_the_naive_coop_search():
    task = probe_task(seed=62)
    val, vl = task.val_features.numpy(), task.val_labels.numpy()

    def acc(c):
        return int((sk_fit(task, c).predict(val) == vl).sum())

    grid = [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6]
    accs = [acc(c) for c in grid]
    peak = grid[int(np.argmax(accs))]
    left, right, final = 0.1 * peak, 10 * peak, None
    for _ in range(3):
        a_l, a_r = acc(left), acc(right)
        mid = 10 ** (0.5 * (math.log10(right) + math.log10(left)))
        if a_l < a_r:
            final, left = right, mid
        else:
            final, right = left, mid
    adapter = LinearProbeAdapter(refine_steps=3, tol=1e-12, max_iter=5000).fit(task)
    assert adapter.chosen_hparams()["C"] == pytest.approx(final, rel=1e-12)


# ----------------------------------------------------------------------- selection policy


def test_every_new_adapter_declares_its_selection_and_the_runner_refuses_the_rest():
    from fdalign_plugins.plugins import get_plugin_manager
    from fdalign_plugins.runner import resolve_adapters

    pm = get_plugin_manager(load_external=False)
    declared = {s.name: s.selection for s in pm.list_adapters()}
    assert declared["clap"] == ("fixed",) and declared["zero-shot"] == ("fixed",)
    assert declared["lp++"] == ("val",) and "test" not in declared["linear-probe"]
    assert "test" in declared["gda"] and "test" in declared["tip"]
    for name in ("lp++", "linear-probe"):
        with pytest.raises(ConfigError, match=re.escape(f"adapter '{name}' supports hyper-parameter selection ")
                           + ".* only, but --protocol reference selects on the TEST set; run it under --protocol standard"):
            check_selection(pm.get_adapter_spec(name), "reference")
        check_selection(pm.get_adapter_spec(name), "standard")
    check_selection(pm.get_adapter_spec("clap"), "reference")  # fixed settings run under any protocol
    with pytest.raises(ConfigError, match="adapter 'lp\\+\\+'"):
        resolve_adapters(["tip", "lp++"], "reference")
    said = []
    names = resolve_adapters(["all"], "reference", said.append)
    assert "lp++" not in names and "linear-probe" not in names and {"gda", "clap", "tip"} <= set(names)
    assert said == ["--adapter all under --protocol reference: leaving out linear-probe, lp++ "
                    "(they never select on the test set)"]
    assert set(resolve_adapters(["all"], "standard")) == set(declared)


def test_selection_used_follows_the_hyper_parameters():
    task = make_task(seed=71)
    assert selection_used(GDAAdapter().fit(task), "standard") == "val"
    assert selection_used(GDAAdapter().fit(task), "reference") == "test"
    assert selection_used(GDAAdapter(search=False).fit(task), "reference") == "fixed"
    assert selection_used(LinearProbeAdapter(search=False, C=1.0).fit(task), "standard") == "fixed"
    assert selection_used(CLIPAdapter(search=False, epochs=0).fit(task), "standard") == "fixed"
    assert selection_used(CLIPAdapter(search=False, epochs=1).fit(task), "standard") == "val"


# ----------------------------------------------------------------------- bad input


NEW = (GDAAdapter, LPPlusPlusAdapter, CLAPAdapter, CLIPAdapter, LinearProbeAdapter)
QUICK = {LPPlusPlusAdapter: {"epochs": 5}, CLAPAdapter: {"epochs": 3}, CLIPAdapter: {"epochs": 2}}


def test_wrong_feature_width_is_a_clear_error():
    task = make_task(seed=81)
    for cls in NEW:
        adapter = cls(**QUICK.get(cls, {})).fit(task)
        with pytest.raises(DataError, match=re.escape(f"adapter '{adapter.name}'") + r" expects features \[B, 12\], got shape \(3, 5\)"):
            adapter.predict(torch.zeros(3, 5, dtype=F64))


def test_a_class_without_support_images_is_an_error_or_a_finite_documented_result():
    task = make_task(seed=82)
    keep = task.support_labels != 2  # class 2 loses its support images
    holed = dataclasses.replace(task, support=task.support[:, keep], support_labels=task.support_labels[keep])
    for cls, why in ((GDAAdapter, "a mean per class"), (LPPlusPlusAdapter, "a class centroid"),
                     (CLAPAdapter, "a zero-shot accuracy per class")):
        with pytest.raises(DataError, match=re.escape(f"adapter '{cls.name}': class(es) 2 have no support image (1 of 4); "
                                                      f"it needs {why}")):
            cls(**QUICK.get(cls, {})).fit(holed)
    for cls in (CLIPAdapter, LinearProbeAdapter):  # a classifier over all classes still exists: finite logits
        logits = cls(**QUICK.get(cls, {})).fit(holed).predict(test_features())
        assert logits.shape == (7, 4) and torch.isfinite(logits).all()


def test_one_shot_never_gives_nan():
    task = make_task(seed=83, shots=1, views=1)
    for cls in NEW:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GDA's isotropic fallback warns (tested above)
            logits = cls(**QUICK.get(cls, {})).fit(task).predict(test_features())
        assert torch.isfinite(logits).all(), cls.name


def test_bad_hyper_parameters_are_clear_errors():
    task = make_task(seed=84)
    with pytest.raises(ConfigError, match=r"ratios must lie in \[0, 1\], got \[1.5\]"):
        CLIPAdapter(ratios=[0.2, 1.5], epochs=0).fit(task)
    # declared ranges fail when the adapter is made, before any features exist
    with pytest.raises(ConfigError, match=re.escape("adapter 'linear-probe': hyper-parameter C must lie in [0, inf], got -1.0")):
        LinearProbeAdapter(search=False, C=-1.0)
    with pytest.raises(ConfigError, match=re.escape("adapter 'lp++': hyper-parameter alpha_every must lie in [1, inf], got 0")):
        LPPlusPlusAdapter(alpha_every=0)
    with pytest.raises(ConfigError, match=re.escape("adapter 'clap': hyper-parameter epochs must lie in [1, inf], got 0")):
        CLAPAdapter(epochs=0)
    # what a range cannot say is checked in fit
    with pytest.raises(ConfigError, match="C must be a positive number, got 0.0"):
        LinearProbeAdapter(search=False, C=0.0).fit(task)
    with pytest.raises(ConfigError, match=r"clap: epochs must be >= 1 and warmup_epochs in \[0, epochs\], got 2, 3"):
        CLAPAdapter(epochs=2, warmup_epochs=3).fit(task)


# ----------------------------------------------------------------------- tables and published numbers


def _record(adapter, acc, selection, shots=16, encoder="clip", dataset="imagenet"):
    return {"dataset": dataset, "adapter": adapter, "encoder": encoder, "shots": shots, "seed": 1,
            "acc": {"test": acc}, "selection": selection}


def test_table_headers_say_how_each_adapter_selected():
    from fdalign_plugins.report import render_markdown, render_text, summarise

    records = [_record("zero-shot", 60.0, "fixed"), _record("gda", 63.0, "val"), _record("clap", 62.0, "fixed"),
               _record("tip", 61.0, "test")]
    tables = summarise(records)
    text = render_text(tables)
    assert "selection: Zero-shot fixed · Tip TEST · GDA val · CLAP fixed  !! chosen on the TEST set" in text
    assert "selection: Zero-shot fixed · Tip TEST · GDA val · CLAP fixed" in render_markdown(tables)
    older = summarise([{k: v for k, v in _record("tip", 61.0, "val").items() if k != "selection"}])
    assert "selection: Tip unrecorded" in render_text(older)


def test_adapters_rn50_covers_every_adapter_with_published_only_averages():
    from fdalign_plugins.plugins import get_plugin_manager
    from fdalign_plugins.reproduce import find_table, load_table, side_by_side

    spec = load_table(find_table("adapters-rn50"))
    names = {s.name for s in get_plugin_manager(load_external=False).list_adapters()}
    assert {row["adapter"] for row in spec["rows"].values()} == names
    assert spec["eval_sets"]["11-dataset average"] is None
    assert spec["published"]["GDA"]["ImageNet"][16] == 63.82 and spec["published"]["GDA"]["11-dataset average"][16] == 76.05
    records = {"main": [_record("gda", 63.0, "val")], "validation-only": []}
    text, md = side_by_side(spec, records)
    gda = [ln for ln in text.split("[11-dataset average]")[0].splitlines() if ln.startswith("GDA ")][0]
    assert "63.00 / 63.82 (-0.82)" in gda
    averages = text.split("[11-dataset average]")[1]
    assert averages.splitlines()[1].startswith("paper only")
    assert [ln for ln in averages.splitlines() if ln.startswith("GDA ")][0].split()[-1] == "76.05"
    assert [ln for ln in averages.splitlines() if ln.startswith("LP++ ")][0].split()[-1] == "–"


def test_a_run_that_pins_its_protocol_keeps_it(tmp_path, monkeypatch):
    import fdalign_plugins.bench.runner as runner_mod
    from fdalign_plugins.reproduce import find_table, load_table, run_table

    seen = {}

    class FakeRunner:
        def __init__(self, cfg, out, **kwargs):
            self.cfg, self.out = cfg, out

        def run(self):
            seen[self.out.name] = (self.cfg.protocol, tuple(self.cfg.adapters))
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "results.jsonl").write_text("")

    monkeypatch.setattr(runner_mod, "Runner", FakeRunner)
    said = []
    run_table(load_table(find_table("adapters-rn50")), tmp_path / "out",
              [None, {"protocol": "reference", "data_root": str(tmp_path)}], log=said.append)
    assert seen["main"][0] == "reference" and "gda" in seen["main"][1]
    assert seen["validation-only"] == ("standard", ("lp++", "linear-probe", "clap"))
    assert "== run 'validation-only' keeps protocol 'standard' (pinned by the table; 'reference' was asked for the others)" in said
