"""The fine-tuner: trains CLIP's image encoder with a fine-tuning method (FD-Align by default).

:func:`finetune` is a short sequence of named phases (:class:`_FineTuning`): prepare the
model and the frozen text side (:func:`~fdalign_plugins.methods.fd_align.text_prototypes`),
build the trainables (a frozen copy of the stock encoder when the method uses one; the
linear head), the validation split, the method's setup and the resume, the epochs, the
finishing step and the verdict, the checkpoint. The method (:mod:`fdalign_plugins.method_api`,
FD-Align whole in :mod:`fdalign_plugins.methods.fd_align`) gives each batch's loss; the
rules every training loop shares — best-epoch keeping, the resumable state, the loss
guard, optimizer and schedule — come from :mod:`fdalign_plugins.spine`.

Determinism: each epoch's batch order is a permutation seeded from ``(seed, epoch)``,
and each sample's augmentation is seeded from ``(seed, epoch, sample index)``, so a run
resumed from the state saved after epoch ``e`` continues exactly as the uninterrupted
run would on CPU, and the images a sample gets do not depend on how many processes
share the work.

Data parallelism (``torchrun``, see :mod:`fdalign_plugins.distributed`): the trainable
encoder (and linear head) is wrapped in ``DistributedDataParallel``, the frozen reference
encoder is replicated on every rank, and ``cfg.batch_size`` is the *global* batch: every
rank draws the same permutation and takes its contiguous share of each global batch.
Each rank's loss is scaled by ``n_rank * world / n_global`` so DDP's gradient average is
exactly the single-process mean over the global batch, also when the last batch splits
unevenly. Logged losses and validation accuracy are reduced over ranks; rank 0 alone
writes the training state, the checkpoint and the log.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from . import __version__
from . import distributed as dist_utils
from .checkpoint import WEIGHTS_NAME, save_encoder
from .config import FinetuneConfig, to_dict
from .datasets.base import ImageSplit
from .errors import CheckpointError, DataError, TrainingError
from .losses import cosine_logits
from .method_api import BatchOutputs, FinishContext, Method, MethodContext, jsonable_hparams
from .methods.fd_align import TextPrototypes, text_prototypes
from .models import ClipBundle, state_fingerprint
from .registry import get_method_spec
from .ops import count_correct, normalise, percent
from .spine import (
    BestState, OptimizerSettings, check_finite, clip_gradients, make_optimizer, make_schedule, read_state,
    restore_state, run_verdict, save_state, status_line, warmup_iterations,
)

STATE_NAME = "train_state.pt"


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise TrainingError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    return dev


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of one epoch: a fixed function of (run seed, epoch)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2**63 - 1)


def sample_seed(base: int, index: int) -> int:
    """The torch seed of one sample's random transform: a fixed function of (base seed, index)."""
    return (int(base) * 6_364_136_223_846_793_005 + int(index) * 1_442_695_040_888_963_407 + 1) % (2**63 - 1)


class SplitDataset(Dataset):
    """An :class:`ImageSplit` as a torch dataset of ``(image tensor, label)``.

    Args:
        split: the images.
        transform: PIL image -> tensor.
        seed: when given, item ``i``'s transform runs under the torch seed
            ``sample_seed(seed, i)`` (the global RNG is restored afterwards), so a random
            augmentation depends only on (seed, index): not on the order items are read
            in, on the loader's workers, or on which process reads them.
        indices: optional split indices to expose (item ``j`` is split item
            ``indices[j]``, seeded by that split index).
    """

    def __init__(self, split: ImageSplit, transform: Callable, seed: Optional[int] = None,
                 indices: Optional[Sequence[int]] = None):
        self.split = split
        self.transform = transform
        self.seed = seed
        self.indices = None if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.split) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        j = int(i) if self.indices is None else self.indices[i]
        img = self.split.load(j)
        if self.seed is None:
            return self.transform(img), int(self.split.labels[j])
        # only the CPU generator: torch.manual_seed would also queue a lazy CUDA seeding that
        # records a Python stack trace on every call (a third of a cold main job's time)
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(sample_seed(self.seed, j))
            x = self.transform(img)
        return x, int(self.split.labels[j])


