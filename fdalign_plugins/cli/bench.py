"""``fdalign-bench``: adapters with stock CLIP vs with the FD-Align encoder, as a table."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

from .common import OneLineParser, run_cli

PROG = "fdalign-bench"

#: flag dest -> BenchConfig key
FLAG_KEYS = {
    "adapter": "adapters", "shots": "shots", "seeds": "seeds", "dataset": "dataset", "ood": "ood",
    "data_root": "data_root", "model": "model", "pretrained": "pretrained", "encoder": "encoder",
    "device": "device", "workers": "workers", "batch_size": "batch_size", "views": "views",
    "cache_dir": "cache_dir", "protocol": "protocol", "methods": "methods", "threads": "threads",
}
#: flag dest -> FinetuneConfig key (shortcuts into the config's ``finetune:`` section)
FINETUNE_FLAGS = {"epochs": "epochs", "lr": "lr", "spurious_weight": "spurious_weight", "beta": "beta",
                  "kl_direction": "kl_direction", "warmup_iters": "warmup_iters", "grad_clip": "grad_clip"}


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog=PROG,
        description="Fine-tune CLIP with FD-Align per shot count, rebuild each adapter's cache with the stock and the "
        "FD-Align image encoder, search on validation, and print baseline vs '+ FD-Align' tables. With no "
        "arguments: the embedded world model and synthetic world. Precedence: flags > --config YAML > defaults.",
    )
    a = p.add_argument
    a("--adapter", metavar="NAMES", help="adapter name, comma list, or 'all' (default: tip-f); see --list")
    a("--shots", metavar="K,..", help="shot counts (default: 1,2,4,8,16)")
    a("--seeds", metavar="S,..", help="few-shot sampling seeds (default: 1,2,3); cells show mean ± std over seeds, "
      "Δ cells a paired 95%% bootstrap interval")
    a("--dataset", metavar="NAME", help="dataset name (default: world); see --list")
    a("--ood", metavar="NAMES", help="OOD test sets (comma list; default: all the dataset has; '' for none)")
    a("--data-root", metavar="DIR", help="where the dataset is read from: the folder holding the dataset folders "
      "(CoOp's $DATA), or for folder/splitjson the dataset's own folder; needs --dataset (docs/datasets.md)")
    a("--dataset-option", action="append", metavar="KEY=VALUE", help="a dataset option (dataset_options in YAML), "
      "e.g. split_file=split_zhou_OxfordPets.json for splitjson; repeat for several")
    a("--model", metavar="NAME", help="open_clip model name or local-dir:PATH (default: fdalign-world-tiny)")
    a("--pretrained", metavar="TAG|FILE", help="open_clip pretrained tag or local weights file")
    a("--encoder", metavar="PATH|DIR", help="use this FD-Align checkpoint instead of fine-tuning")
    a("--methods", metavar="NAMES", help="encoder fine-tuning methods, comma list (default: fd-align); each gets its "
      "own encoder rows and '+ method' rows with Δ vs the stock encoder; any method + wise adds WiSE-FT; see --list")
    a("--baselines", action="store_true", default=None, help="also plain full fine-tuning (spurious_weight = 0)")
    a("--config", metavar="YAML", help="YAML file of bench keys (see docs/bench.md)")
    a("--out", metavar="DIR", help="run folder (default: runs/bench-<dataset>-<config hash>; same command resumes)")
    a("--device", metavar="DEV", help="auto, cpu, cuda, cuda:N (default: auto)")
    a("--workers", metavar="N", help="data-loading workers (default: 0)")
    a("--threads", metavar="N", help="CPU threads (default: the cores of this process's CPU set that other processes "
      "are not keeping busy, at least 1; an explicit OMP_NUM_THREADS counts as --threads). Results can differ in the "
      "last digits between thread counts; every record stores the count")
    a("--batch-size", metavar="N", help="feature-extraction batch size (default: 256)")
    a("--views", metavar="V", help="augmented views of the support set for the adapters' cache (default: 10)")
    a("--cache-dir", metavar="DIR", help="the store of fine-tuned encoders and features shared by all run folders "
      "(default: $FDALIGN_STORE, else $FDALIGN_CACHE/store, else ~/.cache/fdalign/store)")
    a("--store-size", action="store_true", help="print what the store (--cache-dir) holds and exit")
    a("--prune", metavar="DAYS", type=float,
      help="remove store entries no run has used for DAYS days (0: all) and exit")
    a("--epochs", metavar="N", help="FD-Align fine-tuning epochs (overrides finetune.epochs)")
    a("--lr", metavar="LR", help="FD-Align learning rate (overrides finetune.lr)")
    a("--spurious-weight", metavar="W",
      help="FD-Align's weight of the spurious KL (overrides finetune.spurious_weight; 0 = plain fine-tuning)")
    a("--beta", metavar="W", help="deprecated name of --spurious-weight")
    a("--kl-direction", metavar="D", help="overview (KL(P_ft||P_0), default) or reference (KL(P_0||P_ft))")
    a("--warmup-iters", metavar="N",
      help="linear LR warm-up iterations of fine-tuning (overrides finetune.warmup_iters)")
    a("--grad-clip", metavar="G", help="clip fine-tuning's global gradient norm to G; 0 = off "
      "(overrides finetune.grad_clip)")
    a("--shard", metavar="i/n", help="run only shard i of n (0 <= i < n) of the (seed, shots, encoder) work items; "
      "writes results-shard<i>of<n>.jsonl (merge with --report)")
    a("--protocol", metavar="P", help="standard (select on held-out validation, default) or reference (the released "
      "code's choices, incl. selection on the TEST set; outputs say so)")
    a("--reproduce", metavar="TABLE", help="run a published table's config (benchmarks/paper/TABLE.yaml, or a path) "
      "and print ours, published and the difference side by side; flags and --config apply to every run")
    a("--list", action="store_true", help="list adapters, datasets and fine-tuning methods with the distribution "
      "each came from")
    a("--report", nargs="*", metavar="RESULTS", help="rebuild tables, intervals, ECE and plot from results.jsonl "
      "file(s)/folder(s) and their saved predictions, without a model; with no paths, from the run folder the same "
      "command computes into (--out or its default)")
    a("--quiet", action="store_true",
      help="no progress bars or lines, no per-record lines (failures are still printed)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from ..threads import prefer_passive_wait

    prefer_passive_wait()  # before torch starts its OpenMP runtime
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args), PROG)


def _finetune_flags(args) -> dict:
    """The fine-tuning shortcuts given, as ``finetune:`` keys (a deprecated flag says so and maps to its new name)."""
    from ..config import FinetuneConfig, rename_deprecated
    from .common import flag_name

    ft = {FINETUNE_FLAGS[k]: v for k, v in vars(args).items() if k in FINETUNE_FLAGS and v is not None}
    return rename_deprecated(FinetuneConfig, ft, spell=flag_name) or {}


def _bench_config(args):
    from ..config import BenchConfig, build_config, read_yaml

    yaml_layer = read_yaml(args.config) if args.config else None
    flags = {FLAG_KEYS[k]: v for k, v in vars(args).items() if k in FLAG_KEYS and v is not None}
    if args.baselines:
        flags["baselines"] = True
    if "ood" in flags and flags["ood"].strip() == "":
        flags["ood"] = []
    ft = _finetune_flags(args)
    if ft:
        flags["finetune"] = ft  # merged with the YAML's finetune: key by key (build_config)
    if args.dataset_option:
        flags["dataset_options"] = _key_values(args.dataset_option, "--dataset-option")
    return build_config(BenchConfig, yaml_layer, flags, source="bench config")


def _key_values(items: List[str], flag: str) -> dict:
    """``["k=v", ...]`` -> ``{k: v}``, each value read as YAML (``3`` an int, ``a.json`` a string)."""
    import yaml

    from ..errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} needs KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _run(args) -> int:
    from ..errors import ConfigError

    if args.list:
        from ..plugins import format_listing
        from ..reproduce import list_tables

        print(format_listing())
        print(f"\npaper tables (--reproduce): {', '.join(list_tables()) or '(none found)'}")
        return 0
    if args.store_size or args.prune is not None:
        from ..store import Store, prune, usage

        store = Store(args.cache_dir)
        if args.prune is not None:
            gone = prune(store, args.prune)
            print(f"removed {gone.feature_entries} feature entries and {gone.encoders} encoder folder(s), "
                  f"{gone.total_bytes / 1e6:.1f} MB, unused for {args.prune:g} day(s) or more")
        print(usage(store).text())
        return 0
    if args.reproduce:
        return _reproduce(args)
    if args.report is not None:
        from ..results import read_results_located
        from ..bench.context import default_out

        # no paths: the run folder the same command computes into (--out, or its default)
        paths = [Path(p) for p in args.report] or [Path(args.out) if args.out else default_out(_bench_config(args))]
        located = read_results_located(paths)
        if not located:
            raise ConfigError(f"no records in {', '.join(map(str, paths))}: nothing to report (run the bench first, "
                              "or pass the results.jsonl file or run folder that holds them)")
        out = Path(args.out) if args.out else (paths[0] if paths[0].is_dir() else paths[0].parent)
        from ..preflight import check_output_folder

        check_output_folder(out, "--out")  # the tables go there: a clear error, not a traceback
        rep = _write_reports(located, out)
        print(rep["text"], end="")
        _print_files(rep)
        return 0

    from ..distributed import init_from_env
    from ..progress import cli_progress
    from ..bench.context import default_out
    from ..bench.runner import Runner

    init_from_env()  # under torchrun: join the process group (no-op in a single process)
    t0 = time.time()
    cfg = _bench_config(args)
    out = Path(args.out) if args.out else default_out(cfg)
    quiet = args.quiet
    log = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    print(f"{PROG}: run folder {out}", file=sys.stderr)
    runner = Runner(cfg, out, log=log, progress=cli_progress(quiet), shard=args.shard)
    summary = runner.run()
    from ..results import read_results_located

    rep = _write_reports(read_results_located(out), out)
    print(rep["text"], end="")
    _print_files(rep)
    st = summary.cache
    print(f"{summary.written} record(s) written, {summary.skipped} already done, {summary.failed} failed; "
          f"{summary.finetuned} encoder(s) fine-tuned; features computed {st.computed}, from cache {st.hits}; "
          f"total {time.time() - t0:.1f} s; {runner.threads.describe() if runner.threads else 'threads: not set'}",
          file=sys.stderr)
    for line in summary.flagged:
        print(f"!! fine-tuning {line}", file=sys.stderr)
    for line in summary.notes:
        print(f"note: encoder {line}", file=sys.stderr)
    return 1 if summary.failed else 0


def _reproduce(args) -> int:
    from ..checkpoint import atomic_write_bytes
    from ..progress import cli_progress
    from ..config import read_yaml
    from ..reproduce import find_table, header, load_table, run_table, side_by_side

    path = find_table(args.reproduce)
    spec = load_table(path)
    yaml_layer = read_yaml(args.config) if args.config else None
    flags = {FLAG_KEYS[k]: v for k, v in vars(args).items() if k in FLAG_KEYS and v is not None}
    ft = _finetune_flags(args)
    if ft:
        flags["finetune"] = ft
    if args.dataset_option:
        flags["dataset_options"] = _key_values(args.dataset_option, "--dataset-option")
    if "ood" in flags and flags["ood"].strip() == "":
        flags["ood"] = []
    out = Path(args.out) if args.out else Path("runs") / f"reproduce-{path.stem}"
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    records = run_table(spec, out, [yaml_layer, flags], log=log, progress=cli_progress(args.quiet))
    text, md = side_by_side(spec, records)
    head = header(spec, records)
    print(head + "\n\n" + text, end="")
    atomic_write_bytes(out / "reproduce.md", (head.replace("\n", "  \n") + "\n\n" + md).encode())
    print(f"written: {out / 'reproduce.md'}", file=sys.stderr)
    return 0


def _write_reports(located, out: Path):
    """Tables from ``(record, its folder)`` pairs, recomputed from their saved predictions."""
    from ..report import write_reports

    records = [r for r, _ in located]
    rep = write_reports(records, out, header=_header(records), where=[w for _, w in located])
    for note in rep["notes"]:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    return rep


def _header(records) -> str:
    from ..bench.context import REFERENCE_WARNING

    cfgs = {r["encoder_source"] for r in records if r.get("encoder") == "clip" and r.get("encoder_source")}
    head = f"fdalign-bench results ({len(records)} records; model {', '.join(sorted(cfgs))})"
    plats = sorted({(p.get("threads"), p.get("cpu_capability"), p.get("device"))
                    for p in (r.get("platform") for r in records) if p})
    if plats:
        head += "; measured with " + ", ".join(f"{t} thread(s) {c} {d}" for t, c, d in plats)
    if any(r.get("protocol") == "reference" for r in records):
        head = f"!! {REFERENCE_WARNING}\n{head}"
    return head


def _print_files(rep) -> None:
    files = [str(rep["markdown"]), str(rep["csv"]), str(rep["json"])] + ([str(rep["plot"])] if rep["plot"] else [])
    print(f"written: {', '.join(files)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
