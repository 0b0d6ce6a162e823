"""The paired bootstrap interval and the statistics recomputed from saved predictions."""

import math

import numpy as np
import pytest
import torch

from fdalign_plugins import predictions as preds_io
from fdalign_plugins.stats import bootstrap_draws, paired_interval


def _naive_interval(cb, cm, n_boot, level, seed):
    """The two-level bootstrap written as a plain loop over replicates, seeds and images."""
    s, n = cb.shape
    seed_idx, image_idx = bootstrap_draws(s, n, n_boot, seed)
    reps = []
    for b in range(n_boot):
        per_seed = []
        for si in seed_idx[b]:
            total = 0.0
            for i in image_idx[b]:
                total += float(cm[si, i]) - float(cb[si, i])
            per_seed.append(total / n)
        reps.append(100.0 * sum(per_seed) / s)
    reps = sorted(reps)
    # numpy's default quantile: linear interpolation between order statistics
    def q(p):
        h = (len(reps) - 1) * p
        lo = math.floor(h)
        return reps[lo] + (h - lo) * (reps[min(lo + 1, len(reps) - 1)] - reps[lo])
    return q((1 - level) / 2), q((1 + level) / 2)


def test_bootstrap_interval_equals_a_naive_resampling_loop():
    rng = np.random.default_rng(3)
    cb = rng.random((3, 40)) < 0.6  # [seeds, images] correct under the baseline
    cm = rng.random((3, 40)) < 0.7
    iv = paired_interval(cb, cm, n_boot=300, level=0.9, seed=5)
    lo, hi = _naive_interval(cb, cm, 300, 0.9, 5)
    assert iv.lo == pytest.approx(lo, abs=1e-9) and iv.hi == pytest.approx(hi, abs=1e-9)
    assert iv.delta == pytest.approx(100.0 * (cm.mean() - cb.mean()), abs=1e-12)
    assert (iv.n_seeds, iv.n_images) == (3, 40)


def test_bootstrap_width_matches_the_normal_approximation():
    """One seed, many images: the interval is close to delta ± 1.96 standard errors."""
    rng = np.random.default_rng(0)
    n = 4000
    cb = rng.random((1, n)) < 0.6
    cm = cb.copy()
    flip = rng.random(n) < 0.1
    cm[0, flip] = ~cm[0, flip]
    d = cm[0].astype(float) - cb[0].astype(float)
    se = 100.0 * d.std(ddof=1) / math.sqrt(n)
    iv = paired_interval(cb, cm, n_boot=4000)
    assert iv.hi - iv.lo == pytest.approx(2 * 1.96 * se, rel=0.08)
    assert (iv.lo + iv.hi) / 2 == pytest.approx(iv.delta, abs=0.1 * se)


def test_identical_predictions_give_a_zero_interval_and_no_mark():
    c = np.random.default_rng(1).random((2, 30)) < 0.5
    iv = paired_interval(c, c.copy())
    assert (iv.delta, iv.lo, iv.hi, iv.excludes_zero) == (0.0, 0.0, 0.0, False)
    clear = paired_interval(np.zeros((2, 50), bool), np.ones((2, 50), bool))
    assert clear.excludes_zero and clear.lo == 100.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_interval(np.zeros((2, 3)), np.zeros((2, 4)))


def test_predictions_from_logits_round_trip_and_statistics(tmp_path):
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [0.0, 0.0, 0.0], [5.0, 4.0, 0.0]])
    labels = [0, 1, 2, 1]
    p = preds_io.from_logits(logits, labels)
    assert p["pred"].tolist() == [0, 2, 0, 0]  # a tie goes to the first class, as argmax does
    probs = torch.softmax(logits.double(), -1)
    assert np.allclose(p["conf"], probs.max(-1).values.numpy(), atol=1e-7)
    assert np.allclose(p["p_true"], probs[torch.arange(4), torch.tensor(labels)].numpy(), atol=1e-7)
    assert preds_io.accuracy(p) == 25.0
    assert preds_io.per_class_accuracy(p) == {0: 100.0, 1: 0.0, 2: 0.0}
    # ECE by hand: bins of width 1/15; each sample alone in its bin here
    conf = p["conf"].astype(float)
    correct = np.array([1.0, 0.0, 0.0, 0.0])
    bins = np.clip(np.ceil(conf * 15) - 1, 0, 14)
    assert len(set(bins.tolist())) == 4
    assert preds_io.expected_calibration_error(p) == pytest.approx(100 * np.mean(np.abs(correct - conf)), abs=1e-5)
    # the file: same predictions, same bytes; checksum checked on read
    sha = preds_io.write(tmp_path / "p.safetensors.gz", {"test": p})
    assert preds_io.encode({"test": p}) == (tmp_path / "p.safetensors.gz").read_bytes()
    back = preds_io.read(tmp_path / "p.safetensors.gz", sha)
    assert all(np.array_equal(back["test"][k], p[k]) for k in preds_io.FIELDS)
    from fdalign_plugins.errors import DataError

    with pytest.raises(DataError, match="does not match the checksum"):
        preds_io.read(tmp_path / "p.safetensors.gz", "0" * 64)


def test_label_subset_restricts_softmax_and_argmax():
    logits = torch.tensor([[0.0, 5.0, 1.0, 0.5]])
    p = preds_io.from_logits(logits, [2], label_subset=[2, 3])
    assert p["pred"].tolist() == [2]
    assert p["conf"][0] == pytest.approx(float(torch.softmax(torch.tensor([1.0, 0.5]), 0)[0]), abs=1e-6)
