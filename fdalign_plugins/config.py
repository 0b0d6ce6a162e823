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

from .errors import ConfigError
from .registry import get_method_spec
from .specs import resolve_method

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
    warmup_epochs: float = 0.0
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

    ``None`` values in a layer mean "not given" and do not override.
    """
    values: Dict[str, Any] = {}
    for layer in layers:
        values.update(coerce_layer(cls, layer, source))
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
