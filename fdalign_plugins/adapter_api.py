"""The public, typed contract between the runner and adapter plugins.

An adapter turns features into logits. The runner owns images, encoders and caching;
it hands an adapter a :class:`FewShotTask` (support features as ``V`` augmented views,
the text classifier, validation features) and later asks it for logits on test
features. Adapters never see images, and never see test features before ``fit`` has
returned — so nothing can be selected on test data.

A plugin registers an :class:`AdapterSpec` through the ``fdalign_register_adapters``
hook (see :mod:`fdalign_plugins.hookspecs`). The usual way is to subclass
:class:`Adapter`, declare the class attributes, and register ``MyAdapter.spec()``.

This module also holds the formula pieces every adapter shares — one function per
formula: :func:`normalise`, :func:`build_cache_keys`, :func:`one_hot`,
:func:`zero_shot_logits`, :func:`cache_logits`, and (from :mod:`fdalign_plugins.search`)
:func:`affinity_kernel`, :func:`class_sum`, the vectorised :func:`search_cache_grid` and
the first-best :func:`search_list`
— plus :func:`train_on_views`, the training loop of the adapters that train.

How an adapter chose its hyper-parameters is data (:data:`SELECTION_POLICIES`): ``val``
(on the few-shot validation split), ``fixed`` (nothing chosen) or ``test`` (on the test
set, only under ``--protocol reference``). An adapter declares the policies it supports
(:attr:`Adapter.selection`); :func:`check_selection` refuses a protocol it does not
support and :func:`selection_used` names the policy a fitted adapter followed.
"""

from __future__ import annotations

import abc
import copy
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError, DataError, FDAlignError
from .spine import BestState, OptimizerSettings, check_finite, make_optimizer, make_schedule
from .ops import normalise, percent
from .search import (
    GridAxis,
    GridList,
    SearchResult,
    affinity_kernel,
    class_sum,
    count_correct,
    grid_values,
    search_cache_grid,
    search_list,
)
from .specs import (  # the specs live below the layers that look them up; plugin authors import them here
    SELECTION_POLICIES,
    AdapterSpec,
    DatasetSpec,
    HParam,
    check_hparams,
    check_selection,
    protocol_policy,
    resolve_hparams,
)

__all__ = [
    "SELECTION_POLICIES",
    "Adapter",
    "AdapterSpec",
    "DatasetSpec",
    "EpochRecord",
    "FewShotTask",
    "GridAxis",
    "GridList",
    "HParam",
    "SearchResult",
    "TRAIN_HPARAMS",
    "TrainResult",
    "affinity_kernel",
    "build_cache_keys",
    "cache_logits",
    "check_hparams",
    "check_every_class",
    "check_selection",
    "class_sum",
    "count_correct",
    "grid_values",
    "normalise",
    "one_hot",
    "percent",
    "resolve_hparams",
    "scale_channel_count",
    "search_cache_grid",
    "search_list",
    "selection_used",
    "train_on_views",
    "zero_shot_logits",
]

#: The logit scale of the zero-shot term (CLIP's τ for the OpenAI checkpoints).
ZERO_SHOT_SCALE = 100.0


# --------------------------------------------------------------------------- task


