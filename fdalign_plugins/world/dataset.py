"""Benchmark splits of the synthetic world, as a :class:`FewShotDataset`.

* ``train`` / ``val`` / ``test``: the in-distribution domain, the photo contexts of
  :data:`~fdalign_plugins.world.generator.ID_STYLES`, *correlated with the class*: an
  image shows its class's preferred context
  (:func:`~fdalign_plugins.world.generator.preferred_context`) with probability
  :data:`~fdalign_plugins.world.generator.CONTEXT_PROB`, otherwise one of the other
  contexts uniformly, as ImageNet's classes come with their typical scenes.
* ``ood["decorrelated"]``: the same photo domain with the context independent of the
  class (contexts cycle within each class): what a model that learned the context
  shortcut loses.
* ``ood["sketch"]``: the sketch family (sketch, drawing, doodle), never in few-shot
  training, no context: the ImageNet-Sketch analogue.

Every image has its own random stream ``(seed, split stream, index)``, so splits never
share an image, and a split is the same whatever the sizes of the other splits.
Generated arrays are cached on disk as one ``.npz`` per (generator version, context
probability, seed, sizes), written atomically.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..datasets.base import ArraySplit, FewShotDataset
from ..errors import ConfigError
from .generator import (
    CLASSNAMES,
    GENERATOR_VERSION,
    CONTEXT_PROB,
    ID_NUISANCE,
    ID_STYLES,
    IMAGE_SIZE,
    SKETCH_STYLES,
    WORLD_TEMPLATES,
    Nuisance,
    preferred_context,
    render_many,
    style_index,
)

log = logging.getLogger(__name__)

DATASET_NAME = "world"
#: Default images per class of each split (32 classes: 2048 / 512 / 3200 / 3200 / 3200).
DEFAULT_TRAIN_PER_CLASS = 64
DEFAULT_VAL_PER_CLASS = 16
DEFAULT_TEST_PER_CLASS = 100
DEFAULT_OOD_PER_CLASS = 100

#: Random stream of each split (part of every image's seed).
SPLIT_STREAMS: Dict[str, int] = {"train": 1, "val": 2, "test": 3, "sketch": 4, "decorrelated": 6}
#: Stream of the context draws of the correlated splits (offset from the split's stream).
CONTEXT_STREAM_OFFSET = 100

#: (styles, nuisance, context correlated with the class?) of each split.
_SPLIT_DOMAINS: Dict[str, Tuple[Tuple[str, ...], Nuisance, bool]] = {
    "train": (ID_STYLES, ID_NUISANCE, True),
    "val": (ID_STYLES, ID_NUISANCE, True),
    "test": (ID_STYLES, ID_NUISANCE, True),
    "decorrelated": (ID_STYLES, ID_NUISANCE, False),
    "sketch": (SKETCH_STYLES, ID_NUISANCE, False),
}
OOD_SPLITS: Tuple[str, ...] = ("decorrelated", "sketch")


def default_cache_dir() -> Path:
    """``$FDALIGN_CACHE/world`` if ``FDALIGN_CACHE`` is set, else ``~/.cache/fdalign/world``."""
    env = os.environ.get("FDALIGN_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "fdalign") / "world"


def split_plan(split: str, num_classes: int, per_class: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Labels and style indices of a split, class-major: ``([N], [N])`` int64.

    Correlated splits draw each image's context from its own stream: the class's
    preferred context with probability :data:`CONTEXT_PROB`, else one of the others
    uniformly. Decorrelated splits cycle the contexts within each class, so every class
    shows every context equally often.
    """
    domain, _, correlated = _SPLIT_DOMAINS[split]
    styles = np.asarray([style_index(s) for s in domain], dtype=np.int64)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    k = np.tile(np.arange(per_class, dtype=np.int64), num_classes)
    if not correlated:
        return labels, styles[(k + labels) % len(styles)]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), SPLIT_STREAMS[split] + CONTEXT_STREAM_OFFSET]))
    preferred = np.asarray([domain.index(preferred_context(c)) for c in range(num_classes)], dtype=np.int64)[labels]
    keep = rng.random(len(labels)) < CONTEXT_PROB
    other = (preferred + 1 + rng.integers(0, len(styles) - 1, len(labels))) % len(styles)  # never the preferred
    return labels, styles[np.where(keep, preferred, other)]


