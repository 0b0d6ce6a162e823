"""The zero-shot CLIP adapter: ``logits = 100 · f W`` (the text classifier alone)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from fdalign_plugins import hookimpl
from fdalign_plugins.adapter_api import Adapter, AdapterSpec, FewShotTask, count_correct, percent, zero_shot_logits


class ZeroShotAdapter(Adapter):
    """Zero-shot CLIP: the text classifier only; ``fit`` just records it."""

    name = "zero-shot"
    label = "Zero-shot"
    order = 0
    reference = True  # the row every table starts with; its rows name the encoder
    summary = "Zero-shot CLIP: 100 f W with the text classifier, no use of the support set"
    trains = False
    defaults: dict = {}
    selection = ("fixed",)

    def fit(self, task: FewShotTask) -> "ZeroShotAdapter":
        """Record the classifier and the validation accuracy; nothing is tuned."""
        self.resolve(task)
        self._classifier = task.classifier.to(task.work_dtype())  # [D, C]
        val = task.val_features.to(self._classifier.dtype)  # [Nv, D]
        correct = count_correct(zero_shot_logits(val, self._classifier), task.val_labels.to(val.device))
        self.val_accuracy = percent(correct, len(val))
        self.record_chosen({})
        return self

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """``100 · f W`` for ``features`` ``[B, D]`` -> ``[B, C]``."""
        self.check_features(features)
        return zero_shot_logits(features.to(self._classifier), self._classifier)  # [B, C]


@hookimpl
def fdalign_register_adapters(register: Callable[[AdapterSpec], Any]) -> None:
    """Register ``zero-shot``."""
    register(ZeroShotAdapter.spec())
