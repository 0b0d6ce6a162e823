"""Generic folder-per-class datasets: ``root/<class>/<image>``.

If ``root`` has ``train/`` (and optionally ``val/``, ``test/``) sub-folders, each is a
folder-per-class split sharing the class list of ``train/``; otherwise ``root`` itself
is the training pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import DataError
from .base import FewShotDataset, FileSplit

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
        files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) if d.is_dir() else []
        if not files:
            empty.append(c)
        items.extend((str(p.relative_to(root)), index[c]) for p in files)
    if empty:
        raise DataError(
            f"class folder(s) with no images in {root}: {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''} "
            f"(image extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return list(classnames), items


def build_folder_dataset(root, name: str = "folder", templates: Optional[List[str]] = None) -> FewShotDataset:
    """A :class:`FewShotDataset` from a folder-per-class tree (see module docstring)."""
    if root is None:
        raise DataError("the folder dataset needs a data root: --data-root PATH (a folder with one sub-folder per class)")
    root = Path(root)
    if (root / "train").is_dir():
        classnames, train = scan_class_folders(root / "train")
        splits = {"train": FileSplit(root / "train", train)}
        for s in ("val", "test"):
            if (root / s).is_dir():
                _, items = scan_class_folders(root / s, classnames)
                splits[s] = FileSplit(root / s, items)
    else:
        classnames, train = scan_class_folders(root)
        splits = {"train": FileSplit(root, train)}
    test = splits.get("test", FileSplit(root, []))
    pretty = [c.replace("_", " ") for c in classnames]
    return FewShotDataset(
        name=name,
        classnames=pretty,
        templates=templates or ["a photo of a {}."],
        train=splits["train"],
        test=test,
        val=splits.get("val"),
    )