@dataclass(frozen=True)
class BatchShare:
    """One rank's part of one global batch.

    Attributes:
        indices: the split indices this rank loads; when its share is empty, one
            stand-in sample of the global batch, whose loss is then weighted 0 (DDP
            needs every rank to run forward and backward each step).
        global_size: samples in the whole global batch.
        local_size: this rank's real samples (0 for a stand-in).
    """

    indices: Tuple[int, ...]
    global_size: int
    local_size: int


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch ``[n]``, the same on every rank."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> List[BatchShare]:
    """This rank's share of every global batch of one epoch.

    The permutation is cut into global batches of ``batch_size`` (the last may be
    short); rank ``r`` takes the ``r``-th contiguous balanced slice of each.
    """
    order = epoch_permutation(n, seed, epoch).tolist()
    shares = []
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        lo, hi = dist_utils.shard_range(len(batch), rank, world_size)
        mine = batch[lo:hi]
        shares.append(BatchShare(tuple(mine or batch[:1]), len(batch), len(mine)))
    return shares


class EpochBatchSampler(Sampler):
    """Yields the index lists of precomputed :class:`BatchShare` objects, in order."""

    def __init__(self, shares: Sequence[BatchShare]):
        self.shares = list(shares)

    def __iter__(self) -> Iterator[List[int]]:
        return (list(s.indices) for s in self.shares)

    def __len__(self) -> int:
        return len(self.shares)


def make_loader(split: ImageSplit, transform: Callable, batch_size: int, seed: int, epoch: int, workers: int = 0,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """The training loader of one epoch for one rank; yields ``(images, labels)``.

    Batch order and every sample's augmentation are fixed by ``(seed, epoch)`` (and the
    sample index), independent of ``workers`` and of the global RNG. With
    ``world_size > 1`` each batch is this rank's share of a global batch of
    ``batch_size``; ``loader.batch_sampler.shares`` lists the :class:`BatchShare` of
    every step.
    """
    shares = epoch_batches(len(split), batch_size, seed, epoch, rank, world_size)
    return DataLoader(
        SplitDataset(split, transform, seed=epoch_seed(seed, epoch)),
        batch_sampler=EpochBatchSampler(shares),
        num_workers=workers,
        generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)),  # worker seeds, not the global RNG
    )


@torch.no_grad()
def encode_images(visual: nn.Module, split: ImageSplit, transform: Callable, batch_size: int = 256,
                  device: Optional[torch.device] = None, workers: int = 0) -> torch.Tensor:
    """Image features ``[N, D]`` (raw, not normalised) of a split with a fixed transform."""
    device = device or next(visual.parameters()).device
    was_training = visual.training
    visual.eval()
    loader = DataLoader(SplitDataset(split, transform), batch_size=batch_size, shuffle=False, num_workers=workers)
    out = [visual(x.to(device)).float().cpu() for x, _ in loader]
    visual.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


class Student(nn.Module):
    """The trainable modules as one: the image encoder and the optional linear head.

    One module so ``DistributedDataParallel`` averages the encoder's and the head's
    gradients together. ``forward(images)`` returns ``(features [B, D], head logits
    [B, C] or None)``.
    """

    def __init__(self, visual: nn.Module, head: Optional[nn.Linear] = None):
        super().__init__()
        self.visual = visual
        self.head = head

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        feats = self.visual(images)  # [B, D]
        return feats, (self.head(normalise(feats)) if self.head is not None else None)


