"""The linear probe of CLIP and CoOp: L2-regularised logistic regression, C searched on validation.

Sources: A. Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021, appendix A.3 (scikit-learn ``LogisticRegression``, L-BFGS,
L2, ``max_iter`` 1000, ``C`` searched on a validation split); K. Zhou et al.,
"Learning to Prompt for Vision-Language Models" (CoOp), IJCV 2022, code
github.com/KaiyangZhou/CoOp ``lpclip/`` (MIT): ``C`` first from
``{1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6}`` (first best), then 8 steps of a log-space
binary search between ``C/10`` and ``10·C``. Re-implemented from the papers and
SPEC §6.

The probe fits, per ``C``, the unique minimiser of scikit-learn's multinomial
objective on the support features ``F`` (cache keys: the mean of the ``V`` cached
views of each image, L2-normalised)::

    C · Σ_i CE(f_i Wᵀ + b, y_i) + ½ ‖W‖²_F          (b is not penalised)

and predicts ``logits = f Wᵀ + b``. The solver is torch's L-BFGS (strong Wolfe line
search, history 10 as scipy's), stopped when the largest gradient entry falls below
``tol`` times its value at the start; tests check it against scikit-learn itself.
Why not scikit-learn here: its L-BFGS objective is now divided by ``N``, and with the
default ``tol = 1e-4`` it stops at the zero model for 1000 ImageNet-sized classes
(measured with scikit-learn 1.9.1: 0 iterations, 0.1 % training accuracy); every fit
also starts cold. This module
warm-starts each fit from the nearest ``C`` already fitted and caches fits by ``C``,
so the binary search refits only its new end point.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fdalign_plugins import hookimpl
from fdalign_plugins.adapter_api import (
    Adapter,
    AdapterSpec,
    FewShotTask,
    GridList,
    HParam,
    build_cache_keys,
    count_correct,
    percent,
    search_list,
)
from fdalign_plugins.errors import ConfigError

#: CoOp's initial C list, in its search order.
COOP_C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)

LINEAR_PROBE_DEFAULTS: Dict[str, Any] = {
    "C": 0.316,  # used when search is off
    "search": True,
    "c_grid": list(COOP_C_GRID),
    "refine_steps": 8,
    "max_iter": 1000,
    "tol": 1e-6,
}

LINEAR_PROBE_HPARAMS: Dict[str, HParam] = {
    "C": HParam(float, low=0, help="inverse regularisation strength when search is off"),
    "search": HParam(bool, help="search C on validation (CoOp's grid, then bisection)"),
    "c_grid": HParam(list, help="CoOp's initial C candidates, in search order"),
    "refine_steps": HParam(int, low=0, help="log-space bisection steps after the grid"),
    "max_iter": HParam(int, low=1, help="L-BFGS iterations per fit at most"),
    "tol": HParam(float, low=0, help="stop when the largest gradient entry falls below tol times its start"),
}


def fit_logistic_regression(
    features: Tensor, labels: Tensor, num_classes: int, c: float, *, max_iter: int = 1000, tol: float = 1e-6,
    init: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tuple[Tensor, Tensor, int]:
    """Minimise ``C · Σ CE(f Wᵀ + b, y) + ½‖W‖²`` with L-BFGS.

    The objective is divided by ``C`` (same minimiser) so its scale does not depend on
    the regularisation strength.

    Args:
        features: ``[N, D]`` training features.
        labels: ``[N]`` int64 classes.
        num_classes: ``C`` (classes absent from ``labels`` still get a row).
        c: inverse regularisation strength (> 0).
        max_iter: L-BFGS iterations at most.
        tol: stop when ``max |∇| <= tol · max |∇ at the start|``.
        init: optional warm start ``(W [C, D], b [C])``.

    Returns:
        ``W [C, D]``, ``b [C]`` and the number of iterations run.
    """
    dim = features.shape[1]
    w0, b0 = init if init is not None else (features.new_zeros(num_classes, dim), features.new_zeros(num_classes))
    weight = w0.clone().requires_grad_(True)
    bias = b0.clone().requires_grad_(True)

    def objective() -> Tensor:
        logits = features @ weight.T + bias  # [N, C]
        return F.cross_entropy(logits, labels, reduction="sum") + weight.pow(2).sum() / (2.0 * c)

    loss = objective()
    grads = torch.autograd.grad(loss, [weight, bias])
    start = max(float(g.abs().max()) for g in grads)
    if start == 0.0:
        return weight.detach(), bias.detach(), 0
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=int(max_iter), history_size=10,
                            tolerance_grad=tol * start, tolerance_change=0.0, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        value = objective()
        value.backward()
        return value

    opt.step(closure)
    iterations = int(opt.state[opt._params[0]].get("n_iter", 0))
    return weight.detach(), bias.detach(), iterations


def coop_c_search(grid: List[float], steps: int,
                  correct: Callable[[float], int]) -> Tuple[float, List[Tuple[float, int]]]:
    """CoOp's C search: first best on ``grid``, then ``steps`` log-space bisection steps.

    Each step compares ``c_left`` and ``c_right`` (ties keep the left one), keeps the
    better end as the current choice and halves the log-interval towards it.

    Args:
        grid: the initial candidates, in order.
        steps: bisection steps (0: the grid's choice).
        correct: ``correct(C) -> int`` validation correct count.

    Returns:
        The chosen C and the (C, correct) pairs evaluated, in order.
    """
    tried: List[Tuple[float, int]] = []

    def evaluate(c: float) -> int:
        n = int(correct(c))
        tried.append((c, n))
        return n

    best, _ = search_list(grid, evaluate)
    chosen = grid[best]
    left, right = 0.1 * chosen, 10.0 * chosen
    for _ in range(int(steps)):
        acc_left, acc_right = evaluate(left), evaluate(right)
        mid = 10.0 ** (0.5 * (math.log10(right) + math.log10(left)))
        if acc_left < acc_right:
            chosen, left = right, mid
        else:
            chosen, right = left, mid
    return chosen, tried


class LinearProbeAdapter(Adapter):
    """The CLIP/CoOp linear probe: logistic regression on the support features."""

    name = "linear-probe"
    label = "Linear probe"
    order = 90
    summary = "Linear probe (CLIP/CoOp): L2 logistic regression on the support features; C searched on validation"
    trains = True
    defaults = LINEAR_PROBE_DEFAULTS
    search_space = {"C": GridList("c_grid")}
    hparam_types = LINEAR_PROBE_HPARAMS
    selection = ("val", "fixed")  # CoOp's lpclip selects C on a few-shot validation split, never on test

    def selects_on_validation(self) -> bool:
        """C is searched on validation unless ``search`` is off."""
        return bool(self.hparams.get("search", True))

    def fit(self, task: FewShotTask) -> "LinearProbeAdapter":
        """Fit the probe for each C of CoOp's search (warm-started, cached); keep the best."""
        hp = self.resolve(task)
        if int(hp["max_iter"]) < 1 or float(hp["tol"]) <= 0 or int(hp["refine_steps"]) < 0:
            raise ConfigError(f"linear-probe: max_iter >= 1, tol > 0 and refine_steps >= 0 needed, got "
                              f"{hp['max_iter']}, {hp['tol']}, {hp['refine_steps']}")
        dtype = task.work_dtype()
        feats = build_cache_keys(task.support.to(dtype))  # [N, D]
        labels = task.support_labels.to(feats.device)
        val = task.val_features.to(dtype)  # [Nv, D]
        val_labels = task.val_labels.to(val.device)
        fits: Dict[float, Tuple[Tensor, Tensor, int]] = {}

        def fitted(c: float) -> Tuple[Tensor, Tensor, int]:
            if c <= 0 or not math.isfinite(c):
                raise ConfigError(f"linear-probe: C must be a positive number, got {c}")
            if c not in fits:
                near = min(fits, key=lambda k: abs(math.log10(k) - math.log10(c)), default=None)
                fits[c] = fit_logistic_regression(
                    feats, labels, task.num_classes, c, max_iter=int(hp["max_iter"]), tol=float(hp["tol"]),
                    init=None if near is None else fits[near][:2])
            return fits[c]

        def correct(c: float) -> int:
            w, b, _ = fitted(c)
            return count_correct(val @ w.T + b, val_labels)

        if hp["search"]:
            grid = self.search_grid()["C"]
            for c in sorted(grid):  # fit strong-to-weak regularisation so warm starts help
                fitted(c)
            self._c, tried = coop_c_search(grid, int(hp["refine_steps"]), correct)
        else:
            self._c, tried = float(hp["C"]), [(float(hp["C"]), correct(float(hp["C"])))]
        self._weight, self._bias, iterations = fitted(self._c)
        self.val_accuracy = percent(correct(self._c), len(val))
        self.record_chosen({**hp, "C": self._c, "iterations": iterations, "fits": len(fits),
                            "val_correct_per_C": [[c, n] for c, n in tried]})
        return self

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """``f Wᵀ + b`` with the chosen C's probe: ``[B, D]`` -> ``[B, C]``."""
        self.check_features(features)
        return features.to(self._weight) @ self._weight.T + self._bias


@hookimpl
def fdalign_register_adapters(register: Callable[[AdapterSpec], Any]) -> None:
    """Register ``linear-probe``."""
    register(LinearProbeAdapter.spec())
