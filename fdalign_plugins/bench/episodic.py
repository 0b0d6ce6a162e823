"""The N-way K-shot mode (SPEC §4.3): episodic FD-Align fine-tuning on base classes,
evaluation with cosine prototypes of support features on novel classes / other datasets
(``mode: episodic`` of a bench run; ``protocol``, standard or reference, is the selection
rule of either mode). Its settings are :class:`~fdalign_plugins.config.EpisodicConfig`.

* Fine-tuning: each step draws an episode from the base-class pool (``n_way`` classes,
  ``train_shot`` support + ``query`` query images each); the class logits are
  ``τ·cos(query, prototype)`` with prototypes the normalised mean support features; the
  method's other terms (FD-Align's spurious KL over the base classes' spurious
  prototypes after SPC) are computed on every image of the episode against the frozen
  encoder. Selection, resume, loss guard, optimizer and schedule: the training spine.
* Evaluation: features of the whole evaluation pool are extracted once (cached);
  ``episodes`` episodes per repeat, ``repeats`` repeats; reported as the mean over repeats
  ± 1.96 · std over the repeats' means.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checkpoint import WEIGHTS_NAME, load_encoder_into, save_encoder
from ..config import EpisodicConfig, FinetuneConfig, build_config, to_dict
from ..datasets.base import ImageSplit
from ..datasets.episodic import EpisodeSampler, episode_labels
from ..distributed import is_main
from ..errors import ConfigError
from ..losses import cosine_logits
from ..method_api import BatchOutputs, FinishContext, MethodContext, jsonable_hparams
from ..models import ClipBundle, state_fingerprint
from ..ops import count_correct, normalise, percent
from ..spine import (
    BestState, OptimizerSettings, check_finite, clip_gradients, load_or_refuse, make_optimizer, make_schedule,
    restore_state, run_verdict, save_state, status_line, warmup_iterations,
)
from ..results import ENCODER_CLIP, ENCODER_FDALIGN
from ..trainer import TextPrototypes, encode_images, epoch_seed, resolve_device, set_train_mode, text_prototypes
from .context import RunContext, RunSummary

STATE_NAME = "episodic_state.pt"
#: The records' ``adapter`` of this mode's evaluator (no plugin: cosine prototypes of
#: the support features), and the name tables show.
EVALUATOR = "protonet"
EVALUATOR_LABEL = "Cosine prototypes"


def prototype_logits(support: torch.Tensor, n_way: int, k_shot: int, query: torch.Tensor, tau: float) -> torch.Tensor:
    """``τ · cos(query, p_c)`` with ``p_c`` the normalised mean of class c's support features.

    Args:
        support: ``[n_way * k_shot, D]`` class-major support features.
        query: ``[Q, D]`` query features.
    """
    protos = normalise(normalise(support).view(n_way, k_shot, -1).mean(1))  # [n_way, D]
    return cosine_logits(query, protos, tau)


def evaluate_episodes(feats: torch.Tensor, labels: np.ndarray, n_way: int, k_shot: int, n_query: int,
                      episodes: int, repeats: int, seed: int, short: str = "skip") -> Tuple[float, float, List[float]]:
    """Mean accuracy over ``repeats`` × ``episodes`` episodes and 1.96·std over the repeats.

    Args:
        feats: ``[N, D]`` features of the evaluation pool.
        labels: ``[N]`` classes.

    Returns:
        ``(mean %, 1.96 * std of the repeat means, repeat means)``.
    """
    sampler = EpisodeSampler(labels, n_way, k_shot, n_query, short=short)
    f = normalise(feats.float())
    y = torch.as_tensor(episode_labels(n_way, n_query))
    means = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, k_shot, r])
        correct = 0
        for _ in range(episodes):
            s_idx, q_idx, _ = sampler.sample(rng)
            logits = prototype_logits(f[torch.as_tensor(s_idx)], n_way, k_shot, f[torch.as_tensor(q_idx)], 1.0)
            correct += count_correct(logits, y)
        means.append(percent(correct, episodes * n_way * n_query))
    std = float(np.std(means, ddof=0)) if len(means) > 1 else 0.0
    return float(np.mean(means)), 1.96 * std, means


def _episode_batch(split: ImageSplit, idx: np.ndarray, transform: Callable, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.stack([transform(split.load(int(i))) for i in idx])


def episodic_finetune(bundle: ClipBundle, pool: ImageSplit, classnames: Sequence[str], cfg: FinetuneConfig,
                      ecfg: EpisodicConfig, val: Optional[ImageSplit] = None, out_dir: Optional[Path] = None,
                      log: Callable[[str], None] = print, stop_after_epoch: Optional[int] = None) -> Dict[str, Any]:
    """Episodic fine-tuning of ``bundle.model.visual`` on the base-class pool with ``cfg.method``.

    Each step's class logits are the query images' prototype logits; the method's other
    terms (FD-Align's spurious KL) see every image of the episode. Best-epoch keeping
    (epoch 0 included), the resumable state (``out_dir/episodic_state.pt``) and its
    config rule, the loss guard, optimizer and schedule are the spine's
    (:mod:`fdalign_plugins.spine`), as in :func:`fdalign_plugins.trainer.finetune`.
    Writes ``encoder.safetensors`` + sidecar at the end. Returns the sidecar.

    Raises:
        ConfigError: a method that needs a linear head (episodes have no fixed classes).
    """
    run = _EpisodicRun(bundle, pool, classnames, cfg, ecfg, val, log)
    state_path = Path(out_dir) / STATE_NAME if out_dir else None
    history, start = run.start(state_path)
    t_start = time.time()
    for epoch in range(start, cfg.epochs + 1):
        history.append(run.epoch(epoch))
        if state_path is not None:
            save_state(state_path, epoch=epoch, modules=run.modules, optimizer=run.opt, scheduler=run.sched,
                       best=run.best, history=history, config=run.cfg_dict)
        if stop_after_epoch is not None and stop_after_epoch <= epoch < cfg.epochs:
            raise KeyboardInterrupt(f"stopped after epoch {epoch} (stop_after_epoch)")
    meta = run.finish(history, time.time() - t_start)
    if out_dir is not None:
        save_encoder(run.visual, Path(out_dir) / WEIGHTS_NAME, meta, {"spurious_prototypes": run.protos.spur_protos})
        if state_path.exists():
            state_path.unlink()
    return meta


class _EpisodicRun:
    """The phases of :func:`episodic_finetune`: build, start (or resume), epochs, finish."""

    def __init__(self, bundle: ClipBundle, pool: ImageSplit, classnames: Sequence[str], cfg: FinetuneConfig,
                 ecfg: EpisodicConfig, val: Optional[ImageSplit], log: Callable[[str], None]):
        self.bundle, self.pool, self.cfg, self.ecfg, self.val, self.log = bundle, pool, cfg, ecfg, val, log
        self.device = device = resolve_device(cfg.device)
        model = bundle.model.to(device).eval()
        self.tau = bundle.logit_scale
        protos = text_prototypes(bundle, classnames, cfg)
        self.protos = TextPrototypes(protos.class_protos.to(device), protos.spur_protos.to(device), protos.templates,
                                     protos.spc)
        self.method = cfg.create_method()
        if self.method.needs_head or cfg.head != "fixed":
            raise ConfigError(f"episodic fine-tuning has no fixed class set for a linear head; method {cfg.method} "
                              f"with head {cfg.head} cannot run episodically (use head: fixed and a method without "
                              "a head)")
        self.visual = visual = model.visual
        self.frozen = copy.deepcopy(visual).eval().requires_grad_(False) if self.method.uses_frozen() else None
        for p in model.parameters():
            p.requires_grad_(False)
        visual.requires_grad_(True)
        self.modules = {"visual": visual}
        self.params = list(visual.parameters())
        self.opt = make_optimizer(self.params, OptimizerSettings.of(cfg))
        self.sched = make_schedule(self.opt, cfg.epochs * ecfg.train_episodes,
                                   warmup_iterations(cfg.warmup_iters, cfg.warmup_epochs, ecfg.train_episodes))
        self.sampler = EpisodeSampler(pool.labels, ecfg.n_way, ecfg.train_shot, ecfg.train_query, short=ecfg.short)
        self.y = torch.as_tensor(episode_labels(ecfg.n_way, ecfg.train_query)).to(device)
        self.tf = bundle.train_transform(scale=cfg.aug_scale)
        self.cfg_dict = {"finetune": to_dict(cfg), "episodic": to_dict(ecfg)}
        self.val_eval = self.val_accuracy if val is not None and len(val) and ecfg.val_episodes else None
        self.stock = {"visual": {k: v.detach().clone() for k, v in visual.state_dict().items()}} \
            if self.method.needs_stock() else {}
        self.method.setup(MethodContext(
            model=model, tokenizer=bundle.tokenizer, protos=self.protos, tau=self.tau, head=None,
            support_features=lambda: (encode_images(visual, pool, bundle.eval_transform, device=device),
                                      torch.as_tensor(pool.labels)),
            val_features=None, seed=cfg.seed, log=log))
        self.best = BestState(self.modules, cfg.select)

    def val_accuracy(self) -> float:
        """Mean accuracy of ``val_episodes`` validation episodes with the current encoder."""
        e = self.ecfg
        f = encode_images(self.visual, self.val, self.bundle.eval_transform, device=self.device)
        return evaluate_episodes(f, self.val.labels, e.n_way, e.train_shot, e.query, e.val_episodes, 1, self.cfg.seed,
                                 short=e.short)[0]

    def start(self, state_path: Optional[Path]) -> Tuple[List[Dict[str, Any]], int]:
        """Resume from the saved state (same rule as every loop), or offer epoch 0."""
        state = load_or_refuse(state_path, self.cfg_dict)
        if state is not None:
            history, start = restore_state(state, modules=self.modules, optimizer=self.opt, scheduler=self.sched,
                                           best=self.best)
            self.log(f"resuming episodic fine-tuning after epoch {start - 1}")
            return history, start
        acc0 = self.val_eval() if self.val_eval else float("nan")
        self.best.offer(0, acc0)  # the encoder as given is a candidate, as in standard fine-tuning
        if self.val_eval:
            self.log(f"episodic epoch 0 (before fine-tuning)  val {acc0:.2f}%")
        return [], 1

    def epoch(self, epoch: int) -> Dict[str, Any]:
        """``train_episodes`` episodes, then validation and best-state keeping; the epoch's record."""
        cfg, ecfg, device = self.cfg, self.ecfg, self.device
        set_train_mode(self.visual, cfg.freeze_bn)
        rng = np.random.default_rng(epoch_seed(cfg.seed, epoch))
        sums: Dict[str, float] = {}
        for step in range(ecfg.train_episodes):
            s_idx, q_idx, _ = self.sampler.sample(rng)
            seed = epoch_seed(cfg.seed, epoch) + step
            x = _episode_batch(self.pool, np.concatenate([s_idx, q_idx]), self.tf, seed).to(device)
            feats = self.visual(x)  # [n_way * (shot + query), D]
            feats0 = None
            if self.frozen is not None:
                with torch.no_grad():
                    feats0 = self.frozen(x)
            n_s = len(s_idx)
            logits = prototype_logits(feats[:n_s], ecfg.n_way, ecfg.train_shot, feats[n_s:], self.tau)  # [Q, n_way]
            losses = self.method.loss(BatchOutputs(feats, feats0, logits, self.y, self.protos, self.tau, seed))
            check_finite(float(losses["total"].detach()), f"epoch {epoch}, episode {step + 1}")
            self.opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            clip_gradients(self.params, cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / ecfg.train_episodes
        acc = self.val_eval() if self.val_eval else float("nan")
        kept = self.best.offer(epoch, acc)
        terms = "  ".join(f"L_{k} {max(0.0, v):.4f}" for k, v in sums.items() if k != "total")
        self.log(f"episodic epoch {epoch}/{cfg.epochs}  {terms}  "
                 f"val {acc:.2f}%{'  *' if kept and self.val_eval else ''}")
        return {"epoch": epoch, **{("loss" if k == "total" else f"l_{k}"): v for k, v in sums.items()}, "val_acc": acc}

    def finish(self, history: List[Dict[str, Any]], seconds: float) -> Dict[str, Any]:
        """Restore the kept epoch, the method's finishing step, the verdict; the sidecar."""
        self.best.restore()
        finished = self.method.finish(FinishContext(modules=self.modules, stock=self.stock,
                                                    val_accuracy=self.val_eval, log=self.log))
        self.visual.eval().requires_grad_(False)
        verdict = run_verdict(history, self.best.epoch, self.best.initial, self.ecfg.n_way)
        line = status_line(verdict)
        if line:
            self.log(line)
        cfg, b, protos = self.cfg, self.bundle, self.protos
        return {"model": b.model_name, "pretrained": b.pretrained, "dataset": cfg.dataset, "mode": "episodic",
                "seed": cfg.seed, "config": self.cfg_dict, "method": cfg.method,
                "method_params": jsonable_hparams(cfg.method_hparams()), "history": history,
                "best_epoch": self.best.epoch, "best_val_acc": self.best.score if self.val_eval else None,
                "val_acc_epoch0": self.best.initial if self.val_eval else None, "finetune_verdict": verdict["status"],
                "finetune_verdict_reason": verdict["reason"], "finish": finished,
                "encoder_fingerprint": state_fingerprint(self.visual), "train_seconds": seconds,
                "train_threads": torch.get_num_threads(),
                "spc": None if protos.spc is None else {"kept_indices": protos.spc.kept}}


def run_episodic(ctx: RunContext) -> RunSummary:
    """The episodic mode (``mode: episodic``) on ``ctx``; the run's summary."""
    from ..datasets import load_dataset
    from ..models import load_clip

    cfg = ctx.cfg
    ecfg = build_config(EpisodicConfig, cfg.episodic, source="episodic")
    t0 = time.time()
    results, cache = ctx.open_stores("results.jsonl")
    ds = load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options)
    pools = {"test": ds.test}
    for name in ecfg.eval_sets:  # "miniimagenet", or "episodic_folder:cub" for a set of a generic loader
        base, _, set_name = name.partition(":")
        other = load_dataset(base, cfg.data_root, **({"set_name": set_name} if set_name else {}))
        pools[name] = other.test
    encoders = [e for e in cfg.encoders if e in (ENCODER_CLIP, ENCODER_FDALIGN)]
    for seed in cfg.seeds:
        for enc in encoders:
            todo = [k for k in cfg.shots if (ds.name, EVALUATOR, enc, k, seed) not in results]
            ctx.summary.skipped += len(cfg.shots) - len(todo)
            if not todo:
                continue
            bundle = load_clip(cfg.model, cfg.pretrained, device=ctx.device)
            verdict: Dict[str, Any] = {}
            if enc == ENCODER_FDALIGN:
                meta = _episodic_encoder(ctx, bundle, ds, ecfg, seed)
                verdict = {"finetune_verdict": meta.get("finetune_verdict", "ok"),
                           "finetune_verdict_reason": meta.get("finetune_verdict_reason", ""),
                           "encoder_train_threads": meta.get("train_threads")}
            visual = bundle.model.visual.to(ctx.device)
            fp = state_fingerprint(visual)
            feats = {n: cache.features(visual, fp, p, bundle.eval_transform, desc=f"{enc} {n}")
                     for n, p in pools.items()}
            for k in todo:
                t_rec = time.time()
                acc, ci = {}, {}
                for n, p in pools.items():
                    acc[n], ci[n], _ = evaluate_episodes(feats[n], p.labels, ecfg.n_way, k, ecfg.query, ecfg.episodes,
                                                         ecfg.repeats, seed, short=ecfg.short)
                rec = {**ctx.record_fields(ds.name, EVALUATOR, enc, k, seed, fp),
                       "acc": acc, "ci95": ci, "hparams": {"n_way": ecfg.n_way, "query": ecfg.query,
                                                          "episodes": ecfg.episodes, "repeats": ecfg.repeats},
                       "selection": "fixed",  # cosine prototypes choose nothing
                       "encoder_source": (f"{bundle.model_name}/{bundle.pretrained or 'none'}" if enc == ENCODER_CLIP
                                          else str(cfg.encoder or "fine-tuned")), **verdict}
                if is_main():
                    results.append(rec, timing={"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                "evaluate": time.time() - t_rec})
                ctx.summary.written += 1
                ctx.log(f"  {ds.name} {ecfg.n_way}-way {k}-shot seed {seed} [{enc:>8}]  "
                        + "  ".join(f"{n} {acc[n]:.2f}±{ci[n]:.2f}" for n in pools))
    ctx.summary.seconds = time.time() - t0
    return ctx.summary


def _episodic_encoder(ctx: RunContext, bundle: ClipBundle, ds, ecfg: EpisodicConfig, seed: int) -> Dict[str, Any]:
    """The episodic FD-Align encoder of ``seed`` loaded into ``bundle``: the user's
    (``--encoder``), or from the shared store, fine-tuned first if it holds none."""
    cfg = ctx.cfg
    if cfg.encoder:
        return load_encoder_into(bundle.model, cfg.encoder)
    fcfg = cfg.finetune_config(ecfg.train_shot, seed)
    d = ctx.encoder_dir(f"episodic-seed{seed}", {"f": to_dict(fcfg), "e": to_dict(ecfg), "pool": ds.train.identity()})

    def train() -> Dict[str, Any]:
        ctx.log(f"  episodic FD-Align fine-tuning on {ds.name} base classes -> {d}")
        return episodic_finetune(bundle, ds.train, ds.classnames, fcfg, ecfg, val=ds.val, out_dir=d,
                                 log=lambda s: ctx.log("    " + s))

    return ctx.provide_encoder(bundle, d, f"episodic seed {seed}", train)
