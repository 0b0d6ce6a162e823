"""The shared vectorised search and the APE channel criterion against naive loops."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from fdalign_adapters.ape import channel_criterion
from fdalign_plugins.adapter_api import (
    GridAxis,
    cache_logits,
    class_sum,
    grid_values,
    normalise,
    search_cache_grid,
)
from fdalign_plugins.search import alpha_counts


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.one_thread)


def _problem(seed: int, num_val: int = 40, classes: int = 6, shots: int = 4, dim: int = 16, text_noise: float = 1.5):
    """Clustered features: the cache helps, the text classifier is noisy, so accuracy varies over the grid."""
    g = torch.Generator().manual_seed(seed)
    means = normalise(torch.randn(classes, dim, generator=g, dtype=torch.float64))
    labels = torch.arange(classes).repeat_interleave(shots)
    keys = normalise(means[labels] + 0.6 * torch.randn(len(labels), dim, generator=g, dtype=torch.float64))
    val_labels = torch.randint(0, classes, (num_val,), generator=g)
    val = normalise(means[val_labels] + 0.6 * torch.randn(num_val, dim, generator=g, dtype=torch.float64))
    # Columns close to a common direction: 100 f W differs between classes by a few
    # logits only, comparable to the cache term, so (α, β) matter.
    common = normalise(torch.randn(dim, 1, generator=g, dtype=torch.float64), dim=0)
    noisy = means.T + text_noise * torch.randn(dim, classes, generator=g, dtype=torch.float64)
    classifier = normalise(common + 0.03 * noisy, dim=0)
    return val, keys, labels, classifier, val_labels


def _naive_search(val, keys, labels, base, val_labels, betas, alphas, value_rows=None):
    """The reference loop: dense exp(...) @ L per grid point, keep the first strictly better."""
    num_classes = base.shape[1]
    onehot = torch.nn.functional.one_hot(labels, num_classes).to(val.dtype)  # [NK, C]
    rows = [torch.ones(len(labels), dtype=val.dtype)] if value_rows is None else list(value_rows)
    affinity = val @ keys.T
    best, best_point = -1, None
    grid = torch.zeros(len(betas), len(alphas), len(rows), dtype=torch.int64)
    for bi, beta in enumerate(betas):
        for ai, alpha in enumerate(alphas):
            for gi, row in enumerate(rows):
                cache = ((-1) * (beta - beta * affinity)).exp() @ (onehot * row[:, None])
                logits = base + cache * alpha
                correct = int((logits.argmax(dim=1) == val_labels).sum())
                grid[bi, ai, gi] = correct
                if correct > best:
                    best, best_point = correct, (beta, alpha, gi)
    return best_point, best, grid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tip_search_matches_naive_double_loop(seed):
    val, keys, labels, classifier, val_labels = _problem(seed)
    base = 100.0 * val @ classifier
    betas, alphas = grid_values(7.0, 200), grid_values(3.0, 20)
    result = search_cache_grid(val, keys, labels, base, val_labels, betas, alphas)
    point, best, grid = _naive_search(val, keys, labels, base, val_labels, betas, alphas)
    assert (result.beta, result.alpha, result.weight_index) == point
    assert result.correct == best
    assert torch.equal(result.correct_grid, grid)
    # The problem is not degenerate: accuracy really varies over the grid.
    assert int(grid.max()) > int(grid.min())


def test_search_with_value_rows_matches_naive_triple_loop():
    val, keys, labels, classifier, val_labels = _problem(5, num_val=30)
    base = 100.0 * val @ classifier
    g = torch.Generator().manual_seed(9)
    divergence = torch.rand(len(labels), generator=g, dtype=torch.float64) * 4.0
    gammas = grid_values(1.0, 5, 0.0)
    rows = torch.exp(divergence[None, :] * torch.tensor(gammas, dtype=torch.float64)[:, None])  # [G, NK]
    betas, alphas = grid_values(7.0, 40), grid_values(7.0, 10)
    result = search_cache_grid(val, keys, labels, base, val_labels, betas, alphas, value_weights=rows)
    point, best, grid = _naive_search(val, keys, labels, base, val_labels, betas, alphas, rows)
    assert (result.beta, result.alpha, result.weight_index) == point
    assert torch.equal(result.correct_grid, grid)
    assert len(set(grid[:, :, 0].flatten().tolist())) > 1


def test_search_is_independent_of_chunking():
    val, keys, labels, classifier, val_labels = _problem(3, num_val=37)
    base = 100.0 * val @ classifier
    betas, alphas = grid_values(12.0, 30), grid_values(5.0, 7)
    whole = search_cache_grid(val, keys, labels, base, val_labels, betas, alphas)
    chunked = search_cache_grid(val, keys, labels, base, val_labels, betas, alphas, chunk_size=5)
    assert torch.equal(whole.correct_grid, chunked.correct_grid)
    assert (whole.beta, whole.alpha) == (chunked.beta, chunked.alpha)


def test_ties_resolve_to_first_grid_point_in_beta_outer_order():
    val, keys, labels, classifier, val_labels = _problem(4)
    # A dominant text term: every grid point has the same accuracy, so the first wins.
    base = 1e6 * val @ classifier
    betas, alphas = grid_values(7.0, 10), grid_values(3.0, 4)
    result = search_cache_grid(val, keys, labels, base, val_labels, betas, alphas)
    assert len(set(result.correct_grid.flatten().tolist())) == 1
    assert (result.beta_index, result.alpha_index) == (0, 0)
    assert (result.beta, result.alpha) == (betas[0], alphas[0])
    # Hand-made count grid: the best value appears at (β1, α0) and (β0, α2); β is the outer loop.
    val2 = val[:3]
    base2 = torch.zeros(3, classifier.shape[1], dtype=val.dtype)
    r = search_cache_grid(val2, keys, labels, base2, val_labels[:3], [0.5, 0.5], [1.0, 1.0, 1.0])
    assert (r.beta_index, r.alpha_index) == (0, 0)


def test_all_zero_accuracy_returns_first_point():
    val, keys, labels, classifier, _ = _problem(6, num_val=10)
    wrong = torch.full((10,), 99)  # a label no prediction can match
    base = 100.0 * val @ classifier
    result = search_cache_grid(val, keys, labels, base, wrong, [0.1, 0.2], [0.3, 0.4])
    assert result.correct == 0
    assert (result.beta, result.alpha) == (0.1, 0.3)


def _dense_alpha_counts(scores, base, target, alphas):
    """The search's α stage written out: every α, every class, torch.argmax (first index on ties)."""
    return torch.stack([(torch.argmax(scores * a + base, dim=0) == target).sum() for a in alphas])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_counts_equal_the_dense_evaluation_count_for_count(dtype, seed):
    """The rival filter is exact: ties (quantised values), many rivals, negative scores, a bad label."""
    g = torch.Generator().manual_seed(seed)
    classes, num = 40, 300
    target = torch.randint(0, classes, (num,), generator=g)
    # Quantised to 1/8: many logits tie exactly, so the first-index rule matters.
    scores = (torch.randint(-8, 40, (classes, num), generator=g) / 8.0).to(dtype)
    base = (torch.randint(0, 64, (classes, num), generator=g) / 8.0).to(dtype)
    base[target, torch.arange(num)] += 2.0  # the true class often wins, not always
    base[:, :30] = 1.0  # 30 features where every class ties on the base: every class is a rival
    scores[:, 30:40] = 0.5  # ... and 10 where every class ties on the cache score
    target[7] = classes + 3  # a label no prediction can match
    for alphas in (grid_values(3.0, 20), grid_values(7.0, 20), [0.5], [2.0, 0.25, 1.0]):
        a = torch.tensor(alphas, dtype=dtype)
        expected = _dense_alpha_counts(scores, base, target, a)
        assert torch.equal(alpha_counts(scores, base, target, a), expected)
        assert len(set(expected.tolist())) > 1 or len(alphas) == 1
    # Continuous values: ties only by accident, rivals few.
    scores = torch.rand(classes, num, generator=g, dtype=dtype) * 5
    base = torch.randn(classes, num, generator=g, dtype=dtype) * 3
    a = torch.tensor(grid_values(3.0, 20), dtype=dtype)
    assert torch.equal(alpha_counts(scores, base, target, a), _dense_alpha_counts(scores, base, target, a))


