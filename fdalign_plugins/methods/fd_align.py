"""FD-Align, whole (SPEC §1; Song et al., "FD-Align", NeurIPS 2023).

1. **Class prototypes** — ``mu_class[y] = normalise(mean_j normalise(g0([P_j, y])))``.
2. **Spurious prototypes** — ``mu_spur[j] = normalise(mean_y normalise(g0([P_j, y])))``.
3. **SPC** — IsolationForest keeps the most normal templates, k-Means merges them.
4. **Frozen copy** — the stock encoder ``f0`` sees the same augmented images, no gradient.
5. **Loss** — ``L = α·L_class + β·L_spurious`` with
   ``L_class = CE(τ·cos(f_t(x), mu_class), y)`` and
   ``L_spurious = KL(P(x; f_t) || P(x; f0))``, ``P(x; f) = softmax_j(τ·cos(f(x), mu_spur[j]))``.

Steps 1–3 are :func:`text_prototypes` (computed once, the text tower stays frozen);
steps 4–5 are :class:`FDAlign`. The spine (:mod:`fdalign_plugins.trainer`) does the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Sequence

import torch
import torch.nn.functional as F

from .. import hookimpl
from ..losses import spurious_kl, total_loss
from ..method_api import BatchOutputs, Method, TextPrototypes  # TextPrototypes: re-exported, its old home
from ..prompts import class_prototypes, encode_prompts, resolve_templates, spurious_prototypes
from ..spc import spurious_prototype_correction

if TYPE_CHECKING:
    from ..config import FinetuneConfig
    from ..models import ClipBundle


def text_prototypes(bundle: "ClipBundle", classnames: Sequence[str], cfg: "FinetuneConfig") -> TextPrototypes:
    """Steps 1–3: class prototypes, spurious prototypes and SPC from the frozen text encoder."""
    templates = resolve_templates(cfg.templates)
    feats = encode_prompts(bundle.model, bundle.tokenizer, classnames, templates)  # [M, C, D]
    cls = class_prototypes(feats)  # [C, D]
    spur = spurious_prototypes(feats)  # [M, D]
    spc = None
    if cfg.spc and (cfg.spc_keep or cfg.spc_k):
        spc = spurious_prototype_correction(
            spur, n_keep=cfg.spc_keep, k=cfg.spc_k, seed=cfg.seed, renormalise=cfg.spc_renormalise
        )
        spur = spc.prototypes  # [k, D]
    return TextPrototypes(cls.float(), spur.float(), templates, spc)


class FDAlign(Method):
    """Steps 4–5: the spurious KL against the frozen copy, added to the class loss."""

    name = "fd-align"
    summary = ("FD-Align: class loss + spurious_weight * KL between spurious-prototype distributions of tuned and "
               "frozen encoder")
    reads = ("alpha", "spurious_weight", "kl_direction")

    def uses_frozen(self) -> bool:
        return self.hparams["spurious_weight"] > 0  # 0 is plain fine-tuning: no frozen forward

    def loss(self, out: BatchOutputs) -> Dict[str, torch.Tensor]:
        hp = self.hparams
        l_class = F.cross_entropy(out.logits, out.labels)
        if out.feats0 is not None and hp["spurious_weight"] > 0:
            l_spur = spurious_kl(out.feats, out.feats0, out.protos.spur_protos, out.tau, hp["kl_direction"])
        else:
            l_spur = torch.zeros((), device=out.feats.device)
        total = total_loss(l_class, l_spur, hp["alpha"], hp["spurious_weight"])
        return {"class": l_class, "spurious": l_spur, "total": total}


@hookimpl
def fdalign_register_methods(register):
    register(FDAlign.spec())
