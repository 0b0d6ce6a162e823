"""The main job's cost on the embedded default: wall time and peak memory, cold and warm,
and feature-extraction throughput relative to a bare ``encode_image`` forward.

    python benchmarks/bench_main.py            # the README's command, twice
    python benchmarks/bench_main.py --skip-main  # only the extraction throughput

Targets (issue 5): cold <= 3 min on 2 cores, warm <= 20 % of cold, extraction
throughput >= 0.85 of the bare forward.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_main_job(out: Path, cache: Path, args: list) -> tuple:
    env = {**os.environ, "FDALIGN_CACHE": str(cache), "FDALIGN_STORE": str(cache / "store")}  # a cold store
    cmd = [sys.executable, "-m", "fdalign_plugins.cli.bench"] + args + ["--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"main job failed:\n{proc.stderr}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    return wall, peak_mb, proc.stdout, proc.stderr


def extraction_ratio(batch: int = 256, repeats: int = 3) -> None:
    import torch

    from fdalign_plugins.features import FeatureCache
    from fdalign_plugins.models import load_clip, state_fingerprint
    from fdalign_plugins.trainer import SplitDataset
    from fdalign_plugins.world.dataset import build_world_dataset

    torch.set_num_threads(2)
    bundle = load_clip()
    visual = bundle.model.visual.eval()
    with tempfile.TemporaryDirectory() as tmp:
        ds = build_world_dataset(Path(tmp) / "world")
        split = ds.test
        # bare forward on already-preprocessed batches
        imgs = torch.stack([bundle.eval_transform(split.load(i)) for i in range(len(split))])
        with torch.no_grad():
            visual(imgs[:batch])  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                for i in range(0, len(imgs), batch):
                    visual(imgs[i:i + batch])
            bare = (time.perf_counter() - t0) / repeats
        # the runner's path: load + transform + forward + checksummed write, from a cold cache
        times = []
        for r in range(repeats):
            cache = FeatureCache(Path(tmp) / f"cache{r}", batch_size=batch)
            t0 = time.perf_counter()
            cache.features(visual, state_fingerprint(visual), split, bundle.eval_transform)
            times.append(time.perf_counter() - t0)
        full = min(times)
    n = len(split)
    print(f"feature extraction, {n} world test images at {bundle.image_size}px, batch {batch}, 2 threads:")
    print(f"  bare encode_image forward: {n / bare:8.0f} img/s")
    print(f"  FeatureCache (load + transform + forward + write): {n / full:8.0f} img/s")
    print(f"  throughput ratio: {bare / full:.2f} (target >= 0.85)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-main", action="store_true")
    ap.add_argument("--bench-args", default="--adapter tip-f --shots 1,2,4,8,16")
    args = ap.parse_args()
    if not args.skip_main:
        with tempfile.TemporaryDirectory() as tmp:
            out, cache = Path(tmp) / "run", Path(tmp) / "cache"
            bench_args = args.bench_args.split()
            cold, cold_mb, table, _ = run_main_job(out, cache, bench_args)
            warm, warm_mb, _, err = run_main_job(out, cache, bench_args)
            print(f"main job: fdalign-bench {args.bench_args} (embedded default, {os.cpu_count()} cores)")
            print(f"  cold: {cold:6.1f} s   (target <= 180 s)")
            print(f"  warm: {warm:6.1f} s   = {100 * warm / cold:.1f} % of cold (target <= 20 %)")
            print(f"  peak RSS of the job: {max(cold_mb, warm_mb):.0f} MiB")
            print(f"  warm run: {err.strip().splitlines()[-1]}")
            print(table)
    extraction_ratio()


if __name__ == "__main__":
    main()
