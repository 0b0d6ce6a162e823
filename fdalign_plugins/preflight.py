"""Checks that run before any model is loaded or any image is read.

Every name (dataset, adapter, model, pretrained tag), every adapter hyper-parameter,
every input file and every output folder is checked here, in about a second, so a typo
never costs a model load, a feature pass or an epoch of training. Each check raises a
:class:`~fdalign_plugins.errors.FDAlignError` subclass whose message names the problem
and the fix.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Union

from .config import check_adapter_params, check_dataset_source  # noqa: F401  (their home is config; re-exported)
from .errors import CheckpointError, ConfigError

#: Output folders this process created while checking them; removed again (when still
#: empty) if the command then fails, so a rejected command leaves nothing behind.
_created: List[Path] = []


def check_model_source(model: str, pretrained: Optional[str]) -> None:
    """The model name, pretrained tag or weights file resolve, without loading anything.

    A real open_clip architecture (``ViT-B-32``, ...) with no ``pretrained`` would run on
    random weights and print a table of chance: that is an error unless ``--pretrained
    none`` says random weights are wanted. Models registered with default weights (the
    embedded world model) need no tag.

    Raises:
        ConfigError: unknown model or tag, or a real model without ``--pretrained``.
        CheckpointError: a weights file that does not exist, or hub weights while
            downloads are disabled.
    """
    from . import models

    if pretrained is not None and pretrained.lower() == "none":
        models._resolve_source(model, None)
        return
    if pretrained is None:
        models._ensure_builtin_models()
        is_dir = model.startswith("local-dir:") or Path(model).is_dir()
        if not is_dir and model not in models._DEFAULT_TAG and model not in models._REGISTERED:
            models._resolve_source(model, None)  # unknown names get their own message first
            raise ConfigError(
                f"model {model!r} has no default weights: pass --pretrained TAG (e.g. openai) or a local weights file, "
                "or --pretrained none to run on random weights on purpose"
            )
        pretrained = models._DEFAULT_TAG.get(model)
    _, src = models._resolve_source(model, pretrained)
    models._check_fetchable(model, pretrained, src)  # offline and a hub tag: say so now, not after the data


def check_encoder_file(path: Union[str, Path]) -> Path:
    """An FD-Align checkpoint (file, sidecar or folder) exists and its header reads.

    Reads the safetensors header only (no tensors): a second, not a model load.

    Returns:
        The weights file.

    Raises:
        CheckpointError: missing, unreadable or not a safetensors file.
    """
    from .checkpoint import _paths

    weights, _ = _paths(path)
    if not weights.is_file():
        raise CheckpointError(f"encoder checkpoint not found: {weights} "
                              "(pass the encoder.safetensors file or its folder)")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            fh.keys()
    except PermissionError:
        raise CheckpointError(f"encoder checkpoint {weights} is not readable (permission denied)") from None
    except Exception as exc:
        raise CheckpointError(f"encoder checkpoint {weights} is not a readable safetensors file "
                              f"({type(exc).__name__}: {str(exc)[:120]})") from None
    return weights


def check_output_folder(path: Union[str, Path], flag: str = "--out") -> Path:
    """``path`` is (or can be created as) a folder this process can write to.

    Creates the folder and writes and removes a probe file: the only test that also
    holds for root and for special file systems (``/proc``).

    Raises:
        ConfigError: an existing file, a path under a file, or a folder that cannot be
            created or written; the message names ``flag``.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p} is an existing file, not a folder; choose another {flag}")
    missing = [q for q in [p, *p.parents] if not q.exists()]
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{flag} {p} is not a writable folder ({exc.strerror or exc}); "
                          f"choose another {flag}") from None
    _created.extend(missing)  # innermost first
    return p


def remove_created_folders() -> None:
    """Remove the folders :func:`check_output_folder` created that are still empty."""
    while _created:
        p = _created.pop(0)
        try:
            p.rmdir()  # only succeeds when empty
        except OSError:
            pass


def forget_created_folders() -> None:
    """Keep the created folders (the command got far enough to use them)."""
    _created.clear()


def names_not_run(params: Mapping[str, Any], adapters: Iterable[str]) -> List[str]:
    """Adapters that have ``adapter_params`` but are not part of this run (said on screen)."""
    run = set(adapters)
    return [n for n in params if n not in run]
