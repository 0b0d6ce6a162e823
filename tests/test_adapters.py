"""The five built-in adapters against deliberately naive implementations of SPEC §2.

The naive versions below use plain Python floats and explicit loops over features,
classes, cache entries and channels; they share no code with the adapters.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses

import pytest
import torch

from fdalign_adapters.ape import APEAdapter
from fdalign_adapters.ape_t import APETAdapter, ape_t_logits, refine
from fdalign_adapters.tip import TipAdapter
from fdalign_adapters.tip_f import TipFAdapter
from fdalign_adapters.zero_shot import ZeroShotAdapter
from fdalign_plugins.adapter_api import FewShotTask, grid_values, normalise, scale_channel_count
from fdalign_plugins.errors import DataError, FDAlignError

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.one_thread)


def make_task(seed=0, classes=4, shots=3, views=2, dim=12, num_val=24, dataset="some_new_dataset", spread=0.8):
    """Random clustered features: raw support views, normalised val, a noisy text classifier."""
    g = torch.Generator().manual_seed(seed)
    means = normalise(torch.randn(classes, dim, generator=g, dtype=F64))
    labels = torch.arange(classes).repeat_interleave(shots)
    support = 2.5 * means[labels][None] + spread * torch.randn(views, len(labels), dim, generator=g, dtype=F64)
    val_labels = torch.arange(num_val) % classes
    val = normalise(means[val_labels] + spread * torch.randn(num_val, dim, generator=g, dtype=F64))
    classifier = normalise(means.T + 1.2 * torch.randn(dim, classes, generator=g, dtype=F64), dim=0)
    return FewShotTask(support, labels, classifier, val, val_labels, dataset, shots, seed)


def test_features(seed=99, n=7, dim=12):
    return normalise(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64))


test_features.__test__ = False  # a helper, not a test


# ----------------------------------------------------------------------- naive formulas


def n_norm(v):
    s = math.sqrt(sum(x * x for x in v))
    return [x / s for x in v]


def n_dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def n_keys(support):
    """Mean of the raw views per image, then normalised."""
    views, num, dim = len(support), len(support[0]), len(support[0][0])
    return [n_norm([sum(support[v][i][d] for v in range(views)) / views for d in range(dim)]) for i in range(num)]


def n_zero_shot(f, W, c):
    return 100.0 * sum(f[d] * W[d][c] for d in range(len(f)))


def n_tip(features, W, keys, labels, alpha, beta):
    out = []
    for f in features:
        row = []
        for c in range(len(W[0])):
            cache = 0.0
            for n, key in enumerate(keys):
                if labels[n] == c:
                    cache += math.exp(-beta * (1.0 - n_dot(f, key)))
            row.append(n_zero_shot(f, W, c) + alpha * cache)
        out.append(row)
    return torch.tensor(out, dtype=F64)


def n_criterion(W, keys, labels, lam):
    dim, classes = len(W), len(W[0])
    groups = [[[W[d][i] for d in range(dim)]] + [keys[n] for n in range(len(keys)) if labels[n] == i] for i in range(classes)]
    sim, count = [0.0] * dim, 0
    for i in range(classes):
        for j in range(classes):
            if i == j:
                continue
            for x in groups[i]:
                for y in groups[j]:
                    count += 1
                    for d in range(dim):
                        sim[d] += x[d] * y[d]
    crit = []
    for d in range(dim):
        mean = sum(W[d]) / classes
        var = sum((w - mean) ** 2 for w in W[d]) / (classes - 1)
        crit.append(-lam * sim[d] / count + (1 - lam) * var)
    return crit


def n_top(crit, q):
    return sorted(sorted(range(len(crit)), key=lambda d: -crit[d])[:q])


def n_ape(features, W, keys, labels, q, lam, alpha, beta, gamma):
    classes = len(W[0])
    idx = n_top(n_criterion(W, keys, labels, lam), q)
    keys_sel = [n_norm([k[d] for d in idx]) for k in keys]
    w_sel = [n_norm([W[d][c] for d in idx]) for c in range(classes)]  # per class, over selected channels
    trust = []
    for n, key in enumerate(keys_sel):
        logits = [n_dot(key, w_sel[c]) for c in range(classes)]
        m = max(logits)
        z = sum(math.exp(v - m) for v in logits)
        probs = [math.exp(v - m) / z for v in logits]
        div = 0.0
        for c in range(classes):
            onehot = 1.0 if labels[n] == c else 0.0
            div += onehot * math.log2((onehot + 1e-6) / (probs[c] + 1e-6))
        trust.append(math.exp(gamma * div))
    out = []
    for f in features:
        f_sel = n_norm([f[d] for d in idx])
        row = []
        for c in range(classes):
            cache = 0.0
            for n, key in enumerate(keys_sel):
                if labels[n] == c:
                    cache += math.exp(-beta * (1.0 - n_dot(f_sel, key))) * trust[n]
            row.append(n_zero_shot(f, W, c) + alpha * cache)
        out.append(row)
    return torch.tensor(out, dtype=F64), idx


def n_ape_t(features, W, keys, labels, idx, res, weights, alpha, beta):
    W_new = [list(row) for row in W]
    keys_new = [list(k) for k in keys]
    for c in range(len(W[0])):
        for qi, d in enumerate(idx):
            W_new[d][c] += res[c][qi]
    for n in range(len(keys)):
        for qi, d in enumerate(idx):
            keys_new[n][d] += res[labels[n]][qi]
    out = []
    for f in features:
        row = []
        for c in range(len(W[0])):
            cache = 0.0
            for n, key in enumerate(keys_new):
                if labels[n] == c:
                    cache += math.exp(-beta * (1.0 - n_dot(f, key))) * weights[n]
            row.append(n_zero_shot(f, W_new, c) + alpha * cache)
        out.append(row)
    return torch.tensor(out, dtype=F64)


def lists(task):
    return task.support.tolist(), task.classifier.tolist(), task.support_labels.tolist()


def assert_close(got, expected):
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)


# ----------------------------------------------------------------------- adapters vs naive


def test_zero_shot_equals_naive():
    task = make_task()
    feats = test_features()
    adapter = ZeroShotAdapter().fit(task)
    W = task.classifier.tolist()
    expected = torch.tensor([[n_zero_shot(f, W, c) for c in range(4)] for f in feats.tolist()], dtype=F64)
    assert_close(adapter.predict(feats), expected)
    assert adapter.chosen_hparams() == {}


def test_tip_equals_naive_and_its_choice_is_the_naive_grid_best():
    task = make_task(seed=1)
    support, W, labels = lists(task)
    keys = n_keys(support)
    adapter = TipAdapter().fit(task)
    chosen = adapter.chosen_hparams()
    alpha, beta = chosen["alpha"], chosen["beta"]
    assert_close(adapter.predict(test_features()), n_tip(test_features().tolist(), W, keys, labels, alpha, beta))
    # The chosen point is the first best of the naive double loop on validation (coarse check on its grid).
    betas, alphas = grid_values(7.0, 200), grid_values(3.0, 20)
    assert beta in betas and alpha in alphas
    vl = task.val_labels
    val_logits = n_tip(task.val_features.tolist(), W, keys, labels, alpha, beta)
    chosen_correct = int((val_logits.argmax(1) == vl).sum())
    assert adapter.val_accuracy == pytest.approx(100.0 * chosen_correct / len(vl))
    for b in betas[::25]:
        for a in alphas[::5]:
            assert int((n_tip(task.val_features.tolist(), W, keys, labels, a, b).argmax(1) == vl).sum()) <= chosen_correct


def test_tip_without_search_uses_the_given_alpha_beta():
    task = make_task(seed=2)
    support, W, labels = lists(task)
    adapter = TipAdapter(search=False, alpha=2.5, beta=3.0).fit(task)
    assert (adapter.chosen_hparams()["alpha"], adapter.chosen_hparams()["beta"]) == (2.5, 3.0)
    assert_close(adapter.predict(test_features()), n_tip(test_features().tolist(), W, n_keys(support), labels, 2.5, 3.0))


def test_tip_f_with_zero_epochs_equals_tip():
    task = make_task(seed=3)
    tip = TipAdapter().fit(task)
    tip_f = TipFAdapter(epochs=0).fit(task)
    assert tip_f.chosen_hparams()["alpha"] == tip.chosen_hparams()["alpha"]
    assert tip_f.chosen_hparams()["beta"] == tip.chosen_hparams()["beta"]
    assert torch.equal(tip_f.cache_keys, tip.cache_keys)
    assert torch.equal(tip_f.predict(test_features()), tip.predict(test_features()))


def test_tip_f_trained_keys_follow_the_tip_formula_without_renormalising():
    task = make_task(seed=4)
    _, W, labels = lists(task)
    adapter = TipFAdapter(epochs=4, batch_size=4, lr=0.02, alpha=30.0).fit(task)
    keys = adapter.cache_keys
    initial = normalise(task.support.mean(0))
    assert adapter.chosen_hparams()["best_epoch"] > 0, "training should move the keys on this task"
    assert not torch.allclose(keys, initial)
    assert not torch.allclose(keys.norm(dim=1), torch.ones(len(keys), dtype=F64))  # keys are not re-normalised
    chosen = adapter.chosen_hparams()
    expected = n_tip(test_features().tolist(), W, keys.tolist(), labels, chosen["alpha"], chosen["beta"])
    assert_close(adapter.predict(test_features()), expected)


def test_tip_f_best_epoch_is_chosen_on_validation():
    task = make_task(seed=4)
    adapter = TipFAdapter(epochs=6, batch_size=4, lr=0.02, alpha=30.0).fit(task)
    history = adapter.train_result.history
    assert [h.epoch for h in history] == list(range(7))
    correct = [h.val_correct for h in history]
    best = adapter.train_result.best_epoch
    assert best == correct.index(max(correct))  # first best epoch
    assert correct[best] >= correct[0]  # never worse than the untrained cache on validation
    assert best > 0 and correct[best] > correct[0]  # on this task training helps
    assert history[5].train_loss < history[1].train_loss  # epochs 1 and 5 both train on view 0
    # The kept keys are those of the best epoch: re-evaluate validation at the initial α, β.
    hp = adapter.chosen_hparams()
    _, W, labels = lists(task)
    val_logits = n_tip(task.val_features.tolist(), W, adapter.cache_keys.tolist(), labels, hp["init_alpha"], hp["init_beta"])
    assert int((val_logits.argmax(1) == task.val_labels).sum()) == correct[best]


def test_ape_equals_naive():
    task = make_task(seed=6)
    support, W, labels = lists(task)
    keys = n_keys(support)
    adapter = APEAdapter(q=5, q_ref_dim=12, lam=0.6).fit(task)
    hp = adapter.chosen_hparams()
    assert hp["q_channels"] == 5
    expected, idx = n_ape(test_features().tolist(), W, keys, labels, 5, 0.6, hp["alpha"], hp["beta"], hp["gamma"])
    assert adapter.channels.tolist() == idx
    assert_close(adapter.predict(test_features()), expected)
    assert hp["gamma"] in grid_values(1.0, 20, 0.0)


def test_ape_without_search_and_nonzero_gamma_equals_naive():
    task = make_task(seed=7, classes=5, shots=2)
    support, W, labels = lists(task)
    adapter = APEAdapter(q=7, q_ref_dim=12, lam=0.3, search=False, alpha=1.5, beta=2.0, gamma=0.8).fit(task)
    expected, _ = n_ape(test_features().tolist(), W, n_keys(support), labels, 7, 0.3, 1.5, 2.0, 0.8)
    assert_close(adapter.predict(test_features()), expected)


def test_ape_channel_count_scales_with_width():
    assert scale_channel_count(700, 512) == 350
    assert scale_channel_count(500, 32) == 16
    assert scale_channel_count(5, 8) == 1  # clipped to at least one channel
    assert scale_channel_count(2000, 8) == 8  # and at most D
    task = make_task(seed=8, dim=32)
    assert APEAdapter().fit(task).chosen_hparams()["q_channels"] == round(700 * 32 / 1024)
    imagenet = dataclasses.replace(task, dataset="imagenet")
    hp = APEAdapter(search=False).fit(imagenet).chosen_hparams()
    assert (hp["q_channels"], hp["lam"], hp["gamma_steps"], hp["gamma_scale"]) == (16, 0.7, 5, 0.5)


def test_ape_t_formula_with_random_residual_and_weights_equals_naive():
    task = make_task(seed=9)
    support, W, labels = lists(task)
    keys = torch.tensor(n_keys(support), dtype=F64)
    g = torch.Generator().manual_seed(3)
    channels = torch.tensor([1, 4, 5, 9])
    res = 0.3 * torch.randn(4, 4, generator=g, dtype=F64)
    weights = 1.0 + 0.5 * torch.rand(len(labels), generator=g, dtype=F64)
    W_new, keys_new = refine(task.classifier, keys, task.support_labels, channels, res)
    got = ape_t_logits(test_features(), W_new, keys_new, task.support_labels, weights, 1.7, 2.3, 4)
    expected = n_ape_t(test_features().tolist(), W, keys.tolist(), labels, channels.tolist(), res.tolist(), weights.tolist(), 1.7, 2.3)
    assert_close(got, expected)


def test_ape_t_with_zero_epochs_is_the_untrained_formula():
    task = make_task(seed=10)
    support, W, labels = lists(task)
    keys = n_keys(support)
    adapter = APETAdapter(epochs=0, q=6, q_ref_dim=12).fit(task)
    assert torch.all(adapter.residual == 0) and torch.all(adapter.value_weights == 1)
    hp = adapter.chosen_hparams()
    assert adapter.channels.tolist() == n_top(n_criterion(W, keys, labels, 0.2), 6)  # λ = 0.2 for APE-T
    # res = 0, w = 1: Tip-Adapter's formula with APE's search scales.
    assert_close(adapter.predict(test_features()), n_tip(test_features().tolist(), W, keys, labels, hp["alpha"], hp["beta"]))


def test_ape_t_trained_state_is_what_predict_uses():
    task = make_task(seed=6)
    support, W, labels = lists(task)
    adapter = APETAdapter(epochs=3, q=6, q_ref_dim=12, lr=0.05, batch_size=5).fit(task)
    assert adapter.train_result.best_epoch > 0
    assert adapter.residual.abs().max() > 0 and not torch.all(adapter.value_weights == 1)
    hp = adapter.chosen_hparams()
    expected = n_ape_t(
        test_features().tolist(), W, n_keys(support), labels, adapter.channels.tolist(),
        adapter.residual.tolist(), adapter.value_weights.tolist(), hp["alpha"], hp["beta"],
    )
    assert_close(adapter.predict(test_features()), expected)


# ----------------------------------------------------------------------- hyper-parameters


def test_hyperparameter_resolution_explicit_over_dataset_over_default():
    task = make_task()
    for dataset, expected in [("eurosat", (12.0, 10.0, 2.0)), ("fgvc_aircraft", (30.0, 30.0, 5.0)), ("unknown", (7.0, 3.0, 1.17))]:
        hp = TipAdapter().resolve(dataclasses.replace(task, dataset=dataset))
        assert (hp["beta_scale"], hp["alpha_scale"], hp["alpha"]) == expected
        assert hp["beta"] == 1.0 and hp["beta_steps"] == 200 and hp["alpha_steps"] == 20
    hp = TipAdapter(beta_scale=5.0).resolve(dataclasses.replace(task, dataset="eurosat"))
    assert (hp["beta_scale"], hp["alpha_scale"]) == (5.0, 10.0)
    assert TipFAdapter().resolve(dataclasses.replace(task, dataset="eurosat"))["epochs"] == 100
    assert TipFAdapter().resolve(dataclasses.replace(task, dataset="dtd"))["epochs"] == 20
    hp = APEAdapter().resolve(dataclasses.replace(task, dataset="ucf101"))
    assert (hp["beta_scale"], hp["alpha_scale"], hp["gamma_scale"], hp["q"], hp["lam"]) == (10.0, 7.0, 1.5, 700, 0.3)
    hp = APETAdapter().resolve(dataclasses.replace(task, dataset="food101"))
    assert (hp["lr"], hp["q"], hp["lam"], hp["weight_decay"]) == (1e-4, 900, 0.2, 0.1)
    assert APETAdapter().resolve(dataclasses.replace(task, dataset="dtd"))["lr"] == 1e-3


def test_unknown_hyperparameter_lists_the_valid_ones():
    with pytest.raises(FDAlignError, match=r"unknown hyper-parameter\(s\) bogus; valid: alpha, alpha_scale"):
        TipAdapter(bogus=1)
    with pytest.raises(FDAlignError, match="valid: .*epochs"):
        TipFAdapter(epoch=3)


# ----------------------------------------------------------------------- contract hygiene


def test_training_is_seeded_from_the_task_and_leaves_the_global_rng_alone():
    task = make_task(seed=4)
    state = torch.get_rng_state()
    a = TipFAdapter(epochs=3, batch_size=4, lr=0.02, alpha=30.0).fit(task)
    assert torch.equal(torch.get_rng_state(), state)
    b = TipFAdapter(epochs=3, batch_size=4, lr=0.02, alpha=30.0).fit(task)
    assert a.train_result == b.train_result
    assert torch.equal(a.cache_keys, b.cache_keys)
    c = TipFAdapter(epochs=3, batch_size=4, lr=0.02, alpha=30.0).fit(dataclasses.replace(task, seed=13))
    losses = [h.train_loss for h in a.train_result.history[1:]]
    assert losses != [h.train_loss for h in c.train_result.history[1:]]  # another seed, another batch order


def test_fit_sees_no_test_data_and_predict_changes_nothing():
    names = {f.name for f in dataclasses.fields(FewShotTask)}
    assert not any("test" in n for n in names)
    task = make_task(seed=13)
    for cls in (TipFAdapter, APETAdapter):
        adapter = cls(epochs=2).fit(task)
        chosen, val_logits = adapter.chosen_hparams(), adapter.predict(task.val_features)
        adapter.predict(test_features(seed=5, n=50))
        assert adapter.chosen_hparams() == chosen
        assert torch.equal(adapter.predict(task.val_features), val_logits)


def test_errors_are_clear():
    with pytest.raises(FDAlignError, match="not fitted"):
        TipAdapter().predict(test_features())
    adapter = TipAdapter().fit(make_task())
    with pytest.raises(DataError, match=r"expects features \[B, 12\]"):
        adapter.predict(torch.zeros(3, 5))
    task = make_task()
    with pytest.raises(DataError, match="classifier must be"):
        FewShotTask(task.support, task.support_labels, task.classifier.T, task.val_features, task.val_labels, "x", 3, 0)
    with pytest.raises(DataError, match="support_labels must lie"):
        FewShotTask(task.support, task.support_labels + 10, task.classifier, task.val_features, task.val_labels, "x", 3, 0)


def test_unequal_shots_per_class_work():
    task = make_task(seed=14)
    keep = torch.tensor([0, 1, 2, 3, 5, 6, 7, 8, 9])  # class 1 keeps one shot of three
    uneven = dataclasses.replace(task, support=task.support[:, keep], support_labels=task.support_labels[keep])
    support, W, labels = lists(uneven)
    adapter = APEAdapter(q=5, q_ref_dim=12).fit(uneven)
    hp = adapter.chosen_hparams()
    expected, _ = n_ape(test_features().tolist(), W, n_keys(support), labels, 5, hp["lam"], hp["alpha"], hp["beta"], hp["gamma"])
    assert_close(adapter.predict(test_features()), expected)
    tip = TipAdapter().fit(uneven)
    hp = tip.chosen_hparams()
    assert_close(tip.predict(test_features()), n_tip(test_features().tolist(), W, n_keys(support), labels, hp["alpha"], hp["beta"]))


def test_every_listed_adapter_runs_on_tiny_clip_features(tiny_bundle):
    """The Done-when check: all adapters from the listing, features from the tiny CLIP."""
    from fdalign_plugins.plugins import get_plugin_manager

    model = tiny_bundle.model
    g = torch.Generator().manual_seed(0)
    classes, shots, views = 3, 2, 2
    base = torch.rand(classes, 3, 32, 32, generator=g)
    labels = torch.arange(classes).repeat_interleave(shots)
    with torch.no_grad():
        support = torch.stack([
            model.encode_image(base[labels] + 0.1 * torch.randn(len(labels), 3, 32, 32, generator=g)) for _ in range(views)
        ])  # [V, N, D] raw
        val_labels = torch.arange(classes).repeat(2)
        val = normalise(model.encode_image(base[val_labels] + 0.1 * torch.randn(6, 3, 32, 32, generator=g)))
        text = normalise(model.encode_text(tiny_bundle.tokenizer([f"a photo of a {c}" for c in ("cat", "dog", "car")])))
        test = normalise(model.encode_image(base + 0.1 * torch.randn(classes, 3, 32, 32, generator=g)))
    task = FewShotTask(support, labels, text.T.contiguous(), val, val_labels, "eurosat", shots, 1)
    pm = get_plugin_manager(load_external=False)
    names = [spec.name for spec in pm.list_adapters()]
    assert {"zero-shot", "tip", "tip-f", "ape", "ape-t", "gda", "lp++", "clap", "clip-adapter", "linear-probe"} <= set(names)
    for spec in pm.list_adapters():
        adapter = pm.create_adapter(spec.name, **({"epochs": 2} if "epochs" in spec.defaults else {})).fit(task)
        logits = adapter.predict(test)
        assert logits.shape == (classes, classes) and torch.isfinite(logits).all()
        assert 0.0 <= adapter.val_accuracy <= 100.0
