"""CLAP, the class-adaptive constrained linear probe (trained, fixed settings).

Source: J. Silva-Rodríguez, S. Hajimiri, I. Ben Ayed, J. Dolz, "A Closer Look at the
Few-Shot Adaptation of Large Vision-Language Models", CVPR 2024 (arXiv:2312.12730);
public code github.com/jusiro/CLAP (MIT), configuration ``SGD_lr1e-1_B256_ep300`` with
the ``l2`` constraint. Re-implemented from the paper and SPEC §6.

Class prototypes ``p_c`` start at the text classifier's columns ``t_c`` and are trained
with::

    logits = 100 · f̂ p̂ᵀ                                   (τ = 100, both normalised)
    loss   = CE(logits, y) + (1/C) Σ_c λ_c ‖p_c − t_c‖²
    λ_c    = mean over the support samples of class c of softmax(100 f̂ W)_c

— the zero-shot probability of the true class, averaged per class (the paper's
class-adaptive penalty; the released code averages the penalty over classes). Every
setting is fixed, for every task, as the paper prescribes: SGD (momentum 0.9) with lr
0.1, weight decay 0, batch 256, 300 epochs, cosine schedule after one warm-up epoch at
lr 1e-5; the last epoch is kept. Nothing is chosen on the validation set — the adapter
declares the ``fixed`` selection policy only, and its record says ``fixed`` under every
protocol.

The support samples are the runner's ``V`` cached augmented views (the released code
uses 20 augmented passes); epoch ``e`` trains on view ``e mod V`` through the shared
:func:`~fdalign_plugins.adapter_api.train_on_views` loop, so an epoch has ``N``
samples as in the released code. A class without support images has no ``λ_c``: a
clear :class:`~fdalign_plugins.errors.DataError`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import torch
from torch import Tensor

from fdalign_plugins import hookimpl
from fdalign_plugins.adapter_api import (
    Adapter,
    AdapterSpec,
    FewShotTask,
    HParam,
    check_every_class,
    count_correct,
    normalise,
    percent,
    train_on_views,
    zero_shot_logits,
)
from fdalign_plugins.errors import ConfigError

#: The paper's fixed settings (every dataset, every shot count).
CLAP_DEFAULTS: Dict[str, Any] = {
    "epochs": 300,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "batch_size": 256,
    "warmup_epochs": 1,
    "warmup_lr": 1e-5,
}

CLAP_HPARAMS: Dict[str, HParam] = {
    "epochs": HParam(int, low=1, help="training epochs (the last is kept)"),
    "lr": HParam(float, low=0, help="SGD learning rate after the warm-up"),
    "momentum": HParam(float, low=0, high=1, help="SGD momentum"),
    "weight_decay": HParam(float, low=0, help="SGD weight decay"),
    "batch_size": HParam(int, low=1, help="largest training batch"),
    "warmup_epochs": HParam(int, low=0, help="epochs at the constant warm-up rate"),
    "warmup_lr": HParam(float, low=0, help="the warm-up learning rate"),
}


def class_adaptive_weights(samples: Tensor, labels: Tensor, classifier: Tensor) -> Tensor:
    """``λ_c``: the mean zero-shot probability of the true class over class ``c``'s samples.

    Args:
        samples: ``[M, D]`` L2-normalised support samples.
        labels: ``[M]`` their classes (every class must occur).
        classifier: ``[D, C]`` text classifier.

    Returns:
        ``[C]`` penalty weights in ``[0, 1]``.
    """
    num_classes = classifier.shape[1]
    probs = zero_shot_logits(samples, classifier).softmax(dim=1)  # [M, C]
    true = probs.gather(1, labels[:, None]).squeeze(1)  # [M]
    sums = torch.zeros(num_classes, dtype=true.dtype, device=true.device).index_add_(0, labels, true)
    return sums / torch.bincount(labels, minlength=num_classes).to(true)


def clap_logits(features: Tensor, prototypes: Tensor) -> Tensor:
    """``100 · f̂ p̂ᵀ``: ``[B, D]`` features, ``[C, D]`` prototypes -> ``[B, C]``."""
    return zero_shot_logits(normalise(features), normalise(prototypes).T)


def clap_penalty(prototypes: Tensor, text: Tensor, weights: Tensor) -> Tensor:
    """``(1/C) Σ_c λ_c ‖p_c − t_c‖²`` for ``[C, D]`` prototypes and text, ``[C]`` weights."""
    return (weights * (prototypes - text).pow(2).sum(dim=1)).mean()


class CLAPAdapter(Adapter):
    """CLAP: zero-shot-initialised linear probe with a class-adaptive pull to the text weights."""

    name = "clap"
    label = "CLAP"
    order = 70
    summary = "CLAP: class-adaptive constrained linear probe from the text weights; fixed settings, no validation"
    trains = True
    defaults = CLAP_DEFAULTS
    hparam_types = CLAP_HPARAMS
    selection = ("fixed",)

    def fit(self, task: FewShotTask) -> "CLAPAdapter":
        """Train the prototypes with the fixed recipe; the validation set is not used."""
        hp = self.resolve(task)
        if int(hp["epochs"]) < 1 or not 0 <= int(hp["warmup_epochs"]) <= int(hp["epochs"]):
            raise ConfigError(f"clap: epochs must be >= 1 and warmup_epochs in [0, epochs], got "
                              f"{hp['epochs']}, {hp['warmup_epochs']}")
        check_every_class(task, self.name, "a zero-shot accuracy per class (its penalty weight)")
        dtype = task.work_dtype()
        text = task.classifier.to(dtype).T.contiguous()  # [C, D] t_c
        views, num, dim = task.support.shape
        samples = normalise(task.support.to(dtype)).reshape(views * num, dim)  # [V·N, D]
        self._penalty_weights = class_adaptive_weights(
            samples, task.support_labels.repeat(views).to(samples.device), task.classifier.to(dtype))  # [C]
        prototypes = torch.nn.Parameter(text.clone())  # [C, D]

        self.train_result = train_on_views(
            [prototypes], lambda f: clap_logits(f, prototypes), task,
            epochs=int(hp["epochs"]), lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]),
            batch_size=int(hp["batch_size"]), dtype=dtype, optimizer="sgd", momentum=float(hp["momentum"]),
            warmup_epochs=int(hp["warmup_epochs"]), warmup_lr=float(hp["warmup_lr"]), select_on_val=False,
            penalty=lambda: clap_penalty(prototypes, text, self._penalty_weights),
        )
        self._prototypes = prototypes.detach()
        with torch.no_grad():  # reported only; nothing was chosen with it
            val = task.val_features.to(dtype)
            self.val_accuracy = percent(count_correct(clap_logits(val, self._prototypes), task.val_labels), len(val))
        self.record_chosen({**hp, "penalty_weight_mean": float(self._penalty_weights.mean())})
        return self

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """``100 · f̂ p̂ᵀ`` with the trained prototypes: ``[B, D]`` -> ``[B, C]``."""
        self.check_features(features)
        return clap_logits(features.to(self._prototypes), self._prototypes)

    @property
    def prototypes(self) -> Tensor:
        """``[C, D]`` the trained prototypes (after ``fit``)."""
        return self._prototypes

    @property
    def penalty_weights(self) -> Tensor:
        """``[C]`` the class-adaptive penalty weights ``λ_c`` (after ``fit``)."""
        return self._penalty_weights


@hookimpl
def fdalign_register_adapters(register: Callable[[AdapterSpec], Any]) -> None:
    """Register ``clap``."""
    register(CLAPAdapter.spec())
