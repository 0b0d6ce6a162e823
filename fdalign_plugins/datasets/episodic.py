"""N-way K-shot data: miniImageNet, the cross-domain test sets, and episode sampling.

An episodic dataset is a :class:`FewShotDataset` whose splits hold *disjoint classes*
in one label space: ``train`` is the base-class pool (fine-tuning), ``val`` the
validation classes, ``test`` the novel-class pool episodes are drawn from. The
cross-domain sets are test-only (``train`` empty). Use :func:`sample_episode` (or
:class:`EpisodeSampler`) on a split's labels, not ``few_shot_split``.

miniImageNet (``<root>/miniimagenet``), either layout:

* Ravi & Larochelle's CSV split: ``images/*.jpg`` plus ``train.csv``, ``val.csv``,
  ``test.csv`` (in the folder itself or in ``split/``) with the header
  ``filename,label`` (label = WNID);
* folder per class: ``{train,val,test}/<wnid>/*``.

Cross-domain sets (:data:`CROSS_DOMAIN_SETS`): one folder per class under the folder
listed there (relative to ``--data-root``); ``depth`` 2 means
``<group>/<class>/<images>`` (Omniglot's ``<alphabet>/<character>``).
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError, DataError
from ..templates import IMAGENET_TEMPLATES
from .base import FewShotDataset, FileSplit
from .classnames import imagenet_classnames, imagenet_wnid_index, is_wnid, pretty_classname
from .coop import dataset_folder
from .folder import IMAGE_EXTENSIONS
from .splitjson import doc_ref, require_dir, safe_relpath, spot_check_files

__all__ = [
    "CrossDomainSet",
    "CROSS_DOMAIN_SETS",
    "EpisodeSampler",
    "sample_episode",
    "episode_labels",
    "build_miniimagenet",
    "build_episodic_folder",
    "scan_class_tree",
]

MINI_SECTION = "miniimagenet"
FOLDER_SECTION = "episodic_folder"


@dataclass(frozen=True)
class CrossDomainSet:
    """Where one cross-domain N-way K-shot test set lives under the data root.

    Attributes:
        name: the key passed as ``set_name`` (also the docs section ``episodic-<name>``).
        folder: the folder-per-class image tree, relative to the data root.
        depth: how many folder levels name a class (1: ``<class>/``; 2:
            ``<group>/<class>/``).
        benchmark: the benchmark the set comes from.
    """

    name: str
    folder: str
    depth: int
    benchmark: str


CROSS_DOMAIN_SETS: Dict[str, CrossDomainSet] = {
    s.name: s
    for s in (
        CrossDomainSet("cub", "meta-dataset/CUB_200_2011/images", 1, "Meta-Dataset"),
        CrossDomainSet("dtd", "meta-dataset/Textures/dtd/images", 1, "Meta-Dataset"),
        CrossDomainSet("aircraft", "meta-dataset/aircraft", 1, "Meta-Dataset"),
        CrossDomainSet("traffic_sign", "meta-dataset/GTSRB/Final_Training/Images", 1, "Meta-Dataset"),
        CrossDomainSet("omniglot", "meta-dataset/omniglot", 2, "Meta-Dataset"),
        CrossDomainSet("vgg_flower", "meta-dataset/VGGFlower", 1, "Meta-Dataset"),
        CrossDomainSet("quickdraw", "meta-dataset/quickdraw", 1, "Meta-Dataset"),
        CrossDomainSet("fungi", "meta-dataset/fungi_train_val/images", 1, "Meta-Dataset"),
        CrossDomainSet("coco", "meta-dataset/coco", 1, "Meta-Dataset"),
        CrossDomainSet("eurosat", "meta-dataset/EuroSAT", 1, "BSCD-FSL"),
        CrossDomainSet("chestx", "meta-dataset/ChestX/data", 1, "BSCD-FSL"),
        CrossDomainSet("plant_disease", "meta-dataset/PlantDisease", 1, "BSCD-FSL"),
        CrossDomainSet("isic", "meta-dataset/ISIC/classes", 1, "BSCD-FSL"),
        CrossDomainSet("clipart", "meta-dataset/clipart", 1, "DomainNet"),
        CrossDomainSet("infograph", "meta-dataset/infograph", 1, "DomainNet"),
        CrossDomainSet("painting", "meta-dataset/painting", 1, "DomainNet"),
        CrossDomainSet("real", "meta-dataset/real", 1, "DomainNet"),
        CrossDomainSet("sketch", "meta-dataset/sketch", 1, "DomainNet"),
    )
}


# --------------------------------------------------------------------------- episodes


class EpisodeSampler:
    """Draws N-way K-shot episodes from one split's labels (validated once).

    Args:
        labels: ``[N]`` class of each item of the split.
        n_way: classes per episode.
        k_shot: support images per class.
        n_query: query images per class.
        classes: the classes episodes may use (default: every class in ``labels``).
        short: what to do with a class that has fewer than ``k_shot + n_query``
            images: ``"error"`` (raise, the default) or ``"skip"`` (leave it out of
            the pool, with a warning).

    Raises:
        ConfigError: bad ``n_way`` / ``k_shot`` / ``n_query`` / ``short``.
        DataError: a class too small (with ``short="error"``), a requested class with
            no images, or fewer than ``n_way`` usable classes.
    """

    def __init__(
        self,
        labels: np.ndarray,
        n_way: int,
        k_shot: int,
        n_query: int,
        classes: Optional[Sequence[int]] = None,
        short: str = "error",
    ) -> None:
        if n_way < 1 or k_shot < 1 or n_query < 0:
            raise ConfigError(f"episodes need n_way >= 1, k_shot >= 1, n_query >= 0; got {n_way}, {k_shot}, {n_query}")
        if short not in ("error", "skip"):
            raise ConfigError(f"short must be 'error' or 'skip', got {short!r}")
        labels = np.asarray(labels, dtype=np.int64)
        self.n_way, self.k_shot, self.n_query = int(n_way), int(k_shot), int(n_query)
        need = self.k_shot + self.n_query
        present = np.unique(labels)
        pool = present if classes is None else np.asarray(sorted({int(c) for c in classes}), dtype=np.int64)
        missing = np.setdiff1d(pool, present)
        if len(missing):
            raise DataError(f"episode classes with no images: {', '.join(map(str, missing[:10].tolist()))}")
        self._index: Dict[int, np.ndarray] = {int(c): np.flatnonzero(labels == c) for c in pool}
        too_small = [(c, len(ix)) for c, ix in self._index.items() if len(ix) < need]
        if too_small:
            desc = ", ".join(f"class {c} has {n}" for c, n in too_small[:5]) + (" ..." if len(too_small) > 5 else "")
            msg = (
                f"{len(too_small)} class(es) have fewer than k_shot + n_query = {self.k_shot} + {self.n_query} = "
                f"{need} images ({desc})"
            )
            if short == "error":
                raise DataError(msg + "; use fewer shots or queries, or leave those classes out (short='skip')")
            warnings.warn(msg + "; they are left out of the episodes", stacklevel=2)
            for c, _ in too_small:
                del self._index[c]
        self.classes = np.asarray(sorted(self._index), dtype=np.int64)
        if len(self.classes) < self.n_way:
            raise DataError(
                f"{self.n_way}-way episodes need {self.n_way} classes with >= {need} images; "
                f"only {len(self.classes)} have"
            )

    def sample(self, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One episode: ``(support_idx [n_way*k_shot], query_idx [n_way*n_query], classes [n_way])``.

        Both index arrays are class-major in the order of ``classes``: episode label
        ``i`` is ``classes[i]`` (see :func:`episode_labels`). Support and query are
        disjoint; everything is drawn from ``rng`` only.
        """
        chosen = rng.choice(self.classes, size=self.n_way, replace=False)
        support, query = [], []
        for c in chosen:
            pick = rng.choice(self._index[int(c)], size=self.k_shot + self.n_query, replace=False)
            support.append(pick[: self.k_shot])
            query.append(pick[self.k_shot:])
        return np.concatenate(support), np.concatenate(query), chosen.astype(np.int64)


