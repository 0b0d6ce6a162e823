"""Datasets: the data contract, few-shot sampling, and loading by registered name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

from ..errors import ConfigError, DataError
from ..registry import get_dataset_spec
from .base import ArraySplit, FewShotDataset, FileSplit, ImageSplit, SubsetSplit
from .episodic import sample_episode
from .sampling import FewShotSplit, few_shot_split, sample_per_class
from .splitjson import drop_unreadable

__all__ = [
    "ArraySplit", "FewShotDataset", "FileSplit", "ImageSplit", "SubsetSplit",
    "FewShotSplit", "few_shot_split", "sample_per_class", "load_dataset", "check_images", "drop_unreadable",
    "sample_episode",
]


def load_dataset(name: str, root: Optional[str] = None, /, **options: Any) -> FewShotDataset:
    """Build the dataset registered as ``name`` (built-in or plugin).

    Raises:
        PluginError: unknown name (the message lists the valid ones).
        DataError: the dataset needs ``root`` and none was given, its files are missing,
            or it has fewer than 2 classes.
    """
    spec = get_dataset_spec(name)
    if spec.needs_root and not root:
        raise DataError(f"dataset {name!r} needs a data root: pass --data-root PATH (see docs/datasets.md)")
    try:
        ds = spec.build(Path(root) if root else None, **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            bad = str(exc).split("unexpected keyword argument")[-1].strip()
            raise ConfigError(f"dataset {name!r} does not take the option {bad} (dataset_options)") from None
        raise
    if ds.num_classes < 2:  # one class: every prediction is right, every number meaningless
        raise DataError(f"dataset {name!r} has {ds.num_classes} class(es) ({', '.join(ds.classnames) or 'none'}); "
                        "few-shot classification needs at least 2 classes")
    return ds


def check_images(split: ImageSplit, what: str, limit: Optional[int] = None) -> List[str]:
    """Load every image of ``split`` once; raise :class:`DataError` listing unreadable ones.

    Run before training so a corrupt file fails in seconds, not after an hour.
    """
    bad = []
    n = len(split) if limit is None else min(limit, len(split))
    for i in range(n):
        try:
            split.load(i)
        except DataError as exc:
            bad.append(str(exc))
    if bad:
        shown = "; ".join(bad[:3])
        raise DataError(f"{len(bad)} unreadable image(s) in {what}: {shown}{' ...' if len(bad) > 3 else ''}")
    return bad
