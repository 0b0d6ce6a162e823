"""The evidence on the world: does FD-Align keep OOD accuracy better than plain fine-tuning?

For each shot count and few-shot draw (seed), fine-tunes the shipped world model with
the project's trainer and the default recipe, and evaluates on the in-distribution test
split and the two OOD splits (decorrelated, sketch):

* zero-shot (the stock encoder);
* plain full fine-tuning (FD-Align's spurious weight ``beta`` = 0), the paired reference;
* WiSE-FT (a = 0.5) of that plain fine-tuned encoder;
* FD-Align ``beta`` = 1 with the overview's KL direction and with the reference code's;
* FD-Align ``beta`` = 5 and 20 (overview direction): the sweep that used to collapse.

Every number is top-1 (%) with the text classifier of CLIP's 80 templates; cells are
mean ± std over the draws; Δ rows are the paired difference to plain fine-tuning on the
same draw (same support set, same test images), mean ± std. A run whose best epoch on
validation is 0 (fine-tuning rejected, the stock encoder kept) is marked ``r``, a
collapsed one ``c`` (the trainer's verdict, :func:`fdalign_plugins.spine.run_verdict`),
with the count, so no cell hides either.
Selection (best epoch, WiSE's a is fixed) never looks at a test split.

Run::

    python benchmarks/world_evidence.py --json world_evidence.json   # ten draws, ~12 min on 1 core
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fdalign_plugins.config import FinetuneConfig  # noqa: E402
from fdalign_plugins.datasets.sampling import few_shot_split  # noqa: E402
from fdalign_plugins.models import load_clip  # noqa: E402
from fdalign_plugins.prompts import IMAGENET_TEMPLATES, class_prototypes, encode_prompts  # noqa: E402
from fdalign_plugins.trainer import encode_images, finetune  # noqa: E402
from fdalign_plugins.world.dataset import build_world_dataset  # noqa: E402

_spec = importlib.util.spec_from_file_location("world_quality", Path(__file__).with_name("world_quality.py"))
wq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wq)

#: (row label, FinetuneConfig overrides); None: no fine-tuning. "wise" rows mix "full FT".
ARMS = (
    ("zero-shot", None),
    ("full FT (beta 0)", {"spurious_weight": 0.0}),
    ("WiSE-FT a=0.5", "wise"),
    ("FD-Align beta 1", {"spurious_weight": 1.0, "kl_direction": "overview"}),
    ("FD-Align beta 1, reference KL", {"spurious_weight": 1.0, "kl_direction": "reference"}),
    ("FD-Align beta 5", {"spurious_weight": 5.0}),
    ("FD-Align beta 20", {"spurious_weight": 20.0}),
)
REFERENCE = "full FT (beta 0)"


def status_of(res) -> str:
    """``"r"`` rejected by validation, ``"c"`` collapsed, ``""`` fine: the trainer's
    verdict (:func:`fdalign_plugins.spine.run_verdict`)."""
    return {"rejected": "r", "collapsed": "c"}.get(res.verdict, "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=[4, 16])
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=list(range(1, 11)))
    p.add_argument("--pretrained", default="world")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    ds = build_world_dataset(seed=0)
    stock = load_clip("fdalign-world-tiny", args.pretrained)
    W = class_prototypes(encode_prompts(stock.model, stock.tokenizer, ds.classnames, IMAGENET_TEMPLATES))
    tf = stock.eval_transform
    splits = {"test": ds.test, "decorrelated": ds.ood["decorrelated"], "sketch": ds.ood["sketch"]}

    def evaluate(visual) -> Dict[str, float]:
        return {k: wq.accuracy(encode_images(visual, s, tf), s.labels, W) for k, s in splits.items()}

    zs = evaluate(stock.model.visual)
    runs: List[Dict] = []
    print(f"world evidence: shots {args.shots}, seeds {args.seeds}, recipe {_recipe()}", flush=True)
    for shots in args.shots:
        for seed in args.seeds:
            fs = few_shot_split(ds, shots, seed)
            trained = {}
            for label, over in ARMS:
                t0 = time.time()
                if over is None:
                    acc, status, best = zs, "", None
                elif over == "wise":
                    acc = evaluate(wq.wise_interpolate(stock.model.visual, trained[REFERENCE], wq.WISE_A))
                    status, best = "", None
                else:
                    cfg = FinetuneConfig(**{"shots": shots, "seed": seed, "device": "cpu", "amp": False, **over})
                    res = finetune(load_clip("fdalign-world-tiny", args.pretrained), fs.support, ds.classnames, cfg,
                                   val=fs.val, progress=False, log=lambda s: None)
                    trained[label] = res.visual
                    acc, status, best = evaluate(res.visual), status_of(res), res.best_epoch
                runs.append({"arm": label, "shots": shots, "seed": seed, "acc": acc, "status": status,
                             "best_epoch": best, "seconds": round(time.time() - t0, 1)})
                print(f"  {shots:>2}-shot seed {seed} {label:<30} " + "  ".join(f"{k} {v:6.2f}" for k, v in acc.items())
                      + (f"  best epoch {best}" if best is not None else "") + (f"  [{status}]" if status else ""),
                      flush=True)
    table = render(runs, args.shots, args.seeds)
    print()
    print(table)
    print(f"\ntotal {time.time() - t_start:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "recipe": _recipe(), "table": table}, indent=2) + "\n")
    return 0


def _recipe() -> Dict:
    d = FinetuneConfig()
    return {k: getattr(d, k) for k in ("optimizer", "lr", "epochs", "batch_size", "warmup_epochs", "grad_clip",
                                       "aug_scale", "freeze_bn", "val_shots", "select")}


def render(runs: List[Dict], shots: Sequence[int], seeds: Sequence[int]) -> str:
    """Markdown: one table per shot count, mean ± std cells, paired Δ rows, status marks."""
    out = []
    splits = list(runs[0]["acc"])
    for k in shots:
        out.append(f"**{k}-shot** (top-1 %, mean ± std over seeds {', '.join(map(str, seeds))}; "
                   f"Δ: paired difference to {REFERENCE} on the same draw)\n")
        out.append("| arm | " + " | ".join(splits) + " | marks |")
        out.append("|---|" + "---|" * len(splits) + "---|")
        ref = {r["seed"]: r["acc"] for r in runs if r["shots"] == k and r["arm"] == REFERENCE}
        for label, over in ARMS:
            rows = [r for r in runs if r["shots"] == k and r["arm"] == label]
            cells = []
            for s in splits:
                v = np.array([r["acc"][s] for r in rows])
                cells.append(f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}")
            marks = [r["status"] for r in rows if r["status"]]
            mark = ", ".join(f"{marks.count(m)}/{len(rows)} {'rejected' if m == 'r' else 'collapsed'}"
                             for m in sorted(set(marks))) or ""
            out.append(f"| {label} | " + " | ".join(cells) + f" | {mark} |")
            if over is not None and label != REFERENCE:
                deltas = []
                for s in splits:
                    d = np.array([r["acc"][s] - ref[r["seed"]][s] for r in rows])
                    deltas.append(f"{d.mean():+.2f} ± {d.std(ddof=1) if len(d) > 1 else 0.0:.2f}")
                out.append("| &nbsp;&nbsp;Δ vs full FT | " + " | ".join(deltas) + " | |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
