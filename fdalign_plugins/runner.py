"""The benchmark runner: baseline vs "+ FD-Align" for every requested adapter.

For each (dataset, seed, shots) work item: sample the few-shot split; obtain the FD-Align
encoder (fine-tune, reuse a checkpoint made with the same resolved config, or take the
user's); extract features with the stock and fine-tuned encoders (test, OOD sets,
few-shot validation, ``V`` augmented views of the support set) through the on-disk
cache; build the text classifier; fit each adapter (it searches on validation) and
evaluate on test and OOD sets. Every finished (dataset, adapter, encoder, shots, seed)
appends one record to ``results.jsonl`` and writes its test predictions under
``predictions/``; a re-run skips what is there.

A record depends only on the command, the thread count and the platform it stores
(``platform``): wall times go to ``timings.jsonl`` instead, so the same command with the
same thread count on the same machine writes byte-identical records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import predictions as preds_io
from .checkpoint import WEIGHTS_NAME, load_encoder_into
from .config import FinetuneConfig, build_config, coerce_layer, to_dict
from .datasets import check_images, drop_unreadable, few_shot_split, load_dataset
from .datasets.base import FewShotDataset
from .distributed import is_main
from .errors import ConfigError
from .features import CacheStats, FeatureCache
from .models import DEFAULT_MODEL, ClipBundle, load_clip, state_fingerprint
from .preflight import names_not_run
from .ops import normalise, top1_accuracy
from .prompts import text_classifier
# Encoder labels live with the records (results.py) so the episodic protocol shares them without importing
# this module; re-exported here, their old home.
from .results import (
    ENCODER_CLIP, ENCODER_FDALIGN, ENCODER_FINETUNE, ENCODERS, ResultsFile, record_key, software_versions,
)
from .store import Store
from .threads import ThreadChoice, apply_threads, choose_threads
from .trainer import finetune, resolve_device

#: ``standard``: everything selected on a held-out few-shot validation split.
#: ``reference``: the released code's choices (KL direction, linear head, and model and
#: hyper-parameter selection on the TEST set); every output made with it says so.
PROTOCOLS = ("standard", "reference")
REFERENCE_WARNING = ("REFERENCE PROTOCOL (mimics the released code): epochs and hyper-parameters were selected on "
                     "the TEST set; these numbers are not held-out estimates.")

#: The default fine-tuning method; its encoder keeps the label ``fdalign`` in records and tables.
DEFAULT_METHOD = "fd-align"


def method_label(method: str) -> str:
    """The encoder label of a fine-tuning method in records and tables (``fd-align`` -> ``fdalign``)."""
    return ENCODER_FDALIGN if method == DEFAULT_METHOD else method


@dataclass
class BenchConfig:
    """Everything that decides a benchmark run (flags > YAML > these defaults)."""

    adapters: List[str] = field(default_factory=lambda: ["tip-f"])
    shots: List[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    dataset: str = "world"
    data_root: Optional[str] = None
    ood: Optional[List[str]] = None
    model: str = DEFAULT_MODEL
    pretrained: Optional[str] = None
    encoder: Optional[str] = None
    encoders: List[str] = field(default_factory=lambda: [ENCODER_CLIP, ENCODER_FDALIGN])
    baselines: bool = False
    methods: List[str] = field(default_factory=lambda: [DEFAULT_METHOD])
    method_params: Dict[str, Any] = field(default_factory=dict)
    views: int = 10
    view_scale: List[float] = field(default_factory=lambda: [0.5, 1.0])
    finetune: Dict[str, Any] = field(default_factory=dict)
    adapter_params: Dict[str, Any] = field(default_factory=dict)
    dataset_options: Dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    workers: int = 0
    threads: Optional[int] = None
    batch_size: int = 256
    cache_dir: Optional[str] = None
    skip_corrupt: bool = False
    protocol: str = "standard"
    mode: str = "adapters"
    episodic: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "BenchConfig":
        if not self.adapters:
            raise ConfigError("adapters: give at least one adapter name (or all)")
        if not self.shots or any(s <= 0 for s in self.shots):
            raise ConfigError(f"shots must be positive integers, got {self.shots}")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ConfigError(f"seeds must be integers >= 0, got {self.seeds}")
        if self.views <= 0:
            raise ConfigError(f"views must be a positive integer, got {self.views}")
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be a positive integer (or unset: chosen from the free cores), "
                              f"got {self.threads}")
        bad = [e for e in self.encoders if e not in ENCODERS]
        if bad or not self.encoders:
            raise ConfigError(f"encoders must be a non-empty list of {', '.join(ENCODERS)}; got {self.encoders}")
        if self.mode not in ("adapters", "episodic"):
            raise ConfigError(f"mode must be adapters (CoOp-style few-shot) or episodic (N-way K-shot); "
                              f"got {self.mode!r}")
        if self.mode == "episodic":
            from .protocols import EpisodicConfig

            build_config(EpisodicConfig, self.episodic, source="episodic")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {self.protocol!r}")
        if len(self.view_scale) != 2 or not (0 < self.view_scale[0] <= self.view_scale[1] <= 1):
            raise ConfigError(f"view_scale must be two numbers 0 < lo <= hi <= 1, got {self.view_scale}")
        from .preflight import check_adapter_params, check_dataset_source

        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods must be a non-empty list of distinct method names, got {self.methods}")
        if (not isinstance(self.method_params, dict)
                or any(not isinstance(v, dict) for v in self.method_params.values())):
            raise ConfigError("method_params must map method names to mappings of hyper-parameters")
        stray = sorted(set(self.method_params) - set(self.methods))
        if stray:
            raise ConfigError(f"method_params names method(s) not in methods: {', '.join(stray)}; methods: "
                              f"{', '.join(self.methods)}")
        if "method" in (self.finetune or {}) or "method_params" in (self.finetune or {}):
            raise ConfigError("choose fine-tuning methods with methods: / --methods and their hyper-parameters with "
                              "method_params: {method: {...}}, not inside the finetune section")
        if self.encoder and self.methods != [DEFAULT_METHOD]:
            raise ConfigError("--encoder replaces fd-align's fine-tuning; it cannot stand for other methods "
                              f"({', '.join(self.methods)}); drop --encoder or use --methods fd-align")
        if self.mode == "episodic" and self.methods != [DEFAULT_METHOD]:
            raise ConfigError("the episodic mode fine-tunes with fd-align only; drop --methods")
        # names, hyper-parameters (every method's too) and the fine-tuning section are checked (and
        # typed, so a flag and the same YAML value are one config) now, before any model is loaded
        resolve_adapters(self.adapters, self.protocol, log=lambda line: None)  # run() says what "all" leaves out
        self.adapter_params = check_adapter_params(self.adapter_params)
        check_dataset_source(self.dataset, self.data_root)
        self.finetune = coerce_layer(FinetuneConfig, self.finetune, source="finetune")
        for m in self.methods:
            self.finetune_config(shots=self.shots[0], seed=self.seeds[0], method=m)
        return self

    def finetune_config(self, shots: int, seed: int, spurious_weight: Optional[float] = None,
                        method: str = DEFAULT_METHOD) -> FinetuneConfig:
        """The resolved fine-tuning config of one work item for ``method``."""
        base = {"model": self.model, "pretrained": self.pretrained, "dataset": self.dataset,
                "data_root": self.data_root, "device": self.device, "workers": self.workers}
        item = {"shots": shots, "seed": seed}
        if self.protocol == "reference":
            # the released code: KL(P_0 || P_ft) and a trainable linear head from tau * mu_class
            item.update(kl_direction="reference", head="linear")
        if spurious_weight is not None:  # 0 for the plain fine-tuning baseline
            item["spurious_weight"] = spurious_weight
        item.update(method=method, method_params=self.method_params.get(method, {}))
        return build_config(FinetuneConfig, base, self.finetune, item, source="finetune")


def resolve_adapters(names: List[str], protocol: str = "standard",
                     log: Callable[[str], None] = print) -> List[str]:
    """Expand ``all`` and check names against the registry (unknown -> the valid list)
    and against ``protocol``: an adapter named explicitly that does not support the
    protocol's selection policy is refused (:func:`~fdalign_plugins.adapter_api.check_selection`);
    ``all`` leaves such adapters out and says so through ``log``."""
    from .adapter_api import check_selection
    from .plugins import get_adapter_spec, list_adapters

    if any(n == "all" for n in names):
        names = [s.name for s in list_adapters()]
        left_out = []
        for spec in list_adapters():
            try:
                check_selection(spec, protocol)
            except ConfigError:
                left_out.append(spec.name)
        if left_out:
            log(f"--adapter all under --protocol {protocol}: leaving out {', '.join(left_out)} "
                "(they never select on the test set)")
            names = [n for n in names if n not in left_out]
    out = []
    for n in ["zero-shot"] + list(names):
        check_selection(get_adapter_spec(n), protocol)
        if n not in out:
            out.append(n)
    return out


def default_out(cfg: BenchConfig) -> Path:
    """A deterministic run folder: the same command resumes in the same place."""
    d = to_dict(cfg)
    # a renamed fine-tuning key hashes under its old name, so a command from before the rename finds its folder
    old_name = {new: old for old, (new, _why) in FinetuneConfig.RENAMED.items()}
    d["finetune"] = {old_name.get(k, k): v for k, v in d["finetune"].items()}
    h = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path("runs") / f"bench-{cfg.dataset}-{h}"


def platform_info(device: torch.device) -> Dict[str, Any]:
    """What a record's numbers depend on beyond the command: threads, torch build, CPU, device."""
    info: Dict[str, Any] = {"threads": torch.get_num_threads(), "torch_git": torch.version.git_version,
                            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "machine": platform.machine(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identity_hashes(ds: FewShotDataset, split, ood: Dict[str, Any], fingerprint: str) -> Dict[str, Any]:
    """Hashes of what a record measured: two records are comparable exactly when they match.

    ``support``: the training split and the support image indices; ``val``: the
    validation images; ``test`` and ``ood``: the evaluation sets; ``encoder``: the
    image encoder's weight fingerprint.
    """
    return {"support": _hash(ds.train.identity(), [int(i) for i in split.support_indices]),
            "val": _hash(split.val.identity()), "test": _hash(ds.test.identity()),
            "ood": {k: _hash(v.identity()) for k, v in ood.items()}, "encoder": fingerprint}


@dataclass
class RunSummary:
    """What a run did: records written and skipped, cache counters, wall time."""

    written: int = 0
    skipped: int = 0
    failed: int = 0
    finetuned: int = 0
    flagged: List[str] = field(default_factory=list)  # fine-tuning runs validation rejected or that collapsed
    seconds: float = 0.0
    cache: Any = None
    out: Optional[Path] = None


class Runner:
    """Runs a :class:`BenchConfig`; see the module docstring.

    Args:
        cfg: the resolved config.
        out: run folder (``results.jsonl``, tables, links ``encoders/<name>`` into the
            shared store that ``cfg.cache_dir`` names; see :mod:`fdalign_plugins.store`).
        log: receives one line per finished record and per stage.
        progress: ``True`` progress bars, ``"plain"`` progress lines (off a terminal),
            ``False`` none (see :mod:`fdalign_plugins.progress`).
        stop_after_records: raise ``KeyboardInterrupt`` after writing this many records
            (tests use it to simulate an interruption).
    """

    def __init__(self, cfg: BenchConfig, out: Path, log: Callable[[str], None] = print, progress: Any = False,
                 stop_after_records: Optional[int] = None, shard: Optional[Tuple[int, int]] = None):
        from .preflight import check_encoder_file, check_model_source, check_output_folder

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

    # ------------------------------------------------------------------ encoders
    def _encoder_dir(self, fcfg: FinetuneConfig, ds: FewShotDataset, support_idx: List[int], tag: str) -> Path:
        """The encoder's folder in the shared store, keyed by everything that decides its weights."""
        key = json.dumps({"cfg": to_dict(fcfg), "train": ds.train.identity(), "support": support_idx},
                         sort_keys=True, default=str)
        return self.store.encoder_dir(
            f"{tag}-{fcfg.shots}shot-seed{fcfg.seed}-{hashlib.sha256(key.encode()).hexdigest()[:10]}")

    def _finetuned(self, ds: FewShotDataset, split, shots: int, seed: int, spurious_weight: Optional[float], tag: str,
                   method: str = DEFAULT_METHOD) -> Tuple[ClipBundle, Dict[str, Any]]:
        """A fine-tuned encoder (trained now, or reused from the store) and the record fields that describe it."""
        from .store import link_into, touch

        fcfg = self.cfg.finetune_config(shots, seed, spurious_weight, method)
        d = self._encoder_dir(fcfg, ds, split.support_indices, tag)
        bundle = load_clip(self.cfg.model, self.cfg.pretrained, device=self.device)
        # rank 0 alone takes the lock: under torchrun every rank must enter finetune() together
        with self.store.lock(d.name, log=self.log) if is_main() else contextlib.nullcontext():
            if (d / WEIGHTS_NAME).is_file():
                meta = load_encoder_into(bundle.model, d)
                touch(d / WEIGHTS_NAME)
                self.log(f"  reusing {tag} encoder {d}")
            else:
                self.log(f"  fine-tuning {tag} encoder with {method} ({shots}-shot, seed {seed}) -> {d}")
                meta = finetune(bundle, split.support, ds.classnames, fcfg, val=split.val, out_dir=d, resume=True,
                                progress=self.progress is True, log=lambda s: self.log("    " + s),
                                extra_metadata={"support_indices": split.support_indices,
                                                "val_indices": split.val_indices}).metadata
                self.summary.finetuned += 1
        if is_main():
            link_into(self.out, d)
        status = meta.get("finetune_verdict", "ok")
        if status != "ok":
            self.summary.flagged.append(f"{tag} {shots}-shot seed {seed}: {status} "
                                        f"({meta.get('finetune_verdict_reason')})")
        extra = {"encoder_source": "fine-tuned", "finetune": to_dict(fcfg), "method": method,
                 "method_params": meta.get("method_params"), "finetune_verdict": status,
                 "finetune_verdict_reason": meta.get("finetune_verdict_reason", ""),
                 "best_epoch": meta.get("best_epoch")}
        return bundle, extra

    def _user_encoder(self) -> Tuple[ClipBundle, Dict[str, Any]]:
        """The ``--encoder`` checkpoint, and the record fields that describe it (its method and verdict)."""
        bundle = load_clip(self.cfg.model, self.cfg.pretrained, device=self.device)
        meta = load_encoder_into(bundle.model, self.cfg.encoder)
        self.log(f"  using FD-Align encoder {self.cfg.encoder} (trained on {meta.get('dataset')}, "
                 f"{meta.get('shots')}-shot, seed {meta.get('seed')})")
        extra: Dict[str, Any] = {"encoder_source": str(self.cfg.encoder)}
        if meta.get("finetune_verdict"):  # written by this version: its verdict marks the table too
            extra.update({k: meta.get(k) for k in ("method", "method_params", "finetune_verdict",
                                                   "finetune_verdict_reason", "best_epoch")})
            if meta["finetune_verdict"] != "ok":
                self.summary.flagged.append(f"--encoder {self.cfg.encoder}: {meta['finetune_verdict']} "
                                            f"({meta.get('finetune_verdict_reason')})")
        return bundle, extra

    # ------------------------------------------------------------------ features
    def _features(self, cache: FeatureCache, bundle: ClipBundle, ds: FewShotDataset, split, ood: Dict[str, Any],
                  seed: int, label: str) -> Dict[str, Any]:
        visual = bundle.model.visual.to(self.device)
        fp = state_fingerprint(visual)
        ev = bundle.eval_transform
        out = {"fingerprint": fp}
        t0 = time.time()
        out["test"] = normalise(cache.features(visual, fp, ds.test, ev, desc=f"{label} test"))
        out["ood"] = {k: normalise(cache.features(visual, fp, s, ev, desc=f"{label} {k}")) for k, s in ood.items()}
        out["val"] = normalise(cache.features(visual, fp, split.val, ev, desc=f"{label} val"))
        aug = bundle.train_transform(scale=tuple(self.cfg.view_scale), flip=True)
        views = [cache.features(visual, fp, split.support, aug, view=v, seed=seed * 1000 + v, desc=f"{label} view {v}")
                 for v in range(self.cfg.views)]
        out["support"] = torch.stack(views)  # [V, N, D], raw
        out["seconds"] = time.time() - t0
        return out

    # ------------------------------------------------------------------ records
    def _record(self, results: ResultsFile, ds: FewShotDataset, adapter: str, enc_label: str, shots: int, seed: int,
                feats: Dict[str, Any], classifier: torch.Tensor, split, extra: Dict[str, Any]) -> None:
        from .adapter_api import FewShotTask, selection_used
        from .plugins import create_adapter

        rec: Dict[str, Any] = {"dataset": ds.name, "adapter": adapter, "encoder": enc_label, "shots": shots,
                               "seed": seed, "encoder_fingerprint": feats["fingerprint"],
                               "identity": identity_hashes(ds, split, self._ood, feats["fingerprint"]),
                               "protocol": self.cfg.protocol, "val_from": split.val_from, **extra}
        timing: Dict[str, Any] = {}
        preds = None
        t0 = time.time()
        try:
            ad = create_adapter(adapter, **self.cfg.adapter_params.get(adapter, {}))
            task = FewShotTask(
                support=feats["support"], support_labels=torch.as_tensor(split.support.labels),
                classifier=classifier, val_features=feats["val"], val_labels=torch.as_tensor(split.val.labels),
                dataset=ds.name, shots=shots, seed=seed,
            )
            ad.fit(task)
            t1 = time.time()
            sets = {"test": ds.test, **self._ood}
            preds = {k: preds_io.from_logits(ad.predict(feats["test"] if k == "test" else feats["ood"][k]),
                                             s.labels, getattr(s, "label_subset", None)) for k, s in sets.items()}
            rec.update(acc={k: preds_io.accuracy(p) for k, p in preds.items()},
                       val_acc=top1_accuracy(ad.predict(feats["val"]), split.val.labels), hparams=ad.chosen_hparams(),
                       selection=selection_used(ad, self.cfg.protocol))
            timing = {"fit": t1 - t0, "predict": time.time() - t1, "extract": feats["seconds"]}
        except Exception as exc:  # whatever a plugin raises (FDAlignError too) fails its record, not the sweep
            rec.update(acc=None, error=f"{type(exc).__name__}: {exc}")
            preds = None
        if preds is not None:  # written before the record that points to it
            rel = f"{preds_io.PREDICTIONS_DIR}/{preds_io.file_name(record_key(rec))}"
            sha = preds_io.write(results.path.parent / rel, preds) if is_main() else ""
            rec["predictions"] = {"file": rel, "sha256": sha}
        rec.update(config=to_dict(self.cfg), versions=software_versions(), platform=platform_info(self.device))
        if is_main():  # under torchrun every rank computes the record; rank 0 writes it
            results.append(rec, timing={"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **timing})
        if rec.get("error"):
            self.summary.failed += 1
            # said once, and even under --quiet: a failure is never silent
            print(f"  FAILED {adapter} [{enc_label}] on {ds.name} {shots}-shot seed {seed}: {rec['error']} "
                  "(recorded; the table marks the cell; re-running retries it)", file=sys.stderr, flush=True)
        else:
            self.summary.written += 1
            accs = "  ".join(f"{k} {v:.2f}" for k, v in rec["acc"].items())
            self.log(f"  {ds.name} {shots}-shot seed {seed} {adapter:>10} [{enc_label:>8}]  {accs}")
        if self.stop_after is not None and self.summary.written >= self.stop_after:
            raise KeyboardInterrupt(f"stopped after {self.summary.written} records")

    def open_stores(self, results_file: str) -> Tuple[ResultsFile, FeatureCache]:
        """The run's results file and the shared store's feature cache (see :mod:`fdalign_plugins.store`)."""
        cfg = self.cfg
        cache = FeatureCache(self.store.features, batch_size=cfg.batch_size,
                             workers=cfg.workers, device=self.device, progress=self.progress)
        self.summary.cache = cache.stats
        return ResultsFile(self.out / results_file), cache

    # ------------------------------------------------------------------ main loop
    def _header(self, ds: FewShotDataset, adapters: List[str], encoders: List[str], mine, results) -> None:
        """Say how much work lies ahead before starting it."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sampling warnings are given again when the work item runs
            plan = _plan(self, ds, adapters, encoders, mine, results)
        self.log(f"{ds.name}: {ds.num_classes} classes; {len(self.cfg.seeds)} seed(s) x {len(self.cfg.shots)} shot "
                 f"count(s) x {len(encoders)} encoder(s) x {len(adapters)} adapter(s): {plan['records']} record(s) "
                 f"to compute, {plan['done']} already done; {plan['finetune']} encoder(s) to fine-tune, "
                 f"{plan['in_store']} reused from the store {self.store.root}; {plan['passes']} feature pass(es) "
                 f"over up to {plan['images']} images (cached ones are read back)")

    def run(self) -> RunSummary:
        self.set_threads()
        if self.cfg.mode == "episodic":
            from .protocols import run_episodic

            return run_episodic(self)
        t_start = time.time()
        cfg = self.cfg
        adapters = resolve_adapters(cfg.adapters, cfg.protocol, self.log)
        unused = names_not_run(cfg.adapter_params, adapters)
        if unused:  # checked, but not silently ignored either
            self.log(f"note: adapter_params given for {', '.join(unused)}, which this run does not include")
        self._methods = methods = {method_label(m): m for m in cfg.methods}  # encoder label -> method
        encoders: List[str] = []
        for e in dict.fromkeys(cfg.encoders + ([ENCODER_FINETUNE] if cfg.baselines else [])):
            encoders.extend(methods if e == ENCODER_FDALIGN else [e])
        mine = work_items(cfg, encoders, self.shard)
        done_file = self.out / results_name(self.shard)
        if done_file.is_file():
            done = ResultsFile(done_file)
            if all((cfg.dataset, a, e, k, s) in done for s, k, e in mine for a in adapters):
                # everything is done (records are keyed by the registered name): no data to load
                self.summary.skipped = len(mine) * len(adapters)
                self.summary.cache = CacheStats()  # nothing computed, nothing read
                self.summary.seconds = time.time() - t_start
                return self.summary
        ds = load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options)
        if cfg.skip_corrupt:  # evaluation sets too: go on without what cannot be read, with a warning
            ds = dataclasses.replace(ds, test=drop_unreadable(ds.test, f"{ds.name} test")[0],
                                     ood={k: drop_unreadable(v, f"{ds.name} {k}")[0] for k, v in ds.ood.items()})
        if cfg.ood is None:
            ood_names = list(ds.ood)
        else:
            unknown = [o for o in cfg.ood if o not in ds.ood]
            if unknown:
                raise ConfigError(f"unknown OOD set(s) {', '.join(unknown)} for {ds.name}; "
                                  f"valid: {', '.join(ds.ood) or '(none)'}")
            ood_names = list(cfg.ood)
        self._ood = {k: ds.ood[k] for k in ood_names}
        # the run folder gets its files only once the dataset and its OOD sets are known good
        results, cache = self.open_stores(results_name(self.shard))
        if is_main():
            (self.out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
        stock = None
        classifier = None
        mine = set(mine)
        self._header(ds, adapters, encoders, mine, results)
        for seed in cfg.seeds:
            for shots in cfg.shots:
                todo = [(a, e) for e in encoders for a in adapters
                        if (seed, shots, e) in mine and (ds.name, a, e, shots, seed) not in results]
                self.summary.skipped += sum(1 for e in encoders if (seed, shots, e) in mine) * len(adapters) - len(todo)
                if not todo:
                    continue
                self.log(f"{ds.name}: {shots}-shot, seed {seed}")
                split = few_shot_split(ds, shots, seed)
                if cfg.protocol == "reference":
                    split = dataclasses.replace(split, val=ds.test, val_indices=[], val_from="test")
                if cfg.skip_corrupt:
                    split = dataclasses.replace(
                        split, support=drop_unreadable(split.support, f"the {shots}-shot support set")[0],
                        val=drop_unreadable(split.val, "the validation set")[0])
                else:  # fail in seconds, before any training, rather than mid-run
                    check_images(split.support, f"the {shots}-shot support set")
                    check_images(split.val, "the validation set")
                if stock is None:
                    self.log(f"  loading {cfg.model} and encoding the text classifier ({ds.num_classes} classes x "
                             f"{len(ds.templates)} templates)")
                    stock = load_clip(cfg.model, cfg.pretrained, device=self.device)
                    classifier = text_classifier(stock.model, stock.tokenizer, ds.classnames, ds.templates).cpu()
                for enc in encoders:
                    pending = [a for a, e in todo if e == enc]
                    if not pending:
                        continue
                    if enc == ENCODER_CLIP:
                        bundle, extra = stock, {"encoder_source": f"{stock.model_name}/{stock.pretrained or 'none'}"}
                    elif enc == ENCODER_FDALIGN and cfg.encoder:
                        bundle, extra = self._user_encoder()
                    else:
                        weight = 0.0 if enc == ENCODER_FINETUNE else None
                        bundle, extra = self._finetuned(ds, split, shots, seed, weight, enc,
                                                        methods.get(enc, DEFAULT_METHOD))
                    feats = self._features(cache, bundle, ds, split, self._ood, seed, enc)
                    for a in pending:
                        self._record(results, ds, a, enc, shots, seed, feats, classifier, split, extra)
        self.summary.seconds = time.time() - t_start
        return self.summary


def _plan(runner: "Runner", ds: FewShotDataset, adapters: List[str], encoders: List[str], mine,
          results) -> Dict[str, int]:
    """The amount of work ahead: records to write, encoders to fine-tune, feature passes."""
    cfg = runner.cfg
    plan = {"records": 0, "done": 0, "finetune": 0, "in_store": 0, "passes": 0, "images": 0}
    per_pass = len(ds.test) + sum(len(s) for s in runner._ood.values())
    for seed in cfg.seeds:
        for shots in cfg.shots:
            for enc in encoders:
                if (seed, shots, enc) not in mine:
                    continue
                todo = [a for a in adapters if (ds.name, a, enc, shots, seed) not in results]
                plan["records"] += len(todo)
                plan["done"] += len(adapters) - len(todo)
                if not todo:
                    continue
                plan["passes"] += 1
                k_val = max(1, min(shots, 4))
                plan["images"] += per_pass + ds.num_classes * (k_val + shots * cfg.views)
                if enc != ENCODER_CLIP and not (enc == ENCODER_FDALIGN and cfg.encoder):
                    split = few_shot_split(ds, shots, seed)
                    weight = 0.0 if enc == ENCODER_FINETUNE else None
                    fcfg = cfg.finetune_config(shots, seed, weight, runner._methods.get(enc, DEFAULT_METHOD))
                    d = runner._encoder_dir(fcfg, ds, split.support_indices, enc)
                    plan["in_store" if (d / WEIGHTS_NAME).is_file() else "finetune"] += 1
    return plan


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


def work_items(cfg: BenchConfig, encoders: List[str],
               shard: Optional[Tuple[int, int]] = None) -> List[Tuple[int, int, str]]:
    """The (seed, shots, encoder) work items of a run, in a fixed order; item ``j`` belongs
    to shard ``j % n``, so shards are disjoint and together cover the run."""
    items = [(seed, shots, enc) for seed in cfg.seeds for shots in cfg.shots for enc in encoders]
    if shard is None:
        return items
    i, n = shard
    return [it for j, it in enumerate(items) if j % n == i]
