"""The plugin registry: built-ins and third-party plugins through the same entry points.

This is the bottom layer's way to find a named adapter, dataset or method: the datasets
(:func:`fdalign_plugins.datasets.load_dataset`), the config's validation and the
trainer look names up here without importing the plugin contract above them. The host's
public face, :mod:`fdalign_plugins.plugins`, re-exports everything.

:func:`get_plugin_manager` builds a manager (nothing happens at import time):

1. adds the hook specifications of :mod:`fdalign_plugins.hookspecs`;
2. registers the core modules in :data:`BUILTIN_PLUGIN_MODULES` (none: every built-in
   comes through an entry point);
3. loads the entry-point groups ``fdalign.adapters``, ``fdalign.datasets`` and
   ``fdalign.methods`` one entry point at a time, so a plugin that fails to import is recorded in
   ``manager.broken`` as ``(name, distribution, error)`` and the others still load;
   the built-in adapters, datasets and methods come in this way too, from this package's
   own setup.cfg;
4. calls ``check_pending()`` (a plugin implementing an unknown hook is unregistered and
   reported as broken, not fatal).

The adapter, dataset and method registries are collected on first use and cached per manager
(:meth:`FDAlignPluginManager.reset_registry` drops the cache). Set
``FDALIGN_NO_EXTERNAL_PLUGINS=1`` to load only entry points of the ``fdalign-plugins``
distribution itself, e.g. to rule out a third-party plugin while debugging.

A method name may carry a suffix that composes the method with a finishing step
(``fd-align+wise``); the module that owns the step declares the suffix with
:func:`declare_method_suffix` (:mod:`fdalign_plugins.method_api` declares ``+wise``).

The module-level functions (:func:`list_adapters`, :func:`create_adapter`, ...) use a
default manager built on first use; :func:`reset_plugin_manager` forgets it (tests
that fake installed distributions call it).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as metadata
import os
import re
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import pluggy

from . import hookspecs
from .errors import PluginError
from .specs import AdapterSpec, DatasetSpec, MethodSpec

__all__ = [
    "ADAPTER_GROUP",
    "BUILTIN_PLUGIN_MODULES",
    "DATASET_GROUP",
    "ENTRY_POINT_GROUPS",
    "NO_EXTERNAL_ENV",
    "OWN_DISTRIBUTION",
    "BrokenPlugin",
    "FDAlignPluginManager",
    "broken_plugins",
    "create_adapter",
    "declare_method_suffix",
    "format_listing",
    "get_adapter_spec",
    "get_dataset_spec",
    "get_method_spec",
    "list_methods",
    "get_plugin_manager",
    "list_adapters",
    "list_datasets",
    "reset_plugin_manager",
]

PROJECT_NAME = "fdalign"
OWN_DISTRIBUTION = "fdalign-plugins"
ADAPTER_GROUP = "fdalign.adapters"
DATASET_GROUP = "fdalign.datasets"
METHOD_GROUP = "fdalign.methods"
ENTRY_POINT_GROUPS: Tuple[str, ...] = (ADAPTER_GROUP, DATASET_GROUP, METHOD_GROUP)
NO_EXTERNAL_ENV = "FDALIGN_NO_EXTERNAL_PLUGINS"

#: Core modules registered as plugins by the factory without an entry point (their
#: distribution is ours). None today: the built-ins are announced like any third-party
#: plugin, in setup.cfg. A module that does not exist is skipped; one that fails to
#: import is broken.
BUILTIN_PLUGIN_MODULES: List[str] = []
#: Our own entry points by group, as setup.cfg announces them; an install whose metadata
#: misses a group (made before that group had an entry point) gets them loaded directly,
#: with a warning to reinstall (:func:`get_plugin_manager`).
OWN_ENTRY_POINTS: Dict[str, Dict[str, str]] = {DATASET_GROUP: {"builtin": "fdalign_plugins.datasets.builtin"}}

#: Method-name suffixes (``"+wise"``) -> the composition they stand for (``with_wise``),
#: declared by the module that owns the composition (:func:`declare_method_suffix`).
METHOD_SUFFIXES: Dict[str, Callable[[MethodSpec], MethodSpec]] = {}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")  # '+' for names such as lp++


class BrokenPlugin(NamedTuple):
    """A plugin that could not be loaded or failed in a hook."""

    name: str
    distribution: str
    error: str


def _canonical(dist_name: str) -> str:
    """PEP 503 normalised distribution name (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def _external_disabled() -> bool:
    return os.environ.get(NO_EXTERNAL_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Clash(Exception):
    """A plugin registered a name another plugin already holds (it gets disabled)."""

    def __init__(self, plugin: Any, broken: BrokenPlugin) -> None:
        super().__init__(broken.error)
        self.plugin = plugin
        self.broken = broken


class _Registry(NamedTuple):
    adapters: Dict[str, AdapterSpec]
    datasets: Dict[str, DatasetSpec]
    methods: Dict[str, MethodSpec]


class FDAlignPluginManager(pluggy.PluginManager):
    """A pluggy manager that also records where each plugin came from.

    Attributes:
        broken: plugins that failed to import, to register, or inside a hook.
        load_external: whether entry points of other distributions were loaded.
    """

    def __init__(self, load_external: bool = True) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.load_external = load_external
        self.broken: List[BrokenPlugin] = []
        self._distributions: Dict[str, str] = {}  # plugin name -> distribution name
        self._labels: Dict[str, str] = {}  # plugin name -> name shown in reports (entry-point name)
        self._registry: Optional[_Registry] = None
        self.own_groups: set = set()  # entry-point groups in which our own distribution announced something

    # ---- loading

    def add_plugin(self, plugin: Any, name: str, distribution: str, label: Optional[str] = None) -> bool:
        """Register ``plugin`` under ``name``, recording its distribution.

        A module already registered (e.g. listed under both entry-point groups) is not
        registered twice. A registration error is recorded in :attr:`broken`.

        Args:
            plugin: the plugin object (usually a module).
            name: unique pluggy plugin name.
            distribution: the distribution it was installed from.
            label: the name shown in reports (the entry-point name); defaults to ``name``.

        Returns:
            Whether the plugin is registered afterwards.
        """
        label = label or name
        if self.is_registered(plugin):
            return True
        try:
            self.register(plugin, name=name)
        except Exception as exc:  # pluggy.PluginValidationError, duplicate name, ...
            self.broken.append(BrokenPlugin(label, distribution, _describe(exc)))
            return False
        self._distributions[name] = distribution
        self._labels[name] = label
        self._registry = None
        return True

    def load_builtin_modules(self, modules: List[str], label: Optional[str] = None) -> None:
        """Import and register core modules; a module that does not exist is skipped."""
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                    continue  # not written (yet): nothing to register
                self.broken.append(BrokenPlugin(module_name, OWN_DISTRIBUTION, _describe(exc)))
                continue
            except Exception as exc:
                self.broken.append(BrokenPlugin(module_name, OWN_DISTRIBUTION, _describe(exc)))
                continue
            self.add_plugin(module, name=f"builtin:{module_name}", distribution=OWN_DISTRIBUTION, label=label)

    def load_entry_points(self, groups: Tuple[str, ...] = ENTRY_POINT_GROUPS) -> None:
        """Load every entry point of ``groups``, one at a time, isolating failures."""
        for group in groups:
            # ours first: on a name clash the plugin loaded later is the one disabled, so a
            # third-party package can never take over a built-in name
            entry_points = sorted(
                metadata.entry_points(group=group),
                key=lambda ep: (_canonical(ep.dist.name) != OWN_DISTRIBUTION if ep.dist else True,
                                _canonical(ep.dist.name) if ep.dist else "", ep.name),
            )
            for ep in entry_points:
                dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
                if not self.load_external and _canonical(dist) != OWN_DISTRIBUTION:
                    continue
                if _canonical(dist) == OWN_DISTRIBUTION:
                    self.own_groups.add(group)
                try:
                    plugin = ep.load()
                except BaseException as exc:  # a plugin's import may raise anything, even SystemExit
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    self.broken.append(BrokenPlugin(ep.name, dist, _describe(exc)))
                    continue
                # The distribution is part of the plugin name: two distributions may use the same entry-point name.
                self.add_plugin(plugin, name=f"{group}:{ep.name}@{dist}", distribution=dist, label=ep.name)

    def check_pending_isolated(self) -> None:
        """``check_pending()``; a plugin implementing an unknown hook is dropped as broken."""
        while True:
            try:
                self.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                self.broken.append(BrokenPlugin(self.label_of(exc.plugin), self.distribution_of(exc.plugin),
                                                _describe(exc)))
                self.unregister(exc.plugin)

    def distribution_of(self, plugin: Any) -> str:
        """The distribution a registered plugin came from ("" if unknown)."""
        name = self.get_name(plugin)
        return self._distributions.get(name or "", "")

    def label_of(self, plugin: Any) -> str:
        """The name a registered plugin is reported under (its entry-point name)."""
        name = self.get_name(plugin) or repr(plugin)
        return self._labels.get(name, name)

    # ---- registries

    def reset_registry(self) -> None:
        """Forget the collected adapter and dataset registries (they are rebuilt on use)."""
        self._registry = None

    def _collect(self, hook_name: str, spec_type: type, kind: str) -> Dict[str, Any]:
        found: Dict[str, Any] = {}
        plugins = [p for _, p in self.list_name_plugin() if p is not None]
        for plugin in plugins:
            caller = self.subset_hook_caller(hook_name, remove_plugins=[p for p in plugins if p is not plugin])
            if not caller.get_hookimpls():
                continue
            plugin_name = self.label_of(plugin)
            dist = self.distribution_of(plugin)
            mine: List[Any] = []

            def register(spec: Any, _mine: List[Any] = mine, _plugin: str = plugin_name) -> None:
                if not isinstance(spec, spec_type):
                    raise PluginError(f"plugin {_plugin!r} registered {spec!r}, not a {spec_type.__name__}")
                if not isinstance(spec.name, str) or not _NAME_RE.match(spec.name):
                    raise PluginError(f"plugin {_plugin!r} registered an invalid {kind} name {spec.name!r}")
                _mine.append(spec)

            try:
                caller(register=register)
            except Exception as exc:
                self.broken.append(BrokenPlugin(plugin_name, dist, _describe(exc)))
                continue
            mine = [dataclasses.replace(spec, distribution=dist) for spec in mine]
            for spec in mine:
                if spec.name in found:
                    other = found[spec.name].distribution
                    raise _Clash(plugin, BrokenPlugin(plugin_name, dist, (
                        f"PluginError: {kind} name '{spec.name}' is registered twice: by distribution '{other}' and by "
                        f"distribution '{dist}' (plugin {plugin_name!r}); the later plugin is disabled — uninstall or "
                        "rename one of them")))
            found.update((spec.name, spec) for spec in mine)
        return dict(sorted(found.items()))

    def registry(self) -> _Registry:
        """The adapter, dataset and method registries, collected once and cached.

        A plugin that registers a name an earlier plugin (built-ins first) already took
        is disabled as a whole and listed under broken plugins with both distributions;
        everything else keeps working, ``--list`` included.
        """
        while self._registry is None:
            try:
                adapters = self._collect("fdalign_register_adapters", AdapterSpec, "adapter")
                datasets = self._collect("fdalign_register_datasets", DatasetSpec, "dataset")
                methods = self._collect("fdalign_register_methods", MethodSpec, "method")
            except _Clash as clash:
                self.broken.append(clash.broken)
                self.unregister(clash.plugin)
                continue
            self._registry = _Registry(adapters, datasets, methods)
        return self._registry

    def list_adapters(self) -> List[AdapterSpec]:
        """Every registered adapter, sorted by name."""
        return list(self.registry().adapters.values())

    def list_datasets(self) -> List[DatasetSpec]:
        """Every registered dataset, sorted by name."""
        return list(self.registry().datasets.values())

    def get_adapter_spec(self, name: str) -> AdapterSpec:
        """The spec of adapter ``name``.

        Raises:
            PluginError: unknown name; the message lists the valid ones.
        """
        adapters = self.registry().adapters
        if name not in adapters:
            raise PluginError(f"unknown adapter '{name}'; valid: {', '.join(adapters) or '(none installed)'}")
        return adapters[name]

    def get_dataset_spec(self, name: str) -> DatasetSpec:
        """The spec of dataset ``name``.

        Raises:
            PluginError: unknown name; the message lists the valid ones.
        """
        datasets = self.registry().datasets
        if name not in datasets:
            raise PluginError(f"unknown dataset '{name}'; valid: {', '.join(datasets) or '(none installed)'}")
        return datasets[name]

    def list_methods(self) -> List[MethodSpec]:
        """Every registered fine-tuning method, sorted by name."""
        return list(self.registry().methods.values())

    def get_method_spec(self, name: str) -> MethodSpec:
        """The spec of method ``name``; ``<method>+wise`` is ``<method>`` with WiSE-FT's
        finishing step appended.

        Raises:
            PluginError: unknown name; the message lists the valid ones.
        """
        methods = self.registry().methods
        suffix = next((s for s in sorted(METHOD_SUFFIXES) if name.endswith(s) and len(name) > len(s)), "")
        base = name[: len(name) - len(suffix)]
        if base not in methods:
            valid = ", ".join(methods) or "(none installed)"
            also = "".join(f" (and any of them followed by {s})" for s in sorted(METHOD_SUFFIXES))
            raise PluginError(f"unknown method '{name}'; valid: {valid}{also}")
        return METHOD_SUFFIXES[suffix](methods[base]) if suffix else methods[base]

    def create_adapter(self, name: str, **hparams: Any) -> Any:
        """A new adapter ``name`` with explicit hyper-parameters ``hparams``."""
        return self.get_adapter_spec(name).factory(**hparams)

    def broken_plugins(self) -> List[BrokenPlugin]:
        """Plugins that failed (import, registration, inside a register hook, or that
        registered a name another plugin holds)."""
        self.registry()
        return list(self.broken)

    def format_listing(self) -> str:
        """The text of ``fdalign-bench --list``: adapters, datasets, methods, broken plugins."""
        adapters = self.list_adapters()
        datasets = self.list_datasets()
        methods = self.list_methods()
        broken = self.broken_plugins()
        lines = ["Adapters:"]
        if adapters:
            width = max(len(a.name) for a in adapters)
            for a in adapters:
                kind = "trains" if a.trains else "training-free"
                selects = "selects: " + "/".join(a.selection)
                lines.append(f"  {a.name:<{width}}  {kind:<13}  {selects:<25}  {a.summary}  [{a.distribution}]")
        else:
            lines.append("  (none)")
        lines.append("Datasets:")
        if datasets:
            width = max(len(d.name) for d in datasets)
            for d in datasets:
                lines.append(f"  {d.name:<{width}}  {d.summary}  [{d.distribution}]")
        else:
            lines.append("  (none)")
        lines.extend(self.format_methods(methods))
        if broken:
            lines.append("Broken plugins:")
            for b in broken:
                lines.append(f"  {b.name} [{b.distribution}]: {b.error}")
        if not self.load_external:
            lines.append(f"(external plugins skipped: {NO_EXTERNAL_ENV} is set)")
        return "\n".join(lines)


    def format_methods(self, methods: Optional[List[MethodSpec]] = None) -> List[str]:
        """The ``Methods:`` section of a listing (name, summary, hyper-parameters, distribution)."""
        methods = self.list_methods() if methods is None else methods
        lines = ["Fine-tuning methods (--method; any of them + wise adds WiSE-FT's weight interpolation):"]
        width = max((len(m.name) for m in methods), default=0)
        for m in methods:
            lines.append(f"  {m.name:<{width}}  {m.summary}  [{m.distribution}]")
            params = [f"{k}={v!r}" for k, v in m.defaults.items()]
            if m.reads:
                params.append(f"{'and ' if params else ''}the fine-tuning config's {', '.join(m.reads)}")
            if params:
                lines.append(f"  {'':<{width}}    hyper-parameters: {', '.join(params)}")
        if not methods:
            lines.append("  (none)")
        return lines


def get_plugin_manager(load_external: Optional[bool] = None) -> FDAlignPluginManager:
    """Build a plugin manager with the built-ins and every installed plugin loaded.

    Args:
        load_external: load entry points of distributions other than
            ``fdalign-plugins``; ``None`` means yes unless the environment variable
            ``FDALIGN_NO_EXTERNAL_PLUGINS`` is ``1``.

    Returns:
        A new :class:`FDAlignPluginManager` (a ``pluggy.PluginManager``).
    """
    if load_external is None:
        load_external = not _external_disabled()
    importlib.invalidate_caches()
    pm = FDAlignPluginManager(load_external=load_external)
    pm.load_builtin_modules(BUILTIN_PLUGIN_MODULES)
    pm.load_entry_points(ENTRY_POINT_GROUPS)
    for group, eps in OWN_ENTRY_POINTS.items():
        if group not in pm.own_groups:  # metadata of an install from before this group had our entry points
            print(f"fdalign-plugins: warning: the installed package metadata has no {group} entry points (it "
                  "predates them); loading the built-ins directly. Reinstall (pip install -e .) to refresh it",
                  file=sys.stderr)
            for name, module in eps.items():
                pm.load_builtin_modules([module], label=name)
    pm.check_pending_isolated()
    return pm


def declare_method_suffix(suffix: str, compose: Callable[[MethodSpec], MethodSpec]) -> None:
    """Make ``<method><suffix>`` name ``compose(<method>'s spec)`` in every lookup.

    Args:
        suffix: e.g. ``"+wise"``; a method name may not end in it.
        compose: the spec of the composed method from the base method's spec.
    """
    METHOD_SUFFIXES[suffix] = compose


_default_manager: Optional[FDAlignPluginManager] = None


def _manager() -> FDAlignPluginManager:
    global _default_manager
    if _default_manager is None:
        _default_manager = get_plugin_manager()
    return _default_manager


def reset_plugin_manager() -> None:
    """Forget the default manager; the next call builds a new one (re-reads plugins)."""
    global _default_manager
    _default_manager = None


def list_adapters() -> List[AdapterSpec]:
    """Every registered adapter (built-in and third-party), sorted by name."""
    return _manager().list_adapters()


def get_adapter_spec(name: str) -> AdapterSpec:
    """The spec of adapter ``name``.

    Raises:
        PluginError: unknown name, listing the valid ones.
    """
    return _manager().get_adapter_spec(name)


def create_adapter(name: str, **hparams: Any) -> Any:
    """Create adapter ``name`` with explicit hyper-parameters.

    Raises:
        PluginError: unknown adapter name.
        FDAlignError: unknown hyper-parameter name (the message lists the valid ones).
    """
    return _manager().create_adapter(name, **hparams)


def list_methods() -> List[MethodSpec]:
    """Every registered fine-tuning method (built-in and third-party), sorted by name."""
    return _manager().list_methods()


def get_method_spec(name: str) -> MethodSpec:
    """The spec of method ``name`` (``<method>+wise`` composes WiSE-FT's finishing step).

    Raises:
        PluginError: unknown name, listing the valid ones.
    """
    return _manager().get_method_spec(name)


def list_datasets() -> List[DatasetSpec]:
    """Every registered dataset, sorted by name."""
    return _manager().list_datasets()


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``.

    Raises:
        PluginError: unknown name, listing the valid ones.
    """
    return _manager().get_dataset_spec(name)


def broken_plugins() -> List[BrokenPlugin]:
    """Plugins of the default manager that failed to load or register."""
    return _manager().broken_plugins()


def format_listing() -> str:
    """The text of ``fdalign-bench --list`` for the default manager."""
    return _manager().format_listing()

