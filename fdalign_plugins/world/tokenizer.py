"""The world model's tokenizer: CLIP's BPE, restricted to the world's vocabulary.

The world's texts (class names, CLIP's 80 ImageNet templates, the world's own template
and the pretraining captions) use 98 of the 49 408 BPE tokens. A full-size
embedding table would be most of the shipped file (4.7 of 7.6 MB in world v2's first
model) and leave no room for the image tower, so ``fdalign-world-tiny`` keeps one row
per token the world uses:

* text is split and encoded by open_clip's own :class:`~open_clip.tokenizer.SimpleTokenizer`
  (the standard CLIP BPE), exactly as for a real CLIP;
* each BPE id is mapped to its row in the compact table: ``0`` padding, ``1`` unknown (any
  BPE token the world never uses), then the world's tokens in BPE-id order, then the start
  and end tokens, so that the end token has the largest id (open_clip pools the text at
  the argmax token, as CLIP does).

Text with words the world never uses (a folder dataset's own class names, say) still
tokenizes, but those words all become the one unknown token, so their prompts cannot be
told apart: the tokenizer warns, naming the texts, instead of failing silently.

The vocabulary is a pure function of the world's texts (:func:`world_bpe_ids`); the
weights' sidecar JSON records it, and ``tests/test_world.py`` checks that the two agree
and that the model's ``vocab_size`` fits.
"""

from __future__ import annotations

import functools
import warnings
from typing import List, Sequence, Tuple, Union

import torch

from .generator import BARE_TEMPLATES, CLASSNAMES, STYLES, WORLD_TEMPLATES

#: Rows of the compact table before the world's tokens.
PAD_ID, UNK_ID = 0, 1
#: Context length of the world's text tower.
CONTEXT_LENGTH = 24


def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def world_texts() -> List[str]:
    """Every text the world produces: templates x class names.

    The styles' templates are CLIP's 80 ImageNet templates (each belongs to one style);
    then the world's own template and the bare captions of pretraining.
    """
    templates = [t for s in STYLES for t in s.templates] + list(WORLD_TEMPLATES) + list(BARE_TEMPLATES)
    templates = list(dict.fromkeys(templates))
    return [t.format(c) for t in templates for c in CLASSNAMES]


@functools.lru_cache(maxsize=1)
def world_bpe_ids() -> Tuple[int, ...]:
    """Sorted CLIP BPE ids of every token in :func:`world_texts` (start/end excluded)."""
    bpe = _bpe()
    ids = set()
    for text in world_texts():
        ids.update(bpe.encode(text))
    return tuple(sorted(ids))


class WorldTokenizer:
    """``list[str] -> LongTensor [B, context_length]`` over the compact world vocabulary.

    Args:
        bpe_ids: the BPE ids that get their own row, in row order (default
            :func:`world_bpe_ids`).
        context_length: tokens per text, start and end included; longer texts are cut
            and keep their end token, as open_clip does.
    """

    def __init__(self, bpe_ids: Sequence[int] = (), context_length: int = CONTEXT_LENGTH):
        self._bpe = _bpe()
        ids = tuple(bpe_ids) or world_bpe_ids()
        self._row = {b: i + 2 for i, b in enumerate(ids)}  # BPE id -> row
        self.vocab_size = len(ids) + 4
        self.sot_token_id = self.vocab_size - 2
        self.eot_token_id = self.vocab_size - 1
        self.context_length = context_length

    def encode(self, text: str) -> List[int]:
        """Rows of ``text``'s BPE tokens (no start/end); tokens outside the world -> ``UNK_ID``."""
        return [self._row.get(b, UNK_ID) for b in self._bpe.encode(text)]

    def __call__(self, texts: Union[str, Sequence[str]], context_length: int = 0) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = torch.full((len(texts), n), PAD_ID, dtype=torch.long)
        unknown = []
        for i, text in enumerate(texts):
            rows = self.encode(text)
            if UNK_ID in rows:
                unknown.append(text)
            tokens = [self.sot_token_id] + rows[: n - 2] + [self.eot_token_id]
            out[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        if unknown:
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            shown = ", ".join(repr(t) for t in unknown[:3]) + more
            warnings.warn(f"the world model's tokenizer knows only the world's words; {shown} contain(s) other words, "
                          f"which all become one unknown token (prompts that differ only there look the same): "
                          f"use a real CLIP for your own classes (--model ViT-B-32 --pretrained <weights>)",
                          UserWarning, stacklevel=2)
        return out
