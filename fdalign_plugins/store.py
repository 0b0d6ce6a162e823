"""The shared, content-addressed store of fine-tuned encoders and extracted features.

Every run folder of ``fdalign-bench`` uses one store (``--cache-dir``, default
``$FDALIGN_STORE``, else ``$FDALIGN_CACHE/store``, else ``~/.cache/fdalign/store``):

* ``features/<2 hex>/<key>.safetensors`` — see :class:`fdalign_plugins.features.FeatureCache`;
  the key hashes the encoder's weights, the images, the transform, view and seed.
* ``encoders/<kind>-<K>shot-seed<S>-<hash>/`` — FD-Align (and β = 0) checkpoints and
  their training state; the hash covers the resolved fine-tuning config, the training
  images and the support indices.

A run folder holds its records, reports and a link ``encoders/<name>`` to each
encoder it used. So a second command that differs only in what does not change an
encoder or a feature — more adapters, another shot list that overlaps, another run
folder — fine-tunes and extracts only what is genuinely new.

Entries are marked as used (their modification time) whenever they are read, so
:func:`prune` can drop what no run has touched for a while.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

#: Environment variable naming the store folder (overrides ``$FDALIGN_CACHE/store``).
STORE_ENV = "FDALIGN_STORE"


def default_store_root() -> Path:
    """``$FDALIGN_STORE``, else ``$FDALIGN_CACHE/store``, else ``~/.cache/fdalign/store``."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser()
    base = os.environ.get("FDALIGN_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "fdalign") / "store"


class Store:
    """The store folder and its two parts.

    Args:
        root: the store folder; ``None`` for :func:`default_store_root`.
    """

    def __init__(self, root: Optional[Union[str, Path]] = None):
        self.root = Path(root).expanduser() if root else default_store_root()
        self.features = self.root / "features"
        self.encoders = self.root / "encoders"

    def encoder_dir(self, name: str) -> Path:
        """The folder of the encoder called ``name`` (content-keyed by the caller)."""
        return self.encoders / name

    @contextlib.contextmanager
    def lock(self, name: str, log: Callable[[str], None] = lambda s: None) -> Iterator[None]:
        """Hold an exclusive lock on encoder ``name`` while it is fine-tuned, so two runs
        sharing the store never train the same encoder into the same folder at once."""
        import fcntl

        self.encoders.mkdir(parents=True, exist_ok=True)
        with open(self.encoders / f".{name}.lock", "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"waiting for another run that is fine-tuning the same encoder ({name})")
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def touch(path: Path) -> None:
    """Mark a store entry as used now (for :func:`prune`); read-only stores are fine."""
    try:
        os.utime(path)
    except OSError:
        pass


def link_into(run_folder: Path, target: Path) -> Path:
    """Make ``run_folder/encoders/<target name>`` point at the store's ``target``.

    A symbolic link where the file system allows one, else a text file holding the path.

    Returns:
        The link's path.
    """
    link = Path(run_folder) / "encoders" / target.name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():  # a run folder from before the shared store: keep its own copy
        return link
    try:
        link.symlink_to(target.resolve(), target_is_directory=True)
    except OSError:
        link.write_text(str(target.resolve()) + "\n")
    return link


@dataclass
class Usage:
    """What the store holds."""

    root: Path
    feature_entries: int = 0
    feature_bytes: int = 0
    encoders: int = 0
    encoders_unfinished: int = 0
    encoder_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.feature_bytes + self.encoder_bytes

    def text(self) -> str:
        """The size report ``fdalign-bench --store-size`` prints."""
        unfinished = (f", {self.encoders_unfinished} unfinished (training state only)"
                      if self.encoders_unfinished else "")
        return (f"store {self.root}\n"
                f"  features: {self.feature_entries} entries, {_mb(self.feature_bytes)}\n"
                f"  encoders: {self.encoders} folders{unfinished}, {_mb(self.encoder_bytes)}\n"
                f"  total:    {_mb(self.total_bytes)}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def usage(store: Store) -> Usage:
    """Count and size the store's feature entries and encoder folders."""
    from .checkpoint import WEIGHTS_NAME

    u = Usage(store.root)
    if store.features.is_dir():
        for p in store.features.rglob("*.safetensors"):
            u.feature_entries += 1
            u.feature_bytes += p.stat().st_size
    if store.encoders.is_dir():
        for d in store.encoders.iterdir():
            if d.is_dir():
                u.encoders += 1
                u.encoders_unfinished += not (d / WEIGHTS_NAME).is_file()
                u.encoder_bytes += _tree_bytes(d)
    return u


def _last_use(path: Path) -> float:
    if path.is_dir():
        times = [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
        return max(times, default=path.stat().st_mtime)
    return path.stat().st_mtime


def prune(store: Store, older_than_days: float, now: Optional[float] = None) -> Usage:
    """Remove entries no run has read or written for ``older_than_days`` days (0: all).

    Run folders' links to a removed encoder dangle; the run that needs it again
    fine-tunes it again. Encoders being fine-tuned right now are skipped (locked).

    Returns:
        What was removed (counts and bytes).
    """
    import fcntl

    if older_than_days < 0:
        from .errors import ConfigError

        raise ConfigError(f"--prune needs a number of days >= 0, got {older_than_days}")
    cutoff = (time.time() if now is None else now) - older_than_days * 86400
    gone = Usage(store.root)
    if store.features.is_dir():
        for p in list(store.features.rglob("*.safetensors")) + list(store.features.rglob("*.tmp")):
            if older_than_days == 0 or p.stat().st_mtime < cutoff:
                gone.feature_entries += p.suffix == ".safetensors"
                gone.feature_bytes += p.stat().st_size
                p.unlink()
    if store.encoders.is_dir():
        for d in [d for d in store.encoders.iterdir() if d.is_dir()]:
            if older_than_days and _last_use(d) >= cutoff:
                continue
            with open(store.encoders / f".{d.name}.lock", "a+b") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being fine-tuned now
                gone.encoders += 1
                gone.encoder_bytes += _tree_bytes(d)
                shutil.rmtree(d)
                fcntl.flock(fh, fcntl.LOCK_UN)
            (store.encoders / f".{d.name}.lock").unlink(missing_ok=True)
    return gone
