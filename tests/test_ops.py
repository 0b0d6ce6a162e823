"""The one normaliser and the one top-1 rule (fdalign_plugins.ops), against naive loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fdalign_plugins import adapter_api, prompts, search
from fdalign_plugins.ops import count_correct, normalise, percent, top1_accuracy, top1_predictions


def test_one_normaliser_everywhere():
    assert prompts.normalise is normalise and adapter_api.normalise is normalise
    assert search.count_correct is count_correct and adapter_api.percent is percent


def test_normalise_matches_a_float64_loop_and_keeps_zero_rows_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g)
    x[2] = 0.0
    out = normalise(x)
    for i in range(5):
        row = x[i].double().tolist()
        norm = math.sqrt(sum(v * v for v in row))
        want = [v / norm for v in row] if norm else [0.0] * 7
        assert out[i].double().tolist() == pytest.approx(want, abs=1e-6)
    assert not torch.isnan(out).any()
    cols = normalise(x, dim=0)  # along another dim
    assert torch.allclose(cols.norm(dim=0), torch.ones(7), atol=1e-6)
    tiny = torch.full((1, 4), 1e-15)  # a norm (2e-15) below 1e-12 is still scaled to unit length
    assert normalise(tiny).norm().item() == pytest.approx(1.0, abs=1e-6)
    half = torch.zeros(2, 3, dtype=torch.float16)  # 1e-12 is 0 in float16: the clamp must not be
    assert not torch.isnan(normalise(half)).any()


def test_top1_with_and_without_a_label_subset_matches_a_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 10, generator=g)
    labels = torch.randint(0, 10, (40,), generator=g)
    subset = [1, 4, 7, 8]
    naive_all = [max(range(10), key=lambda c: (logits[i, c].item(), -c)) for i in range(40)]  # first max on ties
    naive_sub = [max(subset, key=lambda c: (logits[i, c].item(), -c)) for i in range(40)]
    assert top1_predictions(logits).tolist() == naive_all
    assert top1_predictions(logits, subset).tolist() == naive_sub
    for sub, naive in ((None, naive_all), (subset, naive_sub)):
        hits = sum(int(p == y) for p, y in zip(naive, labels.tolist()))
        assert count_correct(logits, labels, sub) == hits
        assert top1_accuracy(logits, labels.numpy(), sub) == 100.0 * hits / 40
    ties = torch.tensor([[1.0, 1.0, 0.0]])
    assert top1_predictions(ties).tolist() == [0]
    assert top1_predictions(torch.zeros(0, 5), subset).tolist() == []


def test_percent_and_the_saved_predictions_agree():
    from fdalign_plugins import predictions

    assert percent(3, 4) == 75.0 and math.isnan(percent(0, 0))
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(30, 6, generator=g)
    labels = np.arange(30) % 6
    for sub in (None, [0, 2, 5]):
        p = predictions.from_logits(logits, labels, sub)
        assert predictions.accuracy(p) == top1_accuracy(logits, labels, sub)
