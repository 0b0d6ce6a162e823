"""fdalign-plugins: FD-Align fine-tuning of CLIP and few-shot adapter plugins."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: The one marker plugins use to implement hooks (``@hookimpl``). A plugin that builds
#: its own marker with another project name is silently ignored by pluggy.
hookimpl = pluggy.HookimplMarker("fdalign")

from .errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    FDAlignError,
    PluginError,
    TrainingError,
)

__all__ = [
    "__version__",
    "hookimpl",
    "FDAlignError",
    "ConfigError",
    "CheckpointError",
    "DataError",
    "PluginError",
    "TrainingError",
]
