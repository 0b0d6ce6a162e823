#!/usr/bin/env bash
# One prepared check for the day a GPU machine is at hand (about 3 minutes on one GPU).
#
#   bash benchmarks/gpu_check.sh                  # CUDA, ViT-B/32 at 224 px, random weights
#   PRETRAINED=/path/vitb32.bin bash benchmarks/gpu_check.sh     # the same with real weights
#   bash benchmarks/gpu_check.sh --dry-run        # CPU, embedded world model, tiny sizes:
#                                                 # checks the script itself (tests/test_smoke.py)
#
# It exercises, and prints figures for:
#   1. CUDA: the device fdalign's --device auto/cuda resolves to, its name and memory;
#   2. feature-extraction throughput at the model's resolution (224 px for ViT-B/32)
#      through fdalign's FeatureCache (fp32, as the bench extracts) and a bare fp16
#      autocast forward (the ceiling);
#   3. the FD-Align step ratio: one training step with the frozen-encoder KL (beta 1)
#      vs plain fine-tuning (beta 0), under mixed precision (autocast + GradScaler),
#      median of timed steps after warm-up; the target is <= 1.4x;
#   4. mixed precision end to end: fdalign's own finetune() for 2 epochs with amp on
#      CUDA (GradScaler state saved and resumed), the checkpoint written and read back.
# Nothing is downloaded; with PRETRAINED unset the weights are random (the figures are
# about speed and plumbing, not accuracy).
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
fi
export DRY_RUN
export MODEL="${MODEL:-ViT-B-32}"
export PRETRAINED="${PRETRAINED:-none}"
export HF_HUB_OFFLINE=1
OUT="${OUT:-$(mktemp -d -t fdalign-gpu-check-XXXX)}"
export OUT
PYTHON="${PYTHON:-python}"

start=$(date +%s)
"$PYTHON" - <<'PY'
import copy
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fdalign_plugins.config import FinetuneConfig, build_config
from fdalign_plugins.datasets.base import ArraySplit
from fdalign_plugins.features import FeatureCache
from fdalign_plugins.models import load_clip, state_fingerprint
from fdalign_plugins.trainer import TextPrototypes, fdalign_losses, finetune, resolve_device

dry = os.environ["DRY_RUN"] == "1"
out = Path(os.environ["OUT"])
if dry:  # the same code paths on CPU with the embedded model and tiny sizes
    model, pretrained, device = "fdalign-world-tiny", None, resolve_device("cpu")
    n_images, batch, steps, step_batch = 64, 32, 3, 8
    torch.set_num_threads(1)
else:
    model, pretrained = os.environ["MODEL"], os.environ["PRETRAINED"]
    device = resolve_device("cuda")  # a clear error when CUDA is not there
    n_images, batch, steps, step_batch = 4096, 256, 20, 128


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- 1. the device
if device.type == "cuda":
    p = torch.cuda.get_device_properties(device)
    print(f"[1] CUDA {torch.version.cuda}, torch {torch.__version__}: {p.name}, {p.total_memory / 2**30:.0f} GiB, "
          f"capability {p.major}.{p.minor}, resolved device {device}")
else:
    print(f"[1] dry run on {device} (torch {torch.__version__}); CUDA available: {torch.cuda.is_available()}")

bundle = load_clip(model, pretrained, device=device)
size = bundle.image_size
visual = bundle.model.visual.to(device).eval()
print(f"    model {model} ({pretrained or 'default weights'}), {size} px, "
      f"{sum(p.numel() for p in visual.parameters()) / 1e6:.1f} M image-encoder parameters")

# ---------------------------------------------------------------- 2. extraction throughput
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
split = ArraySplit(images, np.arange(n_images) % 10, "gpu-check")
cache = FeatureCache(out / "features", batch_size=batch, device=device)
fp = state_fingerprint(visual)
warm = split.subset(list(range(min(batch, n_images))))
cache.features(visual, fp + "-warm", warm, bundle.eval_transform)
sync()
t0 = time.perf_counter()
feats = cache.features(visual, fp, split, bundle.eval_transform)
sync()
dt = time.perf_counter() - t0
assert feats.shape[0] == n_images and torch.isfinite(feats).all()
print(f"[2] extraction via FeatureCache (fp32, batch {batch}): {n_images / dt:.0f} img/s "
      f"({n_images} images in {dt:.2f} s, preprocessing included)")