def test_search_with_value_rows_on_an_unequal_cache_matches_naive_loop():
    """Cache entries not class-major (no block layout): the per-row class_sum path."""
    val, keys, labels, classifier, val_labels = _problem(7, num_val=30)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))[:-3]  # shuffled, 3 dropped
    keys, labels = keys[perm], labels[perm]
    base = 100.0 * val @ classifier
    rows = torch.exp(torch.rand(len(labels), generator=torch.Generator().manual_seed(4), dtype=torch.float64)[None]
                     * torch.tensor(grid_values(1.0, 3, 0.0), dtype=torch.float64)[:, None])
    betas, alphas = grid_values(7.0, 30), grid_values(7.0, 10)
    result = search_cache_grid(val, keys, labels, base, val_labels, betas, alphas, value_weights=rows)
    point, best, grid = _naive_search(val, keys, labels, base, val_labels, betas, alphas, rows)
    assert torch.equal(result.correct_grid, grid)
    assert (result.beta, result.alpha, result.weight_index) == point


def test_grid_values_are_the_reference_lists():
    for scale, steps in [(7, 200), (3, 20), (50, 20), (12.0, 200)]:
        reference = [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]
        assert grid_values(scale, steps) == reference
    assert grid_values(0.5, 5, 0.0) == [i * 0.5 / 5 for i in range(5)]
    assert GridAxis("s", "n", 0.0).values({"s": 1.5, "n": 20}) == [i * 1.5 / 20 for i in range(20)]
    betas = grid_values(7.0, 200)
    assert betas[0] == 0.1 and abs(betas[-1] - (0.1 + 199 * 6.9 / 200)) < 1e-12


