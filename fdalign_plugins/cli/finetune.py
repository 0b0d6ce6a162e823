"""``fdalign-finetune``: fine-tune CLIP's image encoder with FD-Align, write a checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from ..config import FinetuneConfig, build_config, read_yaml
from .common import OneLineParser, add_config_flags, flag_overrides, run_cli

PROG = "fdalign-finetune"


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog=PROG,
        description="Fine-tune CLIP's image encoder with FD-Align and write encoder.safetensors + encoder.json. "
        "With no arguments: the embedded world model on the synthetic world's in-distribution split. "
        "Precedence: flags > --config YAML > defaults.",
    )
    p.add_argument("--config", help="YAML file of FinetuneConfig keys")
    p.add_argument("--data", dest="data", metavar="DIR",
                   help="a folder of images, one sub-folder per class (sets --dataset folder --data-root DIR)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/finetune-<dataset>-<K>shot-seed<S>)")
    p.add_argument("--resume", action="store_true", help="continue from the training state in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p, FinetuneConfig)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args), PROG)


def _run(args) -> int:
    from ..checkpoint import WEIGHTS_NAME, read_encoder
    from ..datasets import check_images, few_shot_split, load_dataset
    from ..distributed import init_from_env, is_main
    from ..errors import ConfigError
    from ..models import load_clip
    from ..trainer import finetune

    init_from_env()  # under torchrun: join the process group (no-op in a single process)
    yaml_layer = read_yaml(args.config) if args.config else None
    flags = flag_overrides(args, FinetuneConfig)
    if args.data:
        flags.update(dataset="folder", data_root=args.data)
    cfg = build_config(FinetuneConfig, yaml_layer, flags)
    out = Path(args.out or f"runs/finetune-{cfg.dataset}-{cfg.shots}shot-seed{cfg.seed}")
    final = out / WEIGHTS_NAME
    if final.exists():
        if not args.resume:
            raise ConfigError(f"{out} already holds a checkpoint ({final}); pass --resume to keep it or choose another --out")
        _, meta = read_encoder(final)
        print(f"checkpoint already complete: {final} (best epoch {meta.get('best_epoch')})")
        return 0
    bundle = load_clip(cfg.model, cfg.pretrained)
    ds = load_dataset(cfg.dataset, cfg.data_root)
    split = few_shot_split(ds, cfg.shots, cfg.seed, cfg.val_shots)
    check_images(split.support, f"the {cfg.shots}-shot support set of {ds.name}")
    check_images(split.val, f"the validation set of {ds.name}")
    main_rank = is_main()
    if main_rank:
        print(f"{PROG}: {bundle.model_name} ({bundle.pretrained or 'random init'}) on {ds.name}: {len(ds.classnames)} classes, "
              f"{len(split.support)} support / {len(split.val)} validation images (validation from {split.val_from})",
              file=sys.stderr)
    res = finetune(
        bundle, split.support, ds.classnames, cfg, val=split.val, out_dir=out, resume=args.resume,
        progress=not args.quiet and sys.stderr.isatty(), log=lambda s: print(s, file=sys.stderr),
        extra_metadata={"support_indices": split.support_indices, "val_indices": split.val_indices},
    )
    if main_rank:
        print(f"checkpoint: {res.checkpoint} (best epoch {res.best_epoch}, sidecar {res.checkpoint.with_suffix('.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
