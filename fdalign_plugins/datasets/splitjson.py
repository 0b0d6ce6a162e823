"""Split files in CoOp's format, the checks every file-based dataset shares, and the
generic ``splitjson`` dataset for the user's own data.

CoOp's split format (``split_zhou_<Name>.json``)::

    {"train": [[rel_path, label, classname], ...], "val": [...], "test": [...]}

with ``rel_path`` relative to the dataset's image folder. :func:`read_split_json`
validates such a file completely before anything is trained: shape, labels
(``0..C-1``, every class in ``train``), one class name per label, no duplicate class
names, paths that stay inside the image folder, and, where images sit in one folder per
class, that labels and folders agree. Every error names the file and the entry.

The helpers :func:`require_dir`, :func:`require_file`, :func:`safe_relpath` and
:func:`spot_check_files` are used by all the file-based datasets of this package;
:func:`drop_unreadable` implements the ``skip_corrupt`` path.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path, PureWindowsPath
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import DataError
from .base import FewShotDataset, FileSplit, ImageSplit, SubsetSplit
from .classnames import pretty_classname

__all__ = [
    "DOCS",
    "doc_ref",
    "require_dir",
    "require_file",
    "safe_relpath",
    "spot_check_files",
    "read_split_json",
    "build_split_dataset",
    "build_splitjson_dataset",
    "drop_unreadable",
]

#: Where the dataset layouts are documented (error messages point to its sections).
DOCS = "docs/datasets.md"

Item = Tuple[str, int]
FolderCheck = Union[bool, str]  # True, False or "auto"


def doc_ref(section: str) -> str:
    """``docs/datasets.md#<section>``, the pointer error messages end with."""
    return f"{DOCS}#{section}"


def require_dir(path: Path, what: str, section: str, hint: str = "") -> Path:
    """Return ``path`` if it is a folder, else raise a :class:`DataError` naming it.

    Args:
        path: the folder expected.
        what: what the folder is, e.g. ``"oxford_pets image folder"``.
        section: the section of ``docs/datasets.md`` that describes the layout.
        hint: an extra sentence for the message (e.g. a likely cause).
    """
    path = Path(path)
    if path.is_dir():
        return path
    found = " (a file is there, not a folder)" if path.exists() else ""
    extra = f" {hint}" if hint else ""
    raise DataError(f"{what} not found: expected the folder {path}{found}.{extra} See {doc_ref(section)}")


def require_file(path: Path, what: str, section: str, hint: str = "") -> Path:
    """Return ``path`` if it is a file, else raise a :class:`DataError` naming it."""
    path = Path(path)
    if path.is_file():
        return path
    found = " (a folder is there, not a file)" if path.exists() else ""
    extra = f" {hint}" if hint else ""
    raise DataError(f"{what} not found: expected the file {path}{found}.{extra} See {doc_ref(section)}")


_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def safe_relpath(path: Any, where: str) -> str:
    """Validate a relative image path read from a split or list file.

    Paths must stay inside the folder they are relative to: absolute paths, drive
    letters and ``..`` components are refused, since a split file downloaded from
    elsewhere must not make the program read arbitrary files.

    Args:
        path: the value read from the file.
        where: the file and entry, for the message (``"split.json: train[3]"``).

    Returns:
        The path with ``/`` separators and without empty or ``.`` components.
    """
    if not isinstance(path, str) or not path.strip():
        raise DataError(f"{where}: the image path must be a non-empty string, got {path!r}")
    if "\0" in path:
        raise DataError(f"{where}: the image path {path!r} contains a NUL character")
    unified = path.replace("\\", "/")
    if unified.startswith("/") or _DRIVE_RE.match(unified) or PureWindowsPath(path).is_absolute():
        raise DataError(
            f"{where}: absolute image path {path!r} refused; paths in split files must be relative "
            "to the dataset's image folder"
        )
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"{where}: image path {path!r} refused: '..' would leave the dataset's image folder")
    if not parts:
        raise DataError(f"{where}: the image path {path!r} names no file")
    return "/".join(parts)


