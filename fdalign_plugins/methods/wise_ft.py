"""WiSE-FT (Wortsman et al., CVPR 2022): full fine-tuning, then ``θ = (1 − a)·θ_0 + a·θ_ft``.

``a`` is chosen on the few-shot validation split from ``wise_grid`` (which holds 0 and
1, so the stock and the fine-tuned encoder are both candidates), or fixed by
``wise_a``. The same finishing step follows any method as ``<method>+wise``
(:func:`fdalign_plugins.method_api.with_wise`).
"""

from __future__ import annotations

from .. import hookimpl
from ..method_api import with_wise
from .full_ft import FullFT

SPEC = with_wise(FullFT.spec(), name="wise-ft",
                 summary="WiSE-FT: full-ft, then theta = (1-a) theta_0 + a theta_ft, a chosen on validation")


@hookimpl
def fdalign_register_methods(register):
    register(SPEC)
