"""The built-in adapter plugins of fdalign-plugins (import name ``fdalign_adapters``).

Each module is one plugin, registered through the ``fdalign.adapters`` entry points in
this project's setup.cfg exactly as a third-party package would register its own, and
uses only the public API of :mod:`fdalign_plugins` (``hookimpl``, ``adapter_api``,
``errors``). The core never imports this package.

* ``zero_shot`` — the text classifier alone (the reference row).
* ``tip`` — Tip-Adapter, training-free cache model.
* ``tip_f`` — Tip-Adapter-F, trainable cache keys.
* ``ape`` — APE, adaptive prior refinement (channel selection + trust weights).
* ``ape_t`` — APE-T, trained category residual and value weights.

Formulas, grids and per-dataset defaults follow SPEC §2.
"""