def spot_check_files(root: Path, items: Sequence[Item], source: str, section: str, samples: int = 8) -> None:
    """Check that a few evenly spaced listed images exist under ``root``.

    A full check would stat every file (slow on network disks) and unreadable files are
    caught later by ``check_images``; a handful is enough to catch a wrong image folder
    or a split file of another version at load time.

    Raises:
        DataError: naming the missing paths, the folder and the split file.
    """
    if not items:
        return
    n = len(items)
    k = min(samples, n)
    picks = sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})
    missing = [str(Path(root) / items[i][0]) for i in picks if not (Path(root) / items[i][0]).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(picks)} images checked from {source} are missing, e.g. {missing[0]}; "
            f"is {root} the right image folder for this split file? See {doc_ref(section)}"
        )


def _entry_repr(entry: Any) -> str:
    text = json.dumps(entry) if isinstance(entry, (list, tuple, dict, str, int, float)) else repr(entry)
    return text if len(text) <= 120 else text[:117] + "..."


def _parent(rel_path: str) -> str:
    return rel_path.rsplit("/", 1)[0] if "/" in rel_path else ""


def read_split_json(
    path: Path,
    splits: Sequence[str] = ("train", "val", "test"),
    required: Sequence[str] = ("train", "test"),
    folder_classes: FolderCheck = "auto",
) -> Tuple[List[str], Dict[str, List[Item]]]:
    """Read and validate a split file in CoOp's format.

    Args:
        path: the JSON file.
        splits: the split names read (others are ignored).
        required: the splits that must be present (the others may be missing).
        folder_classes: whether images sit in one folder per class (the folder holding
            each image identifies its class): ``True`` checks that labels and folders
            correspond one to one, ``False`` skips it, ``"auto"`` checks when every
            image is in a sub-folder and there are as many folders as classes.

    Returns:
        ``(classnames, items)``: the class names by label as written in the file, and
        per split present a list of ``(rel_path, label)``.

    Raises:
        DataError: on a file that is not JSON, of the wrong shape, with labels out of
            range or not contiguous, a label with two class names, a class name with two
            labels, a class with no training image, a path leaving the image folder, or
            labels disagreeing with class folders. The message names the entry.
    """
    path = Path(path)
    name = path.name
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: expected a JSON object {{\"train\": [...], \"val\": [...], \"test\": [...]}}, "
            f"got {type(data).__name__}"
        )
    missing = [s for s in required if s not in data]
    if missing:
        raise DataError(
            f"{path}: missing the split(s) {', '.join(repr(s) for s in missing)}; "
            f"present: {', '.join(map(repr, data)) or '(none)'}"
        )

    names: Dict[int, Tuple[str, str]] = {}  # label -> (class name, first entry naming it)
    items: Dict[str, List[Item]] = {}
    for split in splits:
        if split not in data:
            continue
        entries = data[split]
        if not isinstance(entries, list):
            raise DataError(
                f"{path}: {split!r} must be a list of [rel_path, label, classname], got {type(entries).__name__}"
            )
        out: List[Item] = []
        for i, entry in enumerate(entries):
            entry_id = f"{split}[{i}]"
            where = f"{name}: {entry_id}"
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise DataError(f"{where} = {_entry_repr(entry)}: expected [rel_path, label, classname]")
            rel, label, cname = entry
            rel = safe_relpath(rel, where)
            if isinstance(label, bool) or not isinstance(label, int):
                raise DataError(f"{where} = {_entry_repr(entry)}: the label must be an integer, got {label!r}")
            if label < 0:
                raise DataError(f"{where} = {_entry_repr(entry)}: label {label} is out of range (labels start at 0)")
            if not isinstance(cname, str) or not cname.strip():
                raise DataError(f"{where} = {_entry_repr(entry)}: the class name must be a non-empty string")
            seen = names.get(label)
            if seen is None:
                names[label] = (cname, entry_id)
            elif seen[0] != cname:
                raise DataError(
                    f"{where} gives label {label} the class name {cname!r} but {seen[1]} named it {seen[0]!r}: "
                    "each label must have one class name"
                )
            out.append((rel, label))
        items[split] = out

    if not names:
        raise DataError(f"{path}: no entries in {', '.join(s for s in splits if s in data)}")
    num_classes = max(names) + 1
    if len(names) != num_classes:
        gaps: List[int] = []
        c = 0
        while len(gaps) < 10 and c < num_classes:  # not range(num_classes): a label may be huge
            if c not in names:
                gaps.append(c)
            c += 1
        more = num_classes - len(names) - len(gaps)
        shown = ", ".join(map(str, gaps)) + (f" and {more} more" if more > 0 else "")
        raise DataError(
            f"{path}: labels must run 0..C-1 without gaps; label(s) {shown} have no entry "
            f"(the largest label, {num_classes - 1}, is used by {names[num_classes - 1][1]})"
        )
    classnames = [names[c][0] for c in range(num_classes)]

    by_pretty: Dict[str, int] = {}
    for c, cname in enumerate(classnames):
        key = pretty_classname(cname).lower()
        if key in by_pretty:
            other = by_pretty[key]
            raise DataError(
                f"{path}: duplicate class name: label {other} ({classnames[other]!r}, {names[other][1]}) and "
                f"label {c} ({cname!r}, {names[c][1]}) name the same class; class names must be unique"
            )
        by_pretty[key] = c

    in_train = {lbl for _, lbl in items.get("train", [])}
    absent = [c for c in range(num_classes) if c not in in_train]
    if "train" in items and absent:
        c = absent[0]
        raise DataError(
            f"{path}: {len(absent)} class(es) have no training image, e.g. {classnames[c]!r} (label {c}, "
            f"named in {names[c][1]}); every class needs images in 'train'"
        )

    _check_folders(path, items, classnames, folder_classes)
    return classnames, items


def _check_folders(path: Path, items: Dict[str, List[Item]], classnames: List[str], mode: FolderCheck) -> None:
    """Labels and class folders must correspond one to one (see :func:`read_split_json`)."""
    if mode is False:
        return
    flat = [(split, i, rel) for split, its in items.items() for i, (rel, _) in enumerate(its) if not _parent(rel)]
    if mode == "auto":
        if flat:
            return
        folders = {_parent(rel) for its in items.values() for rel, _ in its}
        if len(folders) != len(classnames):
            return
    elif flat:
        split, i, rel = flat[0]
        raise DataError(
            f"{path.name}: {split}[{i}] = {rel!r} is not inside a class folder; this dataset keeps one "
            "folder per class (is this the right split file?)"
        )
    folder_of: Dict[int, Tuple[str, str]] = {}
    label_of: Dict[str, Tuple[int, str]] = {}
    for split, its in items.items():
        for i, (rel, label) in enumerate(its):
            where = f"{split}[{i}]"
            folder = _parent(rel)
            seen = folder_of.setdefault(label, (folder, where))
            if seen[0] != folder:
                raise DataError(
                    f"{path.name}: {where} puts {rel!r} in class {classnames[label]!r} (label {label}), but "
                    f"{seen[1]} has that class in the folder {seen[0]!r}: the split file's labels disagree with "
                    "the class folders"
                )
            owner = label_of.setdefault(folder, (label, where))
            if owner[0] != label:
                raise DataError(
                    f"{path.name}: the folder {folder!r} holds class {classnames[owner[0]]!r} (label {owner[0]}, "
                    f"{owner[1]}) and class {classnames[label]!r} (label {label}, {where}): the split file's "
                    "class names disagree with the class folders"
                )


def build_split_dataset(
    name: str,
    split_path: Path,
    image_dir: Path,
    templates: List[str],
    section: str,
    folder_classes: FolderCheck = "auto",
    required: Sequence[str] = ("train", "test"),
) -> FewShotDataset:
    """A :class:`FewShotDataset` from a CoOp-format split file and its image folder.

    Class names are taken from the split file (by label) with underscores turned into
    spaces, as CoOp does before building prompts. A missing ``"val"`` split gives
    ``val=None`` (the few-shot validation set is then drawn from ``train``).

    Raises:
        DataError: missing image folder or split file, or any problem listed in
            :func:`read_split_json`, or listed images missing from ``image_dir``.
    """
    require_dir(image_dir, f"{name} image folder", section)
    require_file(split_path, f"{name} split file", section)
    raw, items = read_split_json(split_path, folder_classes=folder_classes, required=required)
    for split, its in items.items():
        spot_check_files(image_dir, its, f"{split_path} ({split})", section)
    splits = {s: FileSplit(image_dir, its) for s, its in items.items()}
    return FewShotDataset(
        name=name,
        classnames=[pretty_classname(c) for c in raw],
        templates=list(templates),
        train=splits["train"],
        test=splits["test"],
        val=splits.get("val"),
    )


def build_splitjson_dataset(
    root: Optional[Path],
    name: str = "splitjson",
    templates: Optional[List[str]] = None,
    split_file: str = "split.json",
    image_dir: str = "images",
) -> FewShotDataset:
    """The generic split-file dataset: ``root/images/`` + ``root/split.json``.

    Args:
        root: the dataset folder (``--data-root``).
        name: the dataset name used in results and for adapters' per-dataset defaults.
        templates: prompt templates (default ``["a photo of a {}."]``).
        split_file: the split file, relative to ``root``.
        image_dir: the image folder the split file's paths are relative to, relative to
            ``root`` (``"."`` for ``root`` itself).
    """
    section = "splitjson"
    if root is None:
        raise DataError(f"the splitjson dataset needs a data root: --data-root PATH (see {doc_ref(section)})")
    root = Path(root)
    require_dir(root, "splitjson dataset folder", section)
    split_rel = safe_relpath(split_file, "option split_file")
    images_rel = "." if image_dir in (".", "") else safe_relpath(image_dir, "option image_dir")
    return build_split_dataset(
        name=name,
        split_path=root / split_rel,
        image_dir=root / images_rel,
        templates=templates or ["a photo of a {}."],
        section=section,
        folder_classes="auto",
    )


def drop_unreadable(split: ImageSplit, what: str = "", show: int = 3) -> Tuple[ImageSplit, List[str]]:
    """Load every image of ``split`` once and leave out the ones that cannot be read.

    The ``skip_corrupt`` alternative to ``check_images``: instead of failing, warn with
    the first few paths and the count, and go on without them.

    Args:
        split: the split to check.
        what: a name for the split in the warning (e.g. ``"the 16-shot support set"``).
        show: how many paths the warning lists.

    Returns:
        ``(split_without_bad, bad)``: a :class:`SubsetSplit` of the readable images (the
        unchanged ``split`` itself if every image reads, so cache keys stay the same),
        and the descriptions (paths) of the unreadable ones.
    """
    bad_idx: List[int] = []
    reasons: List[str] = []
    for i in range(len(split)):
        try:
            split.load(i)
        except DataError as exc:
            bad_idx.append(i)
            reasons.append(str(exc))
    if not bad_idx:
        return split, []
    bad = [split.describe(i) for i in bad_idx]
    banned = set(bad_idx)
    kept = SubsetSplit(split, [i for i in range(len(split)) if i not in banned])
    where = f" in {what}" if what else ""
    more = f" (and {len(bad) - show} more)" if len(bad) > show else ""
    warnings.warn(
        f"skipping {len(bad)} unreadable image(s){where}: {'; '.join(reasons[:show])}{more}",
        stacklevel=2,
    )
    return kept, bad
