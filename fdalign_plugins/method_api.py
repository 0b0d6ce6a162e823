"""The contract between the fine-tuning spine and encoder fine-tuning methods.

A *method* decides how CLIP's image encoder is fine-tuned on a few-shot set: its
per-batch loss (given the trained and the frozen encoders' outputs and the text
prototypes), optionally a preparation step before training (e.g. LP-FT's linear probe)
and a finishing step on the trained weights (e.g. WiSE-FT's weight interpolation). The
spine (:func:`fdalign_plugins.trainer.finetune`) owns data, batches, optimisation,
best-epoch selection and checkpoints; a method never sees test data.

A plugin registers a :class:`MethodSpec` through the ``fdalign_register_methods`` hook
(entry-point group ``fdalign.methods``), usually ``MyMethod.spec()`` for a subclass of
:class:`Method`. Any method name followed by ``+wise`` (``fd-align+wise``) is that
method with WiSE-FT's finishing step appended (:func:`with_wise`).

Hyper-parameters: ``Method.defaults`` lists every hyper-parameter the method takes
(set with ``method_params``); ``Method.reads`` names the top-level fine-tuning config
keys it uses (FD-Align's ``alpha``, ``spurious_weight``, ``kl_direction`` predate method plugins
and stay top-level keys).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .registry import declare_method_suffix
from .spc import SPCResult
from .specs import MethodSpec, resolve_method  # below the registry that looks methods up; re-exported here

__all__ = ["BatchOutputs", "FinishContext", "Method", "MethodContext", "MethodSpec", "TextPrototypes", "WISE_DEFAULTS",
           "WISE_SUFFIX", "interpolate_weights", "resolve_method", "with_wise"]

#: A method name ending in this gets WiSE-FT's finishing step.
WISE_SUFFIX = "+wise"
#: WiSE's hyper-parameters: ``wise_a`` fixes the coefficient (``None``: choose it on
#: validation from ``wise_grid``, which must hold 0 and 1).
WISE_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"wise_a": None, "wise_grid": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]})


@dataclass
class TextPrototypes:
    """The frozen text side of fine-tuning (built by :func:`fdalign_plugins.methods.fd_align.text_prototypes`).

    Attributes:
        class_protos: ``mu_class`` ``[C, D]``.
        spur_protos: spurious prototypes after SPC ``[k, D]`` (or all ``[M, D]``).
        templates: the M templates the prototypes came from.
        spc: what SPC kept (``None`` if SPC is off).
    """

    class_protos: torch.Tensor
    spur_protos: torch.Tensor
    templates: List[str]
    spc: Optional[SPCResult]


@dataclass
class BatchOutputs:
    """What a method's loss sees for one batch.

    Attributes:
        feats: ``[B, D]`` raw features of the trained encoder.
        feats0: ``[B, D]`` raw features of the frozen stock encoder on the same
            augmented images (``None`` unless :meth:`Method.uses_frozen`).
        logits: ``[Q, C]`` class logits: ``τ·cos(f, mu_class)`` or the linear head's
            (episodic: the query images' prototype logits, so ``Q <= B``).
        labels: ``[Q]`` classes of the rows of ``logits``.
        protos: the frozen text side (class and spurious prototypes).
        tau: CLIP's logit scale.
        step_seed: a seed fixed by (run seed, epoch, step), for per-step randomness
            that resumes exactly.
    """

    feats: Tensor
    feats0: Optional[Tensor]
    logits: Tensor
    labels: Tensor
    protos: TextPrototypes
    tau: float
    step_seed: int = 0


@dataclass
class MethodContext:
    """What :meth:`Method.setup` may use before training.

    Attributes:
        model: the CLIP model (its text tower is frozen; ``model.visual`` is trained).
        tokenizer: ``list[str] -> LongTensor [B, L]``.
        protos: the frozen text side.
        tau: CLIP's logit scale.
        head: the trainable linear head (``None`` with fixed prototypes).
        support_features: ``() -> (features [N, D] raw, labels [N])`` of the support set
            by the stock encoder with the evaluation transform (computed on demand).
        val_features: the same for the validation split (``None`` without one).
        seed: the run's seed.
        log: one line at a time.
    """

    model: nn.Module
    tokenizer: Callable[..., Tensor]
    protos: TextPrototypes
    tau: float
    head: Optional[nn.Linear]
    support_features: Callable[[], Tuple[Tensor, Tensor]]
    val_features: Optional[Callable[[], Tuple[Tensor, Tensor]]]
    seed: int
    log: Callable[[str], None] = print


@dataclass
class FinishContext:
    """What :meth:`Method.finish` may use after the best epoch is restored.

    Attributes:
        modules: the trained modules by name (``"visual"`` and, if any, ``"head"``).
        stock: their weights before fine-tuning, by the same names.
        val_accuracy: ``() -> float`` top-1 % of the current weights on the few-shot
            validation split (``None`` without one).
        log: one line at a time.
    """

    modules: Dict[str, nn.Module]
    stock: Dict[str, Dict[str, Tensor]]
    val_accuracy: Optional[Callable[[], float]]
    log: Callable[[str], None] = print


class Method(abc.ABC):
    """Base class of fine-tuning methods.

    Subclasses set the class attributes and implement :meth:`loss`; they may override
    :meth:`uses_frozen`, :meth:`setup` and :meth:`finish`.

    Class attributes:
        name: registry name.
        summary: one line for listings.
        defaults: every hyper-parameter with its default.
        reads: top-level config keys used (their values arrive in ``hparams`` too).
        needs_head: train a linear head (initialised from ``τ·mu_class``) whatever
            the config's ``head`` says.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}
    reads: ClassVar[Tuple[str, ...]] = ()
    needs_head: ClassVar[bool] = False

    def __init__(self, **hparams: Any) -> None:
        """Store the resolved hyper-parameters (every name in ``defaults`` and ``reads``)."""
        unknown = sorted(set(hparams) - set(self.defaults) - set(self.reads))
        if unknown:
            raise ConfigError(f"method '{self.name}': unknown hyper-parameter(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(self.defaults)) or '(none)'}")
        self.hparams: Dict[str, Any] = {**self.defaults, **hparams}

    @classmethod
    def spec(cls) -> MethodSpec:
        """The :class:`MethodSpec` to register for this class."""
        return MethodSpec(name=cls.name, summary=cls.summary, factory=cls, defaults=cls.defaults, reads=cls.reads)

    def uses_frozen(self) -> bool:
        """Whether :meth:`loss` needs the frozen encoder's features (``feats0``)."""
        return False

    def setup(self, ctx: MethodContext) -> None:
        """Prepare before the first epoch (default: nothing). Not called on resume
        after the first epoch: anything it sets must live in the trained modules."""

    @abc.abstractmethod
    def loss(self, out: BatchOutputs) -> Dict[str, Tensor]:
        """The batch's loss terms (each a mean over the batch).

        Returns:
            ``{"class": L_class, ..., "total": the loss to minimise}``; every term is
            logged per epoch as ``l_<term>``.
        """

    def needs_stock(self) -> bool:
        """Whether :meth:`finish` needs the weights before fine-tuning."""
        return False

    def finish(self, ctx: FinishContext) -> Dict[str, Any]:
        """Change the trained weights after the best epoch is restored (default: nothing).

        Returns:
            What it did, recorded in the checkpoint sidecar under ``finish``; the key
            ``"kept_stock": True`` means the result is the stock encoder.
        """
        return {}


# --------------------------------------------------------------------------- WiSE


def interpolate_weights(stock: Mapping[str, Tensor], tuned: Mapping[str, Tensor], a: float) -> Dict[str, Tensor]:
    """WiSE-FT: ``θ = (1 − a)·θ_0 + a·θ_ft`` for every floating tensor of a state dict.

    Computed with ``torch.lerp``, exact at both ends (``a = 0`` gives ``θ_0``, ``a = 1``
    gives ``θ_ft``, bit for bit). Integer buffers (BatchNorm counters) come from the
    nearer end.
    """
    out = {}
    for k, t in tuned.items():
        s = stock[k]
        if t.is_floating_point():
            out[k] = torch.lerp(s.to(t.dtype), t, float(a))
        else:
            out[k] = (t if a >= 0.5 else s).clone()
    return out


def _check_wise(hp: Mapping[str, Any]) -> None:
    a, grid = hp["wise_a"], hp["wise_grid"]
    if a is not None and not (isinstance(a, (int, float)) and 0.0 <= float(a) <= 1.0):
        raise ConfigError(f"wise_a must be a number in [0, 1] (or unset to choose it on validation), got {a!r}")
    if a is None:
        if not isinstance(grid, (list, tuple)) or not all(isinstance(g, (int, float)) and 0 <= g <= 1 for g in grid) \
                or 0 not in grid or 1 not in grid:
            raise ConfigError(f"wise_grid must be a list of numbers in [0, 1] holding 0 and 1, got {grid!r}")


def wise_finish(hp: Mapping[str, Any], ctx: FinishContext) -> Dict[str, Any]:
    """WiSE-FT's finishing step: pick ``a`` on validation (or take ``wise_a``), interpolate.

    The grid is tried in ascending order and a later ``a`` must be strictly better, so
    ties keep the smaller ``a`` (closer to the stock encoder).
    """
    tuned = {k: {n: v.detach().clone() for n, v in m.state_dict().items()} for k, m in ctx.modules.items()}

    def load(a: float) -> None:
        for k, m in ctx.modules.items():
            m.load_state_dict(interpolate_weights(ctx.stock[k], tuned[k], a))

    if hp["wise_a"] is not None:
        a, scores = float(hp["wise_a"]), {}
    else:
        if ctx.val_accuracy is None:
            raise ConfigError("WiSE chooses its coefficient on the validation split and there is none; set wise_a")
        best, scores = None, {}
        for g in sorted(float(x) for x in hp["wise_grid"]):
            load(g)
            scores[g] = ctx.val_accuracy()
            if best is None or scores[g] > scores[best]:
                best = g
        a = float(best)
        ctx.log("WiSE on validation: " + "  ".join(f"a={g:g} {s:.2f}%" for g, s in scores.items()) + f"  -> a = {a:g}")
    load(a)
    return {"wise_a": a, "wise_val_acc": {f"{g:g}": s for g, s in scores.items()},
            "chosen_on": "fixed" if hp["wise_a"] is not None else "validation", "kept_stock": a == 0.0}


class _WithWise(Method):
    """``inner`` followed by WiSE-FT's finishing step."""

    def __init__(self, inner: Method, wise: Mapping[str, Any]):
        self.inner = inner
        self.wise = dict(wise)
        _check_wise(self.wise)
        self.hparams = {**inner.hparams, **self.wise}

    def uses_frozen(self) -> bool:
        return self.inner.uses_frozen()

    def setup(self, ctx: MethodContext) -> None:
        self.inner.setup(ctx)

    def loss(self, out: BatchOutputs) -> Dict[str, Tensor]:
        return self.inner.loss(out)

    def needs_stock(self) -> bool:
        return True

    def finish(self, ctx: FinishContext) -> Dict[str, Any]:
        done = self.inner.finish(ctx)
        return {**done, **wise_finish(self.wise, ctx)}


def with_wise(spec: MethodSpec, name: Optional[str] = None, summary: Optional[str] = None) -> MethodSpec:
    """``spec`` with WiSE-FT's finishing step appended (the ``<method>+wise`` composition)."""
    clash = sorted(set(spec.defaults) & set(WISE_DEFAULTS))
    if clash:
        raise ConfigError(f"method '{spec.name}' already has WiSE's hyper-parameters ({', '.join(clash)}); "
                          f"'{spec.name}{WISE_SUFFIX}' would apply WiSE twice")
    inner_keys = set(spec.defaults) | set(spec.reads)

    def factory(**hp: Any) -> Method:
        inner = spec.factory(**{k: v for k, v in hp.items() if k in inner_keys})
        wise = {**WISE_DEFAULTS, **{k: v for k, v in hp.items() if k in WISE_DEFAULTS}}
        return _WithWise(inner, wise)

    return MethodSpec(name=name or spec.name + WISE_SUFFIX,
                      summary=summary or f"{spec.summary}; then WiSE-FT weight interpolation with the stock encoder",
                      factory=factory, defaults={**spec.defaults, **WISE_DEFAULTS}, reads=spec.reads,
                      distribution=spec.distribution)


declare_method_suffix(WISE_SUFFIX, with_wise)  # "<method>+wise" names that method composed with WiSE-FT


# --------------------------------------------------------------------------- resolution


def jsonable_hparams(hp: Mapping[str, Any]) -> Dict[str, Any]:
    """Hyper-parameters as JSON values (tuples become lists)."""
    def conv(v: Any) -> Any:
        return [conv(x) for x in v] if isinstance(v, (list, tuple)) else v
    return {k: conv(v) for k, v in sorted(hp.items())}


def names_of(specs: Sequence[MethodSpec]) -> List[str]:
    """The names of ``specs``."""
    return [s.name for s in specs]

