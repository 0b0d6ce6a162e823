"""The training spine: the rules every gradient-training loop of the project shares.

Three loops train by gradient — standard fine-tuning (:func:`fdalign_plugins.trainer.finetune`),
episodic fine-tuning (:func:`fdalign_plugins.bench.episodic.episodic_finetune`) and the
adapters' own training (:func:`fdalign_plugins.adapter_api.train_on_views`). They differ
in what a batch is; they share, from here:

* **best-state keeping** (:class:`BestState`): epoch 0, the untrained state, is a
  candidate; a later epoch replaces the kept one only when it is strictly better on
  validation, so ties keep the earliest; ``select = "last"`` (or no validation) keeps
  the last epoch;
* **one resumable state format** (:func:`save_state`, :func:`read_state`,
  :func:`restore_state`) with **one rule** for which config changes block a resume
  (:func:`config_diff`: any key but the execution keys in :data:`EXECUTION_KEYS`);
* **one finite-loss guard** (:func:`check_finite`) raising one error type,
  :class:`~fdalign_plugins.errors.TrainingError`;
* **one optimizer factory** (:func:`make_optimizer`) and **one LR-schedule factory**
  (:func:`make_schedule`: linear warm-up, then cosine to 0, stepped per iteration);
* **the verdict on a finished run** (:func:`run_verdict`): ``ok``, ``rejected``
  (validation kept the untrained state) or ``collapsed`` (validation fell far below the
  untrained state, or the class loss ended above ``log C``, the loss of a uniform guess).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .checkpoint import atomic_torch_save
from .errors import CheckpointError, ConfigError, TrainingError

#: Config keys that change how a run executes but not what it computes: changing them
#: does not block a resume. Matched on the last component of a nested key.
EXECUTION_KEYS = frozenset({"device", "workers", "amp"})
#: Version of the training-state layout written by :func:`save_state`.
STATE_FORMAT = 2
#: Accuracy points below the untrained state at which validation calls a run collapsed.
COLLAPSE_DROP = 10.0
#: How far (a fraction of ``log C``) the class loss must rise over the first epoch's, past
#: ``log C``, to call a run collapsed: noise around ``log C`` (an untrained model) is not a collapse.
LOSS_RISE = 0.05
#: The verdicts of :func:`run_verdict`.
STATUSES = ("ok", "rejected", "collapsed")


# --------------------------------------------------------------------------- best state


def _snapshot(modules: Mapping[str, nn.Module]) -> Dict[str, Dict[str, torch.Tensor]]:
    return {k: {n: v.detach().clone() for n, v in m.state_dict().items()} for k, m in modules.items()}


class BestState:
    """Keeps the weights of the best epoch seen so far.

    Offer every epoch in order, starting with epoch 0 (the untrained state). With
    ``select = "val"`` a later epoch replaces the kept one only when its validation
    score is strictly higher (ties keep the earliest epoch, so fine-tuning that never
    beats the untrained state is rejected); a NaN score (no validation) or
    ``select = "last"`` keeps the latest epoch offered.

    Args:
        modules: the trained modules by name (``None`` entries are skipped).
        select: ``"val"`` or ``"last"``.
    """

    def __init__(self, modules: Mapping[str, Optional[nn.Module]], select: str = "val"):
        if select not in ("val", "last"):
            raise ConfigError(f"select must be val or last, got {select!r}")
        self.modules = {k: m for k, m in modules.items() if m is not None}
        self.select = select
        self.epoch: Optional[int] = None
        self.score = float("nan")
        self.initial = float("nan")  # the score of the first epoch offered (epoch 0)
        self.state: Optional[Dict[str, Dict[str, torch.Tensor]]] = None

    def offer(self, epoch: int, score: float) -> bool:
        """Consider the modules' current weights as epoch ``epoch``; whether they were kept."""
        if self.state is None:
            self.initial = float(score)
        keep = (self.state is None or self.select == "last" or math.isnan(score)
                or math.isnan(self.score) or score > self.score)
        if keep:
            self.epoch, self.score, self.state = int(epoch), float(score), _snapshot(self.modules)
        return keep

    def restore(self) -> None:
        """Load the kept weights back into the modules."""
        if self.state is not None:
            for k, m in self.modules.items():
                m.load_state_dict(self.state[k])

    def state_dict(self) -> Dict[str, Any]:
        """The kept epoch, score and weights (for the training state)."""
        return {"epoch": self.epoch, "score": self.score, "initial": self.initial, "state": self.state}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.epoch, self.score, self.state = d["epoch"], float(d["score"]), d["state"]
        self.initial = float(d["initial"])


