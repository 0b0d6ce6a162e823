"""The data contract shared by every dataset: image splits and few-shot datasets.

A dataset is a set of named :class:`ImageSplit` objects plus class names and prompt
templates. Splits are index-addressable image sources that the runner turns into
tensors; nothing here knows about models.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..errors import DataError


class ImageSplit(abc.ABC):
    """An indexable set of labelled images.

    Subclasses implement :meth:`load` and :meth:`identity`. ``labels`` is an int64
    array ``[N]`` of class indices into the owning dataset's class names.
    """

    labels: np.ndarray

    def __len__(self) -> int:
        return int(len(self.labels))

    @abc.abstractmethod
    def load(self, index: int) -> Image.Image:
        """Return image ``index`` as an RGB PIL image."""

    @abc.abstractmethod
    def identity(self) -> str:
        """A string that changes whenever the split's content changes (for cache keys)."""

    def describe(self, index: int) -> str:
        """Human-readable name of one item, used in error messages."""
        return f"item {index}"

    def subset(self, indices: Sequence[int]) -> "SubsetSplit":
        """A view on ``indices`` of this split (order kept, repeats allowed)."""
        return SubsetSplit(self, indices)


class FileSplit(ImageSplit):
    """Images stored as files: ``root / rel_path`` with an integer label each."""

    def __init__(self, root: Path, items: Sequence[Tuple[str, int]]):
        self.root = Path(root)
        self.paths: List[str] = [str(p) for p, _ in items]
        self.labels = np.asarray([int(lbl) for _, lbl in items], dtype=np.int64)

    def path(self, index: int) -> Path:
        return self.root / self.paths[index]

    def load(self, index: int) -> Image.Image:
        path = self.path(index)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise DataError(f"image not found: {path}") from None
        except Exception as exc:  # PIL raises many types for broken files
            raise DataError(f"cannot read image {path}: {exc}") from None

    def describe(self, index: int) -> str:
        return str(self.path(index))

    def identity(self) -> str:
        cached = getattr(self, "_identity", None)
        if cached is not None:  # hashing a million paths takes a second; the split does not change
            return cached
        h = hashlib.sha256(str(self.root.resolve()).encode())
        for p, lbl in zip(self.paths, self.labels.tolist()):
            h.update(f"{p}\0{lbl}\n".encode())
        self._identity = "files:" + h.hexdigest()[:24]
        return self._identity


class ArraySplit(ImageSplit):
    """Images held in memory as a uint8 array ``[N, H, W, 3]`` (the synthetic world)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str, styles: Optional[np.ndarray] = None):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"ArraySplit needs uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.styles = styles
        self.name = name
        self._identity: Optional[str] = None

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index], mode="RGB")

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def identity(self) -> str:
        if self._identity is None:
            h = hashlib.sha256(self.images.tobytes())
            h.update(self.labels.tobytes())
            self._identity = f"array:{self.name}:" + h.hexdigest()[:24]
        return self._identity


class SubsetSplit(ImageSplit):
    """A subset of another split, by index."""

    def __init__(self, base: ImageSplit, indices: Sequence[int]):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = base.labels[self.indices] if len(self.indices) else np.zeros(0, dtype=np.int64)

    def load(self, index: int) -> Image.Image:
        return self.base.load(int(self.indices[index]))

    def describe(self, index: int) -> str:
        return self.base.describe(int(self.indices[index]))

    def identity(self) -> str:
        h = hashlib.sha256(self.indices.tobytes())
        return f"subset({self.base.identity()}):" + h.hexdigest()[:16]


@dataclass
class FewShotDataset:
    """A classification dataset as the runner sees it.

    Attributes:
        name: dataset name (as registered), used for per-dataset adapter defaults.
        classnames: class names in label order, used in prompts.
        templates: prompt templates for the adapters' text classifier (``"{}"`` slot).
        train: the pool few-shot support sets are sampled from.
        test: the in-distribution test split.
        val: a validation split, or ``None`` if the dataset has none (then a few-shot
            validation split is drawn from ``train``, disjoint from the support set).
        ood: out-of-distribution test splits by name, labels in the same label space.
    """

    name: str
    classnames: List[str]
    templates: List[str]
    train: ImageSplit
    test: ImageSplit
    val: Optional[ImageSplit] = None
    ood: Dict[str, ImageSplit] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)
