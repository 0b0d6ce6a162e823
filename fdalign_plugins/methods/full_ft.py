"""Plain full fine-tuning: cross-entropy against the frozen class prototypes (FD-Align with β = 0)."""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from .. import hookimpl
from ..method_api import BatchOutputs, Method


class FullFT(Method):
    """``L = CE(τ·cos(f_t(x), mu_class), y)`` (or the linear head's logits)."""

    name = "full-ft"
    summary = ("plain full fine-tuning: cross-entropy against the frozen class prototypes "
               "(fd-align with spurious_weight = 0)")

    def loss(self, out: BatchOutputs) -> Dict[str, torch.Tensor]:
        l_class = F.cross_entropy(out.logits, out.labels)
        return {"class": l_class, "total": l_class}


@hookimpl
def fdalign_register_methods(register):
    register(FullFT.spec())