@dataclass
class FewShotTask:
    """Everything an adapter may use to fit: features only, never test data.

    Attributes:
        support: ``[V, N, D]`` raw (not normalised) image features of ``V`` augmented
            views of the ``N`` support images.
        support_labels: ``[N]`` int64 class of each support image.
        classifier: ``[D, C]`` text classifier, columns L2-normalised.
        val_features: ``[Nv, D]`` L2-normalised validation features.
        val_labels: ``[Nv]`` int64 validation labels.
        dataset: dataset name (selects per-dataset hyper-parameter defaults).
        shots: shots per class ``K``.
        seed: seed of the few-shot draw; adapters seed their own randomness from it.
    """

    support: Tensor
    support_labels: Tensor
    classifier: Tensor
    val_features: Tensor
    val_labels: Tensor
    dataset: str
    shots: int
    seed: int

    def __post_init__(self) -> None:
        if self.support.dim() != 3:
            raise DataError(f"support features must be [V, N, D], got shape {tuple(self.support.shape)}")
        views, num, dim = self.support.shape
        if views < 1 or num < 1:
            raise DataError(f"support features need at least one view and one image, got {tuple(self.support.shape)}")
        if self.classifier.dim() != 2 or self.classifier.shape[0] != dim:
            raise DataError(f"classifier must be [D={dim}, C], got shape {tuple(self.classifier.shape)}")
        if tuple(self.support_labels.shape) != (num,):
            raise DataError(f"support_labels must be [N={num}], got shape {tuple(self.support_labels.shape)}")
        if self.val_features.dim() != 2 or self.val_features.shape[1] != dim:
            raise DataError(f"val_features must be [Nv, D={dim}], got shape {tuple(self.val_features.shape)}")
        if self.val_features.shape[0] < 1:
            raise DataError("the validation set is empty; adapters select hyper-parameters on it")
        if tuple(self.val_labels.shape) != (self.val_features.shape[0],):
            raise DataError(
                f"val_labels must be [Nv={self.val_features.shape[0]}], got shape {tuple(self.val_labels.shape)}"
            )
        self.support_labels = self.support_labels.long()
        self.val_labels = self.val_labels.long()
        for what, lbl in (("support_labels", self.support_labels), ("val_labels", self.val_labels)):
            if lbl.numel() and (int(lbl.min()) < 0 or int(lbl.max()) >= self.num_classes):
                raise DataError(f"{what} must lie in [0, {self.num_classes}), got [{int(lbl.min())}, {int(lbl.max())}]")

    @property
    def num_classes(self) -> int:
        """``C``, the number of columns of the classifier."""
        return int(self.classifier.shape[1])

    @property
    def feature_dim(self) -> int:
        """``D``, the feature width."""
        return int(self.classifier.shape[0])

    @property
    def num_views(self) -> int:
        """``V``, the number of augmented views of the support set."""
        return int(self.support.shape[0])

    def work_dtype(self) -> torch.dtype:
        """float64 if the support features are float64, else float32 (fp16 is upcast)."""
        return torch.float64 if self.support.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- formulas


def build_cache_keys(support: Tensor) -> Tensor:
    """Cache keys ``F``: mean of the ``V`` raw views per image, then L2-normalised.

    Args:
        support: ``[V, N, D]`` raw features.

    Returns:
        ``[N, D]`` L2-normalised keys.
    """
    return normalise(support.mean(dim=0))


