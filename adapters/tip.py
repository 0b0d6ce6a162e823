"""Tip-Adapter (training-free), SPEC §2.

``logits = 100 · f W + α · exp(−β (1 − f Fᵀ)) L`` with cache keys ``F`` (mean of the
``V`` raw augmented views per support image, normalised) and one-hot values ``L``.
β_i = 0.1 + i(S_β − 0.1)/200 (i < 200) and α_j = 0.1 + j(S_α − 0.1)/20 (j < 20) are
searched on the validation set; best top-1 wins, the first grid point on ties.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Tuple

import torch
from torch import Tensor

from fdalign_plugins import hookimpl
from fdalign_plugins.adapter_api import (
    Adapter,
    AdapterSpec,
    FewShotTask,
    GridAxis,
    HParam,
    build_cache_keys,
    cache_logits,
    count_correct,
    percent,
    search_cache_grid,
    zero_shot_logits,
)
from fdalign_plugins.errors import ConfigError

#: SPEC §2 table, Tip columns: dataset -> (S_β, S_α, init α). Init β is 1 everywhere.
TIP_TABLE: Mapping[str, Tuple[float, float, float]] = {
    "imagenet": (7.0, 3.0, 1.17),
    "caltech101": (12.0, 5.0, 3.0),
    "dtd": (13.0, 13.0, 2.0),
    "eurosat": (12.0, 10.0, 2.0),
    "fgvc_aircraft": (30.0, 30.0, 5.0),
    "food101": (10.0, 10.0, 1.17),
    "oxford_flowers": (50.0, 50.0, 10.0),
    "oxford_pets": (7.0, 3.0, 1.17),
    "stanford_cars": (20.0, 10.0, 3.0),
    "sun397": (12.0, 10.0, 1.17),
    "ucf101": (7.0, 3.0, 3.0),
}

#: Generic defaults. Unknown datasets get ImageNet's row (S_β 7, S_α 3, init α 1.17),
#: the most general of the eleven, which three other datasets share.
TIP_DEFAULTS: Dict[str, Any] = {
    "alpha": 1.17,  # initial α (used by Tip-F training and when search is off)
    "beta": 1.0,  # initial β
    "search": True,  # grid-search α, β on validation
    "beta_scale": 7.0,  # S_β
    "alpha_scale": 3.0,  # S_α
    "beta_steps": 200,
    "alpha_steps": 20,
}

TIP_DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    name: {"beta_scale": sb, "alpha_scale": sa, "alpha": a} for name, (sb, sa, a) in TIP_TABLE.items()
}

#: Types and ranges of Tip's hyper-parameters (checked before any model is loaded).
TIP_HPARAMS: Dict[str, HParam] = {
    "alpha": HParam(float, low=0, help="initial residual weight α"),
    "beta": HParam(float, low=0, help="initial sharpness β"),
    "search": HParam(bool, help="grid-search on validation"),
    "beta_scale": HParam(float, low=0, help="S_β, the largest β searched"),
    "alpha_scale": HParam(float, low=0, help="S_α, the largest α searched"),
    "beta_steps": HParam(int, low=1, help="β grid points"),
    "alpha_steps": HParam(int, low=1, help="α grid points"),
}

TIP_SEARCH_SPACE: Dict[str, GridAxis] = {
    "beta": GridAxis("beta_scale", "beta_steps", 0.1),
    "alpha": GridAxis("alpha_scale", "alpha_steps", 0.1),
}


def tip_logits(
    features: Tensor,
    classifier: Tensor,
    keys: Tensor,
    labels: Tensor,
    alpha: float,
    beta: float,
    num_classes: int,
) -> Tensor:
    """Tip-Adapter logits ``100 · f W + α · exp(−β (1 − f Fᵀ)) L``.

    Args:
        features: ``[B, D]`` L2-normalised features.
        classifier: ``[D, C]`` text classifier ``W``.
        keys: ``[NK, D]`` cache keys ``F`` (trainable and not re-normalised in Tip-F).
        labels: ``[NK]`` class of each cache entry (the one-hot values ``L``).
        alpha: residual weight.
        beta: sharpness.
        num_classes: ``C``.

    Returns:
        ``[B, C]`` logits (differentiable with respect to ``keys``).
    """
    return zero_shot_logits(features, classifier) + cache_logits(
        features @ keys.T, labels, alpha, beta, num_classes=num_classes
    )


def check_search_hparams(hp: Mapping[str, Any], steps: Tuple[str, ...] = ("beta_steps", "alpha_steps")) -> None:
    """Raise :class:`ConfigError` for a step count below 1."""
    for key in steps:
        if int(hp[key]) < 1:
            raise ConfigError(f"{key} must be >= 1, got {hp[key]}")


class TipAdapter(Adapter):
    """Tip-Adapter: training-free cache model, α and β searched on validation."""

    name = "tip"
    label = "Tip"
    order = 10
    summary = "Tip-Adapter: training-free cache model of the support features; alpha, beta searched on validation"
    trains = False
    defaults = TIP_DEFAULTS
    dataset_defaults = TIP_DATASET_DEFAULTS
    search_space = TIP_SEARCH_SPACE
    hparam_types = TIP_HPARAMS
    selection = ("val", "fixed", "test")  # fixed with search=False; the reference's ImageNet script used test

    def selects_on_validation(self) -> bool:
        """α, β are chosen on validation unless ``search`` is off."""
        return bool(self.hparams.get("search", True))

    def _build_cache(self, task: FewShotTask) -> None:
        dtype = task.work_dtype()
        self._classifier = task.classifier.to(dtype)  # [D, C]
        self._keys = build_cache_keys(task.support.to(dtype))  # [NK, D]
        self._labels = task.support_labels.to(self._keys.device)  # [NK]

    def _select_alpha_beta(self, task: FewShotTask) -> None:
        """Search (or take the initial) α, β on validation with the current keys."""
        hp = self.hparams
        val = task.val_features.to(self._keys)  # [Nv, D]
        val_labels = task.val_labels.to(val.device)  # [Nv]
        if hp["search"]:
            check_search_hparams(hp)
            axes = self.search_grid()
            result = search_cache_grid(
                val, self._keys, self._labels, zero_shot_logits(val, self._classifier), val_labels,
                axes["beta"], axes["alpha"], num_classes=self.num_classes,
            )
            self._alpha, self._beta = result.alpha, result.beta
            self.val_accuracy = result.accuracy
        else:
            self._alpha, self._beta = float(hp["alpha"]), float(hp["beta"])
            self.val_accuracy = percent(count_correct(self._logits(val), val_labels), len(val))

    def _chosen_values(self) -> Dict[str, Any]:
        chosen = dict(self.hparams)
        chosen.update(alpha=self._alpha, beta=self._beta, init_alpha=self.hparams["alpha"],
                      init_beta=self.hparams["beta"])
        return chosen

    def fit(self, task: FewShotTask) -> "TipAdapter":
        """Build the cache from the support views and search α, β on validation."""
        self.resolve(task)
        self._build_cache(task)
        self._select_alpha_beta(task)
        self.record_chosen(self._chosen_values())
        return self

    def _logits(self, features: Tensor) -> Tensor:
        f = features.to(self._keys)  # [B, D]
        return tip_logits(f, self._classifier, self._keys, self._labels, self._alpha, self._beta, self.num_classes)

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """Tip-Adapter logits with the chosen α, β: ``[B, D]`` -> ``[B, C]``."""
        self.check_features(features)
        return self._logits(features)

    @property
    def cache_keys(self) -> Tensor:
        """``[NK, D]`` the cache keys in use (trained ones for Tip-F), after ``fit``."""
        return self._keys


@hookimpl
def fdalign_register_adapters(register: Callable[[AdapterSpec], Any]) -> None:
    """Register ``tip``."""
    register(TipAdapter.spec())
