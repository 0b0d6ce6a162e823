"""Reproducing the published tables: ours, published and the difference side by side.

A table config (``benchmarks/paper/<name>.yaml``) holds:

* ``title`` and ``source``;
* ``runs``: named bench configs (the keys of :class:`~fdalign_plugins.runner.BenchConfig`);
  a run that sets ``protocol`` keeps it whatever ``--protocol`` says (a run of
  adapters that never select on the test set pins ``standard``), and says so;
* ``eval_sets``: table column group -> evaluation-set key of the records (``test``,
  ``imagenet-sketch``, ...), or ``null`` for a group of published numbers only (e.g.
  11-dataset averages the table does not run);
* ``rows``: table row -> ``{run, adapter, encoder}``;
* ``published``: table row -> column group -> shots -> the published number.

Each run executes in ``<out>/<run name>/`` through the ordinary runner (so it resumes,
caches and writes ``results.jsonl`` like any bench run); user flags and ``--config``
layer over every run's settings.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .config import BenchConfig, build_config, read_yaml
from .errors import ConfigError

TABLE_KEYS = ("title", "source", "runs", "eval_sets", "rows", "published")


def table_dirs() -> List[Path]:
    """Where table configs are looked up: ``./benchmarks/paper`` and the source tree's."""
    here = Path(__file__).resolve().parent.parent / "benchmarks" / "paper"
    return list(dict.fromkeys([Path.cwd() / "benchmarks" / "paper", here]))