def test_class_sum_equals_dense_one_hot_product_and_is_differentiable():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([2, 0, 2, 1, 4, 4, 4])  # class 3 has no entries
    scores = torch.rand(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    values = torch.rand(7, generator=g, dtype=torch.float64)
    dense = scores @ (torch.nn.functional.one_hot(labels, 5).to(scores.dtype) * values[:, None])
    got = class_sum(scores, labels, 5, values=values)
    assert torch.allclose(got, dense, rtol=1e-12, atol=0)
    assert torch.allclose(class_sum(scores.detach().T, labels, 5, values=values, entry_dim=0).T, dense.detach())
    got.sum().backward()
    assert torch.allclose(scores.grad, values.expand(5, 7))
    assert torch.all(got[:, 3] == 0)


def test_cache_logits_formula_by_hand():
    affinity = torch.tensor([[0.9, 0.2, 0.5]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1])
    got = cache_logits(affinity, labels, 2.0, 3.0, num_classes=3)
    e = torch.exp(-3.0 * (1 - affinity[0]))
    expected = torch.tensor([[2.0 * e[1], 2.0 * (e[0] + e[2]), 0.0]], dtype=torch.float64)
    assert torch.allclose(got, expected, rtol=1e-12)


def _four_loop_criterion(classifier, keys, labels, lam):
    """APE's definition: S_d averaged over every (x, y) pair of different classes; X_i = {w_i} ∪ keys of i."""
    dim, classes = classifier.shape
    groups = [[classifier[:, i]] + [keys[n] for n in range(len(labels)) if int(labels[n]) == i] for i in range(classes)]
    total = torch.zeros(dim, dtype=classifier.dtype)
    count = 0
    for i in range(classes):
        for j in range(classes):
            for x in groups[i]:
                for y in groups[j]:
                    if i != j:
                        total += x * y
                        count += 1
    sim = total / count
    mean = classifier.mean(dim=1, keepdim=True)
    variance = ((classifier - mean) ** 2).sum(dim=1) / (classes - 1)
    return -lam * sim + (1 - lam) * variance


@pytest.mark.parametrize("unequal", [False, True])
def test_ape_closed_form_criterion_equals_four_loops(unequal):
    g = torch.Generator().manual_seed(11)
    classes, shots, dim = 4, 3, 8
    classifier = normalise(torch.randn(dim, classes, generator=g, dtype=torch.float64), dim=0)
    labels = torch.arange(classes).repeat_interleave(shots)
    if unequal:  # class 0 loses two keys, class 3 loses all of its keys
        labels = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 1])
    keys = normalise(torch.randn(len(labels), dim, generator=g, dtype=torch.float64))
    for lam in (0.2, 0.7):
        expected = _four_loop_criterion(classifier, keys, labels, lam)
        got = channel_criterion(classifier, keys, labels, lam)
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-14)
    if not unequal:  # with K keys per class the pair count is C(C−1)(K+1)²
        sums = classifier.T + torch.stack([keys[labels == i].sum(0) for i in range(classes)])
        s = (sums.sum(0) ** 2 - (sums**2).sum(0)) / (classes * (classes - 1) * (shots + 1) ** 2)
        v = classifier.var(dim=1)
        assert torch.allclose(channel_criterion(classifier, keys, labels, 0.5), -0.5 * s + 0.5 * v, rtol=1e-12)
