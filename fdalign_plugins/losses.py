"""FD-Align's losses as small pure functions (SPEC §1).

Shapes: ``feats`` are image features ``[B, D]`` (any norm; they are normalised here),
prototypes are L2-normalised rows ``[C, D]`` or ``[M, D]``, ``tau`` is CLIP's logit
scale (``exp(logit_scale)``, 100 for the OpenAI checkpoints).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops import normalise

KL_DIRECTIONS = ("overview", "reference")


def cosine_logits(feats: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau * cos(feats, prototypes)``: ``[B, D] x [K, D] -> [B, K]``."""
    return tau * normalise(feats) @ prototypes.t()


def class_loss(feats: torch.Tensor, labels: torch.Tensor, class_protos: torch.Tensor, tau: float) -> torch.Tensor:
    """``L_class``: cross-entropy over ``tau * cos(f_t(x), mu_class)``, mean over the batch."""
    return F.cross_entropy(cosine_logits(feats, class_protos, tau), labels)


def spurious_kl(
    feats_ft: torch.Tensor,
    feats_0: torch.Tensor,
    spur_protos: torch.Tensor,
    tau: float,
    direction: str = "overview",
) -> torch.Tensor:
    """``L_spurious``: per-sample KL between spurious distributions, mean over the batch.

    ``P(x; f) = softmax_j(tau * cos(f(x), mu_spur[j]))`` for the fine-tuned and the frozen
    encoder on the same image. Computed from ``log_softmax`` so extreme logits stay finite.

    Args:
        direction: ``"overview"`` for ``KL(P_ft || P_0)`` (the method overview, default);
            ``"reference"`` for ``KL(P_0 || P_ft)`` (the released code).
    """
    logp_ft = F.log_softmax(cosine_logits(feats_ft, spur_protos, tau), dim=-1)  # [B, M]
    logp_0 = F.log_softmax(cosine_logits(feats_0, spur_protos, tau), dim=-1)  # [B, M]
    if direction == "overview":
        kl = (logp_ft.exp() * (logp_ft - logp_0)).sum(-1)
    elif direction == "reference":
        kl = (logp_0.exp() * (logp_0 - logp_ft)).sum(-1)
    else:
        raise ValueError(f"unknown KL direction {direction!r}; valid: {', '.join(KL_DIRECTIONS)}")
    return kl.mean()


def total_loss(l_class: torch.Tensor, l_spurious: torch.Tensor, alpha: float = 1.0,
               spurious_weight: float = 1.0) -> torch.Tensor:
    """``L = alpha * L_class + spurious_weight * L_spurious`` (0: plain full fine-tuning)."""
    if spurious_weight == 0:
        return alpha * l_class
    return alpha * l_class + spurious_weight * l_spurious


def energy_gap(feats_ft: torch.Tensor, feats_0: torch.Tensor, text_feats: torch.Tensor, tau: float) -> torch.Tensor:
    """Lipsum-FT's regulariser: ``1/(2M) Σ_m (τ·cos(f_ft, t_m) − τ·cos(f_0, t_m))²``, mean over the batch.

    The image–text energies of the fine-tuned and the frozen encoder on the same image
    against ``M`` text features ``t_m`` (Nam et al., ICLR 2024).

    Args:
        feats_ft: ``[B, D]`` fine-tuned image features.
        feats_0: ``[B, D]`` frozen image features of the same images.
        text_feats: ``[M, D]`` L2-normalised text features.
    """
    gap = cosine_logits(feats_ft, text_feats, tau) - cosine_logits(feats_0, text_feats, tau)  # [B, M]
    return gap.pow(2).sum(-1).div(2 * text_feats.shape[0]).mean()