def sample_episode(
    labels: np.ndarray,
    n_way: int,
    k_shot: int,
    n_query: int,
    rng: np.random.Generator,
    classes: Optional[Sequence[int]] = None,
    short: str = "error",
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one N-way K-shot episode (see :class:`EpisodeSampler`; build one of those
    to draw many episodes from the same split without re-indexing the labels).

    Args:
        labels: ``[N]`` class of each item.
        n_way: distinct classes in the episode.
        k_shot: support images per class.
        n_query: query images per class.
        rng: a seeded ``numpy.random.Generator``.
        classes: the classes to draw from (default: all in ``labels``).
        short: ``"error"`` or ``"skip"`` for classes with fewer than
            ``k_shot + n_query`` images.

    Returns:
        ``(support_idx, query_idx, classes)``: indices into ``labels`` (class-major,
        ``k_shot`` resp. ``n_query`` per class) and the ``n_way`` classes in episode
        order.
    """
    return EpisodeSampler(labels, n_way, k_shot, n_query, classes=classes, short=short).sample(rng)


def episode_labels(n_way: int, per_class: int) -> np.ndarray:
    """Episode-local labels ``[n_way * per_class]`` of a class-major index array."""
    return np.repeat(np.arange(n_way, dtype=np.int64), per_class)


# --------------------------------------------------------------------------- folder trees


def scan_class_tree(folder: Path, depth: int, section: str) -> Tuple[List[str], List[List[str]]]:
    """Classes of a folder-per-class tree and the images of each.

    Args:
        folder: the tree's root.
        depth: folder levels that name a class (1: ``<class>/``, 2: ``<group>/<class>/``).
        section: docs section for messages.

    Returns:
        ``(classes, files)``: class folders as ``/``-joined relative paths, sorted, and
        per class its image paths relative to ``folder`` (sorted, searched recursively).

    Raises:
        DataError: no class folders, or class folders without images.
    """
    if depth < 1:
        raise ConfigError(f"depth must be >= 1, got {depth}")
    level = [folder]
    for _ in range(depth):
        level = sorted(
            (d for parent in level for d in parent.iterdir() if d.is_dir() and not d.name.startswith(".")),
            key=lambda p: p.relative_to(folder).as_posix(),
        )
    if not level:
        raise DataError(
            f"no class folders in {folder}; expected {folder}/{'<group>/' * (depth - 1)}<class>/<images>. "
            f"See {doc_ref(section)}"
        )
    classes, files, empty = [], [], []
    for d in level:
        rel = d.relative_to(folder).as_posix()
        imgs = sorted(
            p.relative_to(folder).as_posix()
            for p in d.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not imgs:
            empty.append(rel)
        classes.append(rel)
        files.append(imgs)
    if empty:
        raise DataError(
            f"{len(empty)} class folder(s) in {folder} have no images, e.g. {folder / empty[0]} "
            f"(is this the right folder and depth={depth}?). See {doc_ref(section)}"
        )
    return classes, files


def _class_display_name(folder_name: str, names: Dict[str, str]) -> str:
    """CLIP's ImageNet name for a WNID folder, else the pretty folder path.

    A nested class folder keeps its group (Omniglot's ``Greek/character01`` becomes
    ``"Greek character01"``) so that names stay unique.
    """
    parts = folder_name.split("/")
    if len(parts) == 1 and parts[0] in names:
        return names[parts[0]]
    return " ".join(pretty_classname(p) for p in parts)


def _imagenet_names() -> Dict[str, str]:
    index = imagenet_wnid_index()
    curated = imagenet_classnames()
    return {w: curated[i] for w, i in index.items()}


def build_episodic_folder(
    root: Optional[Path],
    set_name: Optional[str] = None,
    depth: Optional[int] = None,
    classes: Optional[List[str]] = None,
    name: Optional[str] = None,
    templates: Optional[List[str]] = None,
) -> FewShotDataset:
    """A test-only N-way K-shot set from a folder-per-class tree.

    Args:
        root: ``--data-root``; with ``set_name``, the folder containing the sets'
            folders (see :data:`CROSS_DOMAIN_SETS`), else the class tree itself.
        set_name: one of :data:`CROSS_DOMAIN_SETS` (e.g. ``"cub"``), or ``None``.
        depth: folder levels naming a class (default: the set's, else 1).
        classes: use only these class folders (relative paths), e.g. the 50 test
            classes of CUB.
        name: dataset name in results (default: ``set_name`` or ``"episodic_folder"``).
        templates: prompt templates (default ``["a photo of a {}."]``).

    Returns:
        A dataset with ``train`` empty and ``test`` holding every image; labels follow
        the sorted class folders. Class names: CLIP's ImageNet names for WNID folders,
        else the folder name without a numeric prefix, ``_`` as spaces.

    Raises:
        ConfigError: an unknown ``set_name``.
        DataError: a missing folder, empty class folders, unknown ``classes``,
            duplicate class names.
    """
    if set_name is not None:
        if set_name not in CROSS_DOMAIN_SETS:
            raise ConfigError(f"unknown set_name {set_name!r}; valid: {', '.join(sorted(CROSS_DOMAIN_SETS))}")
        spec = CROSS_DOMAIN_SETS[set_name]
        section = f"episodic-{spec.name}"
        if root is None:
            raise DataError(f"dataset {set_name!r} needs a data root: --data-root PATH (see {doc_ref(section)})")
        folder = require_dir(Path(root) / spec.folder, f"{set_name} class folder tree", section)
        depth = spec.depth if depth is None else depth
    else:
        section = FOLDER_SECTION
        if root is None:
            raise DataError(f"episodic_folder needs a data root: --data-root PATH (see {doc_ref(section)})")
        folder = require_dir(Path(root), "episodic_folder class folder tree", section)
        depth = 1 if depth is None else depth
    found, files = scan_class_tree(folder, int(depth), section)
    if len(found) == 1:
        only = folder / found[0]
        raise DataError(
            f"only one class folder in {folder} ({found[0]}); episodes need several classes. If the classes are "
            f"inside it, use {only} as the folder. See {doc_ref(section)}"
        )
    if classes is not None:
        where = {c: i for i, c in enumerate(found)}
        wanted = [safe_relpath(c, "option classes") for c in classes]
        unknown = [c for c in wanted if c not in where]
        if unknown:
            raise DataError(f"class folder(s) not in {folder}: {', '.join(unknown[:5])}. See {doc_ref(section)}")
        if len(set(wanted)) != len(wanted):
            raise DataError("option classes lists a class folder twice")
        found, files = sorted(wanted), [files[where[c]] for c in sorted(wanted)]
    names_map = _imagenet_names() if any(is_wnid(c) for c in found) else {}
    classnames = [_class_display_name(c, names_map) for c in found]
    _check_unique(classnames, found, folder)
    items = [(f, label) for label, fs in enumerate(files) for f in fs]
    return FewShotDataset(
        name=name or set_name or "episodic_folder",
        classnames=classnames,
        templates=list(templates or ["a photo of a {}."]),
        train=FileSplit(folder, []),
        test=FileSplit(folder, items),
        val=None,
    )


def _check_unique(classnames: List[str], folders: List[str], where: Path) -> None:
    seen: Dict[str, int] = {}
    for i, c in enumerate(classnames):
        key = c.lower()
        if key in seen:
            raise DataError(
                f"duplicate class name {c!r} in {where}: class folders {folders[seen[key]]!r} and {folders[i]!r}"
            )
        seen[key] = i


# --------------------------------------------------------------------------- miniImageNet


def _read_mini_csv(path: Path, section: str) -> List[Tuple[str, str]]:
    """``(filename, label)`` rows of a Ravi & Larochelle split file."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not rows or [h.strip().lower() for h in rows[0][:2]] != ["filename", "label"]:
        head = ",".join(rows[0]) if rows else "(empty file)"
        raise DataError(f"{path}: expected the header 'filename,label', got {head!r}. See {doc_ref(section)}")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[1].strip():
            raise DataError(f"{path.name} line {n}: expected 'filename,label', got {','.join(row)!r}")
        out.append((safe_relpath(row[0].strip(), f"{path.name} line {n}"), row[1].strip()))
    if not out:
        raise DataError(f"{path} has no rows. See {doc_ref(section)}")
    return out


def build_miniimagenet(root: Optional[Path], templates: Optional[List[str]] = None) -> FewShotDataset:
    """miniImageNet from ``root/miniimagenet`` (CSV or folder-per-class layout).

    The label space is the 64 training classes, then the 16 validation classes, then
    the 20 test classes (each sorted by WNID); class names are CLIP's ImageNet names.

    Raises:
        DataError: neither layout present, a malformed CSV, classes shared between
            splits, missing or empty class folders, listed images missing.
    """
    section = MINI_SECTION
    base = dataset_folder(root, "miniimagenet", "miniimagenet", section, marker="train.csv")
    per_split: Dict[str, Tuple[Path, List[Tuple[str, str]]]] = {}  # split -> (image root, [(rel, class)])
    if (base / "train").is_dir():
        for split in ("train", "val", "test"):
            d = base / split
            if not d.is_dir():
                if split == "val":
                    continue
                require_dir(d, f"miniimagenet {split} folder", section)
            found, files = scan_class_tree(d, 1, section)
            per_split[split] = (d, [(f, c) for c, fs in zip(found, files) for f in fs])
    else:
        csv_dir = next((d for d in (base, base / "split") if (d / "train.csv").is_file()), None)
        if csv_dir is None:
            raise DataError(
                f"miniimagenet layout not found in {base}: expected either {base}/{{train,val,test}}/<wnid>/ "
                f"class folders or {base}/images/ with {base}/train.csv, val.csv, test.csv (or in {base}/split/). "
                f"See {doc_ref(section)}"
            )
        images = require_dir(base / "images", "miniimagenet image folder", section)
        for split in ("train", "val", "test"):
            path = csv_dir / f"{split}.csv"
            if not path.is_file():
                if split == "val":
                    continue
                raise DataError(
                    f"miniimagenet {split} split not found: expected the file {path}. See {doc_ref(section)}"
                )
            rows = _read_mini_csv(path, section)
            spot_check_files(images, [(r, 0) for r, _ in rows], str(path), section)
            per_split[split] = (images, rows)
    owner: Dict[str, str] = {}
    for split, (_, rows) in per_split.items():
        for cls in sorted({c for _, c in rows}):
            if cls in owner:
                raise DataError(
                    f"miniimagenet class {cls!r} is in both the {owner[cls]} and the {split} split; "
                    "N-way K-shot splits must have disjoint classes"
                )
            owner[cls] = split
    order = [c for split in ("train", "val", "test") if split in per_split
             for c in sorted({c for _, c in per_split[split][1]})]
    label = {c: i for i, c in enumerate(order)}
    names_map = _imagenet_names()
    classnames = [_class_display_name(c, names_map) for c in order]
    _check_unique(classnames, order, base)
    splits = {s: FileSplit(d, [(r, label[c]) for r, c in rows]) for s, (d, rows) in per_split.items()}
    return FewShotDataset(
        name="miniimagenet",
        classnames=classnames,
        templates=list(templates or IMAGENET_TEMPLATES),
        train=splits["train"],
        test=splits["test"],
        val=splits.get("val"),
    )
