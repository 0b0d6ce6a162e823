"""The benchmark runner's old import path; everything lives in :mod:`fdalign_plugins.bench`.

Re-exported unchanged: :class:`BenchConfig`, :class:`Runner`, :class:`RunSummary`,
:func:`default_out`, :func:`resolve_adapters`, ... (see :mod:`fdalign_plugins.bench.context`,
:mod:`fdalign_plugins.bench.standard` and :mod:`fdalign_plugins.bench.runner`).
"""

from __future__ import annotations

from .bench.context import (  # noqa: F401
    DEFAULT_METHOD,
    MODES,
    PROTOCOLS,
    REFERENCE_WARNING,
    BenchConfig,
    RunContext,
    RunSummary,
    default_out,
    method_label,
    parse_shard,
    platform_info,
    resolve_adapters,
    results_name,
)
from .bench.runner import Runner  # noqa: F401
from .bench.standard import identity_hashes, work_items  # noqa: F401
from .results import (  # noqa: F401  (the encoder labels' home is results; re-exported here, their old home)
    ENCODER_CLIP,
    ENCODER_FDALIGN,
    ENCODER_FINETUNE,
    ENCODERS,
)
