"""Typed configuration: dataclass defaults < YAML file < command-line flags.

The sections live here: :class:`FinetuneConfig` (one fine-tuning run, the ``finetune:``
section of a bench config) and :class:`EpisodicConfig` (the ``episodic:`` section).

Configs are frozen-free dataclasses so they can be resolved, saved next to every
result and compared. Unknown keys are errors that list the valid keys.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Set, Tuple, Type, TypeVar, Union

import yaml

from .errors import ConfigError, DataError, PluginError
from .registry import get_adapter_spec, get_dataset_spec, get_method_spec, list_adapters
from .results import ENCODER_CLIP, ENCODER_FDALIGN, ENCODERS
from .specs import check_selection, resolve_method

C = TypeVar("C")

#: Model used when the user names none: the tiny CLIP pretrained on the synthetic world
#: (re-exported by :mod:`fdalign_plugins.models`).
DEFAULT_MODEL = "fdalign-world-tiny"
DEFAULT_PRETRAINED = "world"


@dataclass
class FinetuneConfig:
    """Everything that decides an FD-Align fine-tuning run (SPEC §1).

    The defaults are tuned for the embedded world model on CPU; the reference recipe for
    CLIP ViT-B/32 is in ``benchmarks/paper/`` (SGD, lr per dataset, 60 epochs, batch 256).
    """

    # source
    model: str = DEFAULT_MODEL
    pretrained: Optional[str] = None
    dataset: str = "world"
    data_root: Optional[str] = None
    shots: int = 16
    seed: int = 1
    # method (``fdalign-finetune --list`` lists the methods and their hyper-parameters;
    # alpha, spurious_weight and kl_direction are FD-Align's and apply to the methods that read them)
    method: str = "fd-align"
    method_params: Dict[str, Any] = field(default_factory=dict)
    alpha: float = 1.0
    spurious_weight: float = 1.0
    kl_direction: str = "overview"
    templates: Union[str, List[str]] = "imagenet80"
    spc: bool = True
    spc_keep: int = 60
    spc_k: int = 20
    spc_renormalise: bool = False
    head: str = "fixed"
    # optimisation
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    epochs: int = 20
    batch_size: int = 64
    grad_accum: int = 1
    grad_clip: float = 1.0
    warmup_iters: int = 0
    warmup_epochs: float = 2.0
    aug_scale: Tuple[float, float] = (0.9, 1.0)
    freeze_bn: bool = True
    val_shots: int = 4
    select: str = "val"
    # execution
    device: str = "auto"
    amp: bool = True
    workers: int = 0
    # deprecated name of spurious_weight, for code that still passes FinetuneConfig(beta=...)
    beta: InitVar[Optional[float]] = None

    #: Deprecated key -> (its new name, why it was renamed). YAML, flags, dicts and old
    #: records still use the old key: it maps to the new one with a one-line warning.
    RENAMED: ClassVar[Mapping[str, Tuple[str, str]]] = MappingProxyType({
        "beta": ("spurious_weight", "FD-Align's spurious-loss weight; Tip/APE's beta is their sharpness"),
    })

    def __post_init__(self, beta: Optional[float]) -> None:
        if beta is not None:
            new, why = self.RENAMED["beta"]
            deprecated("FinetuneConfig(beta=...)", f"FinetuneConfig({new}=...)", why)
            self.spurious_weight = beta

    def validate(self) -> "FinetuneConfig":
        """Check value ranges; raise :class:`ConfigError` naming the key and the fix."""
        _positive(self, "shots", "epochs", "batch_size", "grad_accum")
        _non_negative(self, "alpha", "spurious_weight", "lr", "weight_decay", "grad_clip", "warmup_iters",
                      "warmup_epochs", "workers", "val_shots")
        _choice(self, "kl_direction", ("overview", "reference"))
        _choice(self, "head", ("fixed", "linear"))
        _choice(self, "optimizer", ("sgd", "adamw"))
        _choice(self, "select", ("val", "last"))
        lo, hi = self.aug_scale
        if not (0 < lo <= hi <= 1):
            raise ConfigError(f"aug_scale must be two numbers 0 < lo <= hi <= 1, got {self.aug_scale}")
        if self.spc_keep < 0 or self.spc_k < 0:
            raise ConfigError("spc_keep and spc_k must be >= 0 (0 switches that SPC step off)")
        self.create_method()  # an unknown method or hyper-parameter fails here, before any model is loaded
        return self

    def method_hparams(self) -> Dict[str, Any]:
        """The method's resolved hyper-parameters: its defaults < the keys it reads < ``method_params``.

        Raises:
            PluginError: unknown method (listing the valid ones).
            ConfigError: unknown hyper-parameter (listing the valid ones).
        """
        return resolve_method(get_method_spec(self.method), self, self.method_params)

    def create_method(self):
        """A new :class:`~fdalign_plugins.method_api.Method` for ``method`` with its resolved hyper-parameters."""
        return get_method_spec(self.method).factory(**self.method_hparams())


@dataclass
class EpisodicConfig:
    """Settings of the N-way K-shot protocol (the ``episodic:`` section of a bench config).

    The evaluated K values are the run's ``shots``; the default is the paper's 5-way,
    15 queries, 2 000 episodes × 5 repeats.
    """

    n_way: int = 5
    query: int = 15
    episodes: int = 2000
    repeats: int = 5
    train_shot: int = 5
    train_query: int = 15
    train_episodes: int = 100
    val_episodes: int = 100
    eval_sets: List[str] = field(default_factory=list)
    short: str = "skip"

    def validate(self) -> "EpisodicConfig":
        for k in ("n_way", "episodes", "repeats", "train_shot", "train_episodes"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"episodic.{k} must be a positive integer, got {getattr(self, k)}")
        if self.query <= 0 or self.train_query < 0 or self.val_episodes < 0:
            raise ConfigError("episodic.query must be > 0, train_query and val_episodes >= 0")
        if self.short not in ("error", "skip"):
            raise ConfigError(f"episodic.short must be error or skip, got {self.short!r}")
        return self


# --------------------------------------------------------------------------- the bench config

#: ``standard``: everything selected on a held-out few-shot validation split.
#: ``reference``: the released code's choices (KL direction, linear head, and model and
#: hyper-parameter selection on the TEST set); every output made with it says so.
PROTOCOLS = ("standard", "reference")
#: What a run does: ``adapters`` (CoOp-style few-shot adapters, :mod:`.standard`) or
#: ``episodic`` (N-way K-shot, :mod:`.episodic`). ``protocol`` is the selection rule of either.
MODES = ("adapters", "episodic")
REFERENCE_WARNING = ("REFERENCE PROTOCOL (mimics the released code): epochs and hyper-parameters were selected on "
                     "the TEST set; these numbers are not held-out estimates.")

#: The default fine-tuning method; its encoder keeps the label ``fdalign`` in records and tables.
DEFAULT_METHOD = "fd-align"


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

    #: The nested sections: merged key by key across layers (:func:`build_config`), each
    #: with its own config class (for its deprecated names), or ``None`` for a plain mapping.
    SECTIONS: ClassVar[Mapping[str, Optional[type]]] = MappingProxyType(
        {"finetune": FinetuneConfig, "episodic": EpisodicConfig, "dataset_options": None})

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
        if self.mode not in MODES:
            raise ConfigError(f"mode must be adapters (CoOp-style few-shot) or episodic (N-way K-shot); "
                              f"got {self.mode!r}")
        if self.mode == "episodic":
            build_config(EpisodicConfig, self.episodic, source="episodic")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {self.protocol!r}")
        if len(self.view_scale) != 2 or not (0 < self.view_scale[0] <= self.view_scale[1] <= 1):
            raise ConfigError(f"view_scale must be two numbers 0 < lo <= hi <= 1, got {self.view_scale}")
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
    protocol's selection policy is refused (:func:`~fdalign_plugins.specs.check_selection`);
    ``all`` leaves such adapters out and says so through ``log``."""
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
    reference = [s.name for s in list_adapters() if s.reference]  # zero-shot CLIP: every run's first rows
    for n in reference + list(names):
        check_selection(get_adapter_spec(n), protocol)
        if n not in out:
            out.append(n)
    return out


