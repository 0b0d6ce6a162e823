"""The bench's ``adapters`` mode: baseline vs "+ FD-Align" for every requested adapter.

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

What the modes share (config, folders, device, stores, encoder provisioning, the
common record fields) is the :class:`~.context.RunContext`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch

from .. import predictions as preds_io
from ..checkpoint import WEIGHTS_NAME, load_encoder_into
from ..config import FinetuneConfig, to_dict
from ..datasets import check_images, drop_unreadable, few_shot_split, load_dataset
from ..datasets.base import FewShotDataset
from ..distributed import is_main
from ..errors import ConfigError
from ..features import CacheStats, FeatureCache
from ..models import ClipBundle, load_clip, state_fingerprint
from ..ops import normalise, top1_accuracy
from ..preflight import names_not_run
from ..prompts import text_classifier
from ..results import ENCODER_CLIP, ENCODER_FDALIGN, ENCODER_FINETUNE, ResultsFile, record_key
from ..trainer import finetune
from .context import DEFAULT_METHOD, BenchConfig, RunContext, RunSummary, method_label, resolve_adapters, results_name


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


def work_items(cfg: BenchConfig, encoders: List[str],
               shard: Optional[Tuple[int, int]] = None) -> List[Tuple[int, int, str]]:
    """The (seed, shots, encoder) work items of a run, in a fixed order; item ``j`` belongs
    to shard ``j % n``, so shards are disjoint and together cover the run."""
    items = [(seed, shots, enc) for seed in cfg.seeds for shots in cfg.shots for enc in encoders]
    if shard is None:
        return items
    i, n = shard
    return [it for j, it in enumerate(items) if j % n == i]


def run_standard(ctx: RunContext) -> RunSummary:
    """The ``adapters`` mode on ``ctx`` (under either selection protocol); the run's summary."""
    return _StandardRun(ctx).run()


