"""The bench runner: a :class:`~.context.RunContext` that runs its config's mode.

``mode: adapters`` runs :mod:`.standard`, ``mode: episodic`` the N-way K-shot
:mod:`.episodic`; both share the context. This is the one module that knows both modes.
"""

from __future__ import annotations

from .context import RunContext, RunSummary
from .episodic import run_episodic
from .standard import run_standard


class Runner(RunContext):
    """Runs a :class:`~.context.BenchConfig` (arguments: :class:`~.context.RunContext`)."""

    def run(self) -> RunSummary:
        """Choose the thread count, then run every work item not yet in the results file."""
        self.set_threads()
        return run_episodic(self) if self.cfg.mode == "episodic" else run_standard(self)