def check_every_class(task: "FewShotTask", adapter: str, why: str) -> None:
    """Raise :class:`DataError` if a class of ``task`` has no support image.

    Args:
        task: the few-shot task.
        adapter: the adapter's name, for the message.
        why: what the adapter needs one image per class for, e.g. "a mean per class".
    """
    counts = torch.bincount(task.support_labels, minlength=task.num_classes)  # [C]
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        shown = ", ".join(str(c) for c in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise DataError(f"adapter '{adapter}': class(es) {shown} have no support image ({len(missing)} of "
                        f"{task.num_classes}); it needs {why}. Give every class at least one support image")


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Cache values ``L``: ``[N, C]`` one-hot rows of ``labels`` (``[N]`` int64)."""
    return F.one_hot(labels.long(), num_classes).to(dtype)


def zero_shot_logits(features: Tensor, classifier: Tensor) -> Tensor:
    """``100 · f W``: ``[B, D] @ [D, C] -> [B, C]``."""
    return ZERO_SHOT_SCALE * features @ classifier


def cache_logits(
    affinity: Tensor,
    labels: Tensor,
    alpha: float,
    beta: float,
    values: Optional[Tensor] = None,
    *,
    num_classes: int,
) -> Tensor:
    """The residual cache term ``α · exp(−β (1 − A)) (L ⊙ values)``.

    ``L`` is the one-hot matrix of ``labels``; the product with it is computed as a
    per-class sum over cache entries (:func:`class_sum`). Differentiable.

    Args:
        affinity: ``[B, NK]`` affinities of ``B`` features with the ``NK`` cache keys.
        labels: ``[NK]`` int64 class of each cache entry.
        alpha: residual weight α.
        beta: sharpness β.
        values: optional ``[NK]`` per-entry value weights (APE's ``R``, APE-T's ``w``).
        num_classes: ``C``.

    Returns:
        ``[B, C]`` cache logits.
    """
    return class_sum(affinity_kernel(affinity, beta), labels, num_classes, values=values) * alpha


def scale_channel_count(q: int, dim: int, ref_dim: int = 1024) -> int:
    """A channel count quoted for ``ref_dim``-wide features, scaled to ``dim``.

    ``round(q · dim / ref_dim)`` clipped to ``[1, dim]`` (APE's Q values in the SPEC
    table are for RN50's 1024 channels).
    """
    return int(min(max(int(round(q * dim / ref_dim)), 1), dim))


def selection_used(adapter: "Adapter", protocol: str) -> str:
    """The policy a fitted ``adapter`` followed: ``fixed`` if it chose nothing on its
    validation set (:meth:`Adapter.selects_on_validation`), else the protocol's."""
    return protocol_policy(protocol) if adapter.selects_on_validation() else "fixed"


# --------------------------------------------------------------------------- training

#: Declarations of the hyper-parameters :func:`train_on_views` takes, for adapters that train.
TRAIN_HPARAMS: Mapping[str, HParam] = MappingProxyType({
    "epochs": HParam(int, low=0, help="training epochs (0: no training)"),
    "lr": HParam(float, low=0, help="AdamW learning rate"),
    "eps": HParam(float, low=0, help="AdamW epsilon"),
    "weight_decay": HParam(float, low=0, help="AdamW weight decay"),
    "batch_size": HParam(int, low=1, help="largest training batch"),
})


@dataclass(frozen=True)
class EpochRecord:
    """One line of a training history (epoch 0 is the untrained state, without a loss;
    ``val_correct`` is ``None`` when training does not look at the validation set)."""

    epoch: int
    train_loss: Optional[float]
    val_correct: Optional[int]


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_on_views`: the chosen epoch and the per-epoch history
    (without selection: the last epoch, and ``best_val_correct`` is ``None``)."""

    best_epoch: int
    best_val_correct: Optional[int]
    history: List[EpochRecord]


@torch.no_grad()
def _count_correct_chunked(forward: Callable[[Tensor], Tensor], features: Tensor, labels: Tensor,
                           chunk: int = 1024) -> int:
    return sum(count_correct(forward(features[i : i + chunk]), labels[i : i + chunk])
               for i in range(0, len(features), chunk))


def train_on_views(
    parameters: Sequence[torch.nn.Parameter],
    forward: Callable[[Tensor], Tensor],
    task: FewShotTask,
    *,
    epochs: int,
    lr: float,
    eps: float = 1e-8,
    weight_decay: float,
    batch_size: int = 256,
    dtype: Optional[torch.dtype] = None,
    optimizer: str = "adamw",
    momentum: float = 0.9,
    warmup_epochs: int = 0,
    warmup_lr: float = 1e-5,
    select_on_val: bool = True,
    penalty: Optional[Callable[[], Tensor]] = None,
) -> TrainResult:
    """Train ``parameters`` with cross-entropy on the cached augmented views.

    Epoch ``e`` trains on view ``e mod V`` of the support set, each feature
    L2-normalised, in a shuffled order drawn from a local generator seeded with
    ``task.seed`` (no global RNG is touched), in batches of ``min(batch_size, N)``.
    AdamW (or SGD with momentum) with a cosine schedule stepped per iteration (as the
    references), after ``warmup_epochs`` epochs at the constant ``warmup_lr`` (Dassl's
    "constant" warm-up, which CLAP uses). With ``select_on_val`` the validation top-1 is
    counted after every epoch and the parameters of the best epoch — epoch 0, the
    untrained state, included; the earliest on ties — are restored on return; without
    it the validation set is never looked at and the last epoch is kept. Test features
    are never involved. Selection, loss guard, optimizer and schedule are the training
    spine's (:mod:`fdalign_plugins.spine`), shared with the encoder fine-tuners.

    Args:
        parameters: the trainable tensors ``forward`` closes over.
        forward: ``forward(features [B, D]) -> logits [B, C]``.
        task: the few-shot task (support views, labels, validation set, seed).
        epochs: number of epochs (0 leaves the parameters untouched).
        lr: learning rate.
        eps: AdamW epsilon (unused by SGD).
        weight_decay: weight decay.
        batch_size: maximum batch size.
        dtype: feature dtype for training (default: ``task.work_dtype()``).
        optimizer: ``"adamw"`` or ``"sgd"``.
        momentum: SGD momentum (unused by AdamW).
        warmup_epochs: epochs at ``warmup_lr`` before the cosine schedule starts.
        warmup_lr: the constant warm-up learning rate.
        select_on_val: keep the best epoch on validation (else the last epoch).
        penalty: optional ``penalty() -> scalar`` added to every batch's loss (CLAP's
            constraint).

    Returns:
        The kept epoch, its validation correct count and the history.

    Raises:
        TrainingError: a NaN or infinite loss (naming epoch and step).
    """
    if epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"optimizer must be adamw or sgd, got {optimizer!r}")
    if not 0 <= warmup_epochs <= epochs:
        raise ConfigError(f"warmup_epochs must lie in [0, epochs={epochs}], got {warmup_epochs}")
    params = list(parameters)
    dtype = dtype or task.work_dtype()
    device = params[0].device if params else task.support.device
    views = normalise(task.support.to(device=device, dtype=dtype))  # [V, N, D]
    labels = task.support_labels.to(device)  # [N]
    val = task.val_features.to(device=device, dtype=dtype)  # [Nv, D]
    val_labels = task.val_labels.to(device)  # [Nv]
    num = views.shape[1]
    bs = min(batch_size, num)
    iters = math.ceil(num / bs)

    def evaluate() -> Optional[int]:
        return _count_correct_chunked(forward, val, val_labels) if select_on_val else None

    holder = torch.nn.ParameterList(params)  # BestState keeps and restores modules
    best = BestState({"params": holder}, "val" if select_on_val else "last")
    correct0 = evaluate()
    best.offer(0, float("nan") if correct0 is None else correct0)
    history = [EpochRecord(0, None, correct0)]
    if epochs > 0:
        opt = make_optimizer(params, OptimizerSettings(optimizer, lr=lr,
                                                       momentum=momentum if optimizer == "sgd" else 0.0,
                                                       eps=eps, weight_decay=weight_decay))
        # Dassl's "constant" warm-up (CLAP): warmup_lr for warmup_epochs, then cosine from lr on the rest
        scheduler = make_schedule(opt, epochs * iters, warmup_epochs * iters,
                                  constant_warmup=(warmup_lr / lr if lr > 0 else 0.0) if warmup_epochs else None)
        generator = torch.Generator().manual_seed(int(task.seed))
    for epoch in range(1, epochs + 1):
        inputs = views[(epoch - 1) % views.shape[0]]  # [N, D]
        order = torch.randperm(num, generator=generator).to(device)
        total_loss = 0.0
        for start in range(0, num, bs):
            idx = order[start : start + bs]
            loss = F.cross_entropy(forward(inputs[idx]), labels[idx])
            if penalty is not None:
                loss = loss + penalty()
            check_finite(float(loss.detach()), f"epoch {epoch}, step {start // bs + 1}", fix="lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(idx)
        correct = evaluate()
        history.append(EpochRecord(epoch, total_loss / num, correct))
        best.offer(epoch, float("nan") if correct is None else correct)
    best.restore()
    return TrainResult(int(best.epoch), None if correct0 is None else int(best.score), history)


# --------------------------------------------------------------------------- adapter


class Adapter(abc.ABC):
    """Base class of adapters: created with hyper-parameters, fitted on a task.

    Subclasses set the class attributes and implement :meth:`fit` and :meth:`predict`.
    ``fit`` must resolve hyper-parameters with :meth:`resolve` (explicit >
    per-dataset > generic default), build its cache, train if it trains (best epoch on
    validation), search on validation (:meth:`search_grid` gives the declared grids),
    and record the values it used with :meth:`record_chosen`. ``predict`` starts with
    :meth:`check_features`.

    Class attributes:
        name: registry name.
        summary: one line for listings.
        trains: whether ``fit`` trains.
        defaults: every hyper-parameter with its generic default.
        dataset_defaults: per-dataset overrides.
        search_space: searched hyper-parameters (a :class:`GridAxis` or a
            :class:`GridList` each).
        selection: the selection policies the adapter supports (see
            :data:`SELECTION_POLICIES`); override :meth:`selects_on_validation` when
            some hyper-parameter settings choose nothing.
        hparam_types: optional :class:`HParam` (type, range) per hyper-parameter;
            undeclared ones are typed by their default.
        label, reference, order: how tables show it (:class:`AdapterSpec`); read from
            the class itself, never inherited.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    trains: ClassVar[bool] = False
    defaults: ClassVar[Mapping[str, Any]] = {}
    dataset_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    search_space: ClassVar[Mapping[str, Any]] = {}  # GridAxis or GridList per searched name
    selection: ClassVar[Tuple[str, ...]] = ("val", "test")
    hparam_types: ClassVar[Mapping[str, HParam]] = {}
    label: ClassVar[str] = ""
    reference: ClassVar[bool] = False
    order: ClassVar[int] = 1000

    def __init__(self, **hparams: Any) -> None:
        """Store explicit hyper-parameters, coerced to their declared types.

        Raises:
            ConfigError: (an :class:`FDAlignError`) for a name not in ``defaults``,
                listing the valid ones, or a value of the wrong type or out of range.
        """
        self.explicit: Dict[str, Any] = check_hparams(self.name, self.defaults, self.hparam_types, hparams)
        self.hparams: Dict[str, Any] = {}
        self.val_accuracy: Optional[float] = None
        self.feature_dim = 0
        self.num_classes = 0
        self._chosen: Optional[Dict[str, Any]] = None

    @classmethod
    def spec(cls) -> AdapterSpec:
        """The :class:`AdapterSpec` to register for this class."""
        return AdapterSpec(
            name=cls.name,
            summary=cls.summary,
            trains=cls.trains,
            factory=cls,
            defaults=cls.defaults,
            dataset_defaults=cls.dataset_defaults,
            search_space=cls.search_space,
            hparam_types=cls.hparam_types,
            selection=cls.selection,
            # how tables show it belongs to the class that names it: a subclass with its own
            # name does not take its parent's label, order or reference role
            label=cls.__dict__.get("label", ""),
            reference=cls.__dict__.get("reference", False),
            order=cls.__dict__.get("order", 1000),
        )

    def resolve(self, task: FewShotTask) -> Dict[str, Any]:
        """Resolve and store ``self.hparams`` for ``task.dataset`` (first step of ``fit``).

        Also records the task's feature width and class count, which :meth:`predict`
        checks its input against.
        """
        self.hparams = resolve_hparams(self.defaults, self.dataset_defaults, task.dataset, self.explicit)
        self.feature_dim = task.feature_dim
        self.num_classes = task.num_classes
        self._chosen = None
        return self.hparams

    @abc.abstractmethod
    def fit(self, task: FewShotTask) -> "Adapter":
        """Build the cache, train if the adapter trains, search on validation.

        Args:
            task: support views, labels, text classifier and validation set.

        Returns:
            ``self``.
        """

    @abc.abstractmethod
    def predict(self, features: Tensor) -> Tensor:
        """Logits for L2-normalised features.

        Args:
            features: ``[B, D]`` L2-normalised features.

        Returns:
            ``[B, C]`` logits.
        """

    def chosen_hparams(self) -> Dict[str, Any]:
        """The hyper-parameter values actually used (after search), JSON-serialisable.

        Raises:
            FDAlignError: before :meth:`fit`.
        """
        if self._chosen is None:
            raise FDAlignError(f"adapter '{self.name}' is not fitted; call fit(task) first")
        return copy.deepcopy(self._chosen)

    def selects_on_validation(self) -> bool:
        """Whether ``fit`` (with the resolved ``self.hparams``) chose anything — a
        hyper-parameter, a best epoch — on the validation set. The default: unless the
        adapter declares only the ``fixed`` policy."""
        return any(p != "fixed" for p in self.selection)

    # ---- helpers for subclasses

    def record_chosen(self, values: Mapping[str, Any]) -> None:
        """Record the hyper-parameters used (last step of ``fit``); marks the adapter fitted.

        Tensors and numpy scalars are converted so the record is JSON-serialisable.
        """
        self._chosen = {k: _jsonable(v) for k, v in values.items()}

    def check_features(self, features: Tensor) -> None:
        """First step of ``predict``: the adapter is fitted and ``features`` is ``[B, D]``.

        Raises:
            FDAlignError: before ``fit``.
            DataError: features of another width.
        """
        if self._chosen is None:
            raise FDAlignError(f"adapter '{self.name}' is not fitted; call fit(task) first")
        dim = self.feature_dim
        if features.dim() != 2 or features.shape[1] != dim:
            raise DataError(f"adapter '{self.name}' expects features [B, {dim}], got shape {tuple(features.shape)}")

    def search_grid(self) -> Dict[str, List[float]]:
        """The grid of every axis of ``search_space`` for the resolved ``self.hparams``."""
        return {name: axis.values(self.hparams) for name, axis in self.search_space.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "item"):
        return value.item()
    return str(value)

