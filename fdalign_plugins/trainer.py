"""The FD-Align fine-tuner: trains CLIP's image encoder (SPEC §1).

The text encoder stays frozen; class and spurious prototypes are computed once. A frozen
copy of the original image encoder sees the same augmented batch under ``no_grad`` and
gives the reference spurious distribution. ``beta = 0`` is plain full fine-tuning (the
frozen forward is then skipped).

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
from .checkpoint import atomic_torch_save, read_encoder, save_encoder, WEIGHTS_NAME
from .config import FinetuneConfig, to_dict
from .datasets.base import ImageSplit
from .errors import CheckpointError, DataError, TrainingError
from .losses import class_loss, cosine_logits, spurious_kl, total_loss
from .models import ClipBundle, state_fingerprint
from .prompts import class_prototypes, encode_prompts, normalise, resolve_templates, spurious_prototypes
from .spc import SPCResult, spurious_prototype_correction

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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, j))
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


@dataclass
class TextPrototypes:
    """Frozen text side of FD-Align.

    Attributes:
        class_protos: ``mu_class`` ``[C, D]``.
        spur_protos: spurious prototypes after SPC ``[k, D]`` (or all ``[M, D]``).
        templates: the M templates the spurious prototypes came from.
        spc: what SPC kept (``None`` if SPC is off).
    """

    class_protos: torch.Tensor
    spur_protos: torch.Tensor
    templates: List[str]
    spc: Optional[SPCResult]


def text_prototypes(bundle: ClipBundle, classnames: Sequence[str], cfg: FinetuneConfig) -> TextPrototypes:
    """Class prototypes, spurious prototypes and SPC from the frozen text encoder."""
    templates = resolve_templates(cfg.templates)
    feats = encode_prompts(bundle.model, bundle.tokenizer, classnames, templates)  # [M, C, D]
    cls = class_prototypes(feats)
    spur = spurious_prototypes(feats)
    spc = None
    if cfg.spc and (cfg.spc_keep or cfg.spc_k):
        spc = spurious_prototype_correction(
            spur, n_keep=cfg.spc_keep, k=cfg.spc_k, seed=cfg.seed, renormalise=cfg.spc_renormalise
        )
        spur = spc.prototypes
    return TextPrototypes(cls.float(), spur.float(), templates, spc)


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


def _student_losses(student: nn.Module, frozen: Optional[nn.Module], images: torch.Tensor, labels: torch.Tensor,
                    protos: "TextPrototypes", tau: float, cfg: FinetuneConfig) -> Dict[str, torch.Tensor]:
    feats, head_logits = student(images)  # [B, D], [B, C] | None
    if head_logits is not None:
        l_class = nn.functional.cross_entropy(head_logits, labels)
    else:
        l_class = class_loss(feats, labels, protos.class_protos, tau)
    if cfg.beta > 0 and frozen is not None:
        with torch.no_grad():
            feats0 = frozen(images)  # [B, D]
        l_spur = spurious_kl(feats, feats0, protos.spur_protos, tau, cfg.kl_direction)
    else:
        l_spur = torch.zeros((), device=feats.device)
    return {"class": l_class, "spurious": l_spur, "total": total_loss(l_class, l_spur, cfg.alpha, cfg.beta)}


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
    """One batch's ``L_class``, ``L_spurious`` and total loss (each a mean over the batch).

    With ``cfg.beta == 0`` the frozen encoder is not run and ``L_spurious`` is 0.
    """
    return _student_losses(Student(visual, head), frozen, images, labels, protos, tau, cfg)


def build_optimizer(params: List[nn.Parameter], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0) or AdamW, as ``cfg.optimizer`` says."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


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


def cosine_lambda(total_iters: int, warmup_iters: int = 0) -> Callable[[int], float]:
    """LR multiplier: linear warm-up then cosine to 0, stepped per iteration."""
    def f(it: int) -> float:
        if warmup_iters and it < warmup_iters:
            return (it + 1) / warmup_iters
        span = max(1, total_iters - warmup_iters)
        return 0.5 * (1.0 + math.cos(math.pi * min(it - warmup_iters, span) / span))
    return f


@dataclass
class FinetuneResult:
    """Output of :func:`finetune`.

    Attributes:
        visual: the fine-tuned image encoder (best epoch loaded).
        head: the trained linear head (``cfg.head == "linear"``), else ``None``.
        history: one dict per epoch: ``epoch, l_class, l_spurious, loss, val_acc, lr, seconds``.
        best_epoch: the epoch whose weights were kept (1-based).
        protos: the text prototypes used.
        checkpoint: the written ``encoder.safetensors`` (if ``out_dir`` was given).
        metadata: the sidecar content.
    """

    visual: nn.Module
    head: Optional[nn.Linear]
    history: List[Dict[str, Any]]
    best_epoch: int
    protos: TextPrototypes
    checkpoint: Optional[Path] = None
    metadata: Dict[str, Any] = field(default_factory=dict)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean().item() * 100.0) if len(labels) else float("nan")


def _config_diff(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
    ignore = {"device", "workers", "amp"}
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k) != b.get(k)]


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
    """Fine-tune ``bundle.model.visual`` with FD-Align on a few-shot support set.

    Args:
        bundle: the CLIP model (modified in place: its ``visual`` is trained).
        support: the K-shot training images, labels indexing ``classnames``.
        classnames: class names in label order.
        cfg: resolved :class:`FinetuneConfig`.
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
    cfg.validate()
    if len(support) == 0:
        raise DataError("the few-shot support set is empty")
    rank, world = dist_utils.rank(), dist_utils.world_size()
    main = rank == 0
    say: Callable[[str], None] = log if main else (lambda _s: None)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    model = bundle.model.to(device)
    model.eval()
    tau = bundle.logit_scale
    protos = text_prototypes(bundle, classnames, cfg)
    if world > 1:  # every rank trains against rank 0's prototypes, whatever its own text tower said
        cls_p, spur_p, tau = dist_utils.broadcast_object((protos.class_protos.cpu(), protos.spur_protos.cpu(), tau))
        protos = TextPrototypes(cls_p, spur_p, protos.templates, protos.spc)
    protos = TextPrototypes(protos.class_protos.to(device), protos.spur_protos.to(device), protos.templates, protos.spc)

    visual = model.visual
    for p in model.parameters():
        p.requires_grad_(False)
    if world > 1:  # the frozen reference below must be rank 0's encoder on every rank
        dist_utils.broadcast_module_(visual)
    frozen = copy.deepcopy(visual).eval().requires_grad_(False) if cfg.beta > 0 else None
    visual.requires_grad_(True)
    head = None
    if cfg.head == "linear":
        head = nn.Linear(protos.class_protos.shape[1], protos.class_protos.shape[0]).to(device)
        with torch.no_grad():
            head.weight.copy_(tau * protos.class_protos)
            head.bias.zero_()
    student: nn.Module = Student(visual, head)
    ddp: Optional[nn.parallel.DistributedDataParallel] = None
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
        student = ddp
    params = list(visual.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = build_optimizer(params, cfg)
    batches = math.ceil(len(support) / cfg.batch_size)
    steps_per_epoch = math.ceil(batches / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(total_steps, cfg.warmup_iters))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    train_tf = bundle.train_transform(scale=cfg.aug_scale, flip=False)
    cfg_dict = to_dict(cfg)

    history: List[Dict[str, Any]] = []
    best = {"epoch": 0, "acc": -1.0, "visual": None, "head": None}
    start_epoch = 1
    state_path = Path(out_dir) / STATE_NAME if out_dir is not None else None
    # rank 0 reads the state and sends it (or the reason it cannot be used) to every rank,
    # so all ranks resume from the same epoch even when out_dir is not on a shared disk
    loaded: Optional[Tuple[str, Any]] = None
    if main and resume and state_path is not None and state_path.is_file():
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            loaded = ("error",
                      f"cannot read training state {state_path} ({type(exc).__name__}); delete it to start over")
        else:
            diff = _config_diff(state.get("config", {}), cfg_dict)
            loaded = ("error", f"training state {state_path} was made with another config ({'; '.join(diff[:3])}); "
                      "use a new output folder, or delete it to start over") if diff else ("state", state)
    if world > 1 and resume:
        loaded = dist_utils.broadcast_object(loaded)
    if loaded is not None and loaded[0] == "error":
        raise CheckpointError(loaded[1])
    if loaded is not None:
        state = loaded[1]
        visual.load_state_dict(state["visual"])
        if head is not None and state.get("head") is not None:
            head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        best = state["best"]
        start_epoch = int(state["epoch"]) + 1
        say(f"resuming from {state_path} after epoch {start_epoch - 1}")

    # validation is sharded too: each rank scores its slice, the counts are summed, so
    # every rank sees the same accuracy and picks the same best epoch
    val_x = None
    if val is not None and len(val) > 0:
        lo, hi = dist_utils.shard_range(len(val), rank, world)
        eval_loader = DataLoader(SplitDataset(val, bundle.eval_transform, indices=range(lo, hi)), batch_size=256,
                                 shuffle=False)
        val_x = [(x.to(device), y.to(device)) for x, y in eval_loader]

    def val_accuracy() -> float:
        if val_x is None:
            return float("nan")
        visual.eval()
        correct = 0
        n = 0
        with torch.no_grad(), torch.autocast("cuda", enabled=use_amp):
            for x, y in val_x:
                f = visual(x).float()  # [B, D]
                logits = head(normalise(f)) if head is not None else cosine_logits(f, protos.class_protos, tau)
                correct += int((logits.argmax(-1) == y).sum())
                n += len(y)
        set_train_mode(visual, cfg.freeze_bn)
        if world > 1:
            correct, n = (int(v) for v in dist_utils.all_reduce_floats([correct, n]))
        return 100.0 * correct / n

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=(start_epoch - 1) * steps_per_epoch, desc="fine-tune", unit="step",
               disable=not (progress and main), leave=False)
    t_start = time.time()
    if start_epoch == 1 and val_x is not None and cfg.select == "val":
        # the encoder as given is a candidate too ("epoch 0"): if no epoch of fine-tuning
        # beats it on validation, fine-tuning is rejected rather than forced
        acc0 = val_accuracy()
        best = {"epoch": 0, "acc": acc0, "visual": {k: v.detach().clone() for k, v in visual.state_dict().items()},
                "head": {k: v.detach().clone() for k, v in head.state_dict().items()} if head is not None else None}
        say(f"epoch 0 (before fine-tuning)  val {acc0:.2f}%")
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.time()
        torch.manual_seed(epoch_seed(cfg.seed, epoch) + rank)  # any other randomness (e.g. dropout) restarts too
        set_train_mode(student, cfg.freeze_bn)
        loader = make_loader(support, train_tf, cfg.batch_size, cfg.seed, epoch, cfg.workers, rank, world)
        shares = loader.batch_sampler.shares
        sums = {"class": 0.0, "spurious": 0.0, "total": 0.0}
        seen = 0
        opt.zero_grad(set_to_none=True)
        for b, ((x, y), share) in enumerate(zip(loader, shares)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            stepping = (b + 1) % cfg.grad_accum == 0 or b + 1 == batches
            sync = ddp.no_sync() if ddp is not None and not stepping else contextlib.nullcontext()
            with sync:
                with torch.autocast("cuda", enabled=use_amp):
                    losses = _student_losses(student, frozen, x, y, protos, tau, cfg)
                if world > 1:
                    # global-batch means: sum of per-sample losses over ranks / global batch size
                    got = dist_utils.all_reduce_floats([float(losses[k].detach()) * share.local_size for k in sums])
                    means = {k: v / share.global_size for k, v in zip(sums, got)}
                else:
                    means = {k: float(losses[k].detach()) for k in sums}
                if not math.isfinite(means["total"]):
                    bar.close()
                    raise TrainingError(
                        f"loss became {means['total']} at epoch {epoch}, step {b + 1} "
                        f"(L_class={means['class']:.4g}, L_spurious={means['spurious']:.4g}); "
                        "lower the learning rate (lr) or set grad_clip"
                    )
                loss = losses["total"]
                if world > 1:
                    # DDP averages over ranks: this weight makes the average the global-batch mean
                    loss = loss * (share.local_size * world / share.global_size)
                scaler.scale(loss / cfg.grad_accum).backward()
            if stepping:
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
                bar.update(1)
            for k in sums:
                sums[k] += means[k] * share.global_size
            seen += share.global_size
        acc = val_accuracy()
        rec = {
            "epoch": epoch,
            "l_class": sums["class"] / seen,
            "l_spurious": sums["spurious"] / seen,
            "loss": sums["total"] / seen,
            "val_acc": acc,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.time() - t0,
        }
        history.append(rec)
        improved = cfg.select == "last" or val_x is None or acc > best["acc"]
        if improved:
            best = {
                "epoch": epoch,
                "acc": acc if acc == acc else -1.0,
                "visual": {k: v.detach().clone() for k, v in visual.state_dict().items()},
                "head": {k: v.detach().clone() for k, v in head.state_dict().items()} if head is not None else None,
            }
        say(
            f"epoch {epoch}/{cfg.epochs}  L_class {rec['l_class']:.4f}  L_spurious {max(0.0, rec['l_spurious']):.4f}  "
            f"val {acc:.2f}%{'  *' if improved and val_x is not None else ''}"
        )
        if state_path is not None:
            if main:
                atomic_torch_save(
                    {
                        "epoch": epoch,
                        "visual": visual.state_dict(),
                        "head": head.state_dict() if head is not None else None,
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "scaler": scaler.state_dict() if use_amp else None,
                        "history": history,
                        "best": best,
                        "config": cfg_dict,
                    },
                    state_path,
                )
            dist_utils.barrier()  # no rank runs ahead of the last durable epoch
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs:
            bar.close()
            raise KeyboardInterrupt(f"stopped after epoch {epoch} (stop_after_epoch)")
    bar.close()
    del ddp, student  # drop DDP's hooks; bundle.model.visual is the plain module again

    if best["visual"] is not None:
        visual.load_state_dict(best["visual"])
        if head is not None and best["head"] is not None:
            head.load_state_dict(best["head"])
    visual.eval().requires_grad_(False)
    meta: Dict[str, Any] = {
        "model": bundle.model_name,
        "pretrained": bundle.pretrained,
        "dataset": cfg.dataset,
        "shots": cfg.shots,
        "seed": cfg.seed,
        "config": cfg_dict,
        "classnames": list(classnames),
        "templates": protos.templates,
        "spc": None if protos.spc is None else {
            "kept_indices": protos.spc.kept,
            "kept_templates": [protos.templates[i] for i in protos.spc.kept],
            "num_prototypes": int(protos.spur_protos.shape[0]),
        },
        "history": history,
        "best_epoch": best["epoch"],
        "best_val_acc": best["acc"] if val_x is not None else None,
        "logit_scale": tau,
        "image_size": bundle.image_size,
        "encoder_fingerprint": state_fingerprint(visual),
        "train_seconds": time.time() - t_start,
        "package_version": __version__,
    }
    if extra_metadata:
        meta.update(extra_metadata)
    ckpt = None
    if out_dir is not None:
        ckpt = Path(out_dir) / WEIGHTS_NAME
        if main:
            extra = {"spurious_prototypes": protos.spur_protos, "class_prototypes": protos.class_protos}
            if head is not None:
                extra.update({"head.weight": head.weight, "head.bias": head.bias})
            ckpt = save_encoder(visual, ckpt, meta, extra)
            if state_path is not None and state_path.exists():
                state_path.unlink()
        dist_utils.barrier()  # the checkpoint exists for every rank once finetune returns
    return FinetuneResult(visual, head, history, best["epoch"], protos, ckpt, meta)
