"""Prompt templates and text prototypes.

Template sets are plain data (``"{}"`` marks the class name), kept in
:mod:`fdalign_plugins.templates` and re-exported here. Prototypes follow SPEC §1:
each prompt embedding is L2-normalised, averaged, and the mean normalised again.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
from torch import nn

from .ops import normalise  # its home is ops; re-exported here, where plugin authors import it
from .templates import (  # noqa: F401  (re-exported: their home is the data layer)
    COOP_TEMPLATES,
    IMAGENET_ENSEMBLE_TEMPLATES,
    IMAGENET_TEMPLATES,
    TEMPLATE_SETS,
    resolve_templates,
)

@torch.no_grad()
def encode_prompts(
    model: nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """Normalised text embeddings of every (template, class) prompt.

    Computed without gradients. The text tower never changes during a benchmark, while
    every fine-tuning run and the classifier ask for the same prompts again: results are
    memoised in this process, keyed by the weights of everything but the image encoder
    and by the prompts.

    Returns:
        Tensor ``[M, C, D]`` (M templates, C classes), each row L2-normalised.
    """
    from .models import state_fingerprint

    prompts = [t.format(c) for t in templates for c in classnames]
    device = next(model.parameters()).device
    key = (state_fingerprint(model, exclude=("visual.",)), tuple(prompts), str(device), batch_size)
    if key in _PROMPT_MEMO:
        return _PROMPT_MEMO[key].clone()
    feats = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[i:i + batch_size]).to(device)
            feats.append(normalise(model.encode_text(tokens).float()))
    out = torch.cat(feats).view(len(templates), len(classnames), -1)
    if len(_PROMPT_MEMO) >= 8:
        _PROMPT_MEMO.pop(next(iter(_PROMPT_MEMO)))
    _PROMPT_MEMO[key] = out
    return out.clone()


#: encode_prompts results of this process (oldest first).
_PROMPT_MEMO: Dict[tuple, torch.Tensor] = {}


def class_prototypes(prompt_feats: torch.Tensor) -> torch.Tensor:
    """``mu_class[y] = normalise(mean_j prompt_feats[j, y])``: ``[M, C, D] -> [C, D]``."""
    return normalise(prompt_feats.mean(dim=0))


def spurious_prototypes(prompt_feats: torch.Tensor) -> torch.Tensor:
    """``mu_spur[j] = normalise(mean_y prompt_feats[j, y])``: ``[M, C, D] -> [M, D]``."""
    return normalise(prompt_feats.mean(dim=1))


def text_classifier(model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """The adapters' text classifier ``W``: ``[D, C]``, columns normalised."""
    return class_prototypes(encode_prompts(model, tokenizer, classnames, templates)).t().contiguous()