class _StandardRun:
    """One standard run, as named phases: plan, encoders, features, records."""

    def __init__(self, ctx: RunContext):
        self.ctx, self.cfg, self.log, self.summary = ctx, ctx.cfg, ctx.log, ctx.summary
        self.ood: Dict[str, Any] = {}
        self.methods: Dict[str, str] = {}  # encoder label -> method

    # ------------------------------------------------------------------ encoders
    def encoder_dir(self, fcfg: FinetuneConfig, ds: FewShotDataset, support_idx: List[int], tag: str):
        """The encoder's folder in the shared store, keyed by everything that decides its weights."""
        return self.ctx.encoder_dir(f"{tag}-{fcfg.shots}shot-seed{fcfg.seed}",
                                    {"cfg": to_dict(fcfg), "train": ds.train.identity(), "support": support_idx})

    def finetuned(self, ds: FewShotDataset, split, shots: int, seed: int, spurious_weight: Optional[float], tag: str,
                  method: str = DEFAULT_METHOD) -> Tuple[ClipBundle, Dict[str, Any]]:
        """A fine-tuned encoder (trained now, or reused from the store) and the record fields that describe it."""
        fcfg = self.cfg.finetune_config(shots, seed, spurious_weight, method)
        d = self.encoder_dir(fcfg, ds, split.support_indices, tag)
        bundle = load_clip(self.cfg.model, self.cfg.pretrained, device=self.ctx.device)

        def train() -> Dict[str, Any]:
            self.log(f"  fine-tuning {tag} encoder with {method} ({shots}-shot, seed {seed}) -> {d}")
            return finetune(bundle, split.support, ds.classnames, fcfg, val=split.val, out_dir=d, resume=True,
                            progress=self.ctx.progress is True, log=lambda s: self.log("    " + s),
                            extra_metadata={"support_indices": split.support_indices,
                                            "val_indices": split.val_indices}).metadata

        meta = self.ctx.provide_encoder(bundle, d, f"{tag} {shots}-shot seed {seed}", train)
        extra = {"encoder_source": "fine-tuned", "finetune": to_dict(fcfg), "method": method,
                 "method_params": meta.get("method_params"), "finetune_verdict": meta.get("finetune_verdict", "ok"),
                 "finetune_verdict_reason": meta.get("finetune_verdict_reason", ""),
                 "best_epoch": meta.get("best_epoch"), "encoder_train_threads": meta.get("train_threads")}
        return bundle, extra

    def user_encoder(self) -> Tuple[ClipBundle, Dict[str, Any]]:
        """The ``--encoder`` checkpoint, and the record fields that describe it (its method and verdict)."""
        bundle = load_clip(self.cfg.model, self.cfg.pretrained, device=self.ctx.device)
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
    def features(self, cache: FeatureCache, bundle: ClipBundle, ds: FewShotDataset, split, ood: Dict[str, Any],
                 seed: int, label: str) -> Dict[str, Any]:
        """Normalised test / OOD / validation features and the raw augmented support views."""
        visual = bundle.model.visual.to(self.ctx.device)
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
    def record(self, results: ResultsFile, ds: FewShotDataset, adapter: str, enc_label: str, shots: int, seed: int,
               feats: Dict[str, Any], classifier: torch.Tensor, split, extra: Dict[str, Any]) -> None:
        """Fit ``adapter`` on one work item's features, evaluate it, append its record (a
        failure is recorded too, and said on screen)."""
        from ..adapter_api import FewShotTask, selection_used
        from ..plugins import create_adapter

        rec: Dict[str, Any] = {**self.ctx.record_fields(ds.name, adapter, enc_label, shots, seed, feats["fingerprint"]),
                               "identity": identity_hashes(ds, split, self.ood, feats["fingerprint"]),
                               "val_from": split.val_from, **extra}
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
            sets = {"test": ds.test, **self.ood}
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
        if self.ctx.stop_after is not None and self.summary.written >= self.ctx.stop_after:
            raise KeyboardInterrupt(f"stopped after {self.summary.written} records")

    # ------------------------------------------------------------------ main loop
    def header(self, ds: FewShotDataset, adapters: List[str], encoders: List[str], mine, results) -> None:
        """Say how much work lies ahead before starting it."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sampling warnings are given again when the work item runs
            plan = self.plan(ds, adapters, encoders, mine, results)
        self.log(f"{ds.name}: {ds.num_classes} classes; {len(self.cfg.seeds)} seed(s) x {len(self.cfg.shots)} shot "
                 f"count(s) x {len(encoders)} encoder(s) x {len(adapters)} adapter(s): {plan['records']} record(s) "
                 f"to compute, {plan['done']} already done; {plan['finetune']} encoder(s) to fine-tune, "
                 f"{plan['in_store']} reused from the store {self.ctx.store.root}; {plan['passes']} feature pass(es) "
                 f"over up to {plan['images']} images (cached ones are read back)")

    def run(self) -> RunSummary:
        """Every work item not yet in the results file; the run's summary."""
        t_start = time.time()
        cfg = self.cfg
        adapters = resolve_adapters(cfg.adapters, cfg.protocol, self.log)
        unused = names_not_run(cfg.adapter_params, adapters)
        if unused:  # checked, but not silently ignored either
            self.log(f"note: adapter_params given for {', '.join(unused)}, which this run does not include")
        self.methods = methods = {method_label(m): m for m in cfg.methods}  # encoder label -> method
        encoders: List[str] = []
        for e in dict.fromkeys(cfg.encoders + ([ENCODER_FINETUNE] if cfg.baselines else [])):
            encoders.extend(methods if e == ENCODER_FDALIGN else [e])
        mine = work_items(cfg, encoders, self.ctx.shard)
        done_file = self.ctx.out / results_name(self.ctx.shard)
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
        self.ood = {k: ds.ood[k] for k in ood_names}
        # the run folder gets its files only once the dataset and its OOD sets are known good
        results, cache = self.ctx.open_stores(results_name(self.ctx.shard))
        if is_main():
            (self.ctx.out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
        stock = None
        classifier = None
        mine = set(mine)
        self.header(ds, adapters, encoders, mine, results)
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
                    stock = load_clip(cfg.model, cfg.pretrained, device=self.ctx.device)
                    classifier = text_classifier(stock.model, stock.tokenizer, ds.classnames, ds.templates).cpu()
                for enc in encoders:
                    pending = [a for a, e in todo if e == enc]
                    if not pending:
                        continue
                    if enc == ENCODER_CLIP:
                        bundle, extra = stock, {"encoder_source": f"{stock.model_name}/{stock.pretrained or 'none'}"}
                    elif enc == ENCODER_FDALIGN and cfg.encoder:
                        bundle, extra = self.user_encoder()
                    else:
                        weight = 0.0 if enc == ENCODER_FINETUNE else None
                        bundle, extra = self.finetuned(ds, split, shots, seed, weight, enc,
                                                       methods.get(enc, DEFAULT_METHOD))
                    feats = self.features(cache, bundle, ds, split, self.ood, seed, enc)
                    for a in pending:
                        self.record(results, ds, a, enc, shots, seed, feats, classifier, split, extra)
        self.summary.seconds = time.time() - t_start
        return self.summary

    def plan(self, ds: FewShotDataset, adapters: List[str], encoders: List[str], mine, results) -> Dict[str, int]:
        """The amount of work ahead: records to write, encoders to fine-tune, feature passes."""
        cfg = self.cfg
        plan = {"records": 0, "done": 0, "finetune": 0, "in_store": 0, "passes": 0, "images": 0}
        per_pass = len(ds.test) + sum(len(s) for s in self.ood.values())
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
                        fcfg = cfg.finetune_config(shots, seed, weight, self.methods.get(enc, DEFAULT_METHOD))
                        d = self.encoder_dir(fcfg, ds, split.support_indices, enc)
                        plan["in_store" if (d / WEIGHTS_NAME).is_file() else "finetune"] += 1
        return plan
