"""FD-Align encoder checkpoints: safetensors weights + a JSON sidecar.

``<stem>.safetensors`` holds the image encoder's state dict (keys as in
``model.visual.state_dict()``); ``<stem>.json`` records where it came from (model name,
pretrained source, dataset, shots, seed, resolved config, SPC choice, package version,
training curve). Nothing is ever unpickled: weights go through safetensors, training
state through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from . import __version__
from .errors import CheckpointError, FDAlignError

FORMAT = "fdalign-encoder"
FORMAT_VERSION = 1
WEIGHTS_NAME = "encoder.safetensors"


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + rename).

    The file gets the mode a plain ``open(path, "w")`` would give (``0o666`` less the
    umask), not ``mkstemp``'s private ``0o600``: tables and encoders on a shared disk are
    readable by colleagues exactly when the user's umask says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FDAlignError(
                f"disk full while writing {path} ({exc.strerror}); the previous version of the file is intact — "
                "free some space and re-run the same command to continue"
            ) from None
        raise


def atomic_write_json(path: Union[str, Path], obj: Any) -> None:
    """Write JSON atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` atomically (for training state of tensors, numbers and dicts only)."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _paths(path: Union[str, Path]) -> Tuple[Path, Path]:
    """Weights and sidecar paths from a checkpoint file, its sidecar, or its folder."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_NAME
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    return p, p.with_suffix(".json")


def save_encoder(
    visual: nn.Module,
    path: Union[str, Path],
    metadata: Mapping[str, Any],
    extra_tensors: Optional[Mapping[str, torch.Tensor]] = None,
) -> Path:
    """Save an image encoder as safetensors plus a JSON sidecar, atomically.

    Args:
        visual: the image encoder (``model.visual``).
        path: target ``.safetensors`` file, or a folder (then ``encoder.safetensors``).
        metadata: sidecar content (model, pretrained, dataset, config, ...).
        extra_tensors: extra tensors stored under ``extra.<name>`` (e.g. a linear head).

    Returns:
        The weights path.
    """
    from safetensors.torch import save

    weights, sidecar = _paths(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in visual.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v.detach().to("cpu").contiguous()
    meta = dict(metadata)
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, package_version=__version__)
    meta["weights_file"] = weights.name
    meta["shapes"] = {k: list(v.shape) for k, v in tensors.items() if not k.startswith("extra.")}
    atomic_write_bytes(weights, save(tensors, metadata={"format": FORMAT}))
    atomic_write_json(sidecar, meta)
    return weights


def read_encoder(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read an encoder checkpoint's tensors and sidecar, validating the format.

    Raises:
        CheckpointError: missing file, not a safetensors file, not written by
            fdalign-plugins, or truncated.
    """
    from safetensors import safe_open

    weights, sidecar = _paths(path)
    if not weights.is_file():
        raise CheckpointError(f"encoder checkpoint not found: {weights}")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # SafetensorError / OSError on truncated or foreign files
        raise CheckpointError(
            f"{weights} is not a readable safetensors file ({type(exc).__name__}: {str(exc)[:120]}); "
            "FD-Align encoders are written by fdalign-finetune as encoder.safetensors + encoder.json"
        ) from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{weights} is a safetensors file but not an FD-Align encoder (no '{FORMAT}' header)")
    meta: Dict[str, Any] = {}
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"sidecar {sidecar} is not valid JSON: {exc}") from None
    return tensors, meta


def load_encoder_into(model: nn.Module, path: Union[str, Path]) -> Dict[str, Any]:
    """Load an FD-Align encoder checkpoint into ``model.visual``, checking the architecture.

    Args:
        model: a CLIP model with the same image-encoder architecture.
        path: the ``.safetensors`` file, its ``.json`` sidecar, or their folder.

    Returns:
        The sidecar metadata.

    Raises:
        CheckpointError: if the file is not ours or its shapes do not fit ``model``.
    """
    tensors, meta = read_encoder(path)
    state = {k: v for k, v in tensors.items() if not k.startswith("extra.")}
    own = model.visual.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        src = meta.get("model", "unknown model")
        detail = []
        if wrong:
            k = wrong[0]
            detail.append(f"{len(wrong)} shape mismatch(es), e.g. {k}: checkpoint {tuple(state[k].shape)} "
                          f"vs model {tuple(own[k].shape)}")
        if missing:
            detail.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise CheckpointError(
            f"encoder checkpoint {Path(path)} was made for {src} and does not fit this model's image encoder "
            f"({'; '.join(detail)}); load it with --model {src}"
        )
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k].to(dtype=v.dtype, device=v.device))
    return meta
