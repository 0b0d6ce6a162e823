"""The benchmark: what a run shares, and its two modes.

* :mod:`.context` — :class:`~.context.BenchConfig`, the :class:`~.context.RunContext`
  (config, run folder, device, results file, feature store, log, encoder provisioning,
  the common fields of a record) and the run's :class:`~.context.RunSummary`;
* :mod:`.standard` — ``mode: adapters``: adapters on CoOp-style few-shot splits,
  baseline vs "+ FD-Align";
* :mod:`.episodic` — ``mode: episodic``: N-way K-shot episodes with cosine prototypes;
* :mod:`.runner` — :class:`~.runner.Runner`, which runs a config's mode.

Each mode imports the context; the context imports no mode. Words: a run's ``mode``
is what it runs (``adapters`` or ``episodic``); its ``protocol`` is the selection rule of
either (``standard``: select on a held-out validation split; ``reference``: the released
code's choices). The old import paths :mod:`fdalign_plugins.runner` and
:mod:`fdalign_plugins.protocols` re-export these.
"""