def check_dataset_source(dataset: str, data_root: Optional[str]) -> None:
    """The dataset name is registered, and ``data_root`` is given exactly when it needs one.

    Raises:
        PluginError: unknown dataset name (the message lists the valid ones).
        DataError: the dataset needs a data root and none was given.
        ConfigError: a data root given for a dataset that takes none (e.g. ``--data-root``
            without ``--dataset``: the default dataset is the built-in world).
    """
    spec = get_dataset_spec(dataset)
    if spec.needs_root and not data_root:
        raise DataError(f"dataset {dataset!r} needs a data root: pass --data-root PATH (see docs/datasets.md)")
    if data_root and not spec.needs_root:
        raise ConfigError(
            f"--data-root {data_root} is given but dataset {dataset!r} takes no data folder; name the dataset the "
            "folder holds with --dataset (e.g. --dataset folder for DIR/<class>/<images>, see docs/datasets.md)"
        )


def check_adapter_params(params: Mapping[str, Any], log=None) -> Dict[str, Dict[str, Any]]:
    """``adapter_params`` checked against the registry and each adapter's declarations.

    Every key must be an installed adapter (a misspelt name is an error, not ignored);
    every hyper-parameter must be one the adapter declares, of its type and in range.

    Returns:
        The same mapping with every value coerced to its declared type.

    Raises:
        ConfigError: not a mapping of mappings, or a bad hyper-parameter.
        PluginError: an adapter name that no installed plugin registers.
    """
    if not isinstance(params, Mapping) or any(not isinstance(v, Mapping) for v in params.values()):
        raise ConfigError("adapter_params must map adapter names to mappings of hyper-parameters")
    out = {}
    for name, hp in params.items():
        try:
            spec = get_adapter_spec(name)
        except PluginError:
            valid = ", ".join(s.name for s in list_adapters())
            raise PluginError(f"adapter_params names unknown adapter '{name}'; valid: {valid}") from None
        out[name] = spec.check(dict(hp))
    return out


