"""Every hook of fdalign-plugins.

Plugins implement these with the one marker the package exports::

    from fdalign_plugins import hookimpl

    @hookimpl
    def fdalign_register_adapters(register):
        register(MyAdapter.spec())

and are found through setuptools entry points (group ``fdalign.adapters`` for
adapters, ``fdalign.datasets`` for datasets, ``fdalign.methods`` for encoder
fine-tuning methods; see ``docs/plugins.md``). The built-in adapters, datasets and
methods go through exactly the same hooks.

Compatibility rule: hook arguments are only ever added, never renamed or removed, and
an implementation may accept any subset of a hook's arguments (pluggy passes only the
ones it names), so plugins written today keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # for annotations only: the specs sit below the hooks (fdalign_plugins.specs)
    from .specs import AdapterSpec, DatasetSpec, MethodSpec

#: Marker for the hook specifications below (project name ``"fdalign"``).
hookspec = pluggy.HookspecMarker("fdalign")


@hookspec
def fdalign_register_adapters(register: "Callable[[AdapterSpec], None]") -> None:
    """Register the adapters this plugin provides.

    Called once per plugin manager, the first time its adapter registry is needed
    (listing adapters, looking one up, creating one), after every plugin has been
    loaded. Each plugin's implementation is called on its own, so an exception in one
    plugin is reported as a broken plugin and does not hide the others.

    Args:
        register: call ``register(spec)`` once per adapter, with an
            :class:`fdalign_plugins.adapter_api.AdapterSpec` (usually
            ``MyAdapter.spec()``). Leave ``spec.distribution`` empty: the plugin manager
            fills in the distribution the plugin was installed from. Names must be
            unique across all installed plugins; a duplicate is a
            :class:`fdalign_plugins.errors.PluginError` naming both distributions.

    Returns:
        Nothing; the return value is ignored.
    """


@hookspec
def fdalign_register_datasets(register: "Callable[[DatasetSpec], None]") -> None:
    """Register the datasets this plugin provides.

    Called once per plugin manager, the first time its dataset registry is needed,
    after every plugin has been loaded; each plugin's implementation on its own (see
    :func:`fdalign_register_adapters`).

    Args:
        register: call ``register(spec)`` once per dataset, with a
            :class:`fdalign_plugins.adapter_api.DatasetSpec` whose
            ``build(root, **options)`` returns a
            :class:`fdalign_plugins.datasets.base.FewShotDataset`. Names must be unique
            across all installed plugins; the name is also the key adapters use for
            their per-dataset hyper-parameter defaults.

    Returns:
        Nothing; the return value is ignored.
    """


@hookspec
def fdalign_register_methods(register: "Callable[[MethodSpec], None]") -> None:
    """Register the encoder fine-tuning methods this plugin provides.

    Called once per plugin manager, the first time its method registry is needed
    (listing methods, resolving ``--method``), after every plugin has been loaded; each
    plugin's implementation on its own (see :func:`fdalign_register_adapters`).

    Args:
        register: call ``register(spec)`` once per method, with a
            :class:`fdalign_plugins.method_api.MethodSpec` (usually
            ``MyMethod.spec()`` for a :class:`fdalign_plugins.method_api.Method`
            subclass): name, one-line summary, hyper-parameters with defaults, and a
            factory whose method gives the per-batch loss and optional setup and
            finishing steps. Names must be unique across all installed plugins and
            must not end in ``+wise`` (that suffix composes any method with WiSE-FT).

    Returns:
        Nothing; the return value is ignored.
    """
