"""The synthetic style-shift world: the project's embedded laboratory.

A procedurally generated image world whose classes are *causal* content (shapes,
symbols, letters, digits) and whose rendering styles are *spurious* context (photo,
dark photo, painting, sketch, ...), plus a tiny open_clip model pretrained on captioned
images of it and shipped as package data. It is the default dataset and model of
``fdalign-bench`` and ``fdalign-finetune``.

* :mod:`~fdalign_plugins.world.generator`: classes, styles, nuisance, rendering.
* :mod:`~fdalign_plugins.world.dataset`: :func:`build_world_dataset` (cached splits).
* :mod:`~fdalign_plugins.world.model`: the ``fdalign-world-tiny`` config and weights.
* ``tools/world_pretrain.py`` (outside the package): the caption corpus and the
  contrastive pretraining that built the shipped weights.

The names below are re-exported lazily; nothing heavy is imported with the package.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "build_world_dataset": "dataset", "default_cache_dir": "dataset",
    "CLASSNAMES": "generator", "CONFUSABLE_PAIRS": "generator", "CONTEXT_PROB": "generator",
    "GENERATOR_VERSION": "generator", "ID_STYLES": "generator", "preferred_context": "generator",
    "PREFERRED_CONTEXTS": "generator", "SHARED_CONTEXT_PAIRS": "generator",
    "IMAGE_SIZE": "generator", "SKETCH_STYLES": "generator", "STYLE_NAMES": "generator", "STYLES": "generator",
    "WORLD_TEMPLATES": "generator", "render_image": "generator",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy, so that ``python -m fdalign_plugins.world.generator`` does not import the
    # module twice, and importing the package stays cheap.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