def generate_split(split: str, *, seed: int = 0, num_classes: int = len(CLASSNAMES), per_class: int,
                   image_size: int = IMAGE_SIZE) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one split without any caching.

    Returns:
        ``(images uint8 [N, S, S, 3], labels int64 [N], styles int64 [N])``; styles index
        :data:`~fdalign_plugins.world.generator.STYLE_NAMES`.
    """
    if split not in _SPLIT_DOMAINS:
        raise ConfigError(f"unknown world split {split!r}; valid: {', '.join(_SPLIT_DOMAINS)}")
    labels, styles = split_plan(split, num_classes, per_class, seed)
    images = render_many(labels, styles, seed=seed, stream=SPLIT_STREAMS[split],
                         nuisance=_SPLIT_DOMAINS[split][1], size=image_size)
    return images, labels, styles


def cache_key(seed: int, num_classes: int, sizes: Dict[str, int], image_size: int) -> str:
    """File name of a cached world: everything that changes its content is in it."""
    per = "-".join(f"{k}{sizes[k]}" for k in sorted(sizes))
    return f"world-g{GENERATOR_VERSION}-p{CONTEXT_PROB:g}-seed{seed}-c{num_classes}-{per}-px{image_size}.npz"


def _atomic_savez(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shareable
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _load_npz(path: Path, splits) -> Optional[Dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        return None
    except Exception as exc:  # a truncated or foreign file: regenerate over it
        log.warning("ignoring unreadable world cache %s (%s)", path, exc)
        return None
    need = {f"{s}_{a}" for s in splits for a in ("images", "labels", "styles")}
    return arrays if need <= set(arrays) else None


def build_world_dataset(
    root: Optional[Path] = None,
    *,
    seed: int = 0,
    num_classes: Optional[int] = None,
    train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
    val_per_class: int = DEFAULT_VAL_PER_CLASS,
    test_per_class: int = DEFAULT_TEST_PER_CLASS,
    ood_per_class: int = DEFAULT_OOD_PER_CLASS,
    image_size: int = IMAGE_SIZE,
    cache: bool = True,
) -> FewShotDataset:
    """The world's benchmark dataset (generated on first use, then read from the cache).

    Args:
        root: cache folder; ``None`` means :func:`default_cache_dir`.
        seed: world seed (every image is a function of it, the split and its index).
        num_classes: use the first ``num_classes`` classes (default: all 32).
        train_per_class / val_per_class / test_per_class: in-distribution split sizes.
        ood_per_class: size of each OOD split (``decorrelated`` and ``sketch``) per class.
        image_size: image side length in pixels (even).
        cache: read / write the on-disk cache.

    Returns:
        A :class:`FewShotDataset` named ``"world"`` with ``ood={"decorrelated", "sketch"}``;
        each split is an :class:`ArraySplit` with per-image ``styles``.
    """
    n_all = len(CLASSNAMES)
    num_classes = n_all if num_classes is None else int(num_classes)
    if not 2 <= num_classes <= n_all:
        raise ConfigError(f"world num_classes must be in [2, {n_all}], got {num_classes}")
    if image_size < 8 or image_size % 2:
        raise ConfigError(f"world image_size must be an even number >= 8, got {image_size}")
    sizes = {"train": train_per_class, "val": val_per_class, "test": test_per_class,
             **{k: ood_per_class for k in OOD_SPLITS}}
    bad = {k: v for k, v in sizes.items() if int(v) < 1}
    if bad:
        raise ConfigError(f"world split sizes must be >= 1 per class, got {bad}")
    path = Path(root).expanduser() if root is not None else default_cache_dir()
    path = path / cache_key(seed, num_classes, sizes, image_size)
    arrays = _load_npz(path, sizes) if cache else None
    if arrays is None:
        arrays = {}
        for split, n in sizes.items():
            im, lb, st = generate_split(split, seed=seed, num_classes=num_classes, per_class=n, image_size=image_size)
            arrays.update({f"{split}_images": im, f"{split}_labels": lb, f"{split}_styles": st})
        if cache:
            _atomic_savez(path, arrays)

    def mk(split: str) -> ArraySplit:
        return ArraySplit(arrays[f"{split}_images"], arrays[f"{split}_labels"], name=f"world-s{seed}/{split}",
                          styles=arrays[f"{split}_styles"])

    return FewShotDataset(
        name=DATASET_NAME,
        classnames=list(CLASSNAMES[:num_classes]),
        templates=list(WORLD_TEMPLATES),
        train=mk("train"),
        test=mk("test"),
        val=mk("val"),
        ood={k: mk(k) for k in OOD_SPLITS},
    )
