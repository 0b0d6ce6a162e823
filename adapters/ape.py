"""APE, adaptive prior refinement (training-free), SPEC §2.

1. Channel criterion over the ``D`` channels. Per class ``i``, ``X_i`` is the text
   classifier column ``w_i`` plus the class's cache keys. With ``s_id = Σ_{x∈X_i} x_d``
   and ``m_i = |X_i|``::

       S_d = Σ_{i≠j} Σ_{x∈X_i} Σ_{y∈X_j} x_d y_d / count
           = [(Σ_i s_id)² − Σ_i s_id²] / [(Σ_i m_i)² − Σ_i m_i²]

   ``count`` is the number of (x, y) pairs the four-loop definition visits; with ``K``
   keys in every class it is ``C(C−1)(K+1)²`` as in SPEC. Classes with different key
   counts (or none) enter with their own ``m_i`` — the exact average over all
   inter-class pairs, which the reference's reshape to ``[C, K, D]`` cannot express.
   ``V_d`` is the unbiased variance of ``W[d, :]`` across classes;
   ``J = −λ S + (1 − λ) V``; the ``Q`` channels with the highest ``J`` are kept
   (``Q`` from the table is for 1024-dim features and is scaled to ``D``).
2. With ``f'``, ``F'``, ``W'`` the selected channels, each re-normalised:
   ``logits = 100 f W + α exp(−β (1 − f' F'ᵀ)) (L ⊙ R)``, ``R_n = exp(γ d_n)``,
   ``d_n = Σ_c L_nc log2((L_nc + 1e-6) / (P_nc + 1e-6))``, ``P_n = softmax_c(F'_n W')``.
3. β (200 steps), α (20 steps) as in Tip and ``γ_k = k S_γ / N_γ`` (k < N_γ) are
   searched on validation in the reference's order (β, then α, then γ innermost).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Tuple

import torch
from torch import Tensor

from fdalign_plugins import hookimpl
from fdalign_plugins.adapter_api import (
    Adapter,
    AdapterSpec,
    FewShotTask,
    GridAxis,
    HParam,
    build_cache_keys,
    cache_logits,
    class_sum,
    count_correct,
    normalise,
    one_hot,
    percent,
    scale_channel_count,
    search_cache_grid,
    zero_shot_logits,
)
from fdalign_plugins.errors import ConfigError

from .tip import TIP_HPARAMS, TIP_TABLE, check_search_hparams

#: SPEC §2 table, APE columns: dataset -> (S_β, S_α, S_γ, N_γ, Q, λ) with Q for D = 1024.
APE_TABLE: Mapping[str, Tuple[float, float, float, int, int, float]] = {
    "imagenet": (7.0, 7.0, 0.5, 5, 500, 0.7),
    "caltech101": (7.0, 7.0, 1.0, 20, 800, 0.5),
    "dtd": (7.0, 7.0, 1.0, 20, 400, 0.5),
    "eurosat": (30.0, 5.0, 1.5, 20, 700, 0.9),
    "fgvc_aircraft": (20.0, 10.0, 1.0, 20, 800, 0.1),
    "food101": (7.0, 7.0, 1.0, 20, 700, 0.3),
    "oxford_flowers": (7.0, 7.0, 1.0, 20, 700, 0.4),
    "oxford_pets": (7.0, 7.0, 1.0, 20, 800, 0.7),
    "stanford_cars": (10.0, 7.0, 1.0, 20, 500, 0.6),
    "sun397": (10.0, 7.0, 1.0, 20, 800, 0.7),
    "ucf101": (10.0, 7.0, 1.5, 20, 700, 0.3),
}

#: Generic defaults. Unknown datasets: the search scales most datasets share
#: (S_β 7, S_α 7, S_γ 1, 20 γ steps) and the table's medians Q = 700, λ = 0.5;
#: init α is Tip's generic 1.17 (SPEC gives one init-α column, used for APE too).
APE_DEFAULTS: Dict[str, Any] = {
    "alpha": 1.17,
    "beta": 1.0,
    "gamma": 0.1,
    "search": True,
    "beta_scale": 7.0,
    "alpha_scale": 7.0,
    "gamma_scale": 1.0,
    "beta_steps": 200,
    "alpha_steps": 20,
    "gamma_steps": 20,
    "q": 700,  # selected channels, quoted for q_ref_dim-wide features
    "q_ref_dim": 1024,  # the width Q is quoted for (RN50); Q used = round(q · D / q_ref_dim)
    "lam": 0.5,  # λ of the criterion J = −λ S + (1 − λ) V
}

APE_DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    name: {
        "beta_scale": sb, "alpha_scale": sa, "gamma_scale": sg, "gamma_steps": ng,
        "q": q, "lam": lam, "alpha": TIP_TABLE[name][2],
    }
    for name, (sb, sa, sg, ng, q, lam) in APE_TABLE.items()
}

#: Types and ranges of APE's hyper-parameters.
APE_HPARAMS: Dict[str, HParam] = {
    **TIP_HPARAMS,
    "gamma": HParam(float, low=0, help="initial γ"),
    "gamma_scale": HParam(float, low=0, help="S_γ, the largest γ searched"),
    "gamma_steps": HParam(int, low=1, help="γ grid points"),
    "q": HParam(int, low=1, help="selected channels, quoted for q_ref_dim-wide features"),
    "q_ref_dim": HParam(int, low=1, help="the width q is quoted for"),
    "lam": HParam(float, low=0, high=1, help="λ of the channel criterion"),
}

APE_SEARCH_SPACE: Dict[str, GridAxis] = {
    "beta": GridAxis("beta_scale", "beta_steps", 0.1),
    "alpha": GridAxis("alpha_scale", "alpha_steps", 0.1),
    "gamma": GridAxis("gamma_scale", "gamma_steps", 0.0),
}


def channel_criterion(classifier: Tensor, keys: Tensor, labels: Tensor, lam: float) -> Tensor:
    """APE's channel criterion ``J = −λ S + (1 − λ) V`` in closed form.

    Args:
        classifier: ``[D, C]`` text classifier ``W``.
        keys: ``[NK, D]`` cache keys (any number per class, possibly none).
        labels: ``[NK]`` class of each key.
        lam: λ.

    Returns:
        ``[D]`` criterion values.
    """
    num_classes = classifier.shape[1]
    sums = classifier.T + class_sum(keys.T, labels, num_classes, entry_dim=-1).T  # [C, D] s_id
    sizes = 1.0 + torch.bincount(labels, minlength=num_classes).to(classifier.dtype)  # [C] m_i
    pairs = sizes.sum() ** 2 - (sizes**2).sum()  # Σ_{i≠j} m_i m_j
    inter = (sums.sum(dim=0) ** 2 - (sums**2).sum(dim=0)) / pairs  # [D] S_d
    variance = classifier.var(dim=1, unbiased=True)  # [D] V_d
    return -lam * inter + (1.0 - lam) * variance


def select_channels(criterion: Tensor, q: int) -> Tensor:
    """Indices of the ``q`` channels with the highest criterion, ascending. ``[Q]`` int64."""
    return torch.topk(criterion, k=q).indices.sort().values


def entry_divergence(keys_sel: Tensor, classifier_sel: Tensor, labels: Tensor) -> Tensor:
    """Per-entry ``d_n = Σ_c L_nc log2((L_nc + 1e-6) / (P_nc + 1e-6))``, ``P_n = softmax(F'_n W')``.

    Args:
        keys_sel: ``[NK, Q]`` selected, re-normalised keys ``F'``.
        classifier_sel: ``[Q, C]`` selected, re-normalised classifier ``W'``.
        labels: ``[NK]`` classes (``L`` is their one-hot).

    Returns:
        ``[NK]`` divergences.
    """
    probs = (keys_sel @ classifier_sel).softmax(dim=1)  # [NK, C]
    values = one_hot(labels, classifier_sel.shape[1], keys_sel.dtype)  # [NK, C]
    return (values * torch.log2((values + 1e-6) / (probs + 1e-6))).sum(dim=1)


def ape_logits(
    features: Tensor,
    classifier: Tensor,
    channels: Tensor,
    keys_sel: Tensor,
    labels: Tensor,
    divergence: Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    num_classes: int,
) -> Tensor:
    """APE logits ``100 f W + α exp(−β (1 − f' F'ᵀ)) (L ⊙ exp(γ d))``.

    Args:
        features: ``[B, D]`` L2-normalised features ``f``.
        classifier: ``[D, C]`` full text classifier ``W``.
        channels: ``[Q]`` selected channel indices.
        keys_sel: ``[NK, Q]`` selected, re-normalised keys ``F'``.
        labels: ``[NK]`` classes of the cache entries.
        divergence: ``[NK]`` ``d`` from :func:`entry_divergence`.
        alpha: α.
        beta: β.
        gamma: γ.
        num_classes: ``C``.

    Returns:
        ``[B, C]`` logits.
    """
    f_sel = normalise(features[:, channels])  # [B, Q]
    weights = torch.exp(divergence * gamma)  # [NK] R
    return zero_shot_logits(features, classifier) + cache_logits(
        f_sel @ keys_sel.T, labels, alpha, beta, values=weights, num_classes=num_classes
    )


class APEAdapter(Adapter):
    """APE: refined channels and trust-weighted cache values; β, α, γ searched on validation."""

    name = "ape"
    label = "APE"
    order = 30
    summary = ("APE: training-free; refined feature channels and trust-weighted cache; beta, alpha, gamma searched "
               "on validation")
    trains = False
    defaults = APE_DEFAULTS
    dataset_defaults = APE_DATASET_DEFAULTS
    search_space = APE_SEARCH_SPACE
    hparam_types = APE_HPARAMS
    selection = ("val", "fixed", "test")  # fixed with search=False; the reference's ImageNet loader is the test set

    def selects_on_validation(self) -> bool:
        """β, α, γ are chosen on validation unless ``search`` is off."""
        return bool(self.hparams.get("search", True))

    def fit(self, task: FewShotTask) -> "APEAdapter":
        """Select channels, build the refined cache, search β, α, γ on validation."""
        hp = self.resolve(task)
        dtype = task.work_dtype()
        self._classifier = task.classifier.to(dtype)  # [D, C]
        keys = build_cache_keys(task.support.to(dtype))  # [NK, D]
        self._labels = task.support_labels.to(keys.device)  # [NK]
        if int(hp["q"]) < 1 or int(hp["q_ref_dim"]) < 1:
            raise ConfigError(f"q and q_ref_dim must be >= 1, got q={hp['q']}, q_ref_dim={hp['q_ref_dim']}")
        self._q = scale_channel_count(int(hp["q"]), task.feature_dim, int(hp["q_ref_dim"]))
        criterion = channel_criterion(self._classifier, keys, self._labels, float(hp["lam"]))
        self._channels = select_channels(criterion, self._q)  # [Q]
        self._keys_sel = normalise(keys[:, self._channels])  # [NK, Q]
        classifier_sel = normalise(self._classifier[self._channels, :], dim=0)  # [Q, C]
        self._divergence = entry_divergence(self._keys_sel, classifier_sel, self._labels)  # [NK]

        val = task.val_features.to(keys)  # [Nv, D]
        val_labels = task.val_labels.to(val.device)
        if hp["search"]:
            check_search_hparams(hp, ("beta_steps", "alpha_steps", "gamma_steps"))
            axes = self.search_grid()
            gammas = torch.tensor(axes["gamma"], dtype=dtype, device=keys.device)  # [G]
            value_weights = torch.exp(self._divergence[None, :] * gammas[:, None])  # [G, NK]
            result = search_cache_grid(
                normalise(val[:, self._channels]), self._keys_sel, self._labels,
                zero_shot_logits(val, self._classifier), val_labels,
                axes["beta"], axes["alpha"], value_weights=value_weights, num_classes=self.num_classes,
            )
            self._alpha, self._beta = result.alpha, result.beta
            self._gamma = float(axes["gamma"][result.weight_index])
            self.val_accuracy = result.accuracy
        else:
            self._alpha, self._beta, self._gamma = float(hp["alpha"]), float(hp["beta"]), float(hp["gamma"])
            self.val_accuracy = percent(count_correct(self._logits(val), val_labels), len(val))
        chosen = dict(hp)
        chosen.update(
            alpha=self._alpha, beta=self._beta, gamma=self._gamma,
            init_alpha=hp["alpha"], init_beta=hp["beta"], init_gamma=hp["gamma"], q_channels=self._q,
        )
        self.record_chosen(chosen)
        return self

    def _logits(self, features: Tensor) -> Tensor:
        return ape_logits(
            features.to(self._keys_sel), self._classifier, self._channels, self._keys_sel, self._labels,
            self._divergence, self._alpha, self._beta, self._gamma, self.num_classes,
        )

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """APE logits with the chosen β, α, γ: ``[B, D]`` -> ``[B, C]``."""
        self.check_features(features)
        return self._logits(features)

    @property
    def channels(self) -> Tensor:
        """``[Q]`` the selected channel indices (after ``fit``)."""
        return self._channels

    @property
    def divergence(self) -> Tensor:
        """``[NK]`` the per-entry divergences ``d`` (after ``fit``)."""
        return self._divergence


@hookimpl
def fdalign_register_adapters(register: Callable[[AdapterSpec], Any]) -> None:
    """Register ``ape``."""
    register(APEAdapter.spec())
