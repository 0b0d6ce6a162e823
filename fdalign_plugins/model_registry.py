"""The registry of open_clip configs known by name (tiny test models, the embedded world model).

It sits below :mod:`fdalign_plugins.models` so that a model package (e.g.
:mod:`fdalign_plugins.world.model`) can register itself without importing the loader that
imports it. Use it through :func:`fdalign_plugins.models.register_model_config`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

from .errors import ConfigError

__all__ = ["register_model_config", "registered_tokenizer"]

_REGISTERED: Dict[str, Dict[str, Any]] = {}
#: ``{model_name: {tag: weights_path_or_callable}}`` for registered models.
_PRETRAINED: Dict[str, Dict[str, Union[str, Path, Callable[[], Path]]]] = {}
_DEFAULT_TAG: Dict[str, str] = {}
#: ``{model_name: zero-argument tokenizer factory}`` for models whose tokenizer is not open_clip's default.
_TOKENIZER: Dict[str, Callable[[], Callable]] = {}
_CONFIG_DIR: Optional[Path] = None


def register_model_config(
    name: str,
    config: Mapping[str, Any],
    pretrained: Optional[Mapping[str, Any]] = None,
    default_pretrained: Optional[str] = None,
    tokenizer: Optional[Callable[[], Callable]] = None,
) -> None:
    """Register an open_clip architecture config under ``name``.

    Args:
        name: model name, usable wherever an open_clip model name is accepted.
        config: open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``).
        pretrained: optional ``{tag: path}`` of local weights files (or zero-argument
            callables returning the path, so that packaged weights resolve lazily).
        default_pretrained: the tag :func:`~fdalign_plugins.models.load_clip` uses when none is given.
        tokenizer: optional zero-argument factory of the model's tokenizer
            (``list[str] -> LongTensor [B, L]``); default: ``open_clip.get_tokenizer(name)``.
    """
    global _CONFIG_DIR
    import open_clip

    if not all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ConfigError(f"model config {name!r} needs embed_dim, vision_cfg and text_cfg")
    if _CONFIG_DIR is None:
        _CONFIG_DIR = Path(tempfile.mkdtemp(prefix="fdalign_model_cfgs_"))
    (_CONFIG_DIR / f"{name}.json").write_text(json.dumps(dict(config)))
    open_clip.add_model_config(_CONFIG_DIR)
    _REGISTERED[name] = dict(config)
    if pretrained:
        _PRETRAINED.setdefault(name, {}).update(pretrained)
    if default_pretrained:
        _DEFAULT_TAG[name] = default_pretrained
    if tokenizer is not None:
        _TOKENIZER[name] = tokenizer


def registered_tokenizer(name: str) -> Optional[Callable]:
    """A new instance of the tokenizer registered for ``name``, or ``None`` (use open_clip's)."""
    factory = _TOKENIZER.get(name)
    return factory() if factory is not None else None