x = cache.preprocessed(split, bundle.eval_transform, repr(bundle.eval_transform), None, 0, batch).to(device)
with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16):
    for _ in range(2):
        visual(x)
    sync()
    t0 = time.perf_counter()
    reps = max(1, n_images // batch)
    for _ in range(reps):
        visual(x)
    sync()
print(f"    bare autocast forward (batch {batch}): {reps * batch / (time.perf_counter() - t0):.0f} img/s")

# ---------------------------------------------------------------- 3. FD-Align step ratio under AMP
g = torch.Generator().manual_seed(0)
classes, d = 100, visual.output_dim
protos = TextPrototypes(torch.nn.functional.normalize(torch.randn(classes, d, generator=g), dim=-1).to(device),
                        torch.nn.functional.normalize(torch.randn(20, d, generator=g), dim=-1).to(device), [], None)
xb = torch.randn(step_batch, 3, size, size, generator=g).to(device)
yb = torch.randint(0, classes, (step_batch,), generator=g).to(device)
amp = device.type == "cuda"


def step_time(beta):
    student = copy.deepcopy(visual).train().requires_grad_(True)
    frozen = copy.deepcopy(visual).eval().requires_grad_(False) if beta > 0 else None
    cfg = build_config(FinetuneConfig, {"beta": beta})
    opt = torch.optim.SGD(student.parameters(), lr=1e-5, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    times = []
    for i in range(steps + 3):
        sync()
        t0 = time.perf_counter()
        with torch.autocast("cuda", enabled=amp):
            loss = fdalign_losses(student, frozen, xb, yb, protos, bundle.logit_scale, cfg)["total"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sync()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    assert torch.isfinite(loss)
    return statistics.median(times)


plain, fd = step_time(0.0), step_time(1.0)
print(f"[3] training step, batch {step_batch} x {size} px, AMP {'on' if amp else 'off (CPU)'}: plain (beta 0) "
      f"{plain * 1000:.1f} ms, FD-Align (beta 1) {fd * 1000:.1f} ms, ratio {fd / plain:.2f}x (target <= 1.40x)")

# ---------------------------------------------------------------- 4. finetune() with AMP, resumed
small = split.subset(list(range(40)))
names = [f"class {i}" for i in range(10)]
cfg = build_config(FinetuneConfig, {"model": model, "pretrained": pretrained, "epochs": 2, "batch_size": 16,
                                    "lr": 1e-5, "templates": ["a photo of a {}."], "spc": False,
                                    "device": str(device), "amp": amp, "shots": 4})
t0 = time.perf_counter()
b = load_clip(model, pretrained, device=device)
try:
    finetune(b, small, names, cfg, val=small, out_dir=out / "ft", progress=False, log=lambda s: None,
             stop_after_epoch=1)
except KeyboardInterrupt:
    pass  # stopped after epoch 1 as an interruption would; the state (GradScaler included) is saved
b = load_clip(model, pretrained, device=device)
res = finetune(b, small, names, cfg, val=small, out_dir=out / "ft", resume=True, progress=False,
               log=lambda s: None)
from fdalign_plugins.checkpoint import load_encoder_into  # noqa: E402

c = load_clip(model, pretrained, device=device)
meta = load_encoder_into(c.model, res.checkpoint)
assert state_fingerprint(c.model.visual) == state_fingerprint(b.model.visual)
print(f"[4] finetune() {cfg.epochs} epochs with AMP {'on' if amp else 'off (CPU)'}, interrupted after epoch 1 and "
      f"resumed: checkpoint {res.checkpoint.name} reloads bit-identically ({time.perf_counter() - t0:.1f} s; "
      f"best epoch {meta.get('best_epoch')})")
PY
echo "gpu_check: done in $(( $(date +%s) - start )) s (work folder $OUT)"
