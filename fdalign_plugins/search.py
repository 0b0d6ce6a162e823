"""The cache-model formula pieces and the one shared, vectorised hyper-parameter search.

Tip-Adapter, Tip-Adapter-F, APE and APE-T all score a feature ``f`` as

    logits = base(f) + α · Σ_n exp(−β (1 − A_n)) · v_n · L_n          (1)

where ``A_n`` is the affinity of ``f`` with cache entry ``n``, ``L_n`` the one-hot
label of that entry and ``v_n`` an optional per-entry value weight (APE's
``R_n = exp(γ d_n)``, APE-T's trained weight, 1 for Tip). Because ``L`` is one-hot,
the product with ``L`` is a per-class sum over the cache entries of that class
(:func:`class_sum`), never a dense matrix product.

:func:`search_cache_grid` picks (β, α[, value-weight row]) on a validation set. It
computes each affinity once, the per-class scores once per β for every value-weight
row together (one batched product per class), and counts the correct predictions of
every α at once with :func:`alpha_counts`, which evaluates only the classes that can
reach the true class anywhere on the α grid. It returns exactly the grid point
of the reference double loop ``for beta in betas: for alpha in alphas:`` (keep the
first strictly better top-1), because accuracy is counted as integer numbers of
correct predictions.

This module depends on torch only; :mod:`fdalign_plugins.adapter_api` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .ops import count_correct, percent  # count_correct re-exported: adapters import it from here

__all__ = [
    "GridAxis",
    "GridList",
    "SearchResult",
    "affinity_kernel",
    "alpha_counts",
    "class_sum",
    "count_correct",
    "grid_values",
    "search_cache_grid",
    "search_list",
    "uniform_block_size",
]

#: Memory budget, in bytes, for the per-chunk work buffers of the search.
_SEARCH_BUFFER_BYTES = 64 * 2**20
#: Size, in bytes, of the block of logits evaluated at once in the α stage.
_ALPHA_BLOCK_BYTES = 4 * 2**20


def grid_values(scale: float, steps: int, offset: float = 0.1) -> List[float]:
    """The reference search grid ``[i (scale − offset) / steps + offset for i < steps]``.

    With ``offset = 0.1`` this is Tip-Adapter's β / α grid; with ``offset = 0`` it is
    APE's γ grid ``i · scale / steps``. Values are computed with Python floats in the
    reference's order of operations, so they are bit-identical to the reference lists.

    Args:
        scale: the search scale ``S`` (upper end, exclusive).
        steps: number of grid points ``N``.
        offset: the first grid value.

    Returns:
        ``steps`` floats.
    """
    return [i * (scale - offset) / steps + offset for i in range(int(steps))]


@dataclass(frozen=True)
class GridAxis:
    """One searched hyper-parameter, declared in an adapter's ``search_space``.

    The values are ``grid_values(hparams[scale], hparams[steps], offset)``, i.e. the
    scale and the step count are themselves (per-dataset) hyper-parameters.

    Attributes:
        scale: name of the hyper-parameter holding the search scale ``S``.
        steps: name of the hyper-parameter holding the number of grid points ``N``.
        offset: first grid value (0.1 for Tip's β and α, 0 for APE's γ).
    """

    scale: str
    steps: str
    offset: float = 0.1

    def values(self, hparams: Mapping[str, Any]) -> List[float]:
        """The grid for resolved hyper-parameters ``hparams``."""
        return grid_values(float(hparams[self.scale]), int(hparams[self.steps]), self.offset)

    def describe(self) -> str:
        """A one-line human description, used by the plugin listing."""
        if self.offset:
            return f"{self.offset:g} + i({self.scale} - {self.offset:g})/{self.steps}, i < {self.steps}"
        return f"i·{self.scale}/{self.steps}, i < {self.steps}"


@dataclass(frozen=True)
class GridList:
    """A searched hyper-parameter whose grid is an explicit list, itself a hyper-parameter
    (GDA's α ∈ {1e-4, …, 100}, CLIP-Adapter's residual ratio, the linear probe's C).

    Attributes:
        key: name of the hyper-parameter holding the list of candidate values.
    """

    key: str

    def values(self, hparams: Mapping[str, Any]) -> List[float]:
        """The candidates for resolved hyper-parameters ``hparams``, in search order."""
        return [float(v) for v in hparams[self.key]]

    def describe(self) -> str:
        """A one-line human description, used by the plugin listing."""
        return f"one of {self.key}, first best"


def search_list(candidates: Sequence[Any], correct: Callable[[Any], int]) -> Tuple[int, List[int]]:
    """The first candidate with the most correct validation predictions.

    The reference loop ``for c in candidates: if acc(c) > best: keep c``, with accuracy
    as an integer count so ties are exact; when every candidate gets 0 correct the first
    one is returned.

    Args:
        candidates: the values tried, in order.
        correct: ``correct(value) -> int``, correct validation predictions with ``value``.

    Returns:
        The chosen index and the correct count of every candidate.
    """
    if len(candidates) == 0:
        raise ValueError("search list is empty: need at least one candidate")
    counts = [int(correct(c)) for c in candidates]
    return counts.index(max(counts)), counts


def affinity_kernel(affinity: Tensor, beta: float, out: Optional[Tensor] = None) -> Tensor:
    """``exp(−β (1 − A))``, the cache model's sharpened affinity.

    Args:
        affinity: cosine affinities ``A`` of any shape.
        beta: sharpness β.
        out: optional buffer of ``affinity``'s shape and dtype, written in place (the
            values are bit-identical to the out-of-place form).

    Returns:
        A tensor of ``affinity``'s shape (``out`` when given).
    """
    if out is None:
        return torch.exp(-beta * (1.0 - affinity))
    # (A − 1)·β == −β·(1 − A) exactly in floating point: both are exact negations.
    torch.sub(affinity, 1.0, out=out)
    out.mul_(beta)
    return out.exp_()


def uniform_block_size(labels: Tensor, num_classes: int) -> Optional[int]:
    """``K`` if ``labels`` is class-major with ``K`` entries per class (``0…0 1…1 …``), else ``None``.

    That is the layout of a few-shot cache (K shots per class, class-major order), for
    which the per-class sum is a reshape and a sum over ``K``.
    """
    n = labels.numel()
    if num_classes < 1 or n == 0 or n % num_classes:
        return None
    k = n // num_classes
    expected = torch.arange(num_classes, device=labels.device).repeat_interleave(k)
    return k if torch.equal(labels.long(), expected) else None


def class_sum(
    scores: Tensor,
    labels: Tensor,
    num_classes: int,
    values: Optional[Tensor] = None,
    entry_dim: int = -1,
) -> Tensor:
    """Per-class sum over cache entries: ``scores @ (L ⊙ values)`` for one-hot ``L``.

    A segment sum (reshape and sum) when the cache is class-major with equal counts
    per class, otherwise a scatter-add over each entry's class index; never a product
    with a dense ``L``.

    Args:
        scores: per-entry scores, ``[B, NK]`` (``entry_dim=-1``) or ``[NK, B]``
            (``entry_dim=0``, the layout the search uses: contiguous rows per entry).
        labels: ``[NK]`` int64 class of each cache entry.
        num_classes: ``C``; classes without cache entries get 0.
        values: optional ``[NK]`` per-entry value weights.
        entry_dim: which dimension of ``scores`` indexes cache entries (0 or -1).

    Returns:
        ``[B, C]`` for ``entry_dim=-1``, ``[C, B]`` for ``entry_dim=0``. Differentiable
        with respect to ``scores`` and ``values``.
    """
    if scores.dim() != 2 or entry_dim not in (0, -1, 1):
        raise ValueError(f"class_sum needs 2-d scores and entry_dim 0 or -1, got {tuple(scores.shape)}, {entry_dim}")
    labels = labels.to(scores.device).long()
    block = uniform_block_size(labels, num_classes)
    if entry_dim == 0:  # [NK, B] -> [C, B]
        if values is not None:
            scores = scores * values[:, None]
        if block is not None:
            return scores.reshape(num_classes, block, scores.shape[1]).sum(dim=1)
        index = labels[:, None].expand_as(scores)
        return scores.new_zeros(num_classes, scores.shape[1]).scatter_add(0, index, scores)
    if values is not None:  # [B, NK] -> [B, C]
        scores = scores * values
    if block is not None:
        return scores.reshape(scores.shape[0], num_classes, block).sum(dim=2)
    index = labels[None, :].expand_as(scores)
    return scores.new_zeros(scores.shape[0], num_classes).scatter_add(1, index, scores)


@dataclass(frozen=True)
class SearchResult:
    """The outcome of :func:`search_cache_grid`.

    Attributes:
        beta: chosen β.
        alpha: chosen α.
        weight_index: chosen row of ``value_weights`` (APE's γ index; 0 without weights).
        beta_index: index of ``beta`` in the β grid.
        alpha_index: index of ``alpha`` in the α grid.
        correct: correct validation predictions at the chosen point.
        total: number of validation samples.
        correct_grid: ``[n_beta, n_alpha, n_weights]`` correct counts of every grid point.
    """

    beta: float
    alpha: float
    weight_index: int
    beta_index: int
    alpha_index: int
    correct: int
    total: int
    correct_grid: Tensor

    @property
    def accuracy(self) -> float:
        """Top-1 validation accuracy in percent at the chosen point."""
        return percent(self.correct, max(self.total, 1))


@torch.no_grad()
def alpha_counts(scores: Tensor, base: Tensor, target: Tensor, alphas: Tensor,
                 base_norm: Optional[Tensor] = None) -> Tensor:
    """Correct predictions of ``base + α · scores`` for every ``α``, exactly as the dense loop.

    Equal, count for count, to ``[(torch.argmax(base + scores * α, dim=0) == target).sum() for α in alphas]``
    (the product rounded, then the sum: the search's order of operations; the first
    class on ties), without evaluating ``C`` logits per ``α``. In exact arithmetic
    ``l_c(α) − l_y(α)`` is linear in ``α``, so a class ``c`` that lies below the true class
    ``y`` by more than a rounding bound at both ends of the α grid lies below it at every
    α of the grid: it can neither win nor tie. Only the remaining *rivals* — (class,
    feature) pairs, usually none or a handful per feature — are evaluated at every α,
    with the same rounded operations and the same first-index rule.

    The bound: a computed logit ``fl(fl(α s) + b)`` is within ``2u (|α| max|s| + max|b|)``
    of its exact value (``u`` the unit roundoff), so with ``E = 64u (max|α| max|s| + max|b|)``
    (maxima over the whole block), ``l_c ≤ l_y − E`` at both ends (computed either way) implies
    ``fl(l_c(α)) < fl(l_y(α))`` at every α between them.

    Args:
        scores: ``[C, B]`` per-class cache scores (one row per class).
        base: ``[C, B]`` the α-independent logits.
        target: ``[B]`` int64 labels; a label outside ``[0, C)`` is never correct.
        alphas: ``[nA]`` the α grid, in ``scores``' dtype.
        base_norm: optional ``max |base|`` (0-d; precomputed when ``base`` is reused).

    Returns:
        ``[nA]`` int64 correct counts.
    """
    num_classes, num = scores.shape
    valid = (target >= 0) & (target < num_classes)  # [B]
    tgt = target.clamp(0, num_classes - 1)[None, :]  # [1, B]
    s_y, b_y = scores.gather(0, tgt), base.gather(0, tgt)  # [1, B]
    lo, hi = float(alphas.min()), float(alphas.max())
    smin, smax = torch.aminmax(scores)  # one bound for the whole chunk: looser, never wrong
    if base_norm is None:
        base_norm = base.abs().max()
    bound = 32.0 * torch.finfo(scores.dtype).eps * (  # eps = 2u
        max(abs(lo), abs(hi)) * torch.maximum(smax.abs(), smin.abs()) + base_norm)  # 0-d
    rival = torch.add(base, scores, alpha=lo) > (torch.add(b_y, s_y, alpha=lo) - bound)  # [C, B]
    rival |= torch.add(base, scores, alpha=hi) > (torch.add(b_y, s_y, alpha=hi) - bound)
    rival.scatter_(0, tgt, False)  # the true class is not its own rival
    cls, row = rival.nonzero().unbind(1)  # [P] rival pairs (class, feature)
    logit_c = scores[cls, row][None] * alphas[:, None]  # [nA, P]
    logit_c += base[cls, row][None]
    logit_y = s_y[0, row][None] * alphas[:, None]  # [nA, P]
    logit_y += b_y[0, row][None]
    # the rival is the arg-max's pick over y if it is higher, or equal with a smaller index
    beaten = (logit_c > logit_y) | ((logit_c == logit_y) & (cls < tgt[0, row])[None])  # [nA, P]
    losses = torch.zeros(len(alphas), num, dtype=torch.int64, device=scores.device)
    losses.index_add_(1, row, beaten.to(torch.int64))  # [nA, B]
    return ((losses == 0) & valid[None]).sum(dim=1)


def _chunk_rows(num_val: int, num_entries: int, num_classes: int, itemsize: int) -> int:
    """Validation rows per chunk so that the ``[NK, B]`` affinity and kernel fit the budget."""
    per_row = itemsize * max(num_entries * 2, num_classes * 4)
    return max(1, min(num_val, _SEARCH_BUFFER_BYTES // max(per_row, 1)))


@torch.no_grad()
def search_cache_grid(
    features: Tensor,
    keys: Tensor,
    labels: Tensor,
    base_logits: Tensor,
    val_labels: Tensor,
    betas: Sequence[float],
    alphas: Sequence[float],
    value_weights: Optional[Tensor] = None,
    num_classes: Optional[int] = None,
    chunk_size: Optional[int] = None,
) -> SearchResult:
    """Grid-search (β, α[, value-weight row]) of formula (1) by validation top-1.

    Equivalent to the reference loop (outer β, then α, then the weight row innermost,
    as APE orders γ)::

        for beta in betas:
            for alpha in alphas:
                for r in value_weights:
                    logits = base_logits + alpha * exp(-beta * (1 - features @ keys.T)) @ (L * r[:, None])
                    keep the point if its number of correct predictions is strictly greater

    but computes each affinity once (chunked over validation rows), the per-class
    cache scores once per (β, row) with a per-class sum instead of a product with
    ``L``, and all α at once. Ties keep the first grid point; when every point gets 0
    correct the first grid point is returned (the reference would return (0, 0),
    which is not on the grid).

    Args:
        features: ``[Nv, D']`` validation features in the affinity space (L2-normalised
            for Tip/APE; APE passes its selected, re-normalised channels).
        keys: ``[NK, D']`` cache keys in the same space.
        labels: ``[NK]`` int64 class of each cache entry.
        base_logits: ``[Nv, C]`` the α-independent part (``100 f W``).
        val_labels: ``[Nv]`` int64 validation labels.
        betas: β grid (outer loop).
        alphas: α grid.
        value_weights: optional ``[G, NK]`` per-entry value weights, one row per
            value of a third searched parameter (APE: ``exp(γ_k d)``); ``None`` means a
            single row of ones.
        num_classes: ``C``; defaults to ``base_logits.shape[1]``.
        chunk_size: validation rows per chunk; chosen from a memory budget if ``None``.

    Returns:
        The chosen grid point with its correct count and the full count grid.
    """
    if len(betas) == 0 or len(alphas) == 0:
        raise ValueError("search grid is empty: need at least one beta and one alpha")
    num_val = features.shape[0]
    num_classes = int(base_logits.shape[1] if num_classes is None else num_classes)
    num_entries = keys.shape[0]
    dtype, device = base_logits.dtype, base_logits.device
    weights = None if value_weights is None else value_weights.to(dtype=dtype, device=device)
    n_weights = 1 if weights is None else weights.shape[0]
    alpha_t = torch.tensor(list(alphas), dtype=dtype, device=device)  # [nA]
    counts = torch.zeros(len(betas), len(alphas), n_weights, dtype=torch.int64)
    labels = labels.to(device)
    if chunk_size is None:
        chunk_size = _chunk_rows(num_val, num_entries, num_classes, base_logits.element_size())

    block = uniform_block_size(labels, num_classes)
    if weights is not None and block is not None:  # [G, C, K]: the value weights per class and shot
        weights_gck = weights.reshape(n_weights, num_classes, block)
    for start in range(0, num_val, chunk_size):
        stop = min(start + chunk_size, num_val)
        shifted = keys.to(dtype) @ features[start:stop].to(dtype).T  # [NK, B] affinity A
        shifted.sub_(1.0)  # A − 1, shared by every β (the kernel is exp((A − 1)·β), as affinity_kernel)
        base_t = base_logits[start:stop].T.contiguous()  # [C, B]
        base_norm = base_t.abs().max()  # max |base| of the chunk
        target = val_labels[start:stop].to(device)  # [B]
        kernel = torch.empty_like(shifted)  # [NK, B]
        for bi, beta in enumerate(betas):
            torch.mul(shifted, float(beta), out=kernel)
            kernel.exp_()
            if weights is None:
                rows = [class_sum(kernel, labels, num_classes, entry_dim=0)]  # [C, B]
            elif block is not None:  # every weight row at once, a batched product per class: G × [C, B]
                rows = list(torch.einsum("ckb,gck->gcb", kernel.view(num_classes, block, -1), weights_gck))
            else:
                rows = [class_sum(kernel, labels, num_classes, values=w, entry_dim=0) for w in weights]
            for gi, scores in enumerate(rows):
                counts[bi, :, gi] += alpha_counts(scores, base_t, target, alpha_t, base_norm).cpu()

    flat = counts.reshape(-1)
    best = int((flat == flat.max()).nonzero()[0].item())  # first maximum in (β, α, row) order
    bi, rem = divmod(best, len(alphas) * n_weights)
    ai, gi = divmod(rem, n_weights)
    return SearchResult(
        beta=float(betas[bi]),
        alpha=float(alphas[ai]),
        weight_index=gi,
        beta_index=bi,
        alpha_index=ai,
        correct=int(counts[bi, ai, gi]),
        total=int(num_val),
        correct_grid=counts,
    )
