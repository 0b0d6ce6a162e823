"""The run context both bench modes share.

A :class:`RunContext` holds what every mode needs and nothing a mode decides:
the resolved :class:`BenchConfig`, the run folder, the device and thread count, the
results file and the shared store's feature cache (:meth:`RunContext.open_stores`), the
log, and the run's :class:`RunSummary`. It provisions encoders the same way for every
mode (:meth:`RunContext.provide_encoder`: a folder in the shared store keyed by
everything that decides the weights, a lock, reuse or training, a link from the run
folder, the fine-tuning verdict flagged) and builds the fields every record shares
(:meth:`RunContext.record_fields`).

The modes (:mod:`.standard`, ``mode: adapters``: adapters on CoOp-style few-shot splits;
:mod:`.episodic`, ``mode: episodic``: N-way K-shot) import this module; it imports no
mode. A run's ``protocol`` is its selection rule (:data:`PROTOCOLS`), whatever the mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from ..checkpoint import WEIGHTS_NAME, load_encoder_into
from ..config import (  # noqa: F401  (BenchConfig and its helpers live with every config section; re-exported)
    DEFAULT_METHOD,
    MODES,
    PROTOCOLS,
    REFERENCE_WARNING,
    BenchConfig,
    FinetuneConfig,
    resolve_adapters,
    to_dict,
)
from ..distributed import is_main
from ..errors import ConfigError
from ..features import FeatureCache
from ..models import ClipBundle
from ..results import ENCODER_FDALIGN, ResultsFile, software_versions
from ..store import Store, link_into, touch
from ..threads import ThreadChoice, apply_threads, choose_threads
from ..trainer import resolve_device

def method_label(method: str) -> str:
    """The encoder label of a fine-tuning method in records and tables (``fd-align`` -> ``fdalign``)."""
    return ENCODER_FDALIGN if method == DEFAULT_METHOD else method


def default_out(cfg: BenchConfig) -> Path:
    """A deterministic run folder: the same command resumes in the same place."""
    d = to_dict(cfg)
    # a renamed fine-tuning key hashes under its old name, so a command from before the rename finds its folder
    old_name = {new: old for old, (new, _why) in FinetuneConfig.RENAMED.items()}
    d["finetune"] = {old_name.get(k, k): v for k, v in d["finetune"].items()}
    h = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path("runs") / f"bench-{cfg.dataset}-{h}"


def thread_mismatch(meta: Mapping[str, Any], threads: int) -> str:
    """What to say when a stored encoder was fine-tuned with another thread count than
    this run's (``""`` when it was not, or when its sidecar predates the field): the
    count changes the order of floating-point sums, and fine-tuning can amplify that
    beyond the last digits, so the records follow the encoder's count, not this run's."""
    trained = meta.get("train_threads")
    if trained is None or int(trained) == int(threads):
        return ""
    return (f"reused an encoder fine-tuned with {int(trained)} thread(s) while this run uses {int(threads)}: its "
            f"numbers are those of a {int(trained)}-thread fine-tuning (--cache-dir DIR with an empty folder, or "
            "--prune 0, fine-tunes it again)")


def platform_info(device: torch.device) -> Dict[str, Any]:
    """What a record's numbers depend on beyond the command: threads, torch build, CPU, device."""
    info: Dict[str, Any] = {"threads": torch.get_num_threads(), "torch_git": torch.version.git_version,
                            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "machine": platform.machine(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


@dataclass
class RunSummary:
    """What a run did: records written and skipped, cache counters, wall time."""

    written: int = 0
    skipped: int = 0
    failed: int = 0
    finetuned: int = 0
    flagged: List[str] = field(default_factory=list)  # fine-tuning runs validation rejected or that collapsed
    notes: List[str] = field(default_factory=list)  # reused encoders trained with another thread count
    seconds: float = 0.0
    cache: Any = None
    out: Optional[Path] = None


def parse_shard(shard) -> Tuple[int, int]:
    """``"i/n"`` or ``(i, n)`` -> ``(i, n)`` with ``0 <= i < n``; a clear error otherwise."""
    if isinstance(shard, str):
        parts = shard.split("/")
        try:
            i, n = (int(parts[0]), int(parts[1])) if len(parts) == 2 else (None, None)
        except ValueError:
            i, n = None, None
        if i is None:
            raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}")
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard i/n needs n >= 1 and 0 <= i < n, got {i}/{n}")
    return int(i), int(n)


def results_name(shard: Optional[Tuple[int, int]]) -> str:
    """``results.jsonl``, or ``results-shard<i>of<n>.jsonl`` for a shard."""
    return "results.jsonl" if shard is None else f"results-shard{shard[0]}of{shard[1]}.jsonl"


class RunContext:
    """What a bench run shares across modes; see the module docstring.

    Args:
        cfg: the resolved config (validated again here).
        out: run folder (``results.jsonl``, tables, links ``encoders/<name>`` into the
            shared store that ``cfg.cache_dir`` names; see :mod:`fdalign_plugins.store`).
        log: receives one line per finished record and per stage.
        progress: ``True`` progress bars, ``"plain"`` progress lines (off a terminal),
            ``False`` none (see :mod:`fdalign_plugins.progress`).
        stop_after_records: raise ``KeyboardInterrupt`` after writing this many records
            (tests use it to simulate an interruption).
        shard: ``"i/n"`` or ``(i, n)``: run only that shard of the work items.
    """

    def __init__(self, cfg: BenchConfig, out: Path, log: Callable[[str], None] = print, progress: Any = False,
                 stop_after_records: Optional[int] = None, shard: Optional[Tuple[int, int]] = None):
        from ..preflight import check_encoder_file, check_model_source, check_output_folder

        self.cfg = cfg.validate()
        self.out = Path(out)
        self.shard = parse_shard(shard) if shard is not None else None
        self.log = log
        self.progress = progress
        self.stop_after = stop_after_records
        # everything a run reads or writes is checked before any model is loaded
        check_model_source(cfg.model, cfg.pretrained)
        if cfg.encoder:
            check_encoder_file(cfg.encoder)
        self.device = resolve_device(cfg.device)
        check_output_folder(self.out, "--out")
        self.store = Store(cfg.cache_dir)  # encoders and features, shared by every run folder
        check_output_folder(self.store.root, "--cache-dir")
        self.summary = RunSummary(out=self.out)
        self.threads: Optional[ThreadChoice] = None

    def set_threads(self) -> ThreadChoice:
        """Choose and apply the thread count (:mod:`fdalign_plugins.threads`) and say so."""
        self.threads = choose_threads(self.cfg.threads)
        apply_threads(self.threads)
        self.log(self.threads.describe())
        return self.threads

    def open_stores(self, results_file: str) -> Tuple[ResultsFile, FeatureCache]:
        """The run's results file and the shared store's feature cache (see :mod:`fdalign_plugins.store`)."""
        cfg = self.cfg
        cache = FeatureCache(self.store.features, batch_size=cfg.batch_size,
                             workers=cfg.workers, device=self.device, progress=self.progress)
        self.summary.cache = cache.stats
        return ResultsFile(self.out / results_file), cache

    # ------------------------------------------------------------------ encoders
    def encoder_dir(self, name: str, key: Mapping[str, Any]) -> Path:
        """The folder in the shared store of the encoder ``key`` decides (``<name>-<hash of key>``)."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return self.store.encoder_dir(f"{name}-{digest}")

    def provide_encoder(self, bundle: ClipBundle, d: Path, label: str,
                        train: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        """Load the encoder of store folder ``d`` into ``bundle``, training it first (``train``,
        which writes ``d``) if the store does not hold it; link it into the run folder and
        flag a fine-tuning run that validation rejected or that collapsed.

        Args:
            bundle: the stock model, changed in place.
            d: the encoder's store folder (:meth:`encoder_dir`).
            label: how the log and the summary name this encoder.
            train: fine-tunes ``bundle`` and writes ``d``; returns the sidecar metadata.

        Returns:
            The encoder's sidecar metadata.
        """
        # rank 0 alone takes the lock: under torchrun every rank must enter the training together
        with self.store.lock(d.name, log=self.log) if is_main() else contextlib.nullcontext():
            if (d / WEIGHTS_NAME).is_file():
                meta = load_encoder_into(bundle.model, d)
                touch(d / WEIGHTS_NAME)
                self.log(f"  reusing {label} encoder {d}")
                note = thread_mismatch(meta, torch.get_num_threads())
                if note:
                    self.summary.notes.append(f"{label}: {note}")
            else:
                meta = train()
                self.summary.finetuned += 1
        if is_main():
            link_into(self.out, d)
        status = meta.get("finetune_verdict", "ok")
        if status != "ok":
            self.summary.flagged.append(f"{label}: {status} ({meta.get('finetune_verdict_reason')})")
        return meta

    # ------------------------------------------------------------------ records
    def record_fields(self, dataset: str, adapter: str, encoder: str, shots: int, seed: int,
                      fingerprint: str) -> Dict[str, Any]:
        """The fields every record has, whatever the mode: its key (dataset, adapter,
        encoder, shots, seed), the encoder's weight fingerprint, the selection rule
        (``protocol``) and the ``mode``, the resolved config, software versions and platform."""
        cfg = self.cfg
        return {"dataset": dataset, "adapter": adapter, "encoder": encoder, "shots": shots, "seed": seed,
                "encoder_fingerprint": fingerprint, "protocol": cfg.protocol, "mode": cfg.mode,
                "config": to_dict(cfg), "versions": software_versions(), "platform": platform_info(self.device)}