# --------------------------------------------------------------------------- resume


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and all(isinstance(x, str) for x in v):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> List[str]:
    """The differences that block a resume: every key except :data:`EXECUTION_KEYS`.

    Nested mappings are compared key by key (``finetune.lr``).

    Returns:
        ``"key: saved vs current"`` for each differing key, sorted.
    """
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k.rsplit(".", 1)[-1] not in EXECUTION_KEYS and a.get(k) != b.get(k)]


def save_state(path: Path, *, epoch: int, modules: Mapping[str, Optional[nn.Module]], optimizer: torch.optim.Optimizer,
               scheduler: Any, best: BestState, history: List[Dict[str, Any]], config: Mapping[str, Any],
               scaler: Optional[Any] = None) -> None:
    """Write the state after ``epoch`` atomically (read back with :func:`read_state`)."""
    atomic_torch_save({
        "format": STATE_FORMAT,
        "epoch": int(epoch),
        "modules": {k: m.state_dict() for k, m in modules.items() if m is not None},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "best": best.state_dict(),
        "history": history,
        "config": dict(config),
    }, path)


def read_state(path: Path, config: Mapping[str, Any]) -> Optional[Tuple[str, Any]]:
    """Read a training state, or the reason it cannot be used.

    Returns:
        ``None`` if ``path`` does not exist, ``("state", state)`` if it can be resumed,
        ``("error", message)`` otherwise (unreadable, older layout, or another config
        by :func:`config_diff`). Callers raise :class:`CheckpointError` with the
        message (after broadcasting it under ``torchrun``).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        return ("error", f"cannot read training state {path} ({type(exc).__name__}); delete it to start over")
    if not isinstance(state, dict):
        return ("error", f"training state {path} is not a training state; delete it to start over")
    diff = config_diff(state.get("config", {}), config)
    if diff:
        return ("error", f"training state {path} was made with another config ({'; '.join(diff[:3])}); "
                         "use a new output folder, or delete it to start over")
    if state.get("format") != STATE_FORMAT:
        return ("error", f"training state {path} was written by another version of fdalign-plugins; "
                         "delete it to start over")
    return ("state", state)


def restore_state(state: Mapping[str, Any], *, modules: Mapping[str, Optional[nn.Module]],
                  optimizer: torch.optim.Optimizer, scheduler: Any, best: BestState,
                  scaler: Optional[Any] = None) -> Tuple[List[Dict[str, Any]], int]:
    """Load a state from :func:`read_state` into the live objects.

    Returns:
        ``(history, first epoch to run)``.
    """
    for k, m in modules.items():
        if m is not None:
            m.load_state_dict(state["modules"][k])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    best.load_state_dict(state["best"])
    return list(state["history"]), int(state["epoch"]) + 1


def load_or_refuse(path: Optional[Path], config: Mapping[str, Any], resume: bool = True) -> Optional[Mapping[str, Any]]:
    """:func:`read_state` for a single process: the state, ``None``, or :class:`CheckpointError`."""
    if path is None or not resume:
        return None
    got = read_state(path, config)
    if got is not None and got[0] == "error":
        raise CheckpointError(got[1])
    return None if got is None else got[1]


# --------------------------------------------------------------------------- guard


def check_finite(value: float, where: str, detail: str = "",
                 fix: str = "lower the learning rate (lr) or set grad_clip") -> None:
    """Raise :class:`TrainingError` if a loss ``value`` is NaN or infinite.

    Args:
        value: the loss (a float).
        where: e.g. ``"epoch 2, step 5"``.
        detail: the loss terms, shown in brackets.
        fix: what the user can change.
    """
    if not math.isfinite(value):
        extra = f" ({detail})" if detail else ""
        raise TrainingError(f"loss became {value} at {where}{extra}; {fix}")


# --------------------------------------------------------------------------- optimisation


@dataclass(frozen=True)
class OptimizerSettings:
    """What :func:`make_optimizer` needs; :meth:`of` reads it from a config."""

    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    eps: float = 1e-8

    @classmethod
    def of(cls, cfg: Any) -> "OptimizerSettings":
        """The settings of a :class:`~fdalign_plugins.config.FinetuneConfig` (or alike)."""
        return cls(cfg.optimizer, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay)


def make_optimizer(params: Sequence[nn.Parameter], s: OptimizerSettings) -> torch.optim.Optimizer:
    """SGD (Nesterov when asked and momentum > 0) or AdamW."""
    if s.optimizer == "sgd":
        return torch.optim.SGD(list(params), lr=s.lr, momentum=s.momentum, nesterov=s.nesterov and s.momentum > 0,
                               weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(list(params), lr=s.lr, eps=s.eps, weight_decay=s.weight_decay)
    raise ConfigError(f"optimizer must be sgd or adamw, got {s.optimizer!r}")


def cosine_lambda(total_iters: int, warmup_iters: int = 0,
                  constant_warmup: Optional[float] = None) -> Callable[[int], float]:
    """LR multiplier of iteration ``it``: warm-up, then cosine from 1 to 0 over the rest.

    The warm-up is linear (``(it + 1) / warmup_iters``), or, with ``constant_warmup``,
    that constant multiplier (Dassl's "constant" warm-up, which CLAP uses).
    """
    def f(it: int) -> float:
        if warmup_iters and it < warmup_iters:
            return constant_warmup if constant_warmup is not None else (it + 1) / warmup_iters
        span = max(1, total_iters - warmup_iters)
        return 0.5 * (1.0 + math.cos(math.pi * min(it - warmup_iters, span) / span))
    return f


def make_schedule(optimizer: torch.optim.Optimizer, total_iters: int, warmup_iters: int = 0,
                  constant_warmup: Optional[float] = None) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR schedule of every loop: :func:`cosine_lambda`, stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(total_iters, warmup_iters, constant_warmup))


def warmup_iterations(warmup_iters: int, warmup_epochs: float, iters_per_epoch: int) -> int:
    """Length of the linear warm-up: ``warmup_iters + round(warmup_epochs * iters_per_epoch)``.

    Epochs keep a warm-up the same share of training at every shot count (a 1-shot run
    of 32 images has one iteration per epoch, a 16-shot run eight).
    """
    return int(warmup_iters) + int(round(float(warmup_epochs) * iters_per_epoch))


def clip_gradients(params: Sequence[nn.Parameter], max_norm: float) -> None:
    """Clip the global gradient norm to ``max_norm`` (0 = off)."""
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(list(params), max_norm)


# --------------------------------------------------------------------------- verdict


def run_verdict(history: Sequence[Mapping[str, Any]], best_epoch: Optional[int], val0: float,
                     num_classes: int) -> Dict[str, Any]:
    """Whether a finished run did its job, for the screen, the checkpoint and the table.

    * ``collapsed``: the class loss rose above ``log C`` (worse than a uniform guess)
      from below it in the first epoch, by more than :data:`LOSS_RISE` ``· log C``, or
      is not finite, or the best trained epoch's
      validation accuracy is more than :data:`COLLAPSE_DROP` points below the
      untrained state's ``val0`` (a model that starts above ``log C``, e.g. a randomly
      initialised one, is judged by validation alone);
    * ``rejected``: otherwise, if validation kept epoch 0 (the untrained state);
    * ``ok``: otherwise.

    Args:
        history: one mapping per trained epoch with ``l_class`` and ``val_acc``.
        best_epoch: the epoch kept.
        val0: validation accuracy of the untrained state (NaN if not measured).
        num_classes: ``C`` of the class loss.

    Returns:
        ``{"status": ..., "reason": ...}``.
    """
    reasons = []
    log_c = math.log(max(num_classes, 2))
    if history:
        first, last = float(history[0]["l_class"]), float(history[-1]["l_class"])
        if not math.isfinite(last) or (first <= log_c < last and last - first > LOSS_RISE * log_c):
            reasons.append(f"the class loss rose to {last:.3f} (epoch 1: {first:.3f}), above log C = {log_c:.3f}")
        vals = [float(h["val_acc"]) for h in history if h.get("val_acc") == h.get("val_acc")]
        if vals and val0 == val0 and max(vals) < val0 - COLLAPSE_DROP:
            reasons.append(f"validation fell to {max(vals):.2f}% at best, from {val0:.2f}% before fine-tuning")
    if reasons:
        if best_epoch == 0:
            reasons.append("validation kept the untrained state")
        return {"status": "collapsed", "reason": "; ".join(reasons)}
    if best_epoch == 0:
        return {"status": "rejected",
                "reason": f"no epoch beat the untrained state on validation ({val0:.2f}%); it was kept"}
    return {"status": "ok", "reason": ""}


def status_line(verdict: Mapping[str, Any]) -> Optional[str]:
    """The line a run prints for a ``rejected`` or ``collapsed`` verdict (``None`` for ok)."""
    if verdict.get("status") == "rejected":
        return f"VALIDATION REJECTED FINE-TUNING: {verdict['reason']}"
    if verdict.get("status") == "collapsed":
        return f"TRAINING COLLAPSED: {verdict['reason']}; try warmup_iters and grad_clip, or a lower lr"
    return None
