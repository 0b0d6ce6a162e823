"""The CoOp datasets (except ImageNet, see :mod:`.imagenet`) in CoOp's folder layout.

``--data-root`` is CoOp's ``$DATA``: the folder *containing* the dataset folders, e.g.
``$DATA/oxford_pets/images`` and ``$DATA/oxford_pets/split_zhou_OxfordPets.json``. The
folder and file names are those of CoOp's ``DATASETS.md`` and ``datasets/*.py``:

=================  ================  =====================  ==================================
name               dataset folder    image folder           split
=================  ================  =====================  ==================================
caltech101         caltech-101       101_ObjectCategories   split_zhou_Caltech101.json
oxford_pets        oxford_pets       images                 split_zhou_OxfordPets.json
stanford_cars      stanford_cars     (the folder itself)    split_zhou_StanfordCars.json
oxford_flowers     oxford_flowers    jpg                    split_zhou_OxfordFlowers.json
food101            food-101          images                 split_zhou_Food101.json
fgvc_aircraft      fgvc_aircraft     images                 images_variant_{train,val,test}.txt
sun397             sun397            SUN397                 split_zhou_SUN397.json
dtd                dtd               images                 split_zhou_DescribableTextures.json
eurosat            eurosat           2750                   split_zhou_EuroSAT.json
ucf101             ucf101            UCF-101-midframes      split_zhou_UCF101.json
=================  ================  =====================  ==================================

Class names come from the split file by label (CoOp's EuroSAT file carries CoOp's
renamed classes, e.g. "Annual Crop Land"), underscores turned into spaces; templates
are :data:`fdalign_plugins.prompts.COOP_TEMPLATES` of the dataset's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import DataError
from ..templates import COOP_TEMPLATES
from .base import FewShotDataset, FileSplit
from .splitjson import build_split_dataset, doc_ref, require_dir, require_file, safe_relpath, spot_check_files

__all__ = ["CoopLayout", "COOP_LAYOUTS", "build_coop_dataset", "build_fgvc_aircraft", "dataset_folder"]


@dataclass(frozen=True)
class CoopLayout:
    """Where one CoOp dataset lives under the data root.

    Attributes:
        name: registry name (also the key of ``COOP_TEMPLATES`` and of the adapters'
            per-dataset defaults, and the section of ``docs/datasets.md``).
        folder: the dataset folder under the data root (CoOp's ``dataset_dir``).
        images: the image folder inside it (``""``: the dataset folder itself).
        split_file: CoOp's split file inside the dataset folder (``None`` for FGVC
            Aircraft, which uses its official list files).
        folder_classes: whether the images sit in one folder per class, so that the
            split file's labels can be checked against the folders.
        summary: one line for listings.
    """

    name: str
    folder: str
    images: str
    split_file: Optional[str]
    folder_classes: bool
    summary: str


COOP_LAYOUTS: Dict[str, CoopLayout] = {
    lay.name: lay
    for lay in (
        CoopLayout("caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", True,
                   "Caltech101 (CoOp split, 100 classes)"),
        CoopLayout("oxford_pets", "oxford_pets", "images", "split_zhou_OxfordPets.json", False,
                   "Oxford-IIIT Pets (CoOp split, 37 classes)"),
        CoopLayout("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json", False,
                   "Stanford Cars (CoOp split, 196 classes)"),
        CoopLayout("oxford_flowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", False,
                   "Oxford Flowers102 (CoOp split, 102 classes)"),
        CoopLayout("food101", "food-101", "images", "split_zhou_Food101.json", True,
                   "Food-101 (CoOp split, 101 classes)"),
        CoopLayout("fgvc_aircraft", "fgvc_aircraft", "images", None, False,
                   "FGVC Aircraft variants (official images_variant_*.txt, 100 classes)"),
        CoopLayout("sun397", "sun397", "SUN397", "split_zhou_SUN397.json", True,
                   "SUN397 (CoOp split, 397 classes)"),
        CoopLayout("dtd", "dtd", "images", "split_zhou_DescribableTextures.json", True,
                   "Describable Textures (CoOp split, 47 classes)"),
        CoopLayout("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json", True,
                   "EuroSAT RGB (CoOp split and class names, 10 classes)"),
        CoopLayout("ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", True,
                   "UCF101 middle frames (CoOp split, 101 classes)"),
    )
}


def dataset_folder(root: Optional[Path], folder: str, name: str, section: str, marker: str = "") -> Path:
    """``root / folder``, with a clear error when it is missing.

    A common mistake is to pass the dataset folder itself as ``--data-root``; when
    ``root`` looks like that (it is named ``folder`` or holds ``marker``) the message
    says which folder to pass instead.

    Raises:
        DataError: no root given, or ``root / folder`` is not a folder.
    """
    if root is None:
        raise DataError(
            f"dataset {name!r} needs a data root: --data-root PATH, the folder that contains {folder}/ "
            f"(see {doc_ref(section)})"
        )
    root = Path(root)
    path = root / folder
    if path.is_dir():
        return path
    hint = ""
    if root.name == folder or (marker and (root / marker).exists()):
        hint = (
            f"--data-root must be the folder that CONTAINS {folder}/ (CoOp's $DATA), not the dataset folder "
            f"itself: pass --data-root {root.parent}."
        )
    elif not root.is_dir():
        hint = f"The data root {root} does not exist."
    return require_dir(path, f"{name} dataset folder", section, hint=hint)


def build_coop_dataset(name: str, root: Optional[Path], templates: Optional[List[str]] = None) -> FewShotDataset:
    """Load the CoOp dataset ``name`` from ``root`` (the folder containing its folder).

    Args:
        name: a key of :data:`COOP_LAYOUTS`.
        root: CoOp's ``$DATA`` folder.
        templates: prompt templates (default ``COOP_TEMPLATES[name]``).

    Raises:
        DataError: missing folder or split file (naming the exact path), or a split
            file that fails validation (naming the entry).
    """
    layout = COOP_LAYOUTS[name]
    if layout.split_file is None:
        return build_fgvc_aircraft(root, templates=templates)
    base = dataset_folder(root, layout.folder, name, name, marker=layout.split_file)
    image_dir = base / layout.images if layout.images else base
    require_dir(image_dir, f"{name} image folder", name)
    require_file(
        base / layout.split_file,
        f"{name} split file",
        name,
        hint=f"Download CoOp's {layout.split_file} (link in {doc_ref(name)}) into {base}.",
    )
    return build_split_dataset(
        name=name,
        split_path=base / layout.split_file,
        image_dir=image_dir,
        templates=templates or COOP_TEMPLATES[name],
        section=name,
        folder_classes=layout.folder_classes,
        required=("train", "val", "test"),
    )


def _read_variant_list(path: Path) -> List[Tuple[str, str, int]]:
    """``(image_id, variant, line_number)`` of an ``images_variant_*.txt`` file."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        image_id, _, variant = line.partition(" ")
        variant = variant.strip()
        if not variant:
            raise DataError(f"{path.name} line {n}: expected '<image id> <variant name>', got {line!r}")
        image_id = safe_relpath(image_id, f"{path.name} line {n}")
        out.append((image_id, variant, n))
    return out


