"""Seeded few-shot sampling (SPEC §3).

Per class, K images drawn without replacement with a seeded RNG (with replacement and a
warning if the class has fewer than K); class-major order. The few-shot validation
split takes min(K, 4) images per class, from the dataset's validation split when it has
one, else from ``train`` disjoint from the support set.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from ..errors import DataError
from .base import FewShotDataset, ImageSplit


def sample_per_class(
    labels: np.ndarray,
    shots: int,
    seed: int,
    num_classes: int,
    exclude: Optional[Sequence[int]] = None,
    what: str = "support",
) -> List[int]:
    """Indices of ``shots`` items per class, class-major, deterministic in ``seed``.

    Args:
        labels: ``[N]`` class index per item.
        shots: items per class (K).
        seed: RNG seed (numpy ``default_rng``).
        num_classes: C; every class must have at least one available item.
        exclude: indices that may not be drawn (e.g. the support set).
        what: name used in warnings and errors.
    """
    if shots <= 0:
        raise DataError(f"{what}: shots must be a positive integer, got {shots}")
    rng = np.random.default_rng(seed)
    banned = set(int(i) for i in exclude) if exclude is not None else set()
    labels = np.asarray(labels)
    out: List[int] = []
    short = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if banned:
            pool = np.array([i for i in pool if int(i) not in banned], dtype=np.int64)
        if len(pool) == 0:
            if banned and np.any(labels == c):
                raise DataError(
                    f"{what}: class {c} has no images left once the support set is taken; "
                    "use fewer shots or provide a validation split (a val/ folder)"
                )
            raise DataError(f"{what}: class {c} has no images to sample from")
        if len(pool) >= shots:
            pick = rng.choice(pool, size=shots, replace=False)
        else:
            short.append((c, len(pool)))
            pick = rng.choice(pool, size=shots, replace=True)
        out.extend(int(i) for i in pick)
    if short:
        desc = ", ".join(f"class {c} has {n}" for c, n in short[:5])
        warnings.warn(
            f"{what}: {len(short)} class(es) have fewer than {shots} images "
            f"({desc}{', ...' if len(short) > 5 else ''}); "
            "sampled with replacement",
            stacklevel=2,
        )
    return out


@dataclass
class FewShotSplit:
    """The support set and the few-shot validation set of one (dataset, shots, seed)."""

    support: ImageSplit
    val: ImageSplit
    support_indices: List[int]
    val_indices: List[int]
    val_from: str  # "val" or "train"


def few_shot_split(dataset: FewShotDataset, shots: int, seed: int, val_shots: int = 4) -> FewShotSplit:
    """Draw the K-shot support set and a min(K, ``val_shots``)-shot validation set."""
    c = dataset.num_classes
    support_idx = sample_per_class(dataset.train.labels, shots, seed, c, what=f"{dataset.name} support")
    k_val = max(1, min(shots, val_shots))
    if dataset.val is not None and len(dataset.val) > 0:
        val_idx = sample_per_class(dataset.val.labels, k_val, seed, c, what=f"{dataset.name} validation")
        val = dataset.val.subset(val_idx)
        src = "val"
    else:
        val_idx = sample_per_class(
            dataset.train.labels, k_val, seed + 1_000_003, c, exclude=support_idx, what=f"{dataset.name} validation"
        )
        val = dataset.train.subset(val_idx)
        src = "train"
    return FewShotSplit(dataset.train.subset(support_idx), val, support_idx, val_idx, src)
