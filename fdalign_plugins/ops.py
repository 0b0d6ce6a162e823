"""Leaf formulas every layer shares, one home each: L2 normalisation and top-1 accuracy.

:func:`normalise` is the normaliser of every feature and prototype (image features,
text prototypes, adapter caches); :func:`top1_predictions` / :func:`count_correct` /
:func:`top1_accuracy` are the one top-1 rule (first index on ties; with a label subset,
ImageNet-A/R's 200 of 1000 classes, the arg-max runs over those columns only).
:mod:`fdalign_plugins.prompts`, :mod:`fdalign_plugins.adapter_api` and
:mod:`fdalign_plugins.search` re-export them where plugin authors import them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["count_correct", "normalise", "percent", "top1_accuracy", "top1_predictions"]


def normalise(x: Tensor, dim: int = -1) -> Tensor:
    """``x / ||x||`` along ``dim``; a zero vector stays zero instead of becoming NaN.

    The norm is clamped at the dtype's smallest normal number (not a fixed 1e-12, which
    is 0 in float16), so every vector with a representable norm is scaled to unit length.
    """
    return x / x.norm(dim=dim, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def top1_predictions(logits: Tensor, label_subset: Optional[Sequence[int]] = None) -> Tensor:
    """The predicted class of each row: ``[N, C]`` -> ``[N]`` int64.

    Args:
        logits: ``[N, C]`` scores.
        label_subset: classes the prediction is restricted to; the arg-max then runs over
            those columns only and is mapped back to class indices.
    """
    if label_subset is None:
        return logits.argmax(-1)
    sub = torch.as_tensor(list(label_subset), dtype=torch.long, device=logits.device)
    if len(logits) == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device)
    return sub[logits[:, sub].argmax(-1)]


def count_correct(logits: Tensor, labels: Tensor, label_subset: Optional[Sequence[int]] = None) -> int:
    """Number of rows whose top-1 prediction (:func:`top1_predictions`) equals the label.

    Args:
        logits: ``[N, C]``.
        labels: ``[N]`` int64.
        label_subset: see :func:`top1_predictions`.
    """
    labels = torch.as_tensor(labels, device=logits.device)
    return int((top1_predictions(logits, label_subset) == labels).sum().item())


def percent(correct: int, total: int) -> float:
    """``100 · correct / total``; NaN for an empty set."""
    return 100.0 * correct / total if total else float("nan")


def top1_accuracy(logits: Tensor, labels: Tensor, label_subset: Optional[Sequence[int]] = None) -> float:
    """Top-1 % of ``logits [N, C]`` against ``labels [N]`` (NaN for an empty set)."""
    return percent(count_correct(logits, labels, label_subset), len(logits))
