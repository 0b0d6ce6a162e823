"""The tiny open_clip model of the synthetic world, and its packaged weights.

``fdalign-world-tiny`` is a CLIP with a small ModifiedResNet image tower (CLIP's RN
architecture: 3-conv stem, one bottleneck block per stage, attention pooling; 32 px
input, width 16) and a 3-layer text transformer of width 48 over CLIP's BPE restricted to
the world's vocabulary (:mod:`~fdalign_plugins.world.tokenizer`: 102 rows instead of
49 408, context 24), joint embedding 128. A ResNet rather than a ViT
because a ViT trained from scratch on this little data, on CPU, barely learns (see
``docs/world.md``). The packaged weights
(``world/weights/fdalign-world-tiny.safetensors``, fp16 on disk, fp32 once loaded) come
from ``tools/world_pretrain.py`` with seed 0 (the builder lives outside the runtime
package).

:func:`register` makes the model loadable by name::

    from fdalign_plugins.models import load_clip
    bundle = load_clip("fdalign-world-tiny", "world")   # offline, well under 2 s
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict

from .generator import CLASSNAMES, WORLD_TEMPLATES  # noqa: F401  (re-exported)

WORLD_MODEL_NAME = "fdalign-world-tiny"
WORLD_PRETRAINED_TAG = "world"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / f"{WORLD_MODEL_NAME}.safetensors"
METADATA_FILE = WEIGHTS_DIR / f"{WORLD_MODEL_NAME}.json"

#: open_clip architecture config of the world model.
WORLD_MODEL_CONFIG: Dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": 32,
        "layers": [1, 1, 1, 1],
        "width": 16,
    },
    "text_cfg": {
        "context_length": 24,
        "vocab_size": 102,  # world/tokenizer.py's compact vocabulary (a test checks it)
        "width": 48,
        "heads": 4,
        "layers": 3,
    },
}


def model_config() -> Dict[str, Any]:
    """A deep copy of :data:`WORLD_MODEL_CONFIG`."""
    return copy.deepcopy(WORLD_MODEL_CONFIG)


def weights_path() -> Path:
    """Path of the packaged weights file (it may be missing in a source checkout)."""
    return WEIGHTS_FILE


def register() -> None:
    """Register ``fdalign-world-tiny`` with pretrained tag ``world`` (the packaged weights)."""
    from ..model_registry import register_model_config

    from .tokenizer import WorldTokenizer

    register_model_config(WORLD_MODEL_NAME, model_config(), pretrained={WORLD_PRETRAINED_TAG: weights_path},
                          default_pretrained=WORLD_PRETRAINED_TAG, tokenizer=WorldTokenizer)
