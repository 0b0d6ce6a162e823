"""The registry's record types: what a plugin registers, and how its settings resolve.

One home for the specs of the three plugin kinds — :class:`AdapterSpec`,
:class:`DatasetSpec`, :class:`MethodSpec` — and for the typed hyper-parameter
declarations (:class:`HParam`) they carry. They sit at the bottom of the layers so that
the plugin registry (:mod:`fdalign_plugins.registry`), the datasets and the config can
use them without importing the adapter contract or the trainer; the modules plugin
authors import them from (:mod:`fdalign_plugins.adapter_api`,
:mod:`fdalign_plugins.method_api`) re-export them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError

__all__ = ["SELECTION_POLICIES", "AdapterSpec", "DatasetSpec", "HParam", "MethodSpec", "check_hparams",
           "check_selection", "protocol_policy", "resolve_hparams", "resolve_method"]

#: How hyper-parameters (and a best epoch) were chosen: on the few-shot validation split,
#: not at all, or on the test set (``--protocol reference`` only; every output flags it).
SELECTION_POLICIES = ("val", "fixed", "test")


def _frozen(mapping: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


# --------------------------------------------------------------------------- hyper-parameters


@dataclass(frozen=True)
class HParam:
    """The declared type and range of one adapter hyper-parameter.

    Values from YAML or from code are coerced to ``type`` (``"7"`` -> ``7.0`` for a
    float; ``"true"`` -> ``True`` for a bool) and checked against the range before any
    model is loaded, so a typo fails in a second, not after feature extraction.

    Attributes:
        type: ``bool``, ``int``, ``float``, ``str`` or ``list`` (``object``: anything).
        low: smallest allowed value (numbers), or ``None``.
        high: largest allowed value (numbers), or ``None``.
        choices: the allowed values (strings), or ``None``.
        help: one line for listings and error messages.
    """

    type: type = object
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[Sequence[Any]] = None
    help: str = ""

    @staticmethod
    def infer(default: Any) -> "HParam":
        """The declaration of a hyper-parameter that has none: the type of its default
        (a plugin written before declarations existed keeps working, typed)."""
        for tp in (bool, int, float, str):  # bool first: True is an int too
            if isinstance(default, tp):
                return HParam(tp)
        if isinstance(default, (list, tuple)):
            return HParam(list)
        return HParam(object)

    def coerce(self, where: str, value: Any) -> Any:
        """``value`` as this type, in range; :class:`ConfigError` naming ``where`` otherwise."""
        tp = self.type
        bad = f"{where} must be {_TYPE_WORDS.get(tp, tp.__name__)}, got {value!r}"
        if tp is bool:
            if isinstance(value, bool):
                out: Any = value
            elif isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                out = value.lower() in _TRUE
            else:
                raise ConfigError(bad)
        elif tp in (int, float):
            if isinstance(value, bool):
                raise ConfigError(bad)
            try:
                num = float(value)
            except (TypeError, ValueError):
                raise ConfigError(bad) from None
            if tp is int:
                if not math.isfinite(num) or num != int(num):
                    raise ConfigError(bad)
                out = int(num)
            else:
                if math.isnan(num):
                    raise ConfigError(bad)
                out = num
            if (self.low is not None and out < self.low) or (self.high is not None and out > self.high):
                lo = "-inf" if self.low is None else f"{self.low:g}"
                hi = "inf" if self.high is None else f"{self.high:g}"
                raise ConfigError(f"{where} must lie in [{lo}, {hi}], got {value!r}")
        elif tp is str:
            if not isinstance(value, str):
                raise ConfigError(bad)
            out = value
        elif tp is list:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(bad)
            out = list(value)
        else:
            out = value
        if self.choices is not None and out not in self.choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        return out


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def check_hparams(
    adapter: str,
    defaults: Mapping[str, Any],
    declared: Mapping[str, HParam],
    explicit: Mapping[str, Any],
) -> Dict[str, Any]:
    """Check explicit hyper-parameters by name, type and range; return them coerced.

    A name must be a key of ``defaults``; its declaration is ``declared[name]``, or the
    type of its default when the adapter declares none.

    Raises:
        ConfigError: an unknown name (the message lists the valid ones), a value of the
            wrong type or out of range.
    """
    unknown = sorted(set(explicit) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "(none)"
        raise ConfigError(f"adapter '{adapter}': unknown hyper-parameter(s) {', '.join(unknown)}; valid: {valid}")
    out = {}
    for k, v in explicit.items():
        decl = declared.get(k) or HParam.infer(defaults[k])
        out[k] = decl.coerce(f"adapter '{adapter}': hyper-parameter {k}", v)
    return out

# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class AdapterSpec:
    """Registry metadata of one adapter.

    Attributes:
        name: registry name, e.g. ``"tip-f"``; unique across all installed plugins.
        summary: one line for listings.
        trains: whether ``fit`` runs gradient training (Tip-F, APE-T) or not.
        factory: ``factory(**hparams) -> Adapter``; usually the :class:`Adapter` subclass.
        defaults: every hyper-parameter with its generic default; the keys are the
            valid hyper-parameter names.
        dataset_defaults: overrides per dataset name (the SPEC table), e.g.
            ``{"eurosat": {"beta_scale": 12, "alpha_scale": 10}}``.
        search_space: the hyper-parameters searched on validation, each a
            :class:`GridAxis` naming the hyper-parameters that hold its scale and step
            count, e.g. ``{"beta": GridAxis("beta_scale", "beta_steps", 0.1)}``.
        selection: the selection policies the adapter supports, a subset of
            :data:`SELECTION_POLICIES` (``("fixed",)`` for an adapter that chooses
            nothing; ``("val",)`` for one whose method never selects on test data).
        distribution: the installed distribution the plugin came from; filled in by
            the plugin manager (leave empty when registering).
        hparam_types: :class:`HParam` declarations (type, range) by hyper-parameter
            name; a name without one is typed by its default's type.
        label: the name tables show (``"Tip-F"``); default: ``name``.
        reference: the reference adapter (zero-shot CLIP): every bench run includes it,
            tables put its rows first and name them after the encoder.
        order: where its rows sit in a table (lower first; then by name).
    """

    name: str
    summary: str
    trains: bool
    factory: Callable[..., Any]
    defaults: Mapping[str, Any]
    dataset_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    search_space: Mapping[str, Any] = field(default_factory=dict)
    selection: Tuple[str, ...] = ("val", "test")
    distribution: str = ""
    hparam_types: Mapping[str, HParam] = field(default_factory=dict)
    label: str = ""
    reference: bool = False
    order: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", self.label or self.name)
        bad = [p for p in self.selection if p not in SELECTION_POLICIES]
        if bad or not self.selection:
            raise ConfigError(f"adapter '{self.name}': selection must be a non-empty subset of "
                              f"{', '.join(SELECTION_POLICIES)}, got {tuple(self.selection)}")
        object.__setattr__(self, "selection", tuple(self.selection))
        object.__setattr__(self, "defaults", _frozen(self.defaults))
        object.__setattr__(self, "hparam_types", _frozen(self.hparam_types))
        object.__setattr__(
            self, "dataset_defaults", _frozen({k: _frozen(v) for k, v in dict(self.dataset_defaults).items()})
        )
        object.__setattr__(self, "search_space", _frozen(self.search_space))

    def resolve(self, dataset: str, explicit: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """Hyper-parameters for ``dataset``: explicit > per-dataset default > default."""
        return resolve_hparams(self.defaults, self.dataset_defaults, dataset, explicit or {})

    def check(self, explicit: Mapping[str, Any]) -> Dict[str, Any]:
        """Explicit hyper-parameters checked by name, type and range, and coerced
        (see :func:`check_hparams`); run before any model is loaded."""
        return check_hparams(self.name, self.defaults, self.hparam_types, explicit)


@dataclass(frozen=True)
class DatasetSpec:
    """Registry metadata of one dataset.

    Attributes:
        name: registry name, e.g. ``"eurosat"``; also the key of adapters' per-dataset
            defaults.
        summary: one line for listings.
        build: ``build(root: Path | None, **options) -> FewShotDataset``
            (:class:`fdalign_plugins.datasets.base.FewShotDataset`).
        needs_root: whether ``build`` needs a data folder (``False`` for synthetic data).
        distribution: filled in by the plugin manager.
    """

    name: str
    summary: str
    build: Callable[..., Any]
    needs_root: bool = True
    distribution: str = ""


def resolve_hparams(
    defaults: Mapping[str, Any],
    dataset_defaults: Mapping[str, Mapping[str, Any]],
    dataset: str,
    explicit: Mapping[str, Any],
) -> Dict[str, Any]:
    """Resolve hyper-parameters: explicit > ``dataset_defaults[dataset]`` > ``defaults``.

    The dataset name is matched exactly, then lower-cased with ``-`` read as ``_``;
    an unknown dataset gets the generic defaults.

    Raises:
        ConfigError: an explicit name that is not a known hyper-parameter.
    """
    unknown = sorted(set(explicit) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown hyper-parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(defaults)) or '(none)'}"
        )
    key = dataset if dataset in dataset_defaults else str(dataset).lower().replace("-", "_")
    resolved = dict(defaults)
    resolved.update(dataset_defaults.get(key, {}))
    resolved.update(explicit)
    return resolved


def protocol_policy(protocol: str) -> str:
    """The policy a selecting adapter follows under ``protocol``: ``test`` under
    ``reference`` (the runner hands it the test set as its validation set), else ``val``."""
    return "test" if protocol == "reference" else "val"


def check_selection(spec: AdapterSpec, protocol: str) -> None:
    """Refuse running adapter ``spec`` under ``protocol`` if it does not support the policy.

    An adapter that only ever uses fixed settings runs under any protocol.

    Raises:
        ConfigError: e.g. ``linear-probe`` (``("val",)``) under ``--protocol reference``.
    """
    selecting = [p for p in spec.selection if p != "fixed"]
    policy = protocol_policy(protocol)
    if selecting and policy not in spec.selection:
        raise ConfigError(
            f"adapter '{spec.name}' supports hyper-parameter selection {'/'.join(spec.selection)} only, but "
            f"--protocol {protocol} selects on the {'TEST' if policy == 'test' else 'validation'} set; "
            f"run it under --protocol {'standard' if policy == 'test' else 'reference'} or leave it out of --adapter"
        )


@dataclass(frozen=True)
class MethodSpec:
    """Registry metadata of one fine-tuning method.

    Attributes:
        name: registry name, e.g. ``"wise-ft"``; unique across installed plugins.
        summary: one line for listings.
        factory: ``factory(**hparams) -> Method`` with every hyper-parameter resolved.
        defaults: every hyper-parameter with its default (the valid ``method_params``).
        reads: top-level fine-tuning config keys the method uses.
        distribution: filled in by the plugin manager (leave empty).
    """

    name: str
    summary: str
    factory: Callable[..., Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    reads: Tuple[str, ...] = ()
    distribution: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(self, "reads", tuple(self.reads))


def resolve_method(spec: MethodSpec, config: Any, params: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A method's hyper-parameters: defaults < the config keys it reads < ``params``.

    Raises:
        ConfigError: a name in ``params`` the method does not take (listing the valid ones).
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec.defaults))
    if unknown:
        hint = [k for k in unknown if k in spec.reads]
        extra = f" ({', '.join(hint)} is a top-level fine-tuning key)" if hint else ""
        raise ConfigError(f"method '{spec.name}' has no hyper-parameter(s) {', '.join(unknown)}{extra}; "
                          f"valid: {', '.join(sorted(spec.defaults)) or '(none)'}")
    hp = dict(spec.defaults)
    renamed = getattr(config, "RENAMED", {})  # a plugin written before a rename reads the key by its old name
    hp.update({k: getattr(config, renamed[k][0] if k in renamed else k) for k in spec.reads})
    hp.update(params)
    return hp
