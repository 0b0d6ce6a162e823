"""Built-in datasets, registered through the same hook a third-party plugin uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .. import hookimpl
from ..adapter_api import DatasetSpec


def _world(root: Optional[Path], **options: Any):
    from ..world.dataset import build_world_dataset

    return build_world_dataset(root, **options)


def _folder(root: Optional[Path], **options: Any):
    from .folder import build_folder_dataset

    return build_folder_dataset(root, **options)


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
