"""Loading CLIP models through open_clip.

One function, :func:`load_clip`, returns the model, its train / eval transforms and its
tokenizer, from any of four sources:

* a hub model name plus pretrained tag (``ViT-B-32`` + ``openai``): the normal online
  path; offline it fails fast and says how to pass a local file instead;
* a model name plus a local checkpoint file (``--pretrained /path/to/weights.bin``);
* a local model directory holding ``open_clip_config.json`` and weights
  (``local-dir:/path`` or just the directory path as the model name);
* a config registered with :func:`register_model_config` (the tiny test models and the
  embedded world model), optionally with packaged weights registered under a tag.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torchvision import transforms as T

from .config import DEFAULT_MODEL, DEFAULT_PRETRAINED  # noqa: F401  (their home is config; re-exported here)
from .errors import CheckpointError, ConfigError, FDAlignError
# The registry lives one layer down so that the world model can register itself without importing
# this module (which imports the world model for the default); re-exported here, its public home.
from .model_registry import (  # noqa: F401
    _DEFAULT_TAG,
    _PRETRAINED,
    _REGISTERED,
    register_model_config,
    registered_tokenizer,
)


def _ensure_builtin_models() -> None:
    """Register the packaged world model (imported lazily: it needs no network)."""
    if DEFAULT_MODEL not in _REGISTERED:
        try:
            from .world import model as world_model
        except ImportError:  # world package not present in a stripped install
            return
        world_model.register()


@dataclass
class ClipBundle:
    """A loaded CLIP model with everything needed to use it.

    Attributes:
        model: the open_clip model (eval mode, on ``device``).
        tokenizer: callable ``list[str] -> LongTensor [B, L]``.
        eval_transform: PIL image -> tensor ``[3, S, S]`` (resize + center crop).
        image_size: input resolution ``S``.
        mean / std: normalisation constants of the model.
        model_name / pretrained: the source, as recorded in checkpoints and results.
    """

    model: nn.Module
    tokenizer: Callable[..., torch.Tensor]
    eval_transform: Callable[[Any], torch.Tensor]
    image_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    model_name: str
    pretrained: Optional[str]

    def train_transform(self, scale: Tuple[float, float] = (0.08, 1.0),
                        flip: bool = False) -> Callable[[Any], torch.Tensor]:
        """Training augmentation: RandomResizedCrop(S, scale, bicubic) [+ horizontal flip]."""
        return make_train_transform(self.image_size, self.mean, self.std, scale=scale, flip=flip)

    @property
    def logit_scale(self) -> float:
        """CLIP's temperature ``τ = exp(logit_scale)`` as a float."""
        return float(self.model.logit_scale.detach().exp().item())


def make_eval_transform(size: int, mean, std) -> Callable[[Any], torch.Tensor]:
    """Resize(size, bicubic) + CenterCrop(size) + normalise (the CLIP test transform).

    The returned transform carries ``fdalign_eval = (size, mean, std)`` so that images
    already stored at ``size`` can be converted in one vectorised step (see
    :mod:`fdalign_plugins.features`); resizing and cropping are then the identity.
    """
    t = T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
    t.fdalign_eval = (int(size), tuple(mean), tuple(std))  # type: ignore[attr-defined]
    return t


def make_train_transform(size: int, mean, std, scale=(0.08, 1.0), flip: bool = False) -> Callable[[Any], torch.Tensor]:
    """RandomResizedCrop(size, scale, bicubic) [+ flip] + normalise."""
    ops = [T.RandomResizedCrop(size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC)]
    if flip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def list_models() -> list:
    """Every model name load_clip accepts without a path (open_clip's and ours)."""
    import open_clip

    _ensure_builtin_models()
    return sorted(set(open_clip.list_models()) | set(_REGISTERED))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "FDALIGN_OFFLINE", "0"
    ).lower() in ("1", "true", "yes")


def _resolve_source(model: str, pretrained: Optional[str]) -> Tuple[str, Optional[str]]:
    """Map (model, pretrained) to what open_clip's create_model needs, or raise clearly."""
    import open_clip

    if model.startswith("local-dir:") or Path(model).is_dir():
        path = Path(model[len("local-dir:"):] if model.startswith("local-dir:") else model)
        if not (path / "open_clip_config.json").is_file():
            raise CheckpointError(
                f"model directory {path} has no open_clip_config.json; a local model directory needs "
                "open_clip_config.json plus a weights file (open_clip_model.safetensors or open_clip_pytorch_model.bin)"
            )
        return f"local-dir:{path}", None
    _ensure_builtin_models()
    if model not in open_clip.list_models() and model not in _REGISTERED:
        raise ConfigError(
            f"unknown model {model!r}; pass an open_clip model name (see `python -c \"import open_clip; "
            f"print(open_clip.list_models())\"`), a local model directory, or {DEFAULT_MODEL!r}"
        )
    if pretrained is None or pretrained == "":
        return model, None
    if model in _PRETRAINED and pretrained in _PRETRAINED[model]:
        src = _PRETRAINED[model][pretrained]
        path = Path(src() if callable(src) else src)
        if not path.is_file():
            raise CheckpointError(f"packaged weights for {model}/{pretrained} are missing: {path}")
        return model, str(path)
    if Path(pretrained).expanduser().exists() or os.sep in pretrained or pretrained.endswith(
        (".pt", ".pth", ".bin", ".safetensors")
    ):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise CheckpointError(f"pretrained weights file not found: {path}")
        return model, str(path)
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        valid = ", ".join(tags + sorted(_PRETRAINED.get(model, {}))) or "(none)"
        raise ConfigError(f"unknown pretrained tag {pretrained!r} for {model}; valid tags: {valid}, "
                          "or a local weights file")
    return model, pretrained