def build_fgvc_aircraft(root: Optional[Path], templates: Optional[List[str]] = None) -> FewShotDataset:
    """FGVC Aircraft (variants) from its official list files, as CoOp reads it.

    ``fgvc_aircraft/images_variant_{train,val,test}.txt`` hold lines
    ``<image id> <variant name>``; images are ``fgvc_aircraft/images/<image id>.jpg``.
    Class names are the lines of ``variants.txt`` when present (CoOp's label order,
    which is sorted), else the sorted variants found in the three lists.

    Raises:
        DataError: a missing folder or list file, a malformed line, a variant not in
            ``variants.txt``, or listed images missing.
    """
    name = section = "fgvc_aircraft"
    base = dataset_folder(root, "fgvc_aircraft", name, section, marker="images_variant_train.txt")
    image_dir = require_dir(base / "images", "fgvc_aircraft image folder", section)
    lists = {}
    for split in ("train", "val", "test"):
        path = require_file(base / f"images_variant_{split}.txt", f"fgvc_aircraft {split} list", section)
        lists[split] = (path, _read_variant_list(path))
    variants_file = base / "variants.txt"
    if variants_file.is_file():
        classnames = [v.strip() for v in variants_file.read_text(encoding="utf-8").splitlines() if v.strip()]
        dup = sorted({v for v in classnames if classnames.count(v) > 1})
        if dup:
            raise DataError(f"{variants_file}: duplicate class name(s) {', '.join(map(repr, dup[:5]))}")
    else:
        classnames = sorted({v for _, entries in lists.values() for _, v, _ in entries})
    index = {c: i for i, c in enumerate(classnames)}
    splits = {}
    for split, (path, entries) in lists.items():
        items = []
        for image_id, variant, n in entries:
            if variant not in index:
                raise DataError(
                    f"{path.name} line {n}: variant {variant!r} is not one of the {len(classnames)} classes of "
                    f"{variants_file.name} (is variants.txt from the same release?)"
                )
            items.append((f"{image_id}.jpg", index[variant]))
        spot_check_files(image_dir, items, str(path), section)
        splits[split] = FileSplit(image_dir, items)
    present = set(splits["train"].labels.tolist())
    absent = [c for c in classnames if index[c] not in present]
    if absent:
        raise DataError(
            f"{lists['train'][0]}: {len(absent)} class(es) have no training image, e.g. {absent[0]!r}"
        )
    return FewShotDataset(
        name=name,
        classnames=list(classnames),
        templates=list(templates or COOP_TEMPLATES[name]),
        train=splits["train"],
        test=splits["test"],
        val=splits["val"],
    )
