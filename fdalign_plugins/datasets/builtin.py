"""Built-in datasets, registered through the same hook a third-party plugin uses.

Only the layout tables are imported here; the loaders run when a dataset is built, so
listing datasets stays cheap. Layouts: ``docs/datasets.md``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Optional

from .. import hookimpl
from ..specs import DatasetSpec
from .coop import COOP_LAYOUTS
from .imagenet import OOD_LAYOUTS


def _lazy(module: str, func: str, *bound: Any) -> Callable[..., Any]:
    """``build(root, **options)`` calling ``module.func(*bound, root, **options)``, with the
    loader module imported only when a dataset is built (listing stays cheap)."""

    def build(root: Optional[Path], **options: Any):
        return getattr(importlib.import_module(module, __package__), func)(*bound, root, **options)

    build.__name__ = f"build_{'_'.join(str(b) for b in bound).replace('-', '_') or func}"
    return build


_world = _lazy("..world.dataset", "build_world_dataset")
_folder = _lazy(".folder", "build_folder_dataset")
_splitjson = _lazy(".splitjson", "build_splitjson_dataset")
_imagenet = _lazy(".imagenet", "build_imagenet")
_miniimagenet = _lazy(".episodic", "build_miniimagenet")
_episodic_folder = _lazy(".episodic", "build_episodic_folder")


@hookimpl
def fdalign_register_datasets(register):
    register(DatasetSpec(
        name="world",
        summary="synthetic style-shift world (embedded default): train/val/test with class-correlated contexts, "
                "OOD decorrelated and sketch",
        build=_world,
        needs_root=False,
    ))
    register(DatasetSpec(
        name="folder",
        summary="your own images: root/<class>/<image> or root/{train,val,test}/<class>/<image>",
        build=_folder,
        needs_root=True,
    ))
    register(DatasetSpec(
        name="splitjson",
        summary="your own images with a CoOp-format split file: root/images/ + root/split.json",
        build=_splitjson,
        needs_root=True,
    ))
    register(DatasetSpec(
        name="imagenet",
        summary="ImageNet (CoOp layout imagenet/images/{train,val}; val = test), OOD sets under the same root attached",
        build=_imagenet,
        needs_root=True,
    ))
    for name, layout in COOP_LAYOUTS.items():
        register(DatasetSpec(name=name, summary=layout.summary, build=_lazy(".coop", "build_coop_dataset", name),
                             needs_root=True))
    for kind, ood in OOD_LAYOUTS.items():
        register(DatasetSpec(name=kind, summary=ood.summary, build=_lazy(".imagenet", "build_imagenet_ood", kind),
                             needs_root=True))
    register(DatasetSpec(
        name="miniimagenet",
        summary="miniImageNet for N-way K-shot: train = 64 base classes, val = 16, test = 20 novel classes",
        build=_miniimagenet,
        needs_root=True,
    ))
    register(DatasetSpec(
        name="episodic_folder",
        summary="N-way K-shot test set from a class-folder tree; set_name=cub|dtd|...|sketch for the cross-domain sets",
        build=_episodic_folder,
        needs_root=True,
    ))