def batch_losses(student: nn.Module, frozen: Optional[nn.Module], method: Method, images: torch.Tensor,
                 labels: torch.Tensor, protos: TextPrototypes, tau: float,
                 step_seed: int = 0) -> Dict[str, torch.Tensor]:
    """One batch through the trained (and, if the method uses it, the frozen) encoder, then the method's loss."""
    feats, head_logits = student(images)  # [B, D], [B, C] | None
    logits = head_logits if head_logits is not None else cosine_logits(feats, protos.class_protos, tau)  # [B, C]
    feats0 = None
    if frozen is not None and method.uses_frozen():
        with torch.no_grad():
            feats0 = frozen(images)  # [B, D], the same augmented images
    return method.loss(BatchOutputs(feats, feats0, logits, labels, protos, tau, step_seed))


def fdalign_losses(
    visual: nn.Module,
    frozen: Optional[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    protos: TextPrototypes,
    tau: float,
    cfg: FinetuneConfig,
    head: Optional[nn.Linear] = None,
) -> Dict[str, torch.Tensor]:
    """One batch's loss terms under ``cfg``'s method (each a mean over the batch).

    For FD-Align: ``L_class``, ``L_spurious`` and the total; with ``spurious_weight == 0`` the
    frozen encoder is not run and ``L_spurious`` is 0.
    """
    return batch_losses(Student(visual, head), frozen, cfg.create_method(), images, labels, protos, tau)


def set_train_mode(module: nn.Module, freeze_bn: bool) -> nn.Module:
    """``module.train()``, keeping BatchNorm layers in eval mode when ``freeze_bn``.

    A few augmented shots per class are too few to re-estimate BatchNorm statistics
    (CLIP's ResNets); frozen statistics keep the fine-tuned encoder's features on the
    scale of the frozen reference. ViTs have no BatchNorm: no effect there.
    """
    module.train()
    if freeze_bn:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    return module


@dataclass
class FinetuneResult:
    """Output of :func:`finetune`.

    Attributes:
        visual: the fine-tuned image encoder (best epoch loaded, finishing step applied).
        head: the trained linear head (``cfg.head == "linear"`` or a method that needs
            one), else ``None``.
        history: one dict per epoch: ``epoch, l_class, l_<term>..., loss, val_acc, lr, seconds``.
        best_epoch: the epoch whose weights were kept (0: the encoder as given).
        protos: the text prototypes used.
        checkpoint: the written ``encoder.safetensors`` (if ``out_dir`` was given).
        metadata: the sidecar content.
        verdict: ``ok``, ``rejected`` or ``collapsed`` (:func:`fdalign_plugins.spine.run_verdict`).
    """

    visual: nn.Module
    head: Optional[nn.Linear]
    history: List[Dict[str, Any]]
    best_epoch: int
    protos: TextPrototypes
    checkpoint: Optional[Path] = None
    metadata: Dict[str, Any] = field(default_factory=dict)
    verdict: str = "ok"


def _clone_state(modules: Dict[str, nn.Module]) -> Dict[str, Dict[str, torch.Tensor]]:
    return {k: {n: v.detach().clone() for n, v in m.state_dict().items()} for k, m in modules.items()}


class _FineTuning:
    """One run of :func:`finetune`, as named phases; each phase reads whole."""

    def __init__(self, bundle: ClipBundle, support: ImageSplit, classnames: Sequence[str], cfg: FinetuneConfig,
                 val: Optional[ImageSplit], out_dir: Optional[Path], log: Callable[[str], None], progress: bool):
        cfg.validate()
        if len(support) == 0:
            raise DataError("the few-shot support set is empty")
        self.bundle, self.support, self.classnames, self.cfg, self.val = bundle, support, list(classnames), cfg, val
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.main = self.rank == 0
        self.say: Callable[[str], None] = log if self.main else (lambda _s: None)
        self.progress = progress
        self.spec = get_method_spec(cfg.method)
        self.hparams = cfg.method_hparams()
        self.method = self.spec.factory(**self.hparams)
        self.cfg_dict = to_dict(cfg)
        self.state_path = Path(out_dir) / STATE_NAME if out_dir is not None else None
        self.out_dir = out_dir
        self.t_start = time.time()

    # ---------------------------------------------------------------- phase 1: model and prototypes
    def prepare_model(self) -> None:
        """Device, the frozen text side (class / spurious prototypes, SPC), the trainable encoder."""
        cfg = self.cfg
        device = resolve_device(cfg.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        model = self.bundle.model.to(device)
        model.eval()
        tau = self.bundle.logit_scale
        protos = text_prototypes(self.bundle, self.classnames, cfg)
        if self.world > 1:  # every rank trains against rank 0's prototypes, whatever its own text tower said
            cls_p, spur_p, tau = dist_utils.broadcast_object((protos.class_protos.cpu(), protos.spur_protos.cpu(), tau))
            protos = TextPrototypes(cls_p, spur_p, protos.templates, protos.spc)
        self.tau = tau
        self.protos = TextPrototypes(protos.class_protos.to(device), protos.spur_protos.to(device), protos.templates,
                                     protos.spc)
        self.visual = model.visual
        for p in model.parameters():
            p.requires_grad_(False)
        if self.world > 1:  # the frozen reference below must be rank 0's encoder on every rank
            dist_utils.broadcast_module_(self.visual)
        if "spurious_weight" not in self.spec.reads and cfg.spurious_weight != FinetuneConfig.spurious_weight:
            self.say(f"note: spurious_weight = {cfg.spurious_weight} is FD-Align's setting; method {cfg.method} "
                     "does not use it")

    # ---------------------------------------------------------------- phase 2: trainables
    def build_trainables(self) -> None:
        """The frozen copy (if the method uses it), the linear head, DDP, optimizer, schedule."""
        cfg, device = self.cfg, self.device
        self.frozen = copy.deepcopy(self.visual).eval().requires_grad_(False) if self.method.uses_frozen() else None
        self.visual.requires_grad_(True)
        self.head = None
        if cfg.head == "linear" or self.method.needs_head:
            c, d = self.protos.class_protos.shape
            self.head = nn.Linear(d, c).to(device)
            with torch.no_grad():  # the zero-shot head: tau * mu_class, no bias
                self.head.weight.copy_(self.tau * self.protos.class_protos)
                self.head.bias.zero_()
        self.modules = {"visual": self.visual, **({"head": self.head} if self.head is not None else {})}
        self.student: nn.Module = Student(self.visual, self.head)
        self.ddp: Optional[nn.parallel.DistributedDataParallel] = None
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[device.index] if device.type == "cuda" else None)
            self.student = self.ddp
        self.params = [p for m in self.modules.values() for p in m.parameters()]
        self.opt = make_optimizer(self.params, OptimizerSettings.of(cfg))
        self.batches = math.ceil(len(self.support) / cfg.batch_size)
        self.steps_per_epoch = math.ceil(self.batches / cfg.grad_accum)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.sched = make_schedule(self.opt, self.total_steps,
                                   warmup_iterations(cfg.warmup_iters, cfg.warmup_epochs, self.steps_per_epoch))
        self.use_amp = cfg.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.best = BestState(self.modules, cfg.select)

    # ---------------------------------------------------------------- phase 3: validation
    def build_validation(self) -> None:
        """The validation images on the device; each rank scores its slice and the counts are
        summed, so every rank sees the same accuracy and keeps the same epoch."""
        self.val_x = None
        if self.val is not None and len(self.val) > 0:
            lo, hi = dist_utils.shard_range(len(self.val), self.rank, self.world)
            loader = DataLoader(SplitDataset(self.val, self.bundle.eval_transform, indices=range(lo, hi)),
                                batch_size=256, shuffle=False)
            self.val_x = [(x.to(self.device), y.to(self.device)) for x, y in loader]

    def val_accuracy(self) -> float:
        """Top-1 % of the current weights on the validation split (NaN without one)."""
        if self.val_x is None:
            return float("nan")
        self.visual.eval()
        correct = n = 0
        with torch.no_grad(), torch.autocast("cuda", enabled=self.use_amp):
            for x, y in self.val_x:
                f = self.visual(x).float()  # [B, D]
                logits = (self.head(normalise(f)) if self.head is not None
                          else cosine_logits(f, self.protos.class_protos, self.tau))
                correct += count_correct(logits, y)
                n += len(y)
        set_train_mode(self.visual, self.cfg.freeze_bn)
        if self.world > 1:
            correct, n = (int(v) for v in dist_utils.all_reduce_floats([correct, n]))
        return percent(correct, n)

    # ---------------------------------------------------------------- phase 4: method setup and resume
    def setup_method_and_resume(self, resume: bool) -> None:
        """Snapshot the stock weights (for a finishing step), let the method prepare, then
        continue from the saved training state if there is one (same rule as every loop)."""
        self.stock = _clone_state(self.modules) if self.method.needs_stock() else {}
        self.method.setup(MethodContext(
            model=self.bundle.model, tokenizer=self.bundle.tokenizer, protos=self.protos, tau=self.tau, head=self.head,
            support_features=lambda: self._features(self.support), seed=self.cfg.seed, log=self.say,
            val_features=(lambda: self._features(self.val)) if self.val_x is not None else None))
        self.history: List[Dict[str, Any]] = []
        self.start_epoch = 1
        # rank 0 reads the state and sends it (or the reason it cannot be used) to every rank,
        # so all ranks resume from the same epoch even when out_dir is not on a shared disk
        loaded = read_state(self.state_path, self.cfg_dict) if (self.main and resume and self.state_path) else None
        if self.world > 1 and resume:
            loaded = dist_utils.broadcast_object(loaded)
        if loaded is not None and loaded[0] == "error":
            raise CheckpointError(loaded[1])
        if loaded is not None:
            self.history, self.start_epoch = restore_state(loaded[1], modules=self.modules, optimizer=self.opt,
                                                           scheduler=self.sched, best=self.best,
                                                           scaler=self.scaler if self.use_amp else None)
            self.say(f"resuming from {self.state_path} after epoch {self.start_epoch - 1}")
        else:  # epoch 0, the encoder as given, is a candidate: fine-tuning must beat it on validation
            acc0 = self.val_accuracy()
            self.best.offer(0, acc0)
            if self.val_x is not None:
                self.say(f"epoch 0 (before fine-tuning)  val {acc0:.2f}%")

    def _features(self, split: ImageSplit) -> Tuple[torch.Tensor, torch.Tensor]:
        f = encode_images(self.visual, split, self.bundle.eval_transform, device=self.device)
        set_train_mode(self.visual, self.cfg.freeze_bn)
        return f, torch.as_tensor(split.labels, dtype=torch.long)

    # ---------------------------------------------------------------- phase 5: epochs
    def train(self, stop_after_epoch: Optional[int]) -> None:
        """Every remaining epoch: train, validate, keep the best, save the state."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.bar = tqdm(total=self.total_steps, initial=(self.start_epoch - 1) * self.steps_per_epoch, desc="fine-tune",
                        unit="step", disable=not (self.progress and self.main), leave=False)
        try:
            for epoch in range(self.start_epoch, cfg.epochs + 1):
                t0 = time.time()
                means = self.train_epoch(epoch)
                acc = self.val_accuracy()
                rec = {"epoch": epoch, **{("loss" if k == "total" else f"l_{k}"): v for k, v in means.items()},
                       "val_acc": acc, "lr": self.opt.param_groups[0]["lr"], "seconds": time.time() - t0}
                self.history.append(rec)
                kept = self.best.offer(epoch, acc)
                terms = "  ".join(f"L_{k} {max(0.0, v) if k != 'class' else v:.4f}" for k, v in means.items()
                                  if k != "total")
                self.say(f"epoch {epoch}/{cfg.epochs}  {terms}  val {acc:.2f}%"
                         f"{'  *' if kept and self.val_x is not None else ''}")
                if self.state_path is not None:
                    if self.main:
                        save_state(self.state_path, epoch=epoch, modules=self.modules, optimizer=self.opt,
                                   scheduler=self.sched, best=self.best, history=self.history, config=self.cfg_dict,
                                   scaler=self.scaler if self.use_amp else None)
                    dist_utils.barrier()  # no rank runs ahead of the last durable epoch
                if stop_after_epoch is not None and stop_after_epoch <= epoch < cfg.epochs:
                    raise KeyboardInterrupt(f"stopped after epoch {epoch} (stop_after_epoch)")
        finally:
            self.bar.close()

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        """One epoch; returns the sample-weighted mean of every loss term."""
        cfg, device = self.cfg, self.device
        torch.manual_seed(epoch_seed(cfg.seed, epoch) + self.rank)  # any other randomness (e.g. dropout) restarts too
        set_train_mode(self.student, cfg.freeze_bn)
        train_tf = self.bundle.train_transform(scale=cfg.aug_scale, flip=False)
        loader = make_loader(self.support, train_tf, cfg.batch_size, cfg.seed, epoch, cfg.workers, self.rank,
                             self.world)
        sums: Dict[str, float] = {}
        seen = 0
        self.opt.zero_grad(set_to_none=True)
        for b, ((x, y), share) in enumerate(zip(loader, loader.batch_sampler.shares)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            stepping = (b + 1) % cfg.grad_accum == 0 or b + 1 == self.batches
            sync = self.ddp.no_sync() if self.ddp is not None and not stepping else contextlib.nullcontext()
            with sync:
                with torch.autocast("cuda", enabled=self.use_amp):
                    losses = batch_losses(self.student, self.frozen, self.method, x, y, self.protos, self.tau,
                                          step_seed=sample_seed(epoch_seed(cfg.seed, epoch), b))
                means = self._global_means(losses, share)
                check_finite(means["total"], f"epoch {epoch}, step {b + 1}",
                             ", ".join(f"L_{k}={v:.4g}" for k, v in means.items() if k != "total"))
                loss = losses["total"]
                if self.world > 1:
                    # DDP averages over ranks: this weight makes the average the global-batch mean
                    loss = loss * (share.local_size * self.world / share.global_size)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            if stepping:
                if cfg.grad_clip > 0:
                    self.scaler.unscale_(self.opt)
                    clip_gradients(self.params, cfg.grad_clip)
                self.scaler.step(self.opt)
                self.scaler.update()
                self.opt.zero_grad(set_to_none=True)
                self.sched.step()
                self.bar.update(1)
            for k, v in means.items():
                sums[k] = sums.get(k, 0.0) + v * share.global_size
            seen += share.global_size
        return {k: v / seen for k, v in sums.items()}

    def _global_means(self, losses: Dict[str, torch.Tensor], share: BatchShare) -> Dict[str, float]:
        if self.world == 1:
            return {k: float(v.detach()) for k, v in losses.items()}
        # global-batch means: sum of per-sample losses over ranks / global batch size
        got = dist_utils.all_reduce_floats([float(v.detach()) * share.local_size for v in losses.values()])
        return {k: v / share.global_size for k, v in zip(losses, got)}

    # ---------------------------------------------------------------- phase 6: best epoch, finishing step, verdict
    def finish(self) -> None:
        """Restore the kept epoch, apply the method's finishing step, judge the run."""
        del self.ddp, self.student  # drop DDP's hooks; bundle.model.visual is the plain module again
        self.best.restore()
        self.finished = self.method.finish(FinishContext(
            modules=self.modules, stock=self.stock, log=self.say,
            val_accuracy=self.val_accuracy if self.val_x is not None else None))
        self.visual.eval().requires_grad_(False)
        self.verdict = run_verdict(self.history, self.best.epoch, self.best.initial, len(self.classnames))
        if self.verdict["status"] == "ok" and self.finished.get("kept_stock") and \
                self.finished.get("chosen_on") == "validation":
            self.verdict = {"status": "rejected",
                            "reason": "WiSE chose a = 0 on validation: the stock encoder was kept"}
        line = status_line(self.verdict)
        if line:
            self.say(line)

    # ---------------------------------------------------------------- phase 7: checkpoint
    def write(self, extra_metadata: Optional[Dict[str, Any]]) -> FinetuneResult:
        """The sidecar metadata and, with an output folder, the checkpoint (rank 0)."""
        cfg, protos, head = self.cfg, self.protos, self.head
        meta: Dict[str, Any] = {
            "model": self.bundle.model_name, "pretrained": self.bundle.pretrained, "dataset": cfg.dataset,
            "shots": cfg.shots, "seed": cfg.seed, "config": self.cfg_dict,
            "method": cfg.method, "method_params": jsonable_hparams(self.hparams),
            "method_distribution": self.spec.distribution,
            "classnames": self.classnames, "templates": protos.templates,
            "spc": None if protos.spc is None else {
                "kept_indices": protos.spc.kept,
                "kept_templates": [protos.templates[i] for i in protos.spc.kept],
                "num_prototypes": int(protos.spur_protos.shape[0]),
            },
            "history": self.history, "best_epoch": self.best.epoch,
            "best_val_acc": self.best.score if self.val_x is not None else None,
            "val_acc_epoch0": self.best.initial if self.val_x is not None else None,
            "finetune_verdict": self.verdict["status"], "finetune_verdict_reason": self.verdict["reason"],
            "finish": self.finished,
            "logit_scale": self.tau, "image_size": self.bundle.image_size,
            "encoder_fingerprint": state_fingerprint(self.visual), "train_seconds": time.time() - self.t_start,
            "train_threads": torch.get_num_threads(),
            "package_version": __version__,
        }
        meta.update(extra_metadata or {})
        ckpt = None
        if self.out_dir is not None:
            ckpt = Path(self.out_dir) / WEIGHTS_NAME
            if self.main:
                extra = {"spurious_prototypes": protos.spur_protos, "class_prototypes": protos.class_protos}
                if head is not None:
                    extra.update({"head.weight": head.weight, "head.bias": head.bias})
                ckpt = save_encoder(self.visual, ckpt, meta, extra)
                if self.state_path is not None and self.state_path.exists():
                    self.state_path.unlink()
            dist_utils.barrier()  # the checkpoint exists for every rank once finetune returns
        return FinetuneResult(self.visual, head, self.history, int(self.best.epoch), protos, ckpt, meta,
                              self.verdict["status"])


def finetune(
    bundle: ClipBundle,
    support: ImageSplit,
    classnames: Sequence[str],
    cfg: FinetuneConfig,
    val: Optional[ImageSplit] = None,
    out_dir: Optional[Path] = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    extra_metadata: Optional[Dict[str, Any]] = None,
    stop_after_epoch: Optional[int] = None,
) -> FinetuneResult:
    """Fine-tune ``bundle.model.visual`` on a few-shot support set with ``cfg.method``.

    Args:
        bundle: the CLIP model (modified in place: its ``visual`` is trained).
        support: the K-shot training images, labels indexing ``classnames``.
        classnames: class names in label order.
        cfg: resolved :class:`FinetuneConfig` (``cfg.method`` names the method).
        val: few-shot validation split for best-epoch selection (``None``: last epoch).
        out_dir: where the training state (each epoch) and the final checkpoint go.
        resume: continue from ``out_dir/train_state.pt`` if present.
        progress: show a progress bar.
        log: receives one line per epoch.
        extra_metadata: more sidecar fields (e.g. support indices).
        stop_after_epoch: stop (without writing the final checkpoint) after this
            epoch, as an interruption would; used to test resume.

    Under ``torchrun`` (a process group from :func:`fdalign_plugins.distributed.init_from_env`)
    every rank calls this with the same arguments; ``cfg.batch_size`` stays the global
    batch, the result is the same on every rank, and only rank 0 logs and writes files.

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        TrainingError: NaN / infinite loss (naming epoch and step) or a bad device.
        CheckpointError: a saved training state from another config.
    """
    run = _FineTuning(bundle, support, classnames, cfg, val, out_dir, log, progress)
    run.prepare_model()
    run.build_trainables()
    run.build_validation()
    run.setup_method_and_resume(resume)
    run.train(stop_after_epoch)
    run.finish()
    return run.write(extra_metadata)
