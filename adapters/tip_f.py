"""Tip-Adapter-F (trained cache keys), SPEC §2.

The cache keys become a trainable ``[NK, D]`` matrix initialised from the cache;
values, ``W`` and the encoder stay frozen and the keys are not re-normalised. Training:
cross-entropy on Tip-Adapter's logits at the initial α, β; AdamW (lr 1e-3, eps 1e-4,
weight decay 0.01 — torch's default, which the reference keeps); cosine schedule per
iteration; batch 256; 20 epochs (EuroSAT 100). Epoch ``e`` trains on cached augmented
view ``e mod V``. The best epoch is chosen on *validation* accuracy (the reference
chose it on the test set; never do that), then α and β are searched on validation
with the trained keys. ``epochs=0`` is exactly Tip-Adapter.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import torch

from fdalign_plugins import hookimpl
from fdalign_plugins.adapter_api import TRAIN_HPARAMS, AdapterSpec, FewShotTask, train_on_views
from fdalign_plugins.errors import ConfigError

from .tip import TIP_DATASET_DEFAULTS, TIP_DEFAULTS, TIP_HPARAMS, TIP_SEARCH_SPACE, TipAdapter, tip_logits

TIP_F_DEFAULTS: Dict[str, Any] = {
    **TIP_DEFAULTS,
    "epochs": 20,
    "lr": 1e-3,
    "eps": 1e-4,
    "weight_decay": 0.01,
    "batch_size": 256,
}

TIP_F_DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    name: dict(values) for name, values in TIP_DATASET_DEFAULTS.items()}
TIP_F_DATASET_DEFAULTS["eurosat"]["epochs"] = 100


class TipFAdapter(TipAdapter):
    """Tip-Adapter-F: Tip-Adapter with the cache keys fine-tuned on the support views."""

    name = "tip-f"
    label = "Tip-F"
    order = 20
    summary = "Tip-Adapter-F: cache keys fine-tuned on the support views; best epoch and alpha, beta on validation"
    trains = True
    defaults = TIP_F_DEFAULTS
    dataset_defaults = TIP_F_DATASET_DEFAULTS
    search_space = TIP_SEARCH_SPACE
    hparam_types = {**TIP_HPARAMS, **TRAIN_HPARAMS}

    def selects_on_validation(self) -> bool:
        """The best epoch (any epochs > 0) and α, β (``search``) are chosen on validation."""
        return bool(self.hparams.get("search", True)) or int(self.hparams.get("epochs", 0)) > 0

    def fit(self, task: FewShotTask) -> "TipFAdapter":
        """Build the cache, train the keys (best epoch on validation), search α, β."""
        hp = self.resolve(task)
        if int(hp["epochs"]) < 0:
            raise ConfigError(f"epochs must be >= 0, got {hp['epochs']}")
        self._build_cache(task)
        keys = torch.nn.Parameter(self._keys.clone())  # [NK, D], trainable, never re-normalised
        alpha0, beta0 = float(hp["alpha"]), float(hp["beta"])

        def forward(features: torch.Tensor) -> torch.Tensor:
            return tip_logits(features, self._classifier, keys, self._labels, alpha0, beta0, self.num_classes)

        self.train_result = train_on_views(
            [keys], forward, task,
            epochs=int(hp["epochs"]), lr=float(hp["lr"]), eps=float(hp["eps"]),
            weight_decay=float(hp["weight_decay"]), batch_size=int(hp["batch_size"]), dtype=self._keys.dtype,
        )
        self._keys = keys.detach()
        self._select_alpha_beta(task)
        chosen = self._chosen_values()
        chosen["best_epoch"] = self.train_result.best_epoch
        self.record_chosen(chosen)
        return self


@hookimpl
def fdalign_register_adapters(register: Callable[[AdapterSpec], Any]) -> None:
    """Register ``tip-f``."""
    register(TipFAdapter.spec())
