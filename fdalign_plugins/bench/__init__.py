"""The benchmark: what a run shares, and its two protocols.

* :mod:`.context` — :class:`~.context.BenchConfig`, the :class:`~.context.RunContext`
  (config, run folder, device, results file, feature store, log, encoder provisioning,
  the common fields of a record) and the run's :class:`~.context.RunSummary`;
* :mod:`.standard` — adapters on CoOp-style few-shot splits, baseline vs "+ FD-Align";
* :mod:`.episodic` — N-way K-shot episodes with cosine prototypes;
* :mod:`.runner` — :class:`~.runner.Runner`, which runs a config's mode.

Each protocol imports the context; the context imports no protocol. The old import
paths :mod:`fdalign_plugins.runner` and :mod:`fdalign_plugins.protocols` re-export these.
"""
