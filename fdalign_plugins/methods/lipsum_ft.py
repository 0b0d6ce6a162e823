"""Lipsum-FT (Nam et al., "Lipsum-FT: Robust Fine-Tuning of Zero-Shot Models Using Random
Text Guidance", ICLR 2024).

``L = CE + λ/(2M) Σ_m (τ·cos(f_ft(x), t_m) − τ·cos(f_0(x), t_m))²``: the image–text
energies of the fine-tuned encoder on ``M`` random texts are kept close to the frozen
stock encoder's on the same image. ``t_m`` are the frozen text encoder's features of
``M = 80`` strings of ``8`` uniformly random tokens, drawn anew every step (from a seed
fixed by run seed, epoch and step, so a resumed run draws the same texts); ``λ = 1``.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from .. import hookimpl
from ..errors import ConfigError
from ..losses import energy_gap
from ..method_api import BatchOutputs, Method, MethodContext
from ..ops import normalise


class LipsumFT(Method):
    """Cross-entropy plus the energy gap on random texts against the frozen encoder."""

    name = "lipsum-ft"
    summary = "Lipsum-FT: CE + lam/(2M) sum_m (image-text energy gap to the frozen encoder on M random texts)^2"
    defaults = {"lam": 1.0, "num_texts": 80, "text_length": 8}

    def uses_frozen(self) -> bool:
        return True

    def setup(self, ctx: MethodContext) -> None:
        hp = self.hparams
        empty = ctx.tokenizer([""])  # [1, L]: start token, end token, padding
        self._sot, self._eot, self._context = int(empty[0, 0]), int(empty[0, 1]), int(empty.shape[1])
        if int(hp["num_texts"]) < 1 or int(hp["text_length"]) < 1 or int(hp["text_length"]) + 2 > self._context:
            raise ConfigError(f"lipsum-ft: num_texts must be >= 1 and text_length in [1, {self._context - 2}] "
                              f"(the text encoder's context), got {hp['num_texts']}, {hp['text_length']}")
        self._model = ctx.model

    def random_tokens(self, seed: int) -> torch.Tensor:
        """``[M, L]`` token ids: start, ``text_length`` random ordinary tokens, end, padding.

        Random ids lie below the start/end ids, so the end token stays the largest id
        (CLIP pools the text at the argmax token).
        """
        m, n = int(self.hparams["num_texts"]), int(self.hparams["text_length"])
        g = torch.Generator().manual_seed(int(seed))
        tokens = torch.zeros(m, self._context, dtype=torch.long)
        tokens[:, 0] = self._sot
        tokens[:, 1:1 + n] = torch.randint(1, min(self._sot, self._eot), (m, n), generator=g)
        tokens[:, 1 + n] = self._eot
        return tokens

    @torch.no_grad()
    def text_features(self, seed: int) -> torch.Tensor:
        """``[M, D]`` L2-normalised features of this step's random texts (frozen text tower)."""
        device = next(self._model.parameters()).device
        return normalise(self._model.encode_text(self.random_tokens(seed).to(device)).float())

    def loss(self, out: BatchOutputs) -> Dict[str, torch.Tensor]:
        l_class = F.cross_entropy(out.logits, out.labels)
        gap = energy_gap(out.feats, out.feats0, self.text_features(out.step_seed).to(out.feats.dtype), out.tau)
        return {"class": l_class, "lipsum": gap, "total": l_class + float(self.hparams["lam"]) * gap}


@hookimpl
def fdalign_register_methods(register):
    register(LipsumFT.spec())
