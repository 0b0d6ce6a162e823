"""Spurious Prototype Correction (SPC, SPEC §1).

1. IsolationForest over the M spurious prototypes; keep the ``n`` most normal ones
   (highest ``decision_function``). Seeded, unlike the reference.
2. k-Means with ``k`` clusters over the kept prototypes; the centres are the corrected
   prototypes (not re-normalised, as in the reference, unless asked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch


@dataclass
class SPCResult:
    """What SPC chose, for use in training and for the checkpoint sidecar.

    Attributes:
        prototypes: corrected spurious prototypes ``[k, D]`` (or the kept ones if
            k-Means is off).
        kept: indices into the original M templates kept by the IsolationForest.
        scores: IsolationForest ``decision_function`` of every template (``None`` if off).
    """

    prototypes: torch.Tensor
    kept: List[int]
    scores: Optional[List[float]] = None


def spurious_prototype_correction(
    protos: torch.Tensor,
    n_keep: Optional[int] = 60,
    k: Optional[int] = 20,
    seed: int = 0,
    n_estimators: int = 100,
    renormalise: bool = False,
) -> SPCResult:
    """Clean the spurious prototypes with IsolationForest then k-Means.

    Args:
        protos: spurious prototypes ``[M, D]``.
        n_keep: how many of the most normal prototypes to keep; ``None`` or ``0``
            switches the IsolationForest off. Clipped to ``M``.
        k: number of k-Means centres; ``None`` or ``0`` switches k-Means off. Clipped to
            the number kept.
        seed: random state of both the forest and k-Means.
        n_estimators: trees in the forest (scikit-learn's default, 100).
        renormalise: L2-normalise the centres (the reference does not).

    Returns:
        An :class:`SPCResult`.
    """
    from sklearn.cluster import KMeans
    from sklearn.ensemble import IsolationForest

    m = protos.shape[0]
    x = protos.detach().cpu().double().numpy()  # [M, D]
    kept = list(range(m))
    scores = None
    if n_keep and n_keep < m:
        forest = IsolationForest(n_estimators=n_estimators, random_state=seed).fit(x)
        s = forest.decision_function(x)
        scores = [float(v) for v in s]
        # stable sort: among equal scores the earlier template wins
        kept = sorted(np.argsort(-s, kind="stable")[:n_keep].tolist())
    chosen = x[kept]
    if k and k < len(kept):
        km = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(chosen)
        centres = km.cluster_centers_
    else:
        centres = chosen
    out = torch.as_tensor(centres, dtype=protos.dtype, device=protos.device)
    if renormalise:
        out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return SPCResult(prototypes=out, kept=kept, scores=scores)
