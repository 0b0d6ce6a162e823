"""The N-way K-shot mode's old import path (the file name predates ``mode``).

It lives in :mod:`fdalign_plugins.bench.episodic`, its settings (:class:`EpisodicConfig`)
in :mod:`fdalign_plugins.config`; re-exported here unchanged.
"""

from __future__ import annotations

from .bench.episodic import (  # noqa: F401
    STATE_NAME,
    EpisodeSampler,
    episodic_finetune,
    evaluate_episodes,
    prototype_logits,
    run_episodic,
)
from .config import EpisodicConfig  # noqa: F401