_WARNED: Set[str] = set()


def deprecated(old: str, new: str, why: str = "") -> None:
    """Say once per process, on one stderr line, that ``old`` is deprecated for ``new``."""
    line = f"warning: {old} is deprecated; use {new}" + (f" ({why})" if why else "")
    if line not in _WARNED:
        _WARNED.add(line)
        print(line, file=sys.stderr)


def rename_deprecated(cls: type, layer: Optional[Mapping[str, Any]], source: str = "config",
                      spell: Optional[Callable[[str], str]] = None) -> Optional[Dict[str, Any]]:
    """``layer`` with ``cls.RENAMED``'s deprecated keys moved to their new names, warning once each.

    Args:
        cls: a config dataclass; one without ``RENAMED`` leaves the layer as it is.
        layer: one YAML section, flag set or dict (``None`` values mean "not given").
        source: what the layer is, for the messages (``"finetune"``).
        spell: how a key is written where it came from (``--spurious-weight`` for a flag);
            default ``<source> key '<key>'``.

    Raises:
        ConfigError: the layer gives both the old and the new name.
    """
    renamed = getattr(cls, "RENAMED", None)
    if not renamed or not isinstance(layer, Mapping) or not any(layer.get(k) is not None for k in renamed):
        return None if layer is None else dict(layer)
    spell = spell or (lambda k: f"{source} key '{k}'")
    out = dict(layer)
    for old, (new, why) in renamed.items():
        value = out.pop(old, None)
        if value is None:
            continue
        if out.get(new) is not None:
            raise ConfigError(f"{spell(old)} and {spell(new)} are one setting ({spell(old)} is its deprecated name); "
                              f"give {spell(new)} only")
        deprecated(spell(old), spell(new), why)
        out[new] = value
    return out


def _positive(cfg, *names):
    for n in names:
        v = getattr(cfg, n)
        if v is None or v <= 0:
            raise ConfigError(f"{n} must be a positive integer, got {v!r}")


