"""The plugin host's public face: the registry of adapters, datasets and methods.

Everything here lives in :mod:`fdalign_plugins.registry` (a bottom layer, so that the
datasets, the config and the trainer can look names up without importing upward) and
is re-exported unchanged; this is the import path plugin authors and the CLIs use. See
:mod:`fdalign_plugins.registry` for how plugins are loaded and collected.
"""

from __future__ import annotations

from typing import Any

from .adapter_api import Adapter
from .registry import (
    ADAPTER_GROUP,
    BUILTIN_PLUGIN_MODULES,
    DATASET_GROUP,
    ENTRY_POINT_GROUPS,
    METHOD_GROUP,
    NO_EXTERNAL_ENV,
    OWN_DISTRIBUTION,
    PROJECT_NAME,
    BrokenPlugin,
    FDAlignPluginManager,
    _manager,
    broken_plugins,
    declare_method_suffix,
    format_listing,
    get_adapter_spec,
    get_dataset_spec,
    get_method_spec,
    get_plugin_manager,
    list_adapters,
    list_datasets,
    list_methods,
    reset_plugin_manager,
)

__all__ = [
    "ADAPTER_GROUP",
    "BUILTIN_PLUGIN_MODULES",
    "DATASET_GROUP",
    "ENTRY_POINT_GROUPS",
    "METHOD_GROUP",
    "NO_EXTERNAL_ENV",
    "OWN_DISTRIBUTION",
    "PROJECT_NAME",
    "BrokenPlugin",
    "FDAlignPluginManager",
    "_manager",
    "broken_plugins",
    "create_adapter",
    "declare_method_suffix",
    "format_listing",
    "get_adapter_spec",
    "get_dataset_spec",
    "get_method_spec",
    "list_methods",
    "get_plugin_manager",
    "list_adapters",
    "list_datasets",
    "reset_plugin_manager",
]


def create_adapter(name: str, **hparams: Any) -> Adapter:
    """Create adapter ``name`` with explicit hyper-parameters.

    Raises:
        PluginError: unknown adapter name.
        FDAlignError: unknown hyper-parameter name (the message lists the valid ones).
    """
    return _manager().create_adapter(name, **hparams)
