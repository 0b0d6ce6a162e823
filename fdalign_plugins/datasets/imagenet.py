"""ImageNet (CoOp's layout) and its OOD test sets, all in ImageNet's label space.

Under the data root (CoOp's ``$DATA``)::

    imagenet/images/train/<wnid>/*.JPEG           training pool (few-shot support + validation)
    imagenet/images/val/<wnid>/*.JPEG             the official val set, used as the test set
    imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/*   (folder = ImageNet label)
    imagenet-sketch/images/<wnid>/*               (or imagenet-sketch/sketch/<wnid>/*)
    imagenet-adversarial/imagenet-a/<wnid>/*      200 classes
    imagenet-rendition/imagenet-r/<wnid>/*        200 classes

Labels follow the sorted WNID folders of ``train/`` (the standard 0..999 order for the
full dataset); class names are CLIP's curated ImageNet names. ImageNet has no
validation split (``val=None``), so the few-shot validation set is drawn from
``train``, disjoint from the support set.

The OOD sets present under the same root are attached as ``dataset.ood`` (keys
``imagenetv2``, ``imagenet-sketch``, ``imagenet-a``, ``imagenet-r``) and are also
registered as test-only datasets of their own (1000-class label space, empty
``train``). Their labels are ImageNet labels; ImageNet-A and ImageNet-R cover 200 of
the classes, and their split carries ``label_subset``: the sorted labels of those
classes, to which evaluation restricts the logits (the standard protocol). Every OOD
split has the attribute; it is ``None`` when all classes count.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DataError
from ..templates import COOP_TEMPLATES
from .base import FewShotDataset, FileSplit
from .classnames import IMAGENET_A_WNIDS, IMAGENET_R_WNIDS, IMAGENET_WNIDS, imagenet_classnames, imagenet_wnid_index
from .coop import dataset_folder
from .folder import IMAGE_EXTENSIONS
from .splitjson import doc_ref, require_dir

__all__ = ["OodLayout", "OOD_LAYOUTS", "build_imagenet", "build_imagenet_ood", "ood_split", "list_images"]

SECTION = "imagenet"


@dataclass(frozen=True)
class OodLayout:
    """Where an ImageNet OOD set lives under the data root (CoOp's names).

    Attributes:
        name: registry name, key in ``imagenet``'s ``ood``, section of the docs.
        folder: the dataset folder under the data root.
        images: candidate image folders inside it, first match wins.
        by_index: class folders are ImageNet label numbers (ImageNet-V2), not WNIDs.
        classes: the WNIDs the set covers (``None``: all 1000).
        summary: one line for listings.
    """

    name: str
    folder: str
    images: Tuple[str, ...]
    by_index: bool
    classes: Optional[Tuple[str, ...]]
    summary: str


OOD_LAYOUTS: Dict[str, OodLayout] = {
    lay.name: lay
    for lay in (
        OodLayout("imagenetv2", "imagenetv2", ("imagenetv2-matched-frequency-format-val",), True, None,
                  "ImageNet-V2 matched frequency (test only, ImageNet labels)"),
        OodLayout("imagenet-sketch", "imagenet-sketch", ("images", "sketch"), False, None,
                  "ImageNet-Sketch (test only, ImageNet labels)"),
        OodLayout("imagenet-a", "imagenet-adversarial", ("imagenet-a",), False, IMAGENET_A_WNIDS,
                  "ImageNet-A (test only, 200 ImageNet classes, label_subset set)"),
        OodLayout("imagenet-r", "imagenet-rendition", ("imagenet-r",), False, IMAGENET_R_WNIDS,
                  "ImageNet-R (test only, 200 ImageNet classes, label_subset set)"),
    )
}


def _scan(folder: Path) -> Tuple[List[str], List[str], List[str]]:
    """``(sub-folders, image files, other files)`` directly in ``folder``, sorted.

    ``os.scandir`` reads the file type from the directory entry, so listing the
    1.28 million ImageNet training images needs no ``stat`` per file.
    """
    dirs, images, other = [], [], []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(entry.name)
            else:
                other.append(entry.name)
    return sorted(dirs), sorted(images), sorted(other)


def list_images(folder: Path, section: str) -> List[str]:
    """Image file names directly in a class folder (sorted); error if there are none."""
    _, images, _ = _scan(folder)
    if not images:
        raise DataError(
            f"class folder {folder} has no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
            f"an incomplete extraction? See {doc_ref(section)}"
        )
    return images


def _class_items(folder: Path, classes: Sequence[Tuple[str, int]], section: str) -> List[Tuple[str, int]]:
    """``(folder_name/file, label)`` for each ``(folder_name, label)``, class-major."""
    items: List[Tuple[str, int]] = []
    for sub, label in classes:
        items.extend((f"{sub}/{f}", label) for f in list_images(folder / sub, section))
    return items


def _flat_val_error(val_dir: Path, images: List[str], dirs: List[str]) -> DataError:
    partly = f" (next to {len(dirs)} class folder(s))" if dirs else ""
    return DataError(
        f"the ImageNet val folder {val_dir} holds {len(images)} image file(s) directly, e.g. {images[0]}{partly}, "
        "instead of one sub-folder per class: this is the flat folder of the raw ILSVRC2012 validation download. "
        f"Sort the images into {val_dir}/<wnid>/ folders (50 per class) with the devkit's ground truth: e.g. the "
        "valprep.sh script of the PyTorch ImageNet example, or torchvision.datasets.ImageNet(root, split='val'), "
        f"which sorts them using ILSVRC2012_devkit_t12.tar.gz. See {doc_ref(SECTION)}"
    )


def _imagenet_space(root: Optional[Path]) -> Tuple[Path, List[str]]:
    """The ImageNet image folder and its training WNIDs (the label space), checked."""
    base = dataset_folder(root, "imagenet", "imagenet", SECTION, marker="images")
    images = require_dir(base / "images", "imagenet image folder", SECTION)
    train_dir = require_dir(images / "train", "imagenet training folder", SECTION)
    dirs, loose, other = _scan(train_dir)
    tars = [f for f in other if f.endswith(".tar")]
    if not dirs:
        if tars:
            raise DataError(
                f"{train_dir} holds {len(tars)} .tar file(s) (e.g. {tars[0]}) instead of class folders: extract "
                f"each class archive into {train_dir}/<wnid>/. See {doc_ref(SECTION)}"
            )
        what = f"{len(loose)} loose image(s)" if loose else "no class folders"
        raise DataError(f"{train_dir} has {what}; expected one folder per class named by WNID. See {doc_ref(SECTION)}")
    index = imagenet_wnid_index()
    unknown = [d for d in dirs if d not in index]
    if unknown:
        raise DataError(
            f"{train_dir} has folder(s) that are not ImageNet-1k WNIDs: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}; expected folders like n01440764. See {doc_ref(SECTION)}"
        )
    return images, dirs


def build_imagenet(root: Optional[Path], templates: Optional[List[str]] = None, ood: bool = True) -> FewShotDataset:
    """ImageNet from ``root/imagenet/images/{train,val}``, with its OOD sets attached.

    Args:
        root: CoOp's ``$DATA`` folder.
        templates: prompt templates (default ``COOP_TEMPLATES["imagenet"]``).
        ood: attach the OOD sets found under ``root`` (see module docstring).

    Raises:
        DataError: missing folders, the flat raw val folder, class folders that are not
            ImageNet WNIDs or not among the training classes, empty class folders.
    """
    images, wnids = _imagenet_space(root)
    val_dir = require_dir(
        images / "val", "imagenet val folder (used as the test set)", SECTION
    )
    val_dirs, val_loose, _ = _scan(val_dir)
    if val_loose:
        raise _flat_val_error(val_dir, val_loose, val_dirs)
    if not val_dirs:
        raise DataError(f"{val_dir} is empty; expected one folder per class named by WNID. See {doc_ref(SECTION)}")
    label = {w: i for i, w in enumerate(wnids)}
    extra = [d for d in val_dirs if d not in label]
    if extra:
        raise DataError(
            f"{val_dir} has class folder(s) not in {images / 'train'}: {', '.join(extra[:5])}"
            f"{' ...' if len(extra) > 5 else ''}. See {doc_ref(SECTION)}"
        )
    train = FileSplit(images / "train", _class_items(images / "train", [(w, label[w]) for w in wnids], SECTION))
    test = FileSplit(val_dir, _class_items(val_dir, [(w, label[w]) for w in val_dirs], SECTION))
    names = imagenet_classnames()
    index = imagenet_wnid_index()
    attached = {}
    if ood and root is not None:
        for kind, layout in OOD_LAYOUTS.items():
            if (Path(root) / layout.folder).exists():
                attached[kind] = ood_split(kind, Path(root), wnids, context="imagenet")
    return FewShotDataset(
        name="imagenet",
        classnames=[names[index[w]] for w in wnids],
        templates=list(templates or COOP_TEMPLATES["imagenet"]),
        train=train,
        test=test,
        val=None,
        ood=attached,
    )


def ood_split(kind: str, root: Path, wnids: Sequence[str], context: str = "") -> FileSplit:
    """The OOD set ``kind`` as a :class:`FileSplit` in the label space ``wnids``.

    Labels are positions in ``wnids`` (the ImageNet label when ``wnids`` is all 1000
    classes). Class folders whose class is not in ``wnids`` are left out with a
    warning (only when the ImageNet copy has fewer classes). The split gets the
    attribute ``label_subset``: for ImageNet-A/R the sorted labels of their 200
    classes within ``wnids``, else ``None``.

    Args:
        kind: a key of :data:`OOD_LAYOUTS`.
        root: CoOp's ``$DATA`` folder.
        wnids: the label space, WNIDs in label order.
        context: the dataset whose label space this is, for messages.

    Raises:
        DataError: a missing folder, a class folder that is not a class of this set,
            empty class folders, or no class in common with ``wnids``.
    """
    layout = OOD_LAYOUTS[kind]
    base = require_dir(root / layout.folder, f"{kind} dataset folder", kind)
    image_dir = next((base / c for c in layout.images if (base / c).is_dir()), None)
    if image_dir is None:
        alts = " or ".join(str(base / c) for c in layout.images)
        raise DataError(f"{kind} image folder not found: expected {alts}. See {doc_ref(kind)}")
    dirs, _, _ = _scan(image_dir)
    if not dirs:
        raise DataError(f"{image_dir} has no class folders. See {doc_ref(kind)}")
    imagenet_index = imagenet_wnid_index()
    allowed = set(layout.classes) if layout.classes is not None else None
    classes: List[Tuple[str, str]] = []  # (folder, wnid)
    for d in dirs:
        if layout.by_index:
            if not d.isdigit() or not 0 <= int(d) < len(IMAGENET_WNIDS):
                raise DataError(
                    f"{image_dir} has the folder {d!r}; ImageNet-V2 class folders are ImageNet labels 0..999. "
                    f"See {doc_ref(kind)}"
                )
            classes.append((d, IMAGENET_WNIDS[int(d)]))
        else:
            if d not in imagenet_index:
                raise DataError(
                    f"{image_dir} has the folder {d!r}, which is not an ImageNet-1k WNID. See {doc_ref(kind)}"
                )
            if allowed is not None and d not in allowed:
                raise DataError(
                    f"{image_dir} has the folder {d!r}, which is not one of the {len(allowed)} classes of {kind}. "
                    f"See {doc_ref(kind)}"
                )
            classes.append((d, d))
    space = {w: i for i, w in enumerate(wnids)}
    kept = [(d, space[w]) for d, w in classes if w in space]
    dropped = len(classes) - len(kept)
    where = f" of {context}" if context else ""
    if not kept:
        raise DataError(f"none of the {len(classes)} classes in {image_dir} is among the classes{where}")
    if dropped:
        warnings.warn(
            f"{kind}: {dropped} of {len(classes)} class folder(s) are not among the classes{where} and are left out",
            stacklevel=2,
        )
    split = FileSplit(image_dir, _class_items(image_dir, kept, kind))
    subset: Optional[List[int]] = None
    if layout.classes is not None:
        subset = sorted(space[w] for w in layout.classes if w in space)
    split.label_subset = subset  # type: ignore[attr-defined]  # read by evaluation (see module docstring)
    return split


def build_imagenet_ood(kind: str, root: Optional[Path], templates: Optional[List[str]] = None) -> FewShotDataset:
    """An OOD set on its own: a test-only dataset in ImageNet's 1000-class label space.

    ``train`` is empty (these sets are for evaluation; fine-tune on ``imagenet``) and
    ``test`` is the set, with ``label_subset`` as in :func:`ood_split`.

    Raises:
        DataError: as :func:`ood_split`, or no data root.
    """
    layout = OOD_LAYOUTS[kind]
    base = dataset_folder(root, layout.folder, kind, kind, marker=layout.images[0])
    test = ood_split(kind, base.parent, IMAGENET_WNIDS, context="ImageNet-1k")
    return FewShotDataset(
        name=kind,
        classnames=imagenet_classnames(),
        templates=list(templates or COOP_TEMPLATES["imagenet"]),
        train=FileSplit(test.root, []),
        test=test,
        val=None,
    )
