"""Cost of one FD-Align training step vs one plain fine-tuning step (spurious_weight = 0).

The only extra work of FD-Align is the frozen encoder's forward pass (no backward), so
the target ratio is <= 1.3x. Both steps run through the training spine's batch path
(:func:`fdalign_plugins.trainer.batch_losses` with the ``fd-align`` method, spurious_weight 0 and 1)
on the same model, batch and optimizer settings; the median of several timed steps
after warm-up is reported, the two kinds of step alternating.

    python benchmarks/bench_step.py                       # embedded world model
    python benchmarks/bench_step.py --model ViT-B-32 --pretrained none --batch 32
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from fdalign_plugins.config import FinetuneConfig, build_config
from fdalign_plugins.models import load_clip
from fdalign_plugins.trainer import Student, TextPrototypes, batch_losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fdalign-world-tiny")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_clip(args.model, args.pretrained)
    s = bundle.image_size
    d = bundle.model.visual.output_dim
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, s, s, generator=g)
    y = torch.randint(0, args.classes, (args.batch,), generator=g)
    protos = TextPrototypes(torch.nn.functional.normalize(torch.randn(args.classes, d, generator=g), dim=-1),
                            torch.nn.functional.normalize(torch.randn(20, d, generator=g), dim=-1), [], None)
    tau = bundle.logit_scale

    def stepper(weight: float):
        visual = copy.deepcopy(bundle.model.visual).train().requires_grad_(True)
        frozen = copy.deepcopy(bundle.model.visual).eval().requires_grad_(False) if weight > 0 else None
        method = build_config(FinetuneConfig, {"spurious_weight": weight}).create_method()
        student = Student(visual)
        opt = torch.optim.SGD(visual.parameters(), lr=1e-4, momentum=0.9, nesterov=True)

        def step() -> float:
            t0 = time.perf_counter()
            loss = batch_losses(student, frozen, method, x, y, protos, tau)["total"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - t0
        return step

    # the two kinds of step alternate, so a load change on a shared machine hits both alike
    steps = {0.0: stepper(0.0), 1.0: stepper(1.0)}
    times = {0.0: [], 1.0: []}
    for i in range(args.steps + 2):
        for weight, step in steps.items():
            t = step()
            if i >= 2:  # warm-up steps excluded
                times[weight].append(t)
    plain, fd = statistics.median(times[0.0]), statistics.median(times[1.0])
    print(f"model {args.model}, batch {args.batch} x {s}px, {args.threads} threads, median of {args.steps} steps")
    print(f"plain fine-tuning step (spurious_weight=0): {plain * 1000:.1f} ms")
    print(f"FD-Align step (spurious_weight=1):          {fd * 1000:.1f} ms")
    print(f"ratio FD-Align / plain: {fd / plain:.2f}x (target <= 1.30x)")


if __name__ == "__main__":
    main()
