"""An example fdalign-plugins adapter: nearest class mean, mixed with the text classifier.

``logits = 100 · ((1 − m) · f W + m · f Pᵀ)`` where ``P`` holds one prototype per class,
the normalised mean of that class's cache keys, and the mix ``m`` is searched on the
validation set over ``0, 0.1, …, 0.9``.

This file, with ``setup.cfg`` and ``pyproject.toml`` beside it, is a complete plugin
package: ``pip install .`` and ``fdalign-bench --list`` shows ``proto``.
"""

from __future__ import annotations

from typing import Any, Callable

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
    class_sum,
    count_correct,
    normalise,
    percent,
    zero_shot_logits,
)


class ProtoAdapter(Adapter):
    """Nearest class mean of the support features, mixed with zero-shot CLIP."""

    name = "proto"
    summary = "Nearest class mean of the support features mixed with the text classifier (example plugin)"
    trains = False
    defaults = {"mix": 0.5, "search": True, "mix_scale": 1.0, "mix_steps": 10}
    dataset_defaults = {"eurosat": {"mix": 0.8}}  # per-dataset defaults, keyed by dataset name
    search_space = {"mix": GridAxis("mix_scale", "mix_steps", 0.0)}  # m_i = i · 1.0 / 10
    # types and ranges, checked before any model is loaded (undeclared ones take their default's type)
    hparam_types = {
        "mix": HParam(float, low=0, high=1, help="weight of the class prototypes when search is off"),
        "search": HParam(bool, help="search the mix on validation"),
        "mix_scale": HParam(float, low=0, high=1, help="the largest mix searched"),
        "mix_steps": HParam(int, low=1, help="grid points"),
    }

    def fit(self, task: FewShotTask) -> "ProtoAdapter":
        hp = self.resolve(task)
        dtype = task.work_dtype()
        self._classifier = task.classifier.to(dtype)  # [D, C]
        keys = build_cache_keys(task.support.to(dtype))  # [N, D]
        self._prototypes = normalise(class_sum(keys.T, task.support_labels, task.num_classes).T)  # [C, D]
        val = task.val_features.to(dtype)  # [Nv, D]
        mixes = self.search_grid()["mix"] if hp["search"] else [float(hp["mix"])]
        best = -1
        for mix in mixes:  # first best on ties
            self._mix = mix
            correct = count_correct(self._logits(val), task.val_labels)
            if correct > best:
                best, chosen = correct, mix
        self._mix = chosen
        self.val_accuracy = percent(best, len(val))
        self.record_chosen({**hp, "mix": chosen})
        return self

    def _logits(self, features: Tensor) -> Tensor:
        f = features.to(self._classifier)
        return (1.0 - self._mix) * zero_shot_logits(f, self._classifier) + self._mix * zero_shot_logits(
            f, self._prototypes.T
        )

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        self.check_features(features)
        return self._logits(features)


@hookimpl
def fdalign_register_adapters(register: Callable[[AdapterSpec], Any]) -> None:
    register(ProtoAdapter.spec())
