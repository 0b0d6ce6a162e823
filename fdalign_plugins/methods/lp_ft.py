"""LP-FT (Kumar et al., ICLR 2022): a linear probe first, then full fine-tuning from it.

1. **Linear probe** — with the encoder frozen, a linear head ``logits = W·f̂ + b``
   (initialised from the zero-shot head ``W = τ·mu_class``, ``b = 0``) is trained with
   cross-entropy on the stock encoder's support features: AdamW with a cosine
   schedule, the epoch kept by validation (epoch 0, the zero-shot head, included) — the
   adapters' training loop, :func:`fdalign_plugins.adapter_api.train_on_views`.
2. **Fine-tuning** — encoder and head are trained together with cross-entropy on the
   head's logits, the head starting from the probe, so early updates do not distort
   the pretrained features to fit a random or zero-shot head.
"""

from __future__ import annotations

from .. import hookimpl
from ..errors import ConfigError
from ..method_api import MethodContext
from .full_ft import FullFT


class LPFT(FullFT):
    """Probe the head on frozen features (``setup``), then full fine-tuning's cross-entropy
    (:meth:`FullFT.loss`) on the head's logits."""

    name = "lp-ft"
    summary = "LP-FT: linear probe on frozen features first, then full fine-tuning starting from the probe head"
    defaults = {"probe_epochs": 100, "probe_lr": 1e-3, "probe_weight_decay": 0.0}
    needs_head = True

    def setup(self, ctx: MethodContext) -> None:
        from ..adapter_api import FewShotTask, normalise, percent, train_on_views

        if ctx.val_features is None:
            raise ConfigError("lp-ft keeps the probe epoch that is best on validation and there is no validation split")
        if ctx.head is None:
            raise ConfigError("lp-ft needs a linear head (the spine builds one for it)")
        feats, labels = ctx.support_features()  # [N, D] raw, [N]
        val, val_labels = ctx.val_features()
        head = ctx.head
        device = head.weight.device
        task = FewShotTask(support=feats[None].to(device), support_labels=labels.to(device),
                           classifier=ctx.protos.class_protos.t().to(device), val_features=normalise(val).to(device),
                           val_labels=val_labels.to(device), dataset="", shots=1, seed=ctx.seed)
        hp = self.hparams
        res = train_on_views(list(head.parameters()), head, task, epochs=int(hp["probe_epochs"]),
                             lr=float(hp["probe_lr"]), eps=1e-8, weight_decay=float(hp["probe_weight_decay"]))
        ctx.log(f"linear probe: best epoch {res.best_epoch}/{hp['probe_epochs']}, "
                f"val {percent(res.best_val_correct, len(val_labels)):.2f}% "
                f"(zero-shot head {percent(res.history[0].val_correct, len(val_labels)):.2f}%)")


@hookimpl
def fdalign_register_methods(register):
    register(LPFT.spec())
