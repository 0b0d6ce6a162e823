"""User-facing errors.

Every problem caused by input the user controls (paths, configs, names, checkpoints,
data) is raised as :class:`FDAlignError` with a message that names the problem and the
fix. The CLIs print such errors as one line and exit non-zero, never a traceback.
"""

from __future__ import annotations


class FDAlignError(Exception):
    """An error in user input, reported to the user as one clear line."""


class ConfigError(FDAlignError):
    """A bad configuration key or value (YAML file or command-line flag)."""


class CheckpointError(FDAlignError):
    """A checkpoint that is missing, corrupt, not ours, or of another architecture."""


class DataError(FDAlignError):
    """A missing dataset folder or split file, a corrupt image, a label mismatch."""


class PluginError(FDAlignError):
    """An unknown, duplicate or broken plugin (adapter or dataset)."""


class TrainingError(FDAlignError):
    """Training cannot go on (for example a NaN or infinite loss)."""
