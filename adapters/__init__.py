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
* ``gda`` — GDA, Gaussian discriminant analysis with a shared shrinkage covariance.
* ``lp_pp`` — LP++ (registered as ``lp++``), linear probe blended with the text weights.
* ``clap`` — CLAP, class-adaptive constrained linear probe with fixed settings.
* ``clip_adapter`` — CLIP-Adapter, residual bottleneck MLP on the image feature.
* ``linear_probe`` — the CLIP/CoOp logistic-regression probe.

Formulas, grids and per-dataset defaults follow SPEC §2 (the first five) and SPEC §6
(the others); docs/adapters.md cites each paper and its code.
"""
