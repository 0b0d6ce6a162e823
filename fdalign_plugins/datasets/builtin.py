"""Built-in datasets, registered through the same hook a third-party plugin uses.

Only the layout tables are imported here; the loaders run when a dataset is built, so
listing datasets stays cheap. Layouts: ``docs/datasets.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from .. import hookimpl
from ..adapter_api import DatasetSpec
from .coop import COOP_LAYOUTS
from .imagenet import OOD_LAYOUTS


def _world(root: Optional[Path], **options: Any):
    from ..world.dataset import build_world_dataset

    return build_world_dataset(root, **options)


def _folder(root: Optional[Path], **options: Any):
    from .folder import build_folder_dataset

    return build_folder_dataset(root, **options)


def _splitjson(root: Optional[Path], **options: Any):
    from .splitjson import build_splitjson_dataset

    return build_splitjson_dataset(root, **options)


def _coop(name: str) -> Callable[..., Any]:
    def build(root: Optional[Path], templates: Optional[list] = None):
        from .coop import build_coop_dataset

        return build_coop_dataset(name, root, templates=templates)

    build.__name__ = f"build_{name}"
    return build


def _imagenet(root: Optional[Path], **options: Any):
    from .imagenet import build_imagenet

    return build_imagenet(root, **options)


def _imagenet_ood(kind: str) -> Callable[..., Any]:
    def build(root: Optional[Path], templates: Optional[list] = None):
        from .imagenet import build_imagenet_ood

        return build_imagenet_ood(kind, root, templates=templates)

    build.__name__ = f"build_{kind.replace('-', '_')}"
    return build


def _miniimagenet(root: Optional[Path], **options: Any):
    from .episodic import build_miniimagenet

    return build_miniimagenet(root, **options)


def _episodic_folder(root: Optional[Path], **options: Any):
    from .episodic import build_episodic_folder

    return build_episodic_folder(root, **options)


@hookimpl
def fdalign_register_datasets(register):
    register(DatasetSpec(
        name="world",
        summary="synthetic style-shift world (embedded default): in-distribution train/val/test, OOD sketch and resampled",
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
        register(DatasetSpec(name=name, summary=layout.summary, build=_coop(name), needs_root=True))
    for kind, ood in OOD_LAYOUTS.items():
        register(DatasetSpec(name=kind, summary=ood.summary, build=_imagenet_ood(kind), needs_root=True))
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