def _check_fetchable(model: str, pretrained: Optional[str], src: Optional[str]) -> bool:
    """Whether ``src`` is a hub tag to download; raise :class:`CheckpointError` if downloads are off."""
    is_hub_tag = src is not None and not Path(src).is_file()
    if is_hub_tag and _offline():
        raise CheckpointError(
            f"cannot fetch pretrained weights {model}/{pretrained}: hub downloads are disabled (HF_HUB_OFFLINE=1). "
            f"Download the weights on a machine with internet and pass the file: "
            f"--model {model} --pretrained /path/to/weights"
        )
    return is_hub_tag


def load_clip(
    model: str = DEFAULT_MODEL,
    pretrained: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    cache_dir: Optional[str] = None,
) -> ClipBundle:
    """Load a CLIP model with its transforms and tokenizer.

    Args:
        model: open_clip model name, registered config name, ``local-dir:PATH`` or a
            directory path.
        pretrained: open_clip pretrained tag, a local weights file (``.bin``, ``.pt``,
            ``.safetensors``) or a tag registered with :func:`register_model_config`;
            ``None`` takes the model's registered default tag (``world`` for the
            embedded model), ``"none"`` means random initialisation. Ignored for model
            directories.
        device: where to put the model.
        cache_dir: open_clip's download cache.

    Returns:
        A :class:`ClipBundle`; the model is in eval mode.

    Raises:
        ConfigError: unknown model name or pretrained tag.
        CheckpointError: missing or incompatible local weights, or hub weights that
            cannot be fetched (offline).
    """
    import open_clip

    _ensure_builtin_models()
    if pretrained is None:
        pretrained = _DEFAULT_TAG.get(model)
    elif pretrained.lower() == "none":
        pretrained = None
    name, src = _resolve_source(model, pretrained)
    is_hub_tag = _check_fetchable(model, pretrained, src)
    try:
        # random initialisation (no weights) is seeded so that runs stay reproducible,
        # without touching the caller's RNG state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net, _, _ = open_clip.create_model_and_transforms(name, pretrained=src, device=device, cache_dir=cache_dir)
    except FDAlignError:
        raise
    except RuntimeError as exc:
        msg = str(exc)
        if "size mismatch" in msg or "Missing key" in msg or "Unexpected key" in msg:
            raise CheckpointError(
                f"weights {src} do not fit architecture {model}: {msg.splitlines()[0][:300]}"
            ) from None
        if is_hub_tag:
            raise CheckpointError(
                f"cannot fetch pretrained weights {model}/{pretrained} ({msg.splitlines()[0][:200]}); "
                f"pass a local file instead: --pretrained /path/to/weights"
            ) from None
        raise
    except (OSError, ValueError) as exc:
        if is_hub_tag:
            raise CheckpointError(
                f"cannot fetch pretrained weights {model}/{pretrained} ({type(exc).__name__}: {str(exc)[:200]}); "
                f"pass a local file instead: --pretrained /path/to/weights"
            ) from None
        raise CheckpointError(f"cannot load model {model} from {src}: {type(exc).__name__}: {str(exc)[:300]}") from None
    except Exception as exc:  # pickle / safetensors header errors on corrupt files
        if src is not None and Path(src).is_file():
            raise CheckpointError(f"cannot read weights file {src}: {type(exc).__name__}: {str(exc)[:300]}") from None
        raise
    net.eval()
    pcfg = getattr(net.visual, "preprocess_cfg", {}) or {}
    size = pcfg.get("size", getattr(net.visual, "image_size", 224))
    if isinstance(size, (tuple, list)):
        size = size[0]
    mean = tuple(pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pcfg.get("std", open_clip.OPENAI_DATASET_STD))
    tokenizer = registered_tokenizer(name) or open_clip.get_tokenizer(name)
    return ClipBundle(
        model=net,
        tokenizer=tokenizer,
        eval_transform=make_eval_transform(int(size), mean, std),
        image_size=int(size),
        mean=mean,
        std=std,
        model_name=model,
        pretrained=pretrained,
    )


def state_fingerprint(module: nn.Module, exclude: Sequence[str] = ()) -> str:
    """SHA-256 (first 16 hex digits) over a module's parameters and buffers, by name.

    Used to key feature caches: any change to the weights changes the fingerprint.

    Args:
        module: the module.
        exclude: state-dict key prefixes left out (e.g. ``("visual.",)`` for the text side).
    """
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        if exclude and key.startswith(tuple(exclude)):
            continue
        t = tensor.detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
