"""CLIP-Adapter: a residual bottleneck MLP on the image feature (trained).

Source: P. Gao, S. Geng, R. Zhang, T. Ma, R. Fang, Y. Zhang, H. Li, Y. Qiao,
"CLIP-Adapter: Better Vision-Language Models with Feature Adapters", IJCV 2024
(arXiv:2110.04544); public code github.com/gaopengcuhk/CLIP-Adapter (no licence file:
re-implemented from the paper and SPEC §6, no code copied).

::

    A(f)   = ReLU(W₂ ReLU(W₁ f))            W₁: D → D/4, W₂: D/4 → D, no bias
    f'     = r · A(f) + (1 − r) · f
    logits = 100 · (f' / ‖f'‖) W

(the released code and CLAP's re-implementation normalise ``f'`` before the product
with the text classifier; so does this module). ``W₁, W₂`` are trained with
cross-entropy on the cached augmented views through the shared
:func:`~fdalign_plugins.adapter_api.train_on_views` loop (AdamW, cosine, batch 256,
best epoch on validation — the project's feature-level recipe, as for Tip-F; the paper
trains with SGD through the image pipeline). The initial weights are drawn from a
generator seeded with the task's seed. The residual ratio ``r`` is chosen on
validation: one adapter is trained per candidate in ``ratios`` (default 0.2, 0.4, 0.6,
0.8 — the range of the paper's ablation without its two ends, zero-shot CLIP at 0 and
the adapter alone at 1) and the first best validation top-1 wins.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor

from fdalign_plugins import hookimpl
from fdalign_plugins.adapter_api import (
    TRAIN_HPARAMS,
    Adapter,
    AdapterSpec,
    FewShotTask,
    GridList,
    HParam,
    normalise,
    percent,
    search_list,
    train_on_views,
    zero_shot_logits,
)
from fdalign_plugins.errors import ConfigError

CLIP_ADAPTER_DEFAULTS: Dict[str, Any] = {
    "ratio": 0.2,  # used when search is off (the paper's choice for generic datasets such as ImageNet)
    "search": True,  # choose the ratio on validation
    "ratios": [0.2, 0.4, 0.6, 0.8],
    "reduction": 4,  # bottleneck width D / reduction
    "epochs": 20,
    "lr": 1e-3,
    "eps": 1e-8,
    "weight_decay": 0.01,
    "batch_size": 256,
}

CLIP_ADAPTER_HPARAMS: Dict[str, HParam] = {
    **TRAIN_HPARAMS,
    "ratio": HParam(float, low=0, high=1, help="residual ratio r when search is off"),
    "search": HParam(bool, help="choose r on validation (one adapter trained per candidate)"),
    "ratios": HParam(list, help="the r candidates, in search order"),
    "reduction": HParam(int, low=1, help="bottleneck width D / reduction"),
}


def init_mlp(dim: int, reduction: int, seed: int, dtype: torch.dtype) -> List[torch.nn.Parameter]:
    """``W₁ [D/r, D]`` and ``W₂ [D, D/r]`` with torch's default ``nn.Linear`` initialisation
    (uniform in ``±1/sqrt(fan_in)``), drawn from a generator seeded with ``seed``."""
    hidden = max(1, dim // reduction)
    g = torch.Generator().manual_seed(int(seed))
    w1 = (torch.rand(hidden, dim, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(dim)
    w2 = (torch.rand(dim, hidden, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(hidden)
    return [torch.nn.Parameter(w1.to(dtype)), torch.nn.Parameter(w2.to(dtype))]


def clip_adapter_logits(features: Tensor, classifier: Tensor, w1: Tensor, w2: Tensor, ratio: float) -> Tensor:
    """``100 · normalise(r · A(f) + (1 − r) · f) W`` with ``A(f) = ReLU(W₂ ReLU(W₁ f))``.

    Args:
        features: ``[B, D]`` L2-normalised features.
        classifier: ``[D, C]`` text classifier.
        w1: ``[D/4, D]`` first layer.
        w2: ``[D, D/4]`` second layer.
        ratio: residual ratio ``r``.

    Returns:
        ``[B, C]`` logits (differentiable in ``w1``, ``w2``).
    """
    adapted = F.relu(F.relu(features @ w1.T) @ w2.T)  # [B, D]
    mixed = ratio * adapted + (1.0 - ratio) * features  # [B, D]
    return zero_shot_logits(normalise(mixed), classifier)


class CLIPAdapter(Adapter):
    """CLIP-Adapter: residual bottleneck MLP on the image feature; ratio chosen on validation."""

    name = "clip-adapter"
    label = "CLIP-Adapter"
    order = 80
    summary = "CLIP-Adapter: residual bottleneck MLP on the image feature; best epoch and ratio on validation"
    trains = True
    defaults = CLIP_ADAPTER_DEFAULTS
    search_space = {"ratio": GridList("ratios")}
    hparam_types = CLIP_ADAPTER_HPARAMS
    selection = ("val", "fixed", "test")

    def selects_on_validation(self) -> bool:
        """The ratio (``search``) and the best epoch (epochs > 0) are chosen on validation."""
        return bool(self.hparams.get("search", True)) or int(self.hparams.get("epochs", 0)) > 0

    def _train(self, task: FewShotTask, ratio: float) -> Dict[str, Any]:
        """Train one adapter at ``ratio``; return its weights, best epoch and val count."""
        hp = self.hparams
        dtype = task.work_dtype()
        w1, w2 = init_mlp(task.feature_dim, int(hp["reduction"]), task.seed, dtype)

        def forward(features: Tensor) -> Tensor:
            return clip_adapter_logits(features, self._classifier, w1, w2, ratio)

        result = train_on_views(
            [w1, w2], forward, task,
            epochs=int(hp["epochs"]), lr=float(hp["lr"]), eps=float(hp["eps"]),
            weight_decay=float(hp["weight_decay"]), batch_size=int(hp["batch_size"]), dtype=dtype,
        )
        return {"w1": w1.detach(), "w2": w2.detach(), "result": result}

    def fit(self, task: FewShotTask) -> "CLIPAdapter":
        """Train one adapter per candidate ratio (best epoch on validation); keep the best."""
        hp = self.resolve(task)
        if int(hp["reduction"]) < 1 or int(hp["epochs"]) < 0:
            raise ConfigError(f"reduction must be >= 1 and epochs >= 0, got {hp['reduction']}, {hp['epochs']}")
        self._classifier = task.classifier.to(task.work_dtype())  # [D, C]
        ratios = self.search_grid()["ratio"] if hp["search"] else [float(hp["ratio"])]
        bad = [r for r in ratios if not 0.0 <= r <= 1.0]
        if bad:
            raise ConfigError(f"adapter '{self.name}': ratios must lie in [0, 1], got {bad}")
        trained: List[Dict[str, Any]] = []

        def correct(ratio: float) -> int:
            trained.append(self._train(task, ratio))
            return int(trained[-1]["result"].best_val_correct)

        best, counts = search_list(ratios, correct)
        chosen = trained[best]
        self._ratio, self._w1, self._w2 = ratios[best], chosen["w1"], chosen["w2"]
        self.train_result = chosen["result"]
        self.val_accuracy = percent(counts[best], len(task.val_labels))
        self.record_chosen({**hp, "ratio": self._ratio, "best_epoch": self.train_result.best_epoch,
                            "val_correct_per_ratio": counts})
        return self

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """CLIP-Adapter logits with the chosen ratio: ``[B, D]`` -> ``[B, C]``."""
        self.check_features(features)
        return clip_adapter_logits(features.to(self._classifier), self._classifier, self._w1, self._w2, self._ratio)

    @property
    def weights(self) -> List[Tensor]:
        """``[W₁, W₂]`` of the chosen adapter (after ``fit``)."""
        return [self._w1, self._w2]


@hookimpl
def fdalign_register_adapters(register: Callable[[AdapterSpec], Any]) -> None:
    """Register ``clip-adapter``."""
    register(CLIPAdapter.spec())
