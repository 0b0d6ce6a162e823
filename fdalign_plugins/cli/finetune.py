"""``fdalign-finetune``: fine-tune CLIP's image encoder (FD-Align or another ``--method``), write a checkpoint."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import List, Optional

from ..config import FinetuneConfig, build_config, read_yaml
from .common import OneLineParser, add_config_flags, flag_overrides, run_cli

PROG = "fdalign-finetune"


#: ``--flag`` help: (metavar, what it does). Every FinetuneConfig key is a flag; SPEC §1 and
#: docs/bench.md (section fdalign-finetune) describe the method behind them.
FLAG_HELP = {
    "model": ("NAME", "open_clip model name, local-dir:PATH, or the embedded fdalign-world-tiny"),
    "pretrained": ("TAG|FILE|none", "open_clip pretrained tag or local weights file; 'none' = random weights; "
                   "unset = the model's own weights (the world weights for fdalign-world-tiny; a real open_clip "
                   "model needs a tag)"),
    "dataset": ("NAME", "registered dataset to fine-tune on (see fdalign-bench --list)"),
    "data_root": ("DIR", "the folder the dataset is read from (see docs/datasets.md)"),
    "shots": ("K", "support images per class"),
    "seed": ("S", "seed of the few-shot draw"),
    "method": ("NAME", "fine-tuning method (see --list); NAME+wise adds WiSE-FT's weight interpolation"),
    "method_params": ("K=V,..", "the method's hyper-parameters (see --list), e.g. wise_a=0.5"),
    "alpha": ("A", "weight of the class cross-entropy"),
    "spurious_weight": ("W", "weight of the spurious-feature KL that keeps the encoder close to CLIP "
                        "(0 = plain fine-tuning)"),
    "kl_direction": ("D", "overview: KL(P_ft || P_0); reference: KL(P_0 || P_ft) as the released code"),
    "templates": ("NAME|T,..", "prompt templates for the spurious prototypes: a set name or a comma list"),
    "spc": ("BOOL", "spurious prototype correction: IsolationForest outlier removal, then k-means"),
    "spc_keep": ("N", "spurious prototypes the IsolationForest keeps (0 = that step off)"),
    "spc_k": ("N", "k-means clusters of the kept prototypes (0 = that step off)"),
    "spc_renormalise": ("BOOL", "L2-normalise the corrected prototypes (the reference does not)"),
    "head": ("fixed|linear", "classify with the fixed text prototypes, or a trainable linear head"),
    "optimizer": ("sgd|adamw", "optimizer"),
    "lr": ("LR", "learning rate"),
    "momentum": ("M", "SGD momentum"),
    "nesterov": ("BOOL", "Nesterov momentum (SGD)"),
    "weight_decay": ("WD", "weight decay"),
    "epochs": ("N", "training epochs"),
    "batch_size": ("N", "global batch size"),
    "grad_accum": ("N", "batches accumulated per optimizer step"),
    "grad_clip": ("NORM", "clip the gradient norm (0 = off)"),
    "warmup_iters": ("N", "linear warm-up steps before the cosine schedule"),
    "warmup_epochs": ("EPOCHS", "linear warm-up in epochs, added to warmup_iters (the world default: 2)"),
    "aug_scale": ("LO,HI", "two values: the random-resized-crop area range, 0 < LO <= HI <= 1"),
    "freeze_bn": ("BOOL", "keep BatchNorm statistics frozen (ResNets)"),
    "val_shots": ("K", "validation images per class for best-epoch selection (min(K, shots))"),
    "select": ("val|last", "keep the epoch best on validation, or the last one"),
    "device": ("DEV", "auto, cpu, cuda or cuda:N"),
    "amp": ("BOOL", "mixed precision on CUDA"),
    "workers": ("N", "data-loading worker processes"),
}


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog=PROG,
        description="Fine-tune CLIP's image encoder with FD-Align (or another --method) and write "
        "encoder.safetensors + encoder.json. With no arguments: the embedded world model on the synthetic world's "
        "in-distribution split. Precedence: flags > --config YAML > defaults. Method hyper-parameters: "
        "--method-params key=value,key2=value2 (see --list).",
    )
    p.add_argument("--list", action="store_true", help="list the fine-tuning methods, their hyper-parameters and "
                   "the distribution each came from")
    p.add_argument("--config", metavar="YAML", help="YAML file of the settings below (keys without the dashes)")
    p.add_argument("--data", dest="data", metavar="DIR",
                   help="a folder of images, one sub-folder per class (sets --dataset folder --data-root DIR)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/finetune-<dataset>-<K>shot-seed<S>)")
    p.add_argument("--resume", action="store_true", help="continue from the training state in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p, FinetuneConfig, helps=FLAG_HELP, group_title="fine-tuning settings (override the YAML config)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args), PROG,
                   resume_hint="the training state of the last finished epoch is in the output folder: re-run the same "
                   "command with --resume to continue from it")


def _run(args) -> int:
    if args.list:
        from ..plugins import get_plugin_manager

        print("\n".join(get_plugin_manager().format_methods()))
        return 0
    from ..checkpoint import WEIGHTS_NAME, read_encoder
    from ..datasets import check_images, few_shot_split, load_dataset
    from ..distributed import init_from_env, is_main
    from ..errors import ConfigError
    from ..models import load_clip
    from ..preflight import check_dataset_source, check_model_source, check_output_folder
    from ..trainer import STATE_NAME, finetune, resolve_device

    init_from_env()  # under torchrun: join the process group (no-op in a single process)
    yaml_layer = read_yaml(args.config) if args.config else None
    flags = flag_overrides(args, FinetuneConfig)
    if args.data:
        flags.update(dataset="folder", data_root=args.data)
    cfg = build_config(FinetuneConfig, yaml_layer, flags)
    # every name, file and folder is checked before the model is loaded
    check_dataset_source(cfg.dataset, cfg.data_root)
    check_model_source(cfg.model, cfg.pretrained)
    resolve_device(cfg.device)
    out = Path(args.out or f"runs/finetune-{cfg.dataset}-{cfg.shots}shot-seed{cfg.seed}")
    final = out / WEIGHTS_NAME
    if final.exists():
        if not args.resume:
            raise ConfigError(f"{out} already holds a checkpoint ({final}); pass --resume to keep it "
                              "or choose another --out")
        _, meta = read_encoder(final)
        print(f"checkpoint already complete: {final} (best epoch {meta.get('best_epoch')})")
        return 0
    state = out / STATE_NAME
    if state.is_file() and not args.resume:  # never overwrite an interrupted run's saved epochs silently
        raise ConfigError(f"{out} holds the training state of an interrupted run ({state}); pass --resume to continue "
                          "it, or delete the file (or choose another --out) to start over")
    check_output_folder(out, "--out")
    bundle = load_clip(cfg.model, cfg.pretrained)
    ds = load_dataset(cfg.dataset, cfg.data_root)
    split = few_shot_split(ds, cfg.shots, cfg.seed, cfg.val_shots)
    check_images(split.support, f"the {cfg.shots}-shot support set of {ds.name}")
    check_images(split.val, f"the validation set of {ds.name}")
    main_rank = is_main()
    if main_rank:
        steps = math.ceil(math.ceil(len(split.support) / cfg.batch_size) / cfg.grad_accum)
        print(f"{PROG}: {bundle.model_name} ({bundle.pretrained or 'random init'}) on {ds.name}: "
              f"{len(ds.classnames)} classes, "
              f"{len(split.support)} support / {len(split.val)} validation images (validation from {split.val_from}); "
              f"{cfg.epochs} epoch(s) x {steps} step(s), state saved after each epoch in {out}; "
              f"method {cfg.method} {cfg.method_hparams()}", file=sys.stderr)
    res = finetune(
        bundle, split.support, ds.classnames, cfg, val=split.val, out_dir=out, resume=args.resume,
        progress=not args.quiet and sys.stderr.isatty(), log=lambda s: print(s, file=sys.stderr),
        extra_metadata={"support_indices": split.support_indices, "val_indices": split.val_indices},
    )
    if main_rank:
        flag = "" if res.verdict == "ok" else f"; {res.verdict.upper()}: {res.metadata['finetune_verdict_reason']}"
        print(f"checkpoint: {res.checkpoint} (method {cfg.method}, best epoch {res.best_epoch}{flag}, "
              f"sidecar {res.checkpoint.with_suffix('.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
