"""LP++, a linear probe blended class-wise with the text classifier (trained).

Source: Y. Huang, F. Shakeri, J. Dolz, M. Boudiaf, H. Bahig, I. Ben Ayed, "LP++: A
Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024 (arXiv:2404.02285);
public code github.com/FereshteShakeri/FewShot-CLIP-Strong-Baseline
(``methods/linear_probe_p2.py``; no licence file: re-implemented from the paper and
SPEC §6, no code copied).

With ``F`` the ``N`` support features (the mean of the ``V`` cached views of each
image, L2-normalised — the cache keys) and ``T`` the text classifier ``[D, C]``::

    logits = f Wᵀ + b + α ⊙ (f T)                     W [C, D], b [C], α [C]

Initialisation and step sizes come from the data, as in the paper's block
majorize-minimize scheme: ``W`` starts at the per-class sums of the support features
(the released code's "centroids"), ``b`` at 0 (the released code leaves ``nn.Linear``'s
random bias), every ``α_c`` at ``250 · mean_{c, c'} (mean over class c of f T_{c'})``.
Full-batch training for 300 epochs: each epoch one SGD step (momentum 0.9) on ``W, b``
with ``lr_W = 4 N / λ_max(Fᵀ F)``; every 10th epoch one gradient step on ``α`` with
``lr_α = N / (4 · max_c Σ_i (f_i T_c)²)``, taken with that epoch's gradient (the
released code never zeroes ``α``'s gradient, so its step uses the sum of all past
gradients — a bug this module does not reproduce). The best epoch is chosen on the
validation split (epoch 0, the initialisation, included; the earliest on ties), as the
project's training loop does; the released code keeps the latest of equal epochs.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fdalign_plugins import hookimpl
from fdalign_plugins.adapter_api import (
    Adapter,
    AdapterSpec,
    EpochRecord,
    FewShotTask,
    HParam,
    TrainResult,
    build_cache_keys,
    check_every_class,
    count_correct,
    percent,
)
from fdalign_plugins.errors import ConfigError, FDAlignError

LP_PP_DEFAULTS: Dict[str, Any] = {
    "epochs": 300,
    "alpha_every": 10,  # one α step every this many epochs (block cycling)
    "momentum": 0.9,
    "alpha_init_scale": 250.0,
}

LP_PP_HPARAMS: Dict[str, HParam] = {
    "epochs": HParam(int, low=0, help="full-batch epochs (0: the initialisation)"),
    "alpha_every": HParam(int, low=1, help="one α step every this many epochs"),
    "momentum": HParam(float, low=0, high=1, help="SGD momentum of the probe's steps"),
    "alpha_init_scale": HParam(float, help="factor of the data-driven α initialisation (250)"),
}


def lp_pp_logits(features: Tensor, weight: Tensor, bias: Tensor, alpha: Tensor, text: Tensor) -> Tensor:
    """``f Wᵀ + b + α ⊙ (f T)``: ``[B, D]`` -> ``[B, C]`` (differentiable)."""
    return features @ weight.T + bias + alpha * (features @ text)


def lp_pp_init(features: Tensor, labels: Tensor, text: Tensor, scale: float) -> Dict[str, Tensor]:
    """LP++'s data-driven initialisation and step sizes.

    Args:
        features: ``[N, D]`` L2-normalised support features.
        labels: ``[N]`` classes (every class must occur).
        text: ``[D, C]`` text classifier.
        scale: the α initialisation factor (250).

    Returns:
        ``weight [C, D]``, ``bias [C]``, ``alpha [C]``, ``lr_w`` and ``lr_alpha`` (0-d).
    """
    num, num_classes = features.shape[0], text.shape[1]
    weight = torch.zeros(num_classes, features.shape[1], dtype=features.dtype).index_add_(0, labels, features)
    affinity = features @ text  # [N, C]
    counts = torch.bincount(labels, minlength=num_classes).to(features)  # [C]
    class_affinity = torch.zeros(num_classes, num_classes, dtype=features.dtype).index_add_(0, labels, affinity)
    alpha0 = scale * (class_affinity / counts[:, None]).mean()  # 0-d
    gram = (features.T @ features).to(torch.float64)  # [D, D]
    lr_w = 4.0 * num / torch.linalg.eigvalsh(gram)[-1]
    lr_alpha = num / (4.0 * affinity.pow(2).sum(dim=0).max())
    return {"weight": weight, "bias": torch.zeros(num_classes, dtype=features.dtype),
            "alpha": alpha0 * torch.ones(num_classes, dtype=features.dtype),
            "lr_w": lr_w.to(features.dtype), "lr_alpha": lr_alpha}


class LPPlusPlusAdapter(Adapter):
    """LP++: linear probe plus class-wise blended text weights, data-driven step sizes."""

    name = "lp++"
    label = "LP++"
    order = 60
    summary = "LP++: linear probe blended class-wise with the text weights; data-driven steps, best epoch on validation"
    trains = True
    defaults = LP_PP_DEFAULTS
    hparam_types = LP_PP_HPARAMS
    selection = ("val",)  # the paper and its code select the epoch on a K-shot validation split

    def selects_on_validation(self) -> bool:
        """The best epoch is chosen on validation whenever the probe trains."""
        return int(self.hparams.get("epochs", 0)) > 0

    def fit(self, task: FewShotTask) -> "LPPlusPlusAdapter":
        """Initialise from the data, train full-batch, keep the best epoch on validation."""
        hp = self.resolve(task)
        epochs, every = int(hp["epochs"]), int(hp["alpha_every"])
        if epochs < 0 or every < 1:
            raise ConfigError(f"lp++: epochs must be >= 0 and alpha_every >= 1, got {epochs}, {every}")
        check_every_class(task, self.name, "a class centroid to start from")
        dtype = task.work_dtype()
        self._text = task.classifier.to(dtype)  # [D, C]
        feats = build_cache_keys(task.support.to(dtype))  # [N, D]
        labels = task.support_labels.to(feats.device)
        init = lp_pp_init(feats, labels, self._text, float(hp["alpha_init_scale"]))
        weight = torch.nn.Parameter(init["weight"])  # [C, D]
        bias = torch.nn.Parameter(init["bias"])  # [C]
        alpha = torch.nn.Parameter(init["alpha"])  # [C]
        self.step_sizes = {"lr_w": float(init["lr_w"]), "lr_alpha": float(init["lr_alpha"])}
        val = task.val_features.to(dtype)  # [Nv, D]
        val_labels = task.val_labels.to(val.device)
        # f T never changes: one product each for the support and validation features instead of one per
        # epoch (the terms of lp_pp_logits in its order, so every epoch's logits are the same numbers).
        feats_text, val_text = feats @ self._text, val @ self._text  # [N, C], [Nv, C]

        def val_correct() -> int:
            with torch.no_grad():
                return count_correct(val @ weight.T + bias + alpha * val_text, val_labels)

        optimizer = torch.optim.SGD([weight, bias], lr=self.step_sizes["lr_w"], momentum=float(hp["momentum"]))
        best_correct = val_correct()
        best_epoch, best_state = 0, [p.detach().clone() for p in (weight, bias, alpha)]
        history: List[EpochRecord] = [EpochRecord(0, None, best_correct)]
        for epoch in range(1, epochs + 1):
            alpha.requires_grad_(epoch % every == 0)  # α's gradient ([N, C] work) only in the epochs that step it
            loss = F.cross_entropy(feats @ weight.T + bias + alpha * feats_text, labels)  # lp_pp_logits
            if not torch.isfinite(loss):
                raise FDAlignError(f"lp++: training diverged (loss {loss.item()}) at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            alpha.grad = None
            loss.backward()
            optimizer.step()
            if epoch % every == 0:
                with torch.no_grad():
                    alpha -= self.step_sizes["lr_alpha"] * alpha.grad
            correct = val_correct()
            history.append(EpochRecord(epoch, float(loss.detach()), correct))
            if correct > best_correct:
                best_correct, best_epoch = correct, epoch
                best_state = [p.detach().clone() for p in (weight, bias, alpha)]
        self._weight, self._bias, self._alpha = best_state
        self.train_result = TrainResult(best_epoch, best_correct, history)
        self.val_accuracy = percent(best_correct, len(val))
        self.record_chosen({**hp, "best_epoch": best_epoch, **self.step_sizes,
                            "alpha_init": float(init["alpha"][0])})
        return self

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """LP++ logits of the best epoch: ``[B, D]`` -> ``[B, C]``."""
        self.check_features(features)
        return lp_pp_logits(features.to(self._text), self._weight, self._bias, self._alpha, self._text)

    @property
    def state(self) -> Dict[str, Optional[Tensor]]:
        """The kept ``weight [C, D]``, ``bias [C]`` and ``alpha [C]`` (after ``fit``)."""
        return {"weight": self._weight, "bias": self._bias, "alpha": self._alpha}


@hookimpl
def fdalign_register_adapters(register: Callable[[AdapterSpec], Any]) -> None:
    """Register ``lp++``."""
    register(LPPlusPlusAdapter.spec())
