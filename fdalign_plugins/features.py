"""Feature extraction with an on-disk cache keyed by everything that changes the content.

A cache entry is the raw image features ``[N, D]`` of one split under one encoder and
one transform: the key hashes the encoder's weight fingerprint, the split's identity
(dataset, file list or array bytes, labels), the transform description, the view index
and the seed. Entries are safetensors files carrying a SHA-256 of their tensor bytes,
verified on every read; a corrupt entry is recomputed with a warning.

Random transforms (augmented views) are seeded per image from ``(seed, image index)``,
so a feature does not depend on which process encoded it or in which slice.

Long extractions are resumable: a split larger than ``chunk_size`` images is encoded in
chunks, each written as its own entry (keyed by the split entry's key plus the index
range) as soon as it is done; a killed extraction restarts at the first missing chunk.
Once all chunks are there the assembled ``[N, D]`` entry is written and the chunk
entries are removed.

Under ``torchrun`` (see :mod:`fdalign_plugins.distributed`) each rank encodes its
contiguous slice of every missing chunk; the pieces are gathered, rank 0 writes the
entries, and every caller gets the full tensor. Rank 0 alone decides what is cached, so
the cache folder need not be shared between nodes.

Preprocessed image tensors (the transform's output) are also kept in memory, shared
between encoders, when they fit a budget: the second encoder's extraction is then a
bare forward pass.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from . import distributed as dist_utils
from .checkpoint import atomic_write_bytes
from .datasets.base import ImageSplit, SubsetSplit
from .progress import progress_bar
from .store import touch
from .trainer import SplitDataset

#: Version 2: random transforms seeded per image (version 1 seeded once per split).
CACHE_VERSION = 2

#: Default images per resumable extraction chunk.
DEFAULT_CHUNK_SIZE = 8192


def transform_key(transform: Callable) -> str:
    """A stable description of a torchvision transform (its repr)."""
    return repr(transform)


def vectorised_eval(split: ImageSplit, transform: Callable, lo: int, hi: int) -> Optional[torch.Tensor]:
    """The eval transform of images ``[lo, hi)`` in one tensor operation, when it is exact.

    Applies when ``transform`` was made by :func:`fdalign_plugins.models.make_eval_transform`
    and the split holds uint8 arrays already at that size (the synthetic world): resize
    and centre crop are then the identity, and ``ToTensor`` + ``Normalize`` are done on
    the whole batch at once, with the same float operations. Returns ``None`` otherwise.
    """
    spec = getattr(transform, "fdalign_eval", None)
    base, idx = split, None
    if isinstance(split, SubsetSplit):
        base, idx = split.base, split.indices
    arr = getattr(base, "images", None)
    if spec is None or not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 4:
        return None
    size, mean, std = spec
    if arr.shape[1] != size or arr.shape[2] != size or arr.shape[3] != 3:
        return None
    rows = arr[lo:hi] if idx is None else arr[idx[lo:hi]]
    x = torch.from_numpy(np.ascontiguousarray(rows)).permute(0, 3, 1, 2).to(torch.get_default_dtype()).div(255)
    m = torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s).contiguous()  # [hi - lo, 3, size, size]


@dataclass
class CacheStats:
    """Counters a test can assert on.

    Attributes:
        hits: :meth:`FeatureCache.features` calls answered by a finished entry.
        computed: calls that had to encode at least one chunk.
        corrupt: entries that failed their checksum (and were recomputed).
        chunks_computed: chunks encoded (a split within ``chunk_size`` is one chunk).
        chunks_cached: chunks taken from an earlier, interrupted extraction.
        images_encoded: images this process passed through the encoder.
        seconds_encoding: wall time of the computing calls.
    """

    hits: int = 0
    computed: int = 0
    corrupt: int = 0
    chunks_computed: int = 0
    chunks_cached: int = 0
    images_encoded: int = 0
    seconds_encoding: float = 0.0


class FeatureCache:
    """Raw image features on disk, one safetensors file per (encoder, split, transform, view, seed).

    Args:
        root: cache folder.
        batch_size: images per encoder forward pass.
        workers: data-loading workers when images are not held in memory.
        device: where the encoder runs (default CPU).
        memory_budget_bytes: preprocessed images kept in memory up to this size.
        progress: ``True`` a progress bar, ``"plain"`` progress lines (off a terminal),
            ``False`` nothing (rank 0 only).
        chunk_size: images per resumable chunk; splits up to this size are one entry.
    """

    def __init__(self, root: Path, batch_size: int = 256, workers: int = 0, device: Optional[torch.device] = None,
                 memory_budget_bytes: int = 2 * 1024**3, progress: Union[bool, str] = False,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
        if int(chunk_size) <= 0:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.batch_size = batch_size
        self.workers = workers
        self.device = device or torch.device("cpu")
        self.budget = memory_budget_bytes
        self.progress = progress
        self.chunk_size = int(chunk_size)
        self.stats = CacheStats()
        self._images: Dict[str, torch.Tensor] = {}
        self._used = 0

    @staticmethod
    def key(encoder_fp: str, split: ImageSplit, tkey: str, view: Optional[int], seed: Optional[int]) -> str:
        """The entry key of a whole split's features."""
        h = hashlib.sha256(json.dumps(
            {"v": CACHE_VERSION, "enc": encoder_fp, "split": split.identity(), "tf": tkey, "view": view, "seed": seed},
            sort_keys=True).encode())
        return h.hexdigest()[:32]

    @staticmethod
    def chunk_key(key: str, lo: int, hi: int) -> str:
        """The entry key of images ``[lo, hi)`` of the split whose entry key is ``key``."""
        return hashlib.sha256(f"{key}|chunk|{int(lo)}:{int(hi)}".encode()).hexdigest()[:32]

    def chunk_ranges(self, n: int) -> List[Tuple[int, int]]:
        """The ``[lo, hi)`` index ranges a split of ``n`` images is extracted in."""
        return [(lo, min(n, lo + self.chunk_size)) for lo in range(0, n, self.chunk_size)]

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
            touch(path)  # last use, for pruning the shared store
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

    def preprocessed(self, split: ImageSplit, transform: Callable, tkey: str, seed: Optional[int],
                     lo: int = 0, hi: Optional[int] = None) -> Optional[torch.Tensor]:
        """Images ``[lo, hi)`` of the split after ``transform``, as one tensor, memoised within budget.

        With ``seed`` (random transforms) image ``i`` is transformed under
        ``sample_seed(seed, i)``, so the same (split, transform, seed) gives the same
        augmented images for every encoder, slice and process.

        Returns:
            ``[hi - lo, C, H, W]``, or ``None`` when it would not fit the budget.
        """
        hi = len(split) if hi is None else hi
        mkey = f"{split.identity()}|{tkey}|{seed}|{lo}:{hi}"
        if mkey in self._images:
            return self._images[mkey]
        if hi <= lo:
            return None
        fast = vectorised_eval(split, transform, lo, hi) if seed is None else None
        if fast is not None:
            need = fast.numel() * fast.element_size()
            if self._used + need <= self.budget:
                self._images[mkey] = fast
                self._used += need
            return fast
        ds = SplitDataset(split, transform, seed=seed, indices=range(lo, hi))
        first = ds[0][0]
        need = first.numel() * first.element_size() * len(ds)
        if self._used + need > self.budget:
            return None
        imgs = torch.stack([first] + [ds[j][0] for j in range(1, len(ds))])  # [hi - lo, C, H, W]
        self._images[mkey] = imgs
        self._used += need
        return imgs

    def _encode(self, visual: nn.Module, split: ImageSplit, transform: Callable, tkey: str, seed: Optional[int],
                lo: int, hi: int, bar: Any) -> torch.Tensor:
        """Features ``[hi - lo, D]`` of images ``[lo, hi)`` (``[0]`` when the range is empty)."""
        if hi <= lo:
            return torch.zeros(0)
        imgs = self.preprocessed(split, transform, tkey, seed, lo, hi)
        out = []
        if imgs is not None:
            for i in range(0, len(imgs), self.batch_size):
                out.append(visual(imgs[i:i + self.batch_size].to(self.device)).float().cpu())
                bar.update(len(out[-1]))
        else:
            loader = DataLoader(SplitDataset(split, transform, seed=seed, indices=range(lo, hi)),
                                batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
                                pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(0))
            for x, _ in loader:
                out.append(visual(x.to(self.device, non_blocking=True)).float().cpu())
                bar.update(len(out[-1]))
        self.stats.images_encoded += hi - lo
        return torch.cat(out)

    @torch.no_grad()
    def features(self, visual: nn.Module, encoder_fp: str, split: ImageSplit, transform: Callable,
                 view: Optional[int] = None, seed: Optional[int] = None, desc: str = "") -> torch.Tensor:
        """Raw features ``[N, D]`` of ``split`` (from the cache when present).

        Computes only the chunks no earlier (interrupted) call finished. Under
        ``torchrun`` every rank must call this with the same arguments; each encodes its
        slice of every missing chunk and all get the full tensor back.

        Args:
            visual: the image encoder.
            encoder_fp: its weights fingerprint (part of the key).
            split: the images.
            transform: image -> tensor; random transforms need ``seed``.
            view: augmented-view index (part of the key), ``None`` for the test transform.
            seed: RNG seed for a random transform.
            desc: progress-bar label.
        """
        rank, world = dist_utils.rank(), dist_utils.world_size()
        main = rank == 0
        tkey = transform_key(transform)
        key = self.key(encoder_fp, split, tkey, view, seed)
        # rank 0 alone looks at the disk and tells the others, so all ranks take the same path
        got = self._read(key) if main else None
        if world > 1 and dist_utils.broadcast_object(got is not None):
            got = dist_utils.broadcast_tensor(got)
        if got is not None:
            self.stats.hits += 1
            return got

        t0 = time.time()
        ranges = self.chunk_ranges(len(split))
        chunked = len(ranges) > 1
        parts: Dict[int, torch.Tensor] = {}
        if chunked and main:
            for c, (lo, hi) in enumerate(ranges):
                part = self._read(self.chunk_key(key, lo, hi))
                if part is not None and len(part) == hi - lo:
                    parts[c] = part
        missing = [c for c in range(len(ranges)) if c not in parts]
        if world > 1:
            missing = dist_utils.broadcast_object(missing)
        self.stats.chunks_cached += len(ranges) - len(missing)

        def my_slice(c: int) -> Tuple[int, int]:
            lo, hi = ranges[c]
            s_lo, s_hi = dist_utils.shard_range(hi - lo, rank, world)
            return lo + s_lo, lo + s_hi

        bar = progress_bar(sum(hi - lo for lo, hi in map(my_slice, missing)), f"features {desc}".strip(),
                           self.progress if main else False, leave=False)
        was = visual.training
        visual.eval()
        try:
            for c in missing:
                lo, hi = ranges[c]
                mine = self._encode(visual, split, transform, tkey, seed, *my_slice(c), bar)  # [my share, D]
                if world > 1:
                    feats = torch.cat([p for p in dist_utils.all_gather_varlen(mine) if len(p)])  # [hi - lo, D]
                else:
                    feats = mine
                if main:
                    if chunked:
                        self._write(self.chunk_key(key, lo, hi), feats)
                    parts[c] = feats
                self.stats.chunks_computed += 1
        finally:
            visual.train(was)
            bar.close()
        feats = torch.zeros(0, 0)
        if main:
            if ranges:
                feats = torch.cat([parts[c] for c in range(len(ranges))])  # [N, D]
            self._write(key, feats)
            if chunked:  # the assembled entry supersedes its chunks
                for lo, hi in ranges:
                    self._path(self.chunk_key(key, lo, hi)).unlink(missing_ok=True)
        if world > 1:
            feats = dist_utils.broadcast_tensor(feats if main else None)
        self.stats.computed += 1
        self.stats.seconds_encoding += time.time() - t0
        return feats