def _non_negative(cfg, *names):
    for n in names:
        v = getattr(cfg, n)
        if v is None or v < 0:
            raise ConfigError(f"{n} must be >= 0, got {v!r}")


def _choice(cfg, name, valid):
    v = getattr(cfg, name)
    if v not in valid:
        raise ConfigError(f"{name} must be one of {', '.join(valid)}; got {v!r}")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Coerce a YAML / flag value to the dataclass field type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"bad value for {name}: {value!r}")
    if tp is Any:
        return value
    if origin in (list, List):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(name, v, args[0]) if args else v for v in value]
    if origin in (tuple, Tuple):
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)) or (args and len(value) != len(args)):
            raise ConfigError(f"{name} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(name, v, a) for v, a in zip(value, args))
    if origin in (dict, Dict, Mapping):
        if isinstance(value, str):  # a flag: "k=v,k2=v2", each value read as YAML
            value = _parse_pairs(name, value)
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return str(value)
    return value


def _parse_pairs(name: str, text: str) -> Dict[str, Any]:
    """``"a=0.5,grid=[0, 1]"`` -> ``{"a": 0.5, "grid": [0, 1]}`` (commas inside brackets kept)."""
    out: Dict[str, Any] = {}
    depth, cur, parts = 0, "", []
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for part in (p.strip() for p in parts):
        if not part:
            continue
        key, eq, val = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{name} must look like key=value,key2=value2; got {text!r}")
        try:
            out[key.strip()] = yaml.safe_load(val.strip()) if val.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"{name}: cannot read the value of {key.strip()!r} in {text!r}") from None
    return out


def read_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML mapping with ``safe_load``; clear errors for missing or bad files."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        ctx, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if ctx and cmark is not None and mark is not None and cmark.line != mark.line:
            what += f" ({ctx} opened at line {cmark.line + 1})"  # e.g. an unclosed [ two lines up
        raise ConfigError(f"config file {p} is not valid YAML{where}: {what}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: not UTF-8 text "
                          f"({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def coerce_layer(cls: type, layer: Optional[Mapping[str, Any]], source: str = "config") -> Dict[str, Any]:
    """The keys of one layer (YAML section or flags) coerced to ``cls``'s field types.

    So ``--epochs 1`` (a string from the command line) and ``epochs: 1`` (an int from
    YAML) are the same value, in records and in run-folder hashes. ``None`` values mean
    "not given" and are dropped.

    Raises:
        ConfigError: an unknown key (listing the valid ones) or a value of the wrong type.
    """
    if not layer:
        return {}
    if not isinstance(layer, Mapping):
        raise ConfigError(f"{source} must be a mapping of keys to values, got {layer!r}")
    layer = rename_deprecated(cls, layer, source) or {}
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(k for k in layer if k not in fields)
    if unknown:
        raise ConfigError(f"unknown {source} key(s) {', '.join(map(repr, unknown))}; "
                          f"valid keys: {', '.join(sorted(fields))}")
    return {k: _coerce(k, v, hints[k]) for k, v in layer.items() if v is not None}


def build_config(cls: Type[C], *layers: Optional[Mapping[str, Any]], source: str = "config") -> C:
    """Build ``cls`` from defaults, then each mapping in ``layers`` in order (later wins).

    ``None`` values in a layer mean "not given" and do not override. The nested sections
    ``cls.SECTIONS`` names (a bench config's ``finetune:``, ``episodic:``,
    ``dataset_options:``) merge key by key, so a flag overrides one fine-tuning key of the
    YAML and keeps the others; this is the one place layers are merged.
    """
    values: Dict[str, Any] = {}
    sections = getattr(cls, "SECTIONS", {})
    for layer in layers:
        for key, value in coerce_layer(cls, layer, source).items():
            if key in sections and isinstance(value, Mapping):
                if sections[key] is not None:
                    value = rename_deprecated(sections[key], value, source=key)
                value = {**values.get(key, {}), **value}
            values[key] = value
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def to_dict(cfg: Any) -> Dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (tuples become lists)."""
    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in dataclasses.asdict(cfg).items()}
