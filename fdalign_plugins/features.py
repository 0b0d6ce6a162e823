"""Feature extraction with an on-disk cache keyed by everything that changes the content.

A cache entry is the raw image features ``[N, D]`` of one split under one encoder and
one transform: the key hashes the encoder's weight fingerprint, the split's identity
(dataset, file list or array bytes, labels), the transform description, the view index
and the seed. Entries are safetensors files carrying a SHA-256 of their tensor bytes,
verified on every read; a corrupt entry is recomputed with a warning.

Preprocessed image tensors (the transform's output) are also kept in memory, shared
between encoders, when they fit a budget: the second encoder's extraction is then a
bare forward pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import atomic_write_bytes
from .datasets.base import ImageSplit
from .trainer import SplitDataset

CACHE_VERSION = 1


def transform_key(transform: Callable) -> str:
    """A stable description of a torchvision transform (its repr)."""
    return repr(transform)


@dataclass
class CacheStats:
    """Counters a test can assert on: hits, misses (computed), corrupt entries."""

    hits: int = 0
    computed: int = 0
    corrupt: int = 0
    images_encoded: int = 0
    seconds_encoding: float = 0.0


class FeatureCache:
    """Raw image features on disk, one safetensors file per (encoder, split, transform, view, seed).

    Args:
        root: cache folder.
        memory_budget_bytes: preprocessed images kept in memory up to this size.
        batch_size / workers / device: extraction settings.
    """

    def __init__(self, root: Path, batch_size: int = 256, workers: int = 0, device: Optional[torch.device] = None,
                 memory_budget_bytes: int = 2 * 1024**3, progress: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.batch_size = batch_size
        self.workers = workers
        self.device = device or torch.device("cpu")
        self.budget = memory_budget_bytes
        self.progress = progress
        self.stats = CacheStats()
        self._images: Dict[str, torch.Tensor] = {}
        self._used = 0

    @staticmethod
    def key(encoder_fp: str, split: ImageSplit, tkey: str, view: Optional[int], seed: Optional[int]) -> str:
        h = hashlib.sha256(json.dumps(
            {"v": CACHE_VERSION, "enc": encoder_fp, "split": split.identity(), "tf": tkey, "view": view, "seed": seed},
            sort_keys=True).encode())
        return h.hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def _read(self, key: str) -> Optional[torch.Tensor]:
        from safetensors import safe_open

        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                feats = fh.get_tensor("features")
            digest = hashlib.sha256(feats.contiguous().numpy().tobytes()).hexdigest()
            if meta.get("sha256") != digest or meta.get("key") != key:
                raise ValueError("checksum mismatch")
            return feats
        except Exception as exc:
            self.stats.corrupt += 1
            warnings.warn(f"feature cache entry {path} is corrupt ({type(exc).__name__}: {str(exc)[:80]}); recomputing",
                          stacklevel=3)
            return None

    def _write(self, key: str, feats: torch.Tensor) -> None:
        from safetensors.torch import save

        feats = feats.contiguous()
        digest = hashlib.sha256(feats.numpy().tobytes()).hexdigest()
        atomic_write_bytes(self._path(key), save({"features": feats}, metadata={"sha256": digest, "key": key}))

    def preprocessed(self, split: ImageSplit, transform: Callable, tkey: str, seed: Optional[int]) -> Optional[torch.Tensor]:
        """The split's images after ``transform`` as one tensor, memoised within budget.

        ``seed`` (for random transforms) seeds torch before the pass, so the same
        (split, transform, seed) gives the same augmented images for every encoder.
        """
        mkey = f"{split.identity()}|{tkey}|{seed}"
        if mkey in self._images:
            return self._images[mkey]
        if seed is not None:
            torch.manual_seed(seed)
        first = transform(split.load(0)) if len(split) else None
        if first is None:
            return None
        need = first.numel() * first.element_size() * len(split)
        if self._used + need > self.budget:
            return None
        if seed is not None:
            torch.manual_seed(seed)
        imgs = torch.stack([transform(split.load(i)) for i in range(len(split))])
        self._images[mkey] = imgs
        self._used += need
        return imgs

    @torch.no_grad()
    def features(self, visual: nn.Module, encoder_fp: str, split: ImageSplit, transform: Callable,
                 view: Optional[int] = None, seed: Optional[int] = None, desc: str = "") -> torch.Tensor:
        """Raw features ``[N, D]`` of ``split`` (from the cache when present).

        Args:
            visual: the image encoder.
            encoder_fp: its weights fingerprint (part of the key).
            split: the images.
            transform: image -> tensor; random transforms need ``seed``.
            view: augmented-view index (part of the key), ``None`` for the test transform.
            seed: RNG seed for a random transform.
            desc: progress-bar label.
        """
        tkey = transform_key(transform)
        key = self.key(encoder_fp, split, tkey, view, seed)
        got = self._read(key)
        if got is not None:
            self.stats.hits += 1
            return got
        import time

        from tqdm.auto import tqdm

        t0 = time.time()
        was = visual.training
        visual.eval()
        imgs = self.preprocessed(split, transform, tkey, seed)
        out = []
        if imgs is not None:
            it = range(0, len(imgs), self.batch_size)
            for i in tqdm(it, desc=desc or "features", disable=not self.progress, leave=False):
                out.append(visual(imgs[i:i + self.batch_size].to(self.device)).float().cpu())
        else:
            if seed is not None:
                torch.manual_seed(seed)
            loader = DataLoader(SplitDataset(split, transform), batch_size=self.batch_size, shuffle=False,
                                num_workers=self.workers, pin_memory=self.device.type == "cuda")
            for x, _ in tqdm(loader, desc=desc or "features", disable=not self.progress, leave=False):
                out.append(visual(x.to(self.device, non_blocking=True)).float().cpu())
        visual.train(was)
        feats = torch.cat(out) if out else torch.zeros(0, 0)
        self._write(key, feats)
        self.stats.computed += 1
        self.stats.images_encoded += len(split)
        self.stats.seconds_encoding += time.time() - t0
        return feats
