"""GDA, Gaussian discriminant analysis on CLIP features (training-free).

Source: Z. Wang, J. Liang, L. Sheng, R. He, Z. Wang, T. Tan, "A Hard-to-Beat Baseline
for Training-free CLIP-based Adaptation", ICLR 2024; public code
github.com/mrflogs/ICLR24 (``main_few_shots.py``; no licence file, so this module is a
re-implementation from the paper and SPEC §6, no code copied).

Every augmented view of every support image is one sample (``M = V · N`` L2-normalised
features ``x_m`` with class ``y_m``). GDA fits one Gaussian per class with a shared
covariance and reads off the Bayes classifier, which is linear::

    μ_c  = mean of the samples of class c                               [C, D]
    Σ    = unbiased covariance of the class-centred samples x_m − μ_{y_m} [D, D]
    P    = D · pinv((M − 1) Σ + tr(Σ) I)        (the paper's shrinkage precision)
    W_g  = P μᵀ,   b_c = log π_c − ½ μ_c P μ_cᵀ,   π_c = 1 / C
    logits = 100 · f W + α · (f W_g + b)

α is chosen on validation from ``{1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100}``, the first best
(the released ImageNet script chooses it on the test set: ``selection`` declares
``test`` for ``--protocol reference``).

Degenerate input. A class without support images has no mean: a clear
:class:`~fdalign_plugins.errors.DataError`. ``K = 1`` is fine when there are several
views (the views give the within-class spread and the ``tr(Σ) I`` term keeps the matrix
invertible). With no within-class spread at all (one view of one image per class) the
covariance is the zero matrix and GDA's term would vanish; the adapter then uses the
isotropic covariance ``P = I`` (nearest class mean in Euclidean distance), warns, and
records ``covariance: "isotropic (no within-class spread)"`` in its hyper-parameters.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, Tuple

import torch
from torch import Tensor

from fdalign_plugins import hookimpl
from fdalign_plugins.adapter_api import (
    Adapter,
    AdapterSpec,
    FewShotTask,
    GridList,
    HParam,
    check_every_class,
    count_correct,
    normalise,
    percent,
    search_list,
    zero_shot_logits,
)

#: The α grid of the paper's code, in its search order.
GDA_ALPHAS = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)

GDA_DEFAULTS: Dict[str, Any] = {
    "alpha": 1.0,  # used when search is off
    "search": True,  # choose alpha on validation
    "alphas": list(GDA_ALPHAS),
}

GDA_HPARAMS: Dict[str, HParam] = {
    "alpha": HParam(float, low=0, help="weight α of the GDA term when search is off"),
    "search": HParam(bool, help="choose α on validation"),
    "alphas": HParam(list, help="the α candidates, in search order"),
}

#: Recorded when the pooled covariance is zero and the isotropic fallback is used.
ISOTROPIC = "isotropic (no within-class spread)"


def gda_classifier(samples: Tensor, labels: Tensor, num_classes: int) -> Tuple[Tensor, Tensor, bool]:
    """GDA's linear classifier ``(W_g, b)`` from labelled samples.

    The covariance and its pseudo-inverse are computed in float64 (a ``D × D`` matrix)
    and the result cast back to the samples' dtype.

    Args:
        samples: ``[M, D]`` L2-normalised features.
        labels: ``[M]`` int64 classes; every class in ``[0, C)`` must occur.
        num_classes: ``C``.

    Returns:
        ``W_g [D, C]``, ``b [C]`` and whether the isotropic fallback was used.
    """
    x = samples.to(torch.float64)  # [M, D]
    num, dim = x.shape
    counts = torch.bincount(labels, minlength=num_classes).to(x)  # [C]
    means = torch.zeros(num_classes, dim, dtype=x.dtype, device=x.device).index_add_(0, labels, x) / counts[:, None]
    centred = x - means[labels]  # [M, D]
    centred = centred - centred.mean(dim=0, keepdim=True)  # the covariance's own centring (≈ 0 here)
    cov = centred.T @ centred / max(num - 1, 1)  # [D, D] unbiased
    trace = torch.trace(cov)
    isotropic = not bool(trace > 0)
    if isotropic:
        precision = torch.eye(dim, dtype=x.dtype, device=x.device)
    else:
        eye = torch.eye(dim, dtype=x.dtype, device=x.device)
        precision = dim * torch.linalg.pinv((num - 1) * cov + trace * eye, hermitian=True)  # [D, D]
    weights = precision @ means.T  # [D, C]
    bias = math.log(1.0 / num_classes) - 0.5 * (means * weights.T).sum(dim=1)  # [C]
    return weights.to(samples.dtype), bias.to(samples.dtype), isotropic


def gda_logits(features: Tensor, classifier: Tensor, weights: Tensor, bias: Tensor, alpha: float) -> Tensor:
    """``100 · f W + α · (f W_g + b)``: ``[B, D]`` -> ``[B, C]``."""
    return zero_shot_logits(features, classifier) + alpha * (features @ weights + bias)


class GDAAdapter(Adapter):
    """GDA: Gaussian discriminant analysis on the support views, blended with zero-shot."""

    name = "gda"
    label = "GDA"
    order = 50
    summary = "GDA: training-free Gaussian discriminant analysis (shared shrinkage covariance); alpha on validation"
    trains = False
    defaults = GDA_DEFAULTS
    search_space = {"alpha": GridList("alphas")}
    hparam_types = GDA_HPARAMS
    selection = ("val", "fixed", "test")  # fixed with search=False; the released ImageNet script used test

    def selects_on_validation(self) -> bool:
        """α is chosen on validation unless ``search`` is off."""
        return bool(self.hparams.get("search", True))

    def fit(self, task: FewShotTask) -> "GDAAdapter":
        """Estimate the class means and the shared covariance, then choose α on validation."""
        hp = self.resolve(task)
        check_every_class(task, self.name, "a mean per class")
        dtype = task.work_dtype()
        self._classifier = task.classifier.to(dtype)  # [D, C]
        views, num, dim = task.support.shape
        samples = normalise(task.support.to(dtype)).reshape(views * num, dim)  # [V·N, D], each view a sample
        labels = task.support_labels.repeat(views).to(samples.device)  # [V·N]
        self._weights, self._bias, isotropic = gda_classifier(samples, labels, task.num_classes)
        if isotropic:
            warnings.warn(f"adapter '{self.name}': the support features have no within-class spread (one view of "
                          "one image per class); using the isotropic covariance (nearest class mean)")
        val = task.val_features.to(dtype)  # [Nv, D]
        val_labels = task.val_labels.to(val.device)
        base, gda = zero_shot_logits(val, self._classifier), val @ self._weights + self._bias  # [Nv, C] each
        if hp["search"]:
            alphas = self.search_grid()["alpha"]
            best, counts = search_list(alphas, lambda a: count_correct(base + a * gda, val_labels))
            self._alpha = alphas[best]
            self.val_accuracy = percent(counts[best], len(val))
        else:
            self._alpha = float(hp["alpha"])
            self.val_accuracy = percent(count_correct(base + self._alpha * gda, val_labels), len(val))
        self.record_chosen({**hp, "alpha": self._alpha, "covariance": ISOTROPIC if isotropic else "shrinkage"})
        return self

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """GDA logits with the chosen α: ``[B, D]`` -> ``[B, C]``."""
        self.check_features(features)
        return gda_logits(features.to(self._classifier), self._classifier, self._weights, self._bias, self._alpha)


@hookimpl
def fdalign_register_adapters(register: Callable[[AdapterSpec], Any]) -> None:
    """Register ``gda``."""
    register(GDAAdapter.spec())
