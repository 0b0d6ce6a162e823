"""How the world's default fine-tuning recipe was chosen: on validation, FD-Align on.

Fine-tunes the shipped world model with FD-Align (the class loss plus the spurious KL,
spurious weight ``beta`` 1 by default) for every recipe of a small grid (learning rate, warm-up,
gradient clipping, crop scale) and several few-shot draws, and prints the mean top-1 on the
world's *validation* split (512 images, never a test split) with how many runs
collapsed or were rejected by the best-epoch rule. The recipe with the best mean
validation accuracy is the default of ``FinetuneConfig``; ``docs/world.md`` records
this script's output.

Run::

    python benchmarks/world_recipe.py                  # 12 recipes x 3 draws, ~5 min on 1 core
    python benchmarks/world_recipe.py --spurious-weight 5 --seeds 1,2
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fdalign_plugins.config import FinetuneConfig  # noqa: E402
from fdalign_plugins.datasets.sampling import few_shot_split  # noqa: E402
from fdalign_plugins.errors import TrainingError  # noqa: E402
from fdalign_plugins.models import load_clip  # noqa: E402
from fdalign_plugins.prompts import IMAGENET_TEMPLATES, class_prototypes, encode_prompts  # noqa: E402
from fdalign_plugins.trainer import encode_images, finetune  # noqa: E402
from fdalign_plugins.world.dataset import build_world_dataset  # noqa: E402

_spec = importlib.util.spec_from_file_location("world_quality", Path(__file__).with_name("world_quality.py"))
wq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wq)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--spurious-weight", "--beta", dest="beta", type=float, default=1.0,
                   help="FD-Align's spurious-loss weight (the paper's beta) during the sweep")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    p.add_argument("--lrs", type=lambda s: [float(x) for x in s.split(",")], default=[2e-4, 5e-4, 1e-3])
    p.add_argument("--warmups", type=lambda s: [int(x) for x in s.split(",")], default=[0, 2],
                   help="warm-up lengths in epochs")
    p.add_argument("--clips", type=lambda s: [float(x) for x in s.split(",")], default=[1.0],
                   help="gradient-norm clips (0: none)")
    p.add_argument("--augs", type=lambda s: [tuple(float(v) for v in x.split(",")) for x in s.split(";")],
                   default=[(0.5, 1.0), (0.9, 1.0)], help="crop scale ranges, e.g. '0.5,1;0.9,1'")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--pretrained", default="world", help="world model weights (tag or local file)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = build_world_dataset(seed=0)
    base = load_clip("fdalign-world-tiny", args.pretrained)
    W = class_prototypes(encode_prompts(base.model, base.tokenizer, ds.classnames, IMAGENET_TEMPLATES))
    tf = base.eval_transform

    def val_acc(visual) -> float:
        return wq.accuracy(encode_images(visual, ds.val, tf), ds.val.labels, W)

    zs = val_acc(base.model.visual)
    print(f"{args.shots}-shot FD-Align (beta {args.beta:g}) recipes, validation split ({len(ds.val)} images), "
          f"draws {args.seeds}; zero-shot val {zs:.2f}", flush=True)
    rows = []
    for lr, warm, clip, aug in itertools.product(args.lrs, args.warmups, args.clips, args.augs):
        accs, marks, t0 = [], [], time.time()
        for seed in args.seeds:
            fs = few_shot_split(ds, args.shots, seed)
            over = dict(spurious_weight=args.beta, shots=args.shots, seed=seed, lr=lr, warmup_epochs=warm,
                        grad_clip=clip, aug_scale=aug, device="cpu", amp=False)
            if args.epochs:
                over["epochs"] = args.epochs
            b = load_clip("fdalign-world-tiny", args.pretrained)
            try:
                res = finetune(b, fs.support, ds.classnames, FinetuneConfig(**over), val=fs.val, progress=False,
                               log=lambda s: None)
            except TrainingError:  # a non-finite loss
                accs.append(zs)
                marks.append(f"seed {seed} non-finite")
                continue
            accs.append(val_acc(res.visual))
            if res.best_epoch == 0:
                marks.append(f"seed {seed} rejected")
            if any(h["l_class"] > math.log(ds.num_classes) for h in res.history):
                marks.append(f"seed {seed} class loss > log C")
        rows.append((float(np.mean(accs)), lr, warm, clip, aug, marks))
        print(f"  lr {lr:g}  warm-up {warm} ep  clip {clip:g}  crop scale {aug[0]:g}-{aug[1]:g}:  "
              f"val {np.mean(accs):.2f} "
              f"({', '.join(f'{a:.2f}' for a in accs)})  {', '.join(marks) or 'ok'}  [{time.time() - t0:.0f}s]",
              flush=True)
    best = max(rows, key=lambda r: r[0])
    print(f"best on validation: lr {best[1]:g}, warm-up {best[2]} epochs, clip {best[3]:g}, crop scale "
          f"{best[4][0]:g}-{best[4][1]:g} (val {best[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
