"""Measured quality of the embedded world model on the synthetic world (issue 3 targets).

Prints, for the shipped ``fdalign-world-tiny`` / ``world`` model on the default world
splits (seed 0):

1. zero-shot top-1 on the in-distribution test, the OOD sketch split and the resampled
   split, with the text classifier from CLIP's 80 templates and from the world's own
   template;
2. how well the style of an image can be read from the frozen model's spurious
   distribution ``P_spurious(x; f0) = softmax_j(tau cos(f0(x), mu_spur[j]))`` over the
   80 templates (nearest-centroid classifier on that 80-dim vector; centroids fitted on
   one half of a style-labelled set, accuracy on the other);
3. 16-shot plain full fine-tuning (beta = 0, ``fdalign_plugins.trainer.finetune``) on
   the in-distribution train split, then the same three test accuracies
   (optionally FD-Align, beta = 1, for comparison).

Hyper-parameters are never chosen on test data here: fine-tuning selects its epoch on
the few-shot validation split (min(K, 4) images per class from the world's val split).

Run::

    python benchmarks/world_quality.py            # ~3-5 min on 1-2 CPU cores
    python benchmarks/world_quality.py --fdalign  # also FD-Align (beta = 1)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fdalign_plugins.config import FinetuneConfig  # noqa: E402
from fdalign_plugins.datasets.base import ArraySplit  # noqa: E402
from fdalign_plugins.datasets.sampling import few_shot_split  # noqa: E402
from fdalign_plugins.models import load_clip  # noqa: E402
from fdalign_plugins.prompts import (  # noqa: E402
    IMAGENET_TEMPLATES,
    class_prototypes,
    encode_prompts,
    normalise,
    spurious_prototypes,
)
from fdalign_plugins.trainer import encode_images, finetune  # noqa: E402
from fdalign_plugins.world.dataset import build_world_dataset  # noqa: E402
from fdalign_plugins.world.generator import (  # noqa: E402
    PRETRAIN_NUISANCE,
    STYLE_NAMES,
    WORLD_TEMPLATES,
    render_many,
)

#: Random stream of the style-probe set (never a benchmark split or the corpus).
STYLE_PROBE_STREAM = 20

TARGETS = {
    "zero-shot id test in [35, 80]": lambda r: 35.0 <= r["zero_shot"]["imagenet80"]["test"] <= 80.0,
    "zero-shot sketch >= 25": lambda r: r["zero_shot"]["imagenet80"]["sketch"] >= 25.0,
    "16-shot FT gain on id test >= 10 points": lambda r: r["finetune"]["gain_test"] >= 10.0,
    "style from P_spurious >= 2x chance": lambda r: r["style"]["all"]["acc"] >= 2 * r["style"]["all"]["chance"],
}


def accuracy(feats: torch.Tensor, labels: np.ndarray, protos: torch.Tensor) -> float:
    """Top-1 (%) of nearest text prototype by cosine: feats ``[N, D]``, protos ``[C, D]``."""
    pred = (normalise(feats) @ protos.t()).argmax(1).numpy()
    return float((pred == np.asarray(labels)).mean() * 100.0)


def spurious_distribution(feats: torch.Tensor, spur: torch.Tensor, tau: float) -> torch.Tensor:
    """``P_spurious``: ``softmax_j(tau cos(f, mu_spur[j]))``, ``[N, D] x [M, D] -> [N, M]``."""
    return torch.softmax(tau * normalise(feats) @ spur.t(), dim=1)


def nearest_centroid(p_fit: np.ndarray, y_fit: np.ndarray, p_eval: np.ndarray, y_eval: np.ndarray) -> float:
    """Accuracy (%) of a nearest-centroid (Euclidean) classifier fitted on ``p_fit``."""
    classes = np.unique(y_fit)
    cent = np.stack([p_fit[y_fit == c].mean(0) for c in classes])  # [K, M]
    d = ((p_eval[:, None, :] - cent[None]) ** 2).sum(-1)
    return float((classes[d.argmin(1)] == y_eval).mean() * 100.0)


def style_probe_split(seed: int, num_classes: int, per_pair: int, image_size: int) -> ArraySplit:
    """Every class in every style, ``per_pair`` images each, broad nuisance, own stream."""
    n_st = len(STYLE_NAMES)
    labels = np.repeat(np.arange(num_classes), n_st * per_pair)
    styles = np.tile(np.repeat(np.arange(n_st), per_pair), num_classes)
    ims = render_many(labels, styles, seed=seed, stream=STYLE_PROBE_STREAM, nuisance=PRETRAIN_NUISANCE,
                      size=image_size)
    return ArraySplit(ims, labels, name=f"world-style-probe-s{seed}", styles=styles)


def run(args: argparse.Namespace) -> Dict:
    torch.set_num_threads(args.threads)
    t0 = time.time()
    bundle = load_clip(args.model, args.pretrained)
    load_s = time.time() - t0
    ds = build_world_dataset(args.root, seed=args.seed)
    tau = bundle.logit_scale
    tf = bundle.eval_transform
    splits = {"test": ds.test, "sketch": ds.ood["sketch"], "resampled": ds.ood["resampled"]}
    print(f"model {args.model}/{args.pretrained} (loaded in {load_s:.2f}s, tau {tau:.2f}); world seed {args.seed}: "
          f"{ds.num_classes} classes, " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()), flush=True)

    model = bundle.model
    feats0 = {k: encode_images(model.visual, s, tf) for k, s in splits.items()}
    prompt80 = encode_prompts(model, bundle.tokenizer, ds.classnames, IMAGENET_TEMPLATES)  # [80, C, D]
    classifiers = {
        "imagenet80": class_prototypes(prompt80),
        "world": class_prototypes(encode_prompts(model, bundle.tokenizer, ds.classnames, WORLD_TEMPLATES)),
    }
    zs = {name: {k: accuracy(f, splits[k].labels, W) for k, f in feats0.items()} for name, W in classifiers.items()}
    for name, r in zs.items():
        print(f"zero-shot top-1 [{name} templates]: " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)

    # Style readability from the frozen model's spurious distribution over the 80 templates.
    spur = spurious_prototypes(prompt80)  # [80, D]
    probe = style_probe_split(args.seed, ds.num_classes, args.style_per_pair, bundle.image_size)
    p_probe = spurious_distribution(encode_images(model.visual, probe, tf), spur, tau).numpy()
    half = (np.arange(len(probe)) % 2) == 0
    style = {"all": {"acc": nearest_centroid(p_probe[half], probe.styles[half], p_probe[~half], probe.styles[~half]),
                     "chance": 100.0 / len(STYLE_NAMES), "n_eval": int((~half).sum()), "styles": len(STYLE_NAMES)}}
    p_val = spurious_distribution(encode_images(model.visual, ds.val, tf), spur, tau).numpy()
    p_test = spurious_distribution(feats0["test"], spur, tau).numpy()
    n_id = len(np.unique(ds.test.styles))
    style["id"] = {"acc": nearest_centroid(p_val, ds.val.styles, p_test, ds.test.styles), "chance": 100.0 / n_id,
                   "n_eval": len(ds.test), "styles": n_id}
    p_sk = spurious_distribution(feats0["sketch"], spur, tau).numpy()
    sk_half = (np.arange(len(p_sk)) % 2) == 0
    sk_st = ds.ood["sketch"].styles
    n_sk = len(np.unique(sk_st))
    style["sketch"] = {"acc": nearest_centroid(p_sk[sk_half], sk_st[sk_half], p_sk[~sk_half], sk_st[~sk_half]),
                       "chance": 100.0 / n_sk, "n_eval": int((~sk_half).sum()), "styles": n_sk}
    for k, r in style.items():
        print(f"style from P_spurious [{k}: {r['styles']} styles, {r['n_eval']} images]: {r['acc']:.2f} "
              f"(chance {r['chance']:.2f}, x{r['acc'] / r['chance']:.1f})", flush=True)

    # 16-shot fine-tuning with the project's trainer (beta = 0: plain full fine-tuning).
    fs = few_shot_split(ds, args.shots, args.fs_seed)
    results = {"load_s": load_s, "zero_shot": zs, "style": style, "tau": tau}
    betas = [("finetune", 0.0)] + ([("fdalign", 1.0)] if args.fdalign else [])
    for key, beta in betas:
        cfg = FinetuneConfig(beta=beta, shots=args.shots, seed=args.fs_seed, lr=args.lr, epochs=args.epochs,
                             batch_size=args.batch_size, aug_scale=tuple(args.aug_scale), device="cpu", amp=False)
        b = load_clip(args.model, args.pretrained)
        t1 = time.time()
        res = finetune(b, fs.support, ds.classnames, cfg, val=fs.val, progress=False,
                       log=(lambda s: print("   " + s, flush=True)) if args.verbose else (lambda s: None))
        ft_s = time.time() - t1
        W = classifiers["imagenet80"]
        acc = {k: accuracy(encode_images(res.visual, s, tf), s.labels, W) for k, s in splits.items()}
        r = dict(acc)
        r.update({"gain_test": acc["test"] - zs["imagenet80"]["test"], "best_epoch": res.best_epoch,
                  "val_acc": res.history[res.best_epoch - 1]["val_acc"], "seconds": ft_s,
                  "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                             if k in ("beta", "lr", "epochs", "batch_size", "optimizer", "momentum", "weight_decay",
                                      "aug_scale", "shots", "seed", "head", "select")}})
        results[key] = r
        what = "full fine-tuning" if beta == 0 else "FD-Align"
        print(f"{args.shots}-shot {what} (beta={beta:g}, sgd lr {args.lr:g}, "
              f"{args.epochs} epochs, batch {args.batch_size}, aug_scale {tuple(args.aug_scale)}, best epoch "
              f"{res.best_epoch} by val {r['val_acc']:.2f}, {ft_s:.0f}s): "
              + "  ".join(f"{k} {v:.2f} ({v - zs['imagenet80'][k]:+.2f})" for k, v in acc.items()), flush=True)

    print("targets:")
    for name, check in TARGETS.items():
        print(f"  [{'PASS' if check(results) else 'FAIL'}] {name}")
    results["wall_s"] = time.time() - t0
    print(f"total {results['wall_s']:.0f}s")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fdalign-world-tiny")
    p.add_argument("--pretrained", default="world")
    p.add_argument("--root", type=Path, default=None, help="world cache folder (default: $FDALIGN_CACHE/world)")
    p.add_argument("--seed", type=int, default=0, help="world seed")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--fs-seed", type=int, default=1, help="few-shot sampling / training seed")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--aug-scale", type=float, nargs=2, default=(0.5, 1.0))
    p.add_argument("--style-per-pair", type=int, default=4, help="style-probe images per (class, style)")
    p.add_argument("--fdalign", action="store_true", help="also fine-tune with FD-Align (beta = 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    p.add_argument("--verbose", action="store_true", help="print the trainer's per-epoch lines")
    args = p.parse_args(argv)
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
