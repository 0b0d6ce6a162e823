"""The paired bootstrap interval of "baseline vs + method" accuracy differences.

For one table cell (adapter, shots, evaluation set) there are ``S`` seeds; seed ``s``
gave both encoders the same support set and the same ``N`` test images, so the paired
per-image difference ``d[s, i] = correct_method[s, i] - correct_base[s, i]`` (in
{-1, 0, 1}) carries the comparison. The point estimate is the mean of ``d`` (= the mean
over seeds of the accuracy difference). Its uncertainty comes from two sources, both
resampled (a two-level bootstrap; Efron & Tibshirani 1993, ch. 13, percentile interval):

* which test images were drawn: ``N`` image indices with replacement, the same draw
  for every seed (the images are shared by the seeds);
* which few-shot support sets were drawn: ``S`` seeds with replacement.

Replicate ``b`` is ``mean_{s in seeds_b} mean_{i in images_b} d[s, i]``; the interval is
the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of the replicates. With one seed
only the images are resampled. The draws come from a fixed generator, so a report is
reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

#: Bootstrap replicates per interval.
N_BOOT = 2000
#: Confidence level of the intervals.
LEVEL = 0.95
#: Seed of the bootstrap's generator.
BOOT_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A paired difference in accuracy points with its bootstrap interval.

    Attributes:
        delta: mean paired difference (method - base), in %.
        lo, hi: interval bounds, in %.
        n_seeds: seeds paired.
        n_images: test images per seed.
    """

    delta: float
    lo: float
    hi: float
    n_seeds: int
    n_images: int

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0


def bootstrap_draws(n_seeds: int, n_images: int, n_boot: int = N_BOOT,
                    seed: int = BOOT_SEED) -> Tuple[np.ndarray, np.ndarray]:
    """The resampling indices: seeds ``[n_boot, n_seeds]`` and images ``[n_boot, n_images]``."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    images = rng.integers(0, n_images, size=(n_boot, n_images))
    return seeds, images


def draw_counts(image_idx: np.ndarray) -> np.ndarray:
    """``w[b, i]``: how often replicate ``b`` drew image ``i`` (``[B, N]``, float64)."""
    n_boot, n = image_idx.shape
    flat = (np.arange(n_boot)[:, None] * n + image_idx).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def replicates(diff: np.ndarray, seed_idx: np.ndarray, image_idx: np.ndarray,
               counts: Optional[np.ndarray] = None) -> np.ndarray:
    """Bootstrap replicates ``[B]`` of the mean of ``diff [S, N]`` under the given draws.

    Vectorised: the image draw of replicate ``b`` becomes counts ``w[b, i]`` (how often
    image ``i`` was drawn), so the per-seed means of all replicates are one matrix
    product ``w @ diff.T / N``. ``counts`` passes ``draw_counts(image_idx)`` when known.
    """
    n = image_idx.shape[1]
    w = draw_counts(image_idx) if counts is None else counts  # [B, N]
    per_seed = w @ diff.T.astype(np.float64) / n  # [B, S]
    return np.take_along_axis(per_seed, seed_idx, axis=1).mean(axis=1)  # [B]


@lru_cache(maxsize=4)
def _cached_draws(n_seeds: int, n_images: int, n_boot: int, seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The draws and their counts; every cell of a report with the same shape shares them."""
    seed_idx, image_idx = bootstrap_draws(n_seeds, n_images, n_boot, seed)
    return seed_idx, image_idx, draw_counts(image_idx)


def paired_interval(correct_base: np.ndarray, correct_method: np.ndarray, n_boot: int = N_BOOT,
                    level: float = LEVEL, seed: int = BOOT_SEED) -> Interval:
    """The paired difference ``method - base`` in % with its bootstrap interval.

    Args:
        correct_base: ``[S, N]`` 0/1, image ``i`` right under the baseline on seed ``s``.
        correct_method: ``[S, N]`` the same for the method; same seeds, same images.
        n_boot: replicates.
        level: confidence level.
        seed: the generator's seed.
    """
    a = np.asarray(correct_base, dtype=np.float64)
    b = np.asarray(correct_method, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"paired_interval needs two equal, non-empty [seeds, images] arrays; "
                         f"got {a.shape} and {b.shape}")
    diff = b - a  # [S, N]
    s, n = diff.shape
    seed_idx, image_idx, counts = _cached_draws(s, n, n_boot, seed)
    reps = replicates(diff, seed_idx, image_idx, counts) * 100.0
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(diff.mean() * 100.0), float(lo), float(hi), s, n)
