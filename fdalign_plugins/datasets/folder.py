"""Generic folder-per-class datasets: ``root/<class>/<image>``.

If ``root`` has ``train/`` (and optionally ``val/``, ``test/``) sub-folders, each is a
folder-per-class split sharing the class list of ``train/``; otherwise ``root`` itself
is the image pool. Without a ``test/`` folder a test split is held out of the pool:
``test_fraction`` (default 20 %) of each class's images, at least one, drawn with the
fixed seed ``test_seed`` (default 0) — the same test images for every few-shot seed,
never used for support or validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import DataError
from .base import FewShotDataset, FileSplit

#: Share of each class's images held out as the test split when there is no test/ folder.
DEFAULT_TEST_FRACTION = 0.2
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def scan_class_folders(root: Path, classnames: Optional[List[str]] = None) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Class names (sorted folder names, or ``classnames``) and ``(rel_path, label)`` items."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root} (expected one sub-folder per class, see docs/datasets.md)")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classnames is None:
        classnames = folders
    if not classnames:
        raise DataError(f"no class folders in {root}; expected {root}/<class name>/<images>")
    index = {c: i for i, c in enumerate(classnames)}
    extra = [f for f in folders if f not in index]
    if extra:
        raise DataError(f"{root} has class folder(s) not in the training classes: {', '.join(extra[:5])}")
    items: List[Tuple[str, int]] = []
    empty = []
    for c in classnames:
        d = root / c
        files = (sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
                 if d.is_dir() else [])
        if not files:
            empty.append(c)
        items.extend((str(p.relative_to(root)), index[c]) for p in files)
    if empty:
        raise DataError(
            f"class folder(s) with no images in {root}: {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''} "
            f"(image extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return list(classnames), items


def hold_out_test(items: List[Tuple[str, int]], fraction: float, seed: int, root: Path
                  ) -> Tuple[List[Tuple[str, int]], List[Tuple[str, int]]]:
    """Split ``(rel_path, label)`` items into (pool, test): per class, ``round(fraction * n)``
    images (at least 1, at most ``n - 1``) drawn with ``numpy.random.default_rng(seed)``.

    Raises:
        DataError: a class with fewer than 2 images (nothing to train on once its test
            image is held out).
    """
    if not 0 < fraction < 1:
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {fraction!r}")
    labels = np.asarray([lbl for _, lbl in items], dtype=np.int64)
    rng = np.random.default_rng(seed)
    test_idx: List[int] = []
    small = []
    for c in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            small.append(Path(items[int(idx[0])][0]).parts[0])
            continue
        k = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        test_idx.extend(int(i) for i in rng.choice(idx, size=k, replace=False))
    if small:
        raise DataError(
            f"class folder(s) with a single image in {root}: {', '.join(small[:5])}; without a test/ folder a test "
            "split is held out of each class, so every class needs at least 2 images (or use the layout "
            "DIR/train/<class>/..., DIR/test/<class>/..., see docs/datasets.md)"
        )
    held = set(test_idx)
    pool = [it for i, it in enumerate(items) if i not in held]
    test = [items[i] for i in sorted(held)]
    return pool, test


def build_folder_dataset(root, name: str = "folder", templates: Optional[List[str]] = None,
                         test_fraction: float = DEFAULT_TEST_FRACTION, test_seed: int = 0) -> FewShotDataset:
    """A :class:`FewShotDataset` from a folder-per-class tree (see module docstring)."""
    if root is None:
        raise DataError("the folder dataset needs a data root: --data-root PATH "
                        "(a folder with one sub-folder per class)")
    root = Path(root)
    base = root / "train" if (root / "train").is_dir() else root
    classnames, train = scan_class_folders(base)
    splits = {"train": FileSplit(base, train)}
    for s in ("val", "test"):
        if base is not root and (root / s).is_dir():
            _, items = scan_class_folders(root / s, classnames)
            splits[s] = FileSplit(root / s, items)
    if "test" not in splits:  # no test/ folder: hold one out of the pool (seeded, documented)
        pool, test = hold_out_test(train, float(test_fraction), int(test_seed), base)
        splits["train"], splits["test"] = FileSplit(base, pool), FileSplit(base, test)
    pretty = [c.replace("_", " ") for c in classnames]
    return FewShotDataset(
        name=name,
        classnames=pretty,
        templates=templates or ["a photo of a {}."],
        train=splits["train"],
        test=splits["test"],
        val=splits.get("val"),
    )