def list_tables() -> List[str]:
    names = set()
    for d in table_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def find_table(name: str) -> Path:
    """A table config by name or path; unknown names list the known ones."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    for d in table_dirs():
        if (d / f"{name}.yaml").is_file():
            return d / f"{name}.yaml"
    raise ConfigError(f"unknown table {name!r}; valid: {', '.join(list_tables()) or '(none found)'}, or a YAML path")


def load_table(path: Path) -> Dict[str, Any]:
    """Read and check a table config."""
    spec = read_yaml(path)
    unknown = sorted(set(spec) - set(TABLE_KEYS))
    missing = [k for k in ("runs", "eval_sets", "rows", "published") if k not in spec]
    if unknown or missing:
        raise ConfigError(f"table config {path}: unknown key(s) {unknown or '-'}, missing {missing or '-'}; "
                          f"valid keys: {', '.join(TABLE_KEYS)}")
    for label, row in spec["rows"].items():
        if not isinstance(row, dict) or set(row) != {"run", "adapter", "encoder"} or row["run"] not in spec["runs"]:
            raise ConfigError(f"table config {path}: row {label!r} needs run (one of {', '.join(spec['runs'])}), "
                              "adapter and encoder")
    for label in spec["published"]:
        if label not in spec["rows"]:
            raise ConfigError(f"table config {path}: published row {label!r} is not in rows")
    return spec


def run_table(spec: Dict[str, Any], out: Path, overrides: List[Optional[Mapping[str, Any]]],
              log: Callable[[str], None] = print, progress: Any = False) -> Dict[str, List[Dict[str, Any]]]:
    """Run every run of a table (resuming what is done); return the records per run."""
    from .results import read_results
    from .bench.runner import Runner

    records = {}
    for name, run in spec["runs"].items():
        layers = [run] + list(overrides)
        if "protocol" in run:  # pinned by the table: the run's own protocol wins over --protocol / --config
            asked = [layer["protocol"] for layer in overrides if layer and "protocol" in layer]
            if asked and asked[-1] != run["protocol"]:
                log(f"== run {name!r} keeps protocol {run['protocol']!r} (pinned by the table; "
                    f"{asked[-1]!r} was asked for the others)")
            layers.append({"protocol": run["protocol"]})
        cfg = build_config(BenchConfig, *layers, source="bench config")  # sections merge key by key
        log(f"== run {name!r}")
        Runner(cfg, out / name, log=log, progress=progress).run()
        records[name] = read_results(out / name)
    return records


def side_by_side(spec: Dict[str, Any], records: Dict[str, List[Dict[str, Any]]]) -> Tuple[str, str]:
    """The comparison as aligned text and as Markdown: ``ours / published (Δ)`` per cell."""
    from .report import _stats

    cells: Dict[Tuple[str, str, int], Tuple[float, float, int]] = {}
    for label, row in spec["rows"].items():
        for group, ev in spec["eval_sets"].items():
            if ev is None:  # published numbers only
                continue
            by_shot: Dict[int, List[float]] = {}
            ci: Dict[int, float] = {}
            for r in records.get(row["run"], []):
                if r.get("error") or r["adapter"] != row["adapter"] or r["encoder"] != row["encoder"]:
                    continue
                if r.get("acc") and ev in r["acc"]:
                    by_shot.setdefault(int(r["shots"]), []).append(r["acc"][ev])
                    if r.get("ci95") and ev in r["ci95"]:
                        ci[int(r["shots"])] = r["ci95"][ev]
            for k, vals in by_shot.items():
                m, sd, n = _stats(vals)
                # several seeds: ± std over seeds; one episodic run: ± its 1.96·std over repeats
                cells[(label, group, k)] = (m, sd, n) if n > 1 or k not in ci else (m, ci[k], 2)
    text_parts, md_parts = [], []
    for group in spec["eval_sets"]:
        shots = sorted({int(k) for lab in spec["published"] for k in spec["published"][lab].get(group, {})}
                       | {k for (lab, g, k) in cells if g == group})
        head = ([("paper only" if spec["eval_sets"][group] is None else "ours / paper (Δ)")]
                + [f"{k}-shot" for k in shots])
        rows = []
        for label in spec["rows"]:
            pub = spec["published"].get(label, {}).get(group, {})
            line = [label]
            for k in shots:
                ours = cells.get((label, group, k))
                p = pub.get(k, pub.get(str(k)))
                o = f"{ours[0]:.2f}" + (f"±{ours[1]:.2f}" if ours and ours[2] > 1 else "") if ours else "–"
                pp = f"{p:.2f}" if p is not None else "–"
                d = f" ({ours[0] - p:+.2f})" if ours and p is not None and not math.isnan(ours[0]) else ""
                line.append(pp if spec["eval_sets"][group] is None else f"{o} / {pp}{d}")
            rows.append(line)
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        fmt = lambda r: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))  # noqa: E731
        text_parts.append("\n".join([f"[{group}]", fmt(head), "  ".join("-" * w for w in widths)]
                                    + [fmt(r) for r in rows]))
        md_parts.append("\n".join([f"### {group}", "", "| " + " | ".join(head) + " |",
                                   "|" + "|".join(["---"] + ["---:"] * len(shots)) + "|"]
                                  + ["| " + " | ".join(r) + " |" for r in rows]))
    return "\n\n".join(text_parts) + "\n", "\n\n".join(md_parts) + "\n"


def header(spec: Dict[str, Any], records: Dict[str, List[Dict[str, Any]]]) -> str:
    from .bench.context import REFERENCE_WARNING

    lines = []
    if any(r.get("protocol") == "reference" for rs in records.values() for r in rs):
        lines.append(f"!! {REFERENCE_WARNING}")
    lines.append(f"Reproduction: {spec.get('title', '')}")
    if spec.get("source"):
        lines.append(f"Published: {spec['source']}")
    models = sorted({r["encoder_source"] for rs in records.values() for r in rs
                     if r.get("encoder") == "clip" and r.get("encoder_source")})
    if models:
        lines.append(f"Ours: model {', '.join(models)}; {sum(len(v) for v in records.values())} records")
    policies: Dict[str, List[str]] = {}
    for rs in records.values():
        for r in rs:
            if not r.get("error"):
                seen = policies.setdefault(r["adapter"], [])
                if r.get("selection", "unrecorded") not in seen:
                    seen.append(r.get("selection", "unrecorded"))
    if policies:
        lines.append("Selection (ours): " + ", ".join(f"{a} {'/'.join(p).replace('test', 'TEST')}"
                                                     for a, p in policies.items()))
    return "\n".join(lines)
