"""Benchmark the shared vectorised cache search and APE's closed-form channel criterion.

1. Tip-Adapter's (β, α) search on ImageNet-like shapes (defaults: N_val = 5000 validation
   features, NK = 16000 cache entries = 1000 classes × 16 shots, D = 512, the 200 × 20
   grid): :func:`fdalign_plugins.search.search_cache_grid` against the reference-style
   loop that, per grid point, recomputes the affinity and multiplies
   ``exp(−β(1 − A))`` by the dense one-hot ``L``. The naive loop is far too slow for the
   whole grid, so its first ``--naive-points`` grid points (in loop order) are timed
   and the per-point time is extrapolated to the whole grid; the script says so. At
   those timed points the two methods' correct counts must be identical, and on a
   reduced shape the naive loop runs the *whole* grid and must choose the same (α, β).
2. APE's channel criterion: the closed form against the four nested loops of the
   definition on a size the loops can finish.

Usage::

    python benchmarks/bench_search.py                # full ImageNet-like shapes
    python benchmarks/bench_search.py --quick        # small shapes, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Tuple

import torch

from fdalign_plugins.search import grid_values, search_cache_grid


def normalise(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / x.norm(dim=dim, keepdim=True)


def make_problem(num_val: int, classes: int, shots: int, dim: int, seed: int, args_noise: float = 2.0,
                 text_noise: float = 3.0):
    """Clustered ImageNet-like features with a noisy text classifier (float32)."""
    g = torch.Generator().manual_seed(seed)
    noise = 1.0 / dim**0.5  # per-coordinate scale of a unit-norm perturbation
    means = normalise(torch.randn(classes, dim, generator=g))  # [C, D]
    labels = torch.arange(classes).repeat_interleave(shots)  # [NK], class-major like a few-shot cache
    keys = normalise(means[labels] + args_noise * noise * torch.randn(len(labels), dim, generator=g))  # [NK, D]
    val_labels = torch.randint(0, classes, (num_val,), generator=g)  # [Nv]
    val = normalise(means[val_labels] + args_noise * noise * torch.randn(num_val, dim, generator=g))  # [Nv, D]
    text = normalise(means.T + text_noise * noise * torch.randn(dim, classes, generator=g), dim=0)
    common = normalise(torch.randn(dim, 1, generator=g), dim=0)
    classifier = normalise(common + 0.3 * text, dim=0)  # [D, C], CLIP-like: columns share a common direction
    return val, keys, labels, classifier, val_labels


def naive_points(val, keys, labels, classifier, val_labels, points: List[Tuple[float, float]]):
    """The reference loop body (Tip-Adapter's search_hp) for each (β, α): correct counts."""
    cache_values = torch.nn.functional.one_hot(labels, classifier.shape[1]).to(val.dtype)  # [NK, C] dense L
    cache_keys = keys.T  # [D, NK]
    counts = []
    for beta, alpha in points:
        affinity = val @ cache_keys
        cache_logits = ((-1) * (beta - beta * affinity)).exp() @ cache_values
        clip_logits = 100.0 * val @ classifier
        tip_logits = clip_logits + cache_logits * alpha
        counts.append(int((tip_logits.argmax(dim=1) == val_labels).sum()))
    return counts


def first_best(points, counts):
    best, chosen = -1, None
    for point, count in zip(points, counts):
        if count > best:
            best, chosen = count, point
    return chosen, best


def bench_tip(args) -> None:
    betas, alphas = grid_values(7.0, args.beta_steps), grid_values(3.0, args.alpha_steps)
    grid = [(b, a) for b in betas for a in alphas]
    nk = args.classes * args.shots
    print(f"== Tip-Adapter search: N_val={args.n_val}, NK={nk} ({args.classes} classes x {args.shots} shots), "
          f"C={args.classes}, D={args.dim}, grid {len(betas)} x {len(alphas)} = {len(grid)} points, "
          f"float32, {torch.get_num_threads()} thread(s)")
    val, keys, labels, classifier, val_labels = make_problem(args.n_val, args.classes, args.shots, args.dim, args.seed)
    base = 100.0 * val @ classifier

    t0 = time.perf_counter()
    result = search_cache_grid(val, keys, labels, base, val_labels, betas, alphas)
    t_vec = time.perf_counter() - t0
    print(f"vectorised search, whole grid: {t_vec:.2f} s  -> beta={result.beta:.4f}, alpha={result.alpha:.4f}, "
          f"val acc {result.accuracy:.2f}% (accuracy range over the grid "
          f"{100 * int(result.correct_grid.min()) / args.n_val:.2f}-"
          f"{100 * int(result.correct_grid.max()) / args.n_val:.2f}%)")

    timed = grid[: args.naive_points]
    naive_points(val, keys, labels, classifier, val_labels, timed[:1])  # warm-up
    t0 = time.perf_counter()
    naive_counts = naive_points(val, keys, labels, classifier, val_labels, timed)
    t_point = (time.perf_counter() - t0) / len(timed)
    t_naive = t_point * len(grid)
    print(f"naive reference loop: timed the first {len(timed)} of {len(grid)} grid points "
          f"({t_point:.3f} s/point) and EXTRAPOLATED to the whole grid: {t_naive:.0f} s")
    print(f"speed-up: {t_naive / t_vec:.0f}x (target >= 50x)")
    vec_counts = [int(result.correct_grid[i // len(alphas), i % len(alphas), 0]) for i in range(len(timed))]
    same_counts = vec_counts == naive_counts
    print(f"correct counts at the {len(timed)} timed points identical: {same_counts}")
    sub = search_cache_grid(val, keys, labels, base, val_labels, sorted({b for b, _ in timed}), alphas[: len(timed)])
    naive_choice, _ = first_best(timed, naive_counts)
    print(f"same (alpha, beta) on the timed sub-grid: naive {naive_choice[1]:.4f}, {naive_choice[0]:.4f} / "
          f"vectorised {sub.alpha:.4f}, {sub.beta:.4f} -> {naive_choice == (sub.beta, sub.alpha)}")

    # Whole-grid equality on a reduced shape the naive loop can finish.
    r_val, r_cls = args.check_n_val, args.check_classes
    # Noisier features than above so that 50 classes do not saturate the accuracy.
    val, keys, labels, classifier, val_labels = make_problem(r_val, r_cls, args.shots, args.dim, args.seed + 1,
                                                             3.0, 4.0)
    base = 100.0 * val @ classifier
    t0 = time.perf_counter()
    small = search_cache_grid(val, keys, labels, base, val_labels, betas, alphas)
    t_small_vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    counts = naive_points(val, keys, labels, classifier, val_labels, grid)
    t_small_naive = time.perf_counter() - t0
    choice, best = first_best(grid, counts)
    vec = small.correct_grid[:, :, 0].flatten().tolist()
    same = sum(a == b for a, b in zip(counts, vec))
    worst = max(abs(a - b) for a, b in zip(counts, vec))
    print(f"reduced shape N_val={r_val}, NK={r_cls * args.shots}, C={r_cls}: naive loop over the WHOLE grid "
          f"{t_small_naive:.1f} s, vectorised {t_small_vec:.2f} s ({t_small_naive / t_small_vec:.0f}x)")
    print(f"  chosen (alpha, beta): naive ({choice[1]:.4f}, {choice[0]:.4f}) with {best} correct, vectorised "
          f"({small.alpha:.4f}, {small.beta:.4f}) with {small.correct} correct -> same choice: "
          f"{choice == (small.beta, small.alpha)}")
    why = " (float32 near-ties rounded differently by the dense BLAS product and the per-class sum)" if worst else ""
    print(f"  correct counts identical at {same} of {len(grid)} grid points, largest difference {worst} sample(s){why}")


def four_loop_criterion(classifier, keys, labels, lam, shots):
    """APE's definition, as the reference computes it (feats [C, K+1, D], four loops)."""
    dim, classes = classifier.shape
    feats = torch.cat([classifier.T.unsqueeze(1), keys.reshape(classes, shots, dim)], dim=1)
    samples = feats.shape[1]
    sim_sum = torch.zeros(dim)
    count = 0
    for i in range(classes):
        for j in range(classes):
            for m in range(samples):
                for n in range(samples):
                    if i != j:
                        sim_sum += feats[i, m, :] * feats[j, n, :]
                        count += 1
    sim = sim_sum / count
    return -lam * sim + (1 - lam) * torch.var(classifier, dim=1)


def bench_ape_criterion(args) -> None:
    from fdalign_adapters.ape import channel_criterion  # the installed built-in adapter plugin

    classes, shots, dim = args.ape_classes, args.ape_shots, args.ape_dim
    print(f"== APE channel criterion: C={classes}, K={shots}, D={dim} "
          f"({classes * (classes - 1) * (shots + 1) ** 2} inner iterations for the loops)")
    _, keys, labels, classifier, _ = make_problem(8, classes, shots, dim, args.seed)
    t0 = time.perf_counter()
    loops = four_loop_criterion(classifier, keys, labels, 0.7, shots)
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(10):
        closed = channel_criterion(classifier, keys, labels, 0.7)
    t_closed = (time.perf_counter() - t0) / 10
    diff = float((closed - loops).abs().max() / loops.abs().max())
    same_top = torch.equal(torch.topk(closed, dim // 2).indices.sort().values,
                           torch.topk(loops, dim // 2).indices.sort().values)
    print(f"four loops {t_loop:.2f} s, closed form {t_closed * 1e3:.2f} ms -> {t_loop / t_closed:.0f}x; "
          f"max relative difference {diff:.1e}; same top-{dim // 2} channels: {same_top}")
    per_iter = t_loop / (classes * (classes - 1) * (shots + 1) ** 2)
    imagenet_iters = 1000 * 999 * 17**2
    print(f"(extrapolated: the loops at ImageNet 16-shot, {imagenet_iters:.1e} iterations, "
          f"would take ~{per_iter * imagenet_iters / 60:.0f} min)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-val", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--beta-steps", type=int, default=200)
    parser.add_argument("--alpha-steps", type=int, default=20)
    parser.add_argument("--naive-points", type=int, default=10, help="naive grid points to time (then extrapolate)")
    parser.add_argument("--check-n-val", type=int, default=500, help="reduced shape for the whole-grid equality check")
    parser.add_argument("--check-classes", type=int, default=50)
    parser.add_argument("--ape-classes", type=int, default=60)
    parser.add_argument("--ape-shots", type=int, default=8)
    parser.add_argument("--ape-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for both methods (default 1: stable timings on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small shapes for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_val, args.classes, args.shots, args.naive_points = 500, 100, 4, 5
        args.check_n_val, args.check_classes, args.ape_classes = 100, 10, 10
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_tip(args)
    bench_ape_criterion(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
