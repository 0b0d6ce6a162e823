"""Data-parallel scaling of FD-Align fine-tuning, and the cost of resume bookkeeping.

1. Throughput (images/s) of ``finetune`` with 1 and 2 processes on CPU (gloo), launched
   with ``torchrun`` exactly as users launch ``fdalign-finetune``; with CUDA also 1 and
   all GPUs (NCCL). The global batch is the same for every process count, so the ratio
   is the speed-up of one fixed optimisation. The first epoch is warm-up and not timed.
2. Resume bookkeeping: one process, the same run with ``out_dir`` (``train_state.pt``
   written atomically after every epoch, plus the final checkpoint) and without; the
   overhead is reported as a fraction of the run without.

    python benchmarks/bench_scaling.py                      # world-model architecture, synthetic images
    python benchmarks/bench_scaling.py --images 512 --epochs 5 --threads 2

Each process uses ``--threads`` intra-op threads (default 1), so on CPU the ratio
compares 1 core with 2 cores used through DDP. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve()


def _setup(args: argparse.Namespace):
    """The model, a synthetic support set and the config shared by every measurement."""
    import numpy as np
    import torch

    from fdalign_plugins.config import FinetuneConfig, build_config
    from fdalign_plugins.datasets.base import ArraySplit
    from fdalign_plugins.models import load_clip

    torch.set_num_threads(args.threads)
    bundle = load_clip(args.model, args.pretrained)
    s = bundle.image_size
    rng = np.random.default_rng(0)
    support = ArraySplit(rng.integers(0, 255, (args.images, s, s, 3), dtype=np.uint8),
                         np.arange(args.images) % args.classes, "bench-support")
    classnames = [f"class {i}" for i in range(args.classes)]
    cfg = build_config(FinetuneConfig, {
        "model": args.model, "pretrained": args.pretrained, "epochs": args.epochs, "batch_size": args.batch,
        "templates": ["a photo of a {}.", "a sketch of a {}.", "a painting of a {}.", "a dark photo of a {}."],
        "spc_keep": 3, "spc_k": 2, "select": "last", "device": args.device, "seed": 0,
    })
    return bundle, support, classnames, cfg


def worker(args: argparse.Namespace) -> None:
    """One ``torchrun`` rank: fine-tune, rank 0 writes the timing JSON."""
    from fdalign_plugins import distributed as dist_utils
    from fdalign_plugins.trainer import finetune

    dist_utils.init_from_env()
    bundle, support, classnames, cfg = _setup(args)
    dist_utils.barrier()
    res = finetune(bundle, support, classnames, cfg, progress=False, log=lambda s: None)
    timed = res.history[1:]  # epoch 1 is warm-up
    seconds = sum(h["seconds"] for h in timed)
    if dist_utils.is_main():
        Path(args.json).write_text(json.dumps({
            "world_size": dist_utils.world_size(), "images_per_s": len(support) * len(timed) / seconds,
            "epoch_seconds": [h["seconds"] for h in res.history],
        }))


def overhead(args: argparse.Namespace) -> Dict[str, Any]:
    """Median wall time of the same single-process run with and without ``out_dir``."""
    from fdalign_plugins.trainer import STATE_NAME, finetune

    bundle, support, classnames, cfg = _setup(args)
    start = {k: v.clone() for k, v in bundle.model.visual.state_dict().items()}
    times: Dict[str, List[float]] = {"with": [], "without": []}
    state_bytes = 0
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(-1, args.repeats):  # rep -1 is warm-up, not counted
            for mode in ("without", "with"):
                bundle.model.visual.load_state_dict(start)
                out = Path(tmp) / f"{mode}{rep}" if mode == "with" else None
                sizes: List[int] = []

                def log(_s: str, out=out, sizes=sizes) -> None:  # once per epoch; sees the last saved state
                    if out is not None and (out / STATE_NAME).is_file():
                        sizes.append((out / STATE_NAME).stat().st_size)

                t0 = time.perf_counter()
                finetune(bundle, support, classnames, cfg, out_dir=out, progress=False, log=log)
                if rep >= 0:
                    times[mode].append(time.perf_counter() - t0)
                state_bytes = max(sizes + [state_bytes])
    w, wo = statistics.median(times["with"]), statistics.median(times["without"])
    return {"with_s": w, "without_s": wo, "fraction": (w - wo) / wo, "state_bytes": state_bytes, "times": times}


def launch(nproc: int, args: argparse.Namespace, device: str) -> Dict[str, Any]:
    """Run :func:`worker` under ``torchrun --nproc_per_node nproc``; return rank 0's JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(HERE), "--worker", "--json", str(out), "--device", device,
               "--model", args.model, "--images", str(args.images), "--batch", str(args.batch),
               "--epochs", str(args.epochs), "--classes", str(args.classes), "--threads", str(args.threads)]
        if args.pretrained:
            cmd += ["--pretrained", args.pretrained]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"torchrun with {nproc} process(es) failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fdalign-world-tiny")
    ap.add_argument("--pretrained", default=None,
                    help="weights tag or file (default: random init; throughput does not depend on the weights)")
    ap.add_argument("--images", type=int, default=256, help="support-set size (one epoch)")
    ap.add_argument("--batch", type=int, default=64, help="global batch size")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is not timed)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    ap.add_argument("--repeats", type=int, default=3, help="runs per mode for the bookkeeping overhead")
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    print(f"model {args.model}/{args.pretrained}, {args.images} images x {args.epochs} epochs (first untimed), "
          f"global batch {args.batch}, {args.threads} thread(s) per process, torch {torch.__version__}")
    setups = [("cpu", 1), ("cpu", 2)]
    if torch.cuda.is_available():
        setups += [("cuda", 1)] + ([("cuda", torch.cuda.device_count())] if torch.cuda.device_count() > 1 else [])
    base: Dict[str, float] = {}
    for device, n in setups:
        r = launch(n, args, device)
        base.setdefault(device, r["images_per_s"])
        print(f"fine-tuning throughput, {device}, {n} process(es): {r['images_per_s']:.1f} images/s"
              + (f"  (ratio to 1 process: {r['images_per_s'] / base[device]:.2f}x)" if n > 1 else ""))
    o = overhead(args)
    print(f"resume bookkeeping (train_state.pt each epoch, {o['state_bytes'] / 1e6:.1f} MB, + final checkpoint): "
          f"run {o['with_s']:.2f} s with out_dir vs {o['without_s']:.2f} s without "
          f"-> overhead {100 * o['fraction']:.1f}% of a run (median of {args.repeats})")


if __name__ == "__main__":
    main()
